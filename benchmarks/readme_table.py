"""The README's benchmark tables, rendered from the committed JSON in benchmarks/results/.

Not a benchmark: it reads what bench_*.py and timing_table.py wrote and formats the rows a reader
needs first, each labelled with the machine that produced it, so the README never quotes a
number that no committed result backs. tests/test_docs.py fails when the README's tables and
this rendering differ; after committing new results run

    python benchmarks/readme_table.py --write

Usage: python benchmarks/readme_table.py [--write]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
#: Generated blocks of the README, by marker name.
BLOCKS = ("bench-table", "timing-table")

#: Cases quoted in the README: the issues' reference sizes.
CASE_1D = "262144x32 float64"
CASE_2D = "3x256x256 image float64"
GAP_2D = 0.00025
SHAPE_LAYER = [128, 64, 32, 32]


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _ms(seconds: float) -> str:
    ms = 1e3 * seconds
    return f"{ms:.0f} ms" if ms >= 100 else f"{ms:.1f} ms" if ms >= 10 else f"{ms:.2f} ms"


def _cpu_label(result: dict) -> str:
    return f"{result['cpu_count']}-core {result['cpu']} (the CI machine), {result['date'][:10]}"


def rows_1d() -> list[tuple[str, ...]]:
    result = _load("bench_tv1d.json")
    machine = _cpu_label(result) + ", 2 threads"
    names = {
        ("cupytv host", "condat"): "cupytv `condat` (default)",
        ("cupytv host", "taut_string"): "cupytv `taut_string`",
        ("cupytv host", "pn"): "cupytv `pn`",
        ("plain C", "condat"): "same Condat loop as plain C + OpenMP",
        ("Condat C", "TV1D_denoise"): "Condat's own C code, -O3 -march=native + OpenMP (peer)",
        ("proxTV", "tvgen"): "proxTV `tvgen` (peer)",
        ("cupytv host", "vjp"): "cupytv `prox_tv1d_vjp`",
    }
    out = []
    for r in result["results"]:
        name = names.get((r["implementation"], r["method"]))
        if r["case"] == CASE_1D and r["threads"] == 2 and name:
            what = f"1D {r['direction']}, (262144, 32) float64, λ {result['lam']}"
            out.append((what, name, machine, _ms(r["median_s"])))
    return out


def rows_2d() -> list[tuple[str, ...]]:
    result = _load("bench_tv2d.json")
    machine = _cpu_label(result) + f", {result['threads']} threads"
    what = f"2D forward, (3, 256, 256) noisy photo, λ 0.1, to a {GAP_2D:g} relative gap"
    out = []
    for r in result["results"]:
        if r["case"] != CASE_2D or r["target"] != GAP_2D:
            continue
        if r["implementation"] == "cupytv host" and r["mode"] == "to accuracy":
            name = f"cupytv `{r['method']}` ({r['iters']} iterations)"
        elif r["implementation"] == "proxTV" and r["mode"] == "defaults":
            name = f"proxTV `{r['method']}` (peer)"
        else:
            continue
        out.append((what, name, machine, _ms(r["median_s"])))
    return out


def rows_gpu() -> list[tuple[str, ...]]:
    result = _load("gpu_h100/benchmarks.json")["bench_torch"]
    machine = f"{result['gpu']} (lent for one session), {result['date'][:10]}"
    out = []
    for r in result["results"]:
        if r["device"] != "cuda" or r["shape"] != SHAPE_LAYER:
            continue
        setting = r["setting"].replace("fixed", "iterations:").replace("tol", "to a gap of")
        what = f"`TV2d` layer forward / forward + backward, (128, 64, 32, 32) float32, {setting}"
        times = f"{_ms(r['forward_s'])} / {_ms(r['forward_backward_s'])}"
        out.append((what, f"cupytv.torch `{r['method']}`", machine, times))
    return sorted(out, key=lambda row: row[0])  # one group per setting


def render() -> str:
    """Rows grouped by case (named once); machines as letters, spelled out under the table."""
    machines: dict[str, str] = {}
    lines = ["| case | implementation | machine | median time |", "| --- | --- | --- | --- |"]
    previous = None
    for what, name, machine, time in rows_1d() + rows_2d() + rows_gpu():
        letter = machines.setdefault(machine, "ABCDEFGH"[len(machines)])
        lines.append(f"| {what if what != previous else ''} | {name} | {letter} | {time} |")
        previous = what
    lines.append("")
    lines += [f"{letter}: {machine}." for machine, letter in machines.items()]
    return "\n".join(lines)


#: The seed's table, our rows: per case, the default cupytv layer and every peer's first row.
TIMING_CASES = ("1d 4096x64 float64", "2d 8x3x64x64 float64")
TIMING_PACKAGES = (
    "cupytv.torch `condat`",
    "cupytv.torch `dykstra`",
    "proxTV taut string + dense Jacobian",
    "proxTV PN + dense Jacobian",
    "CVXPYLayers (defaults: diffcp + SCS)",
)


def render_timing() -> str:
    """The seed's format (Package, Hardware, Forward, Backward, Total), per committed machine."""
    lines = []
    for path in sorted(RESULTS.glob("timing_table-*.json")):
        if path.stem.endswith(("-quick", "-tiny")):
            continue
        result = json.loads(path.read_text())
        m, md = result["machine"], path.with_suffix(".md").name
        lines.append(
            f"{m['cpu']} ({m['cores']} cores{', ' + m['gpu'] if m['gpu'] else ''}), "
            f"{result['date'][:10]}, full tables: [`{md}`](benchmarks/results/{md}):"
        )
        lines.append("")
        lines.append(
            "| case | Package | Hardware | Forward | Backward | Total | error of y / ∂x vs the "
            "exact prox | vs 10 exact Dykstra iterations |"
        )
        lines.append("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for case in result["cases"]:
            if case["name"] not in TIMING_CASES:
                continue
            shape = "(" + ", ".join(map(str, case["shape"])) + ")"
            label = f"{case['group'].upper()} {shape}"
            for row in case["rows"]:
                if row["package"] not in TIMING_PACKAGES or row["skipped"]:
                    continue
                err, ratio = row["errors"], row["total_ratio_to_fastest"]
                ratio = f"{ratio:.1f}" if ratio < 10 else f"{ratio:.0f}"
                d10 = err["vs_dykstra10"]
                d10 = f"{d10['forward']:.0e} / {d10['grad_x']:.0e}" if d10 else "–"
                lines.append(
                    f"| {label} | {row['package']} | {row['hardware']} | "
                    f"{_ms(row['forward_s'])} | {_ms(row['backward_s'])} | "
                    f"{ratio}× | {err['forward']:.0e} / {err['grad_x']:.0e} | {d10} |"
                )
                label = ""
        lines.append("")
    return "\n".join(lines).rstrip("\n")


RENDER = {"bench-table": render, "timing-table": render_timing}


def _markers(name: str) -> tuple[str, str]:
    return (
        f"<!-- {name}:start (generated by benchmarks/readme_table.py; do not edit) -->",
        f"<!-- {name}:end -->",
    )


def readme_block(text: str, name: str = "bench-table") -> str:
    """A generated block as it stands in the README (between its markers)."""
    start, end = _markers(name)
    return text[text.index(start) + len(start) : text.index(end)].strip("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update README.md in place")
    args = parser.parse_args()
    text = README.read_text()
    for name in BLOCKS:
        table = RENDER[name]()
        if not args.write:
            print(f"{name}:\n{table}\n")
            continue
        start, end = _markers(name)
        i, j = text.index(start) + len(start), text.index(end)
        text = text[:i] + "\n" + table + "\n" + text[j:]
    if args.write:
        README.write_text(text)
        print(f"updated {README}")


if __name__ == "__main__":
    main()
