"""The host executor's thread count and waiting, on an idle CPU and with one core kept busy.

Not a test: prints a table and writes JSON. Issue 16 (item 3): with another process busy, the
default (OpenMP, every core, spinning joins) made ``prox_tv2d`` 13x slower than one thread. This
times each case under three settings, ``cupytv.set_num_threads(None)`` (the default), ``(1)`` and
``(n_cores)``, in two phases: idle, then with a child process spinning on one core (started and
stopped here; it also stops itself after ``--busy-limit`` seconds).

Each code tree (this checkout, and any ``--compare`` tree, e.g. a checkout of main) runs in its own
worker process, which imports that tree's cupytv and times on request, so the versions and
settings are interleaved round by round (A1 A2 A3 B1 B2 B3, A1 ...): load changes from other users
of the machine hit all alike. A row's time is the median over rounds of each round's median of
``--reps`` calls; the spread (min-max over rounds) says how noisy the machine was.

Cases:
  2d batch   prox_tv2d on (8, 3, 64, 64) float32, lam 0.1 (the issue's case)
  2d crops   prox_tv2d on 64 separate (64, 64) float32 crops, one call each (a data pipeline)
  1d         prox_tv1d on (4096, 64) float32, lam 0.5
  2d large   prox_tv2d on (4, 3, 256, 256) float32: enough work per launch that a second core
             pays off on an idle machine (the others are mostly per-call overhead)

Usage: python benchmarks/bench_threads.py [--compare PATH[:ENV=VALUE,...]]... [--rounds N]
       [--quick] [--json PATH]
e.g.   python benchmarks/bench_threads.py --compare /work/main \\
           --compare /work/main:OMP_WAIT_POLICY=passive
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SETTINGS = ("default", "1 thread", "n_cores")
CASES = ("2d batch (8,3,64,64)", "2d crops 64 x (64,64)", "1d (4096,64)", "2d large (4,3,256,256)")
# Target (issue 16): with one core busy, the default within this factor of the best setting.
BUSY_TARGET = 1.3


# ---- worker: one per code tree, imports that tree's cupytv ----


def worker() -> None:
    import numpy as np

    import cupytv

    rng = np.random.default_rng(0)
    batch = rng.standard_normal((8, 3, 64, 64)).astype(np.float32)
    crops = [rng.standard_normal((64, 64)).astype(np.float32) for _ in range(64)]
    fibers = rng.standard_normal((4096, 64)).astype(np.float32)
    large = rng.standard_normal((4, 3, 256, 256)).astype(np.float32)
    cases = {
        CASES[0]: lambda: cupytv.prox_tv2d(batch, 0.1),
        CASES[1]: lambda: [cupytv.prox_tv2d(c, 0.1) for c in crops],
        CASES[2]: lambda: cupytv.prox_tv1d(fibers, 0.5),
        CASES[3]: lambda: cupytv.prox_tv2d(large, 0.1),
    }
    n_cores = len(os.sched_getaffinity(0))
    threads = {"default": None, "1 thread": 1, "n_cores": n_cores}
    for fn in cases.values():  # compile and warm up
        fn()
    try:  # the default thread count, where the tree's executor says it
        from cupytv._host.launch import launch_workers

        default = launch_workers()
    except ImportError:  # OpenMP's default, every core
        default = n_cores
    print(json.dumps({"ready": True, "n_cores": n_cores, "default": default}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        cupytv.set_num_threads(threads[request["setting"]])
        fn = cases[request["case"]]
        times = []
        for _ in range(request["reps"]):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        print(json.dumps({"ms": 1e3 * statistics.median(times)}), flush=True)


# ---- parent ----


class Tree:
    """A worker process running one code tree's cupytv, with extra environment variables."""

    def __init__(self, spec: str):
        path, _, env_spec = spec.partition(":")
        self.path = Path(path).resolve()
        self.env = dict(kv.split("=", 1) for kv in env_spec.split(",") if kv)
        self.label = ("this tree" if self.path == ROOT else self.path.name) + "".join(
            f" {k}={v}" for k, v in self.env.items()
        )
        env = dict(os.environ, **self.env)
        # A checkout's cupytv; installed (the wheel's cupytv/benchmarks), the installed one.
        if (self.path / "pyproject.toml").is_file():
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(self.path), env.get("PYTHONPATH")])
            )
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        ready = json.loads(self.proc.stdout.readline())
        self.n_cores, self.default_threads = ready["n_cores"], ready["default"]

    def time(self, case: str, setting: str, reps: int) -> float:
        self.proc.stdin.write(json.dumps({"case": case, "setting": setting, "reps": reps}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["ms"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def spinner(limit_s: float) -> subprocess.Popen:
    """A child process that keeps one core busy until killed, or for limit_s seconds at most."""
    code = f"import time\nend = time.monotonic() + {limit_s}\nwhile time.monotonic() < end: pass"
    return subprocess.Popen([sys.executable, "-c", code])


def run_phase(trees: list[Tree], cases: list[str], rounds: int, reps: int) -> dict:
    samples = {(t.label, c, s): [] for t in trees for c in cases for s in SETTINGS}
    for r in range(rounds):
        for case in cases:
            for tree in trees:
                for setting in SETTINGS:
                    samples[tree.label, case, setting].append(tree.time(case, setting, reps))
        print(f"  round {r + 1}/{rounds} done", flush=True)
    return samples


def summarize(phase: str, trees: list[Tree], cases: list[str], samples: dict) -> list[dict]:
    rows = []
    for case in cases:
        for tree in trees:
            med = {s: statistics.median(samples[tree.label, case, s]) for s in SETTINGS}
            best = min(med.values())
            for s in SETTINGS:
                xs = samples[tree.label, case, s]
                rows.append(
                    {
                        "phase": phase,
                        "case": case,
                        "code": tree.label,
                        "setting": s,
                        "median_ms": med[s],
                        "min_ms": min(xs),
                        "max_ms": max(xs),
                        "samples_ms": xs,
                        "ratio_to_best": med[s] / best,
                    }
                )
    return rows


def print_table(rows: list[dict]) -> None:
    print("| phase | case | code | setting | median ms | min-max ms | / best |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['phase']} | {r['case']} | {r['code']} | {r['setting']} | "
            f"{r['median_ms']:.2f} | {r['min_ms']:.2f}-{r['max_ms']:.2f} | "
            f"{r['ratio_to_best']:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="PATH[:ENV=VALUE,...]",
        help="another code tree to time side by side (optionally with environment variables)",
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reps", type=int, default=3, help="calls per measurement (median)")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 1 call")
    parser.add_argument(
        "--cases", nargs="+", metavar="PREFIX", help="only the cases whose names start so"
    )
    parser.add_argument("--busy-limit", type=float, default=900.0, help="spinner's own time limit")
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "results" / "bench_threads.json"
    )
    args = parser.parse_args()
    if args.worker:
        worker()
        return
    if args.quick:
        args.rounds, args.reps = 3, 1
    cases = [c for c in CASES if not args.cases or any(c.startswith(p) for p in args.cases)]
    if not cases:
        raise SystemExit(f"--cases: expected prefixes of {list(CASES)}, got {args.cases}")

    trees = [Tree(str(ROOT))] + [Tree(spec) for spec in args.compare]
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load = {"start": os.getloadavg()}
    rows = []
    try:
        print("idle phase", flush=True)
        rows += summarize("idle", trees, cases, run_phase(trees, cases, args.rounds, args.reps))
        print("busy phase: one core kept busy by a spinning child process", flush=True)
        spin = spinner(args.busy_limit)
        try:
            time.sleep(0.5)  # let the scheduler settle the spinner on a core
            load["busy start"] = os.getloadavg()
            rows += summarize("busy", trees, cases, run_phase(trees, cases, args.rounds, args.reps))
        finally:
            spin.kill()
            spin.wait()
    finally:
        for tree in trees:
            tree.close()
    load["end"] = os.getloadavg()
    print_table(rows)
    print("\nload averages (1, 5, 15 min):", load)
    for phase in ("idle", "busy"):
        for case in cases:
            r = next(
                r
                for r in rows
                if (r["phase"], r["case"], r["code"], r["setting"])
                == (phase, case, trees[0].label, "default")
            )
            verdict = "" if phase == "idle" else f" (target <= {BUSY_TARGET})"
            noise = ""
            if trees[0].default_threads == trees[0].n_cores:
                # The same configuration timed twice: how far apart they came out is the noise.
                other = next(
                    x
                    for x in rows
                    if (x["phase"], x["case"], x["code"], x["setting"])
                    == (phase, case, trees[0].label, "n_cores")
                )
                spread = max(r["median_ms"], other["median_ms"]) / min(
                    r["median_ms"], other["median_ms"]
                )
                noise = f"; default and n_cores are the same setting here, {spread:.2f}x apart"
            print(f"{phase} {case}: default / best = {r['ratio_to_best']:.2f}{verdict}{noise}")
    report = {
        "benchmark": "bench_threads",
        "started": started,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "n_cores": trees[0].n_cores,
        },
        "default_threads": {t.label: t.default_threads for t in trees},
        "load_averages": load,
        "cases": cases,
        "rounds": args.rounds,
        "reps": args.reps,
        "busy_target": BUSY_TARGET,
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
