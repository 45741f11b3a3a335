"""``python -m cupytv bench``: run the benchmark suites and print their tables.

The suites are the scripts ``benchmarks/bench_<name>.py`` and ``benchmarks/timing_table.py`` (the
seed's timing table against every installed peer) of a checkout, shipped in the wheel as
``cupytv/benchmarks``; each prints its own tables and writes JSON. They run one after another, each
in its own process (they set thread counts and time with the machine to themselves), with their
output streamed as it comes. Results go to ``--out`` (default ``./cupytv_bench``), never over the
committed ``benchmarks/results``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

#: Suites in the order they run: cheap and most asked-for first. ``timing_table`` is the
#: seed's table against every peer (benchmarks/timing_table.py), slowest last.
ORDER = (
    "tv1d", "tv2d", "torch", "memory", "gpu_proxy", "host_executor", "host_cost", "threads",
    "timing_table",
)  # fmt: skip
#: Suites that write several files take a folder rather than a JSON path.
WRITES_A_FOLDER = ("timing_table",)


def suite_dir() -> Path:
    """``benchmarks/``: shipped as ``cupytv/benchmarks`` in a wheel, at the top of a checkout."""
    installed = Path(__file__).resolve().parent / "benchmarks"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parent.parent / "benchmarks"


def suites() -> dict[str, Path]:
    """Every suite by name (``tv1d`` for ``bench_tv1d.py``), in run order."""
    scripts = [*suite_dir().glob("bench_*.py"), *suite_dir().glob("timing_table.py")]
    found = {p.stem.removeprefix("bench_"): p for p in scripts}
    return {name: found[name] for name in sorted(found, key=_rank)}


def _rank(name: str) -> tuple[int, str]:
    return (ORDER.index(name) if name in ORDER else len(ORDER), name)


def run(names: list[str] | None, quick: bool, out_dir: Path) -> int:
    """Run the named suites (all by default); return 0 when every one exited cleanly."""
    available = suites()
    if not available:
        raise SystemExit(f"bench: no benchmark scripts found in {suite_dir()}")
    unknown = sorted(set(names or ()) - set(available))
    if unknown:
        raise SystemExit(f"bench: expected suites among {sorted(available)}, got {unknown}")
    chosen = [n for n in available if not names or n in names]
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = []
    for i, name in enumerate(chosen, 1):
        json_path = out_dir if name in WRITES_A_FOLDER else out_dir / f"bench_{name}.json"
        output = "--out-dir" if name in WRITES_A_FOLDER else "--json"
        argv = [sys.executable, str(available[name]), output, str(json_path)]
        argv += ["--quick"] if quick else []
        print(f"\n=== [{i}/{len(chosen)}] bench {name}: {' '.join(argv[1:])}", flush=True)
        start = time.perf_counter()
        code = subprocess.run(argv, check=False).returncode
        summary.append((name, code, time.perf_counter() - start, json_path))
    print(f"\n{'suite':<15} {'result':<8} {'time s':>7}  results")
    for name, code, seconds, json_path in summary:
        verdict = "ok" if code == 0 else f"exit {code}"
        print(f"{name:<15} {verdict:<8} {seconds:>7.1f}  {json_path}")
    return 0 if all(code == 0 for _, code, _, _ in summary) else 1


def progress(text: str) -> None:
    """One status line for a suite's long run: rewritten in place on a terminal, silent in a log.

    A suite prints each table once, at its end; where someone watches, this shows what it is
    measuring meanwhile (the rows used to be printed as they came and then again in the table).
    """
    if sys.stderr.isatty():
        print(f"\r\033[K{text[:100]}", end="", file=sys.stderr, flush=True)


def progress_done() -> None:
    """Clear the status line (on a terminal) before the tables."""
    if sys.stderr.isatty():
        print("\r\033[K", end="", file=sys.stderr, flush=True)
