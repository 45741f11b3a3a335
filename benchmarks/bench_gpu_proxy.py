"""GPU proxy: issued warp-instructions, divergence, FP64 and memory wavefronts per kernel and case.

Runs each case's GPU launch on the host executor's probe build (cupytv/gpu_proxy.py explains the
warp-lockstep replay and the SASS cost table), fits one issue rate per kernel family (1D, 2D) to
the cases measured on the H100 (benchmarks/results/gpu_h100/benchmarks.log: CUDA-event medians
of the full wrapper, so host work is inside them), and prints one table:

  kernel, case, dtype, issued warp-instructions per sample (2D: per sample-pass = pixel x pass,
  two passes per iteration) and without divergence, useful lanes per issued instruction, loop-trip
  efficiency of the main loop, FP64 instructions and divisions per sample (per thread), shared-
  memory wavefronts per request (ideal: 1 for 4-byte words), global sectors per request, the
  predicted H100 time and the memory floor (bytes that must move / HBM bandwidth).

JSON (--json): {"meta": {...}, "calibration": {"rates": {family: rate}, "cases": [...]},
"cases": [{"kernel", "case", "dtype", "family", "shape", "sampled", "metrics": {...},
"issued_total", "predicted_us", "floor_us", "measured_us" (calibration cases only)}]}.
Every per-sample metric is an average over the sampled fibers or slices (`sampled`); totals are
scaled to the full shape. --quick: a few small samples (CI), the same schema.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_tv2d import FM_LAM, feature_maps

import cupytv
from cupytv import _loader, gpu_proxy, tv1d, tv2d

SEED = 0
LAMS_1D = (0.1, 0.3, 0.5)
WALK_LAM = 0.3  # the random walk's weight: a few jumps per 32 samples
BENCH_1D_LAM = 0.1  # bench_tv1d.py's weight (the H100 cases)
IMAGE_LAM, IMAGE_NOISE = 0.1, 0.1
FIXED_ITER = 10

# The H100 measurements (microseconds): benchmarks/results/gpu_h100/benchmarks.log, 1D from
# bench_tv1d (N(0, 1), lam 0.1), 2D from bench_tv2d (Dykstra, 10 iterations, float32); and the
# (262144, 32) 1D rows and the torch layer (128, 64, 32, 32) of benchmarks/NOTES.md ("First H100
# run"; the layer's data is not recorded, the feature maps stand in).
MEASURED_H100 = {
    ("1d", "forward", (262144, 32), "float32"): 800.0,
    ("1d", "vjp", (262144, 32), "float32"): 520.0,
    ("2d", "fused", (128, 64, 32, 32), "float32"): 4900.0,
    ("1d", "forward", (8192, 32), "float32"): 271.0,
    ("1d", "forward", (8192, 32), "float64"): 224.0,
    ("1d", "vjp", (8192, 32), "float32"): 187.0,
    ("1d", "vjp", (8192, 32), "float64"): 183.0,
    ("1d", "forward", (128, 1024), "float32"): 1158.0,
    ("1d", "forward", (128, 1024), "float64"): 1116.0,
    ("1d", "vjp", (128, 1024), "float32"): 774.0,
    ("1d", "vjp", (128, 1024), "float64"): 728.0,
    ("2d", "fused", (16, 64, 32, 32), "float32"): 1100.0,
    ("2d", "multi", (2, 64, 128, 128), "float32"): 5490.0,
    ("2d", "multi", (1, 512, 512), "float32"): 26700.0,
}
# Below this the wrapper's host work (~0.2 ms per call at these sizes, issue 17 item 5) is most
# of a measurement: such cases get an error but do not steer the fit.
FIT_MIN_US = 500.0
# The measured shapes the quick run keeps (small samples of each family).
QUICK_MEASURED = ((128, 1024), (16, 64, 32, 32))


def fm_data(shape, rng) -> np.ndarray:
    """bench_tv2d.py's feature maps (the same generator, so the proxy prices the data timed)."""
    return feature_maps(shape, rng)


def image_data(slices: int, rng) -> np.ndarray:
    """The bundled astronaut (256 x 256) upsampled to 512 x 512, plus N(0, 0.01) noise."""
    rgb = cupytv.data.astronaut()
    img = np.kron(np.moveaxis(rgb, -1, 0), np.ones((2, 2)))[:slices]
    return img + IMAGE_NOISE * rng.standard_normal(img.shape)


def data_1d(kind: str, fibers: int, n: int, rng) -> np.ndarray:
    x = rng.standard_normal((fibers, n))
    return np.cumsum(x, axis=1) if kind == "walk" else x


def run_1d(direction: str, shape, dtype, kind: str, lam: float, sample_fibers: int) -> dict:
    fibers, n = shape
    rng = np.random.default_rng(SEED)
    x = data_1d(kind, min(fibers, sample_fibers), n, rng).astype(dtype)
    weight = tv1d.Weight.of(lam, x.shape, 1, np.dtype(dtype))
    y = cupytv.prox_tv1d(x, lam, axis=-1)
    if direction == "forward":
        ctype = tv1d._CTYPES[np.dtype(dtype)]
        tile = tv1d.BLOCK * (n | 1) * np.dtype(dtype).itemsize
        short = n <= tv1d.SHORT_MAX_N and tile <= tv1d.STAGE_MAX_BYTES  # as _launch_forward
        kernel = f"tv1d_condat_short<{ctype}>" if short else f"tv1d_condat<{ctype}>"
        gpu_proxy.reset(tv1d.STEM)
        with _loader.probe_mode():
            out = np.empty_like(x)
            tv1d._launch_forward("tv1d_condat", x, out, weight, (x.shape[0], n, 1), True)
        assert np.array_equal(out, y), "the staged GPU kernel disagrees with the host's"
        moved = 2
        shared = tile if tile <= tv1d.STAGE_MAX_BYTES else 0
    else:
        kernel = f"tv1d_vjp<{tv1d._CTYPES[np.dtype(dtype)]}>"
        g = rng.standard_normal(x.shape).astype(dtype)
        gpu_proxy.reset(tv1d.STEM)
        # The VJP kernel alone, as the wrapper launches it: the wrapper's second launch (the
        # scalar weight's gradient summed over the fibers, tv1d_weight_grad) is not this row's
        # kernel, and the H100 calibration timed the VJP when it was one launch.
        grad_x, grad_fiber = np.empty_like(y), np.empty(x.shape[0], dtype)
        with _loader.probe_mode():
            tv1d._launch_vjp(y, g, grad_x, grad_fiber, (x.shape[0], n, 1), 0.0, staged=True)
        want = cupytv.prox_tv1d_vjp(None, lam, g, -1, y=y)[0]
        assert np.array_equal(grad_x, want), "the staged GPU kernel disagrees with the host's"
        moved = 3  # y, g in; grad_x out
        tile = tv1d.BLOCK * (n | 1) * np.dtype(dtype).itemsize
        staged = n <= tv1d.VJP_STAGE_MAX_N and tile <= tv1d.STAGE_MAX_BYTES
        shared = tile if staged else 0
    samples = x.size
    full = fibers * n
    return {
        "kernel": kernel,
        "family": "1d",
        "totals": gpu_proxy.report(tv1d.STEM),
        "samples": samples,
        "scale": full / samples,
        "sampled": f"{x.shape[0]} of {fibers} fibers",
        "floor_bytes": moved * full * np.dtype(dtype).itemsize,
        "launch": {kernel: (tv1d.BLOCK, shared)},
    }


def run_2d(path: str, shape, dtype, data: str, max_iter: int, tol: float, sample_slices: int):
    *batch, h, w = shape
    slices = math.prod(batch)
    rng = np.random.default_rng(SEED)
    take = min(slices, sample_slices)
    if data == "image":
        x, lam = image_data(take, rng).reshape(take, h, w), IMAGE_LAM
    else:
        x, lam = fm_data((take, h, w), rng), FM_LAM
    x = x.astype(dtype)
    pb = tv2d._Problem(x, lam, (-2, -1), max_iter, tol, "dykstra")
    gpu_proxy.reset(tv2d.STEM)
    with _loader.probe_mode():
        tv2d._forward(pb, path)
    iters = np.asarray(pb.n_iter, dtype=np.float64)
    samples = float(h * w * iters.sum() * 2)  # sample-passes: rows and columns per iteration
    kernel = f"tv2d_solve<{tv2d._CTYPES[np.dtype(dtype)]}>" if path == "fused" else "multi-launch"
    fused = tv2d._fused_config(pb, "fused") if path == "fused" else None
    return {
        "kernel": kernel,
        "family": "2d",
        "totals": gpu_proxy.report(tv2d.STEM),
        "samples": samples,
        "scale": slices / take,
        "sampled": f"{take} of {slices} slices",
        "iterations": float(iters.mean()),
        "floor_bytes": 2 * slices * h * w * np.dtype(dtype).itemsize,
        # Every multi-launch kernel runs TV2D_BLOCK threads without dynamic shared memory.
        "launch": {kernel: fused} if fused else {},
    }


def cases(quick: bool) -> list[dict]:
    """Every case: the issue's list, then the H100 calibration cases."""
    f1 = 256 if quick else 8192  # sampled fibers of 32 samples
    f2 = 16 if quick else 256  # sampled fibers of 1024 samples
    s2 = 2 if quick else 32  # sampled slices of 32 x 32
    out = []
    dtypes = ("float32",) if quick else ("float32", "float64")
    data = [("N(0,1)", lam) for lam in ((0.3,) if quick else LAMS_1D)]
    data += [] if quick else [("walk", WALK_LAM)]
    for direction in ("forward", "vjp"):
        for shape, sample in (((262144, 32), f1), ((4096, 1024), f2)):
            for dtype in dtypes:
                for kind, lam in data:
                    name = f"{shape[0]}x{shape[1]} {kind} lam {lam}"
                    out.append(dict(family="1d", direction=direction, case=name, shape=shape,
                                    dtype=dtype, args=(kind, lam, sample)))  # fmt: skip
    gap_iter = tv2d.DEFAULT_MAX_ITER
    for path in ("fused", "multi"):
        shapes = [((128, 64, 32, 32), "fmap", s2)]
        if path == "multi":
            shapes.append(((3, 512, 512), "image", 1))
        for shape, data2, sample in shapes:
            if quick and shape[-1] == 512:
                continue
            for label, max_iter, tol in (("10 it", FIXED_ITER, 0.0),
                                         ("gap", gap_iter, tv2d.DEFAULT_TOL)):  # fmt: skip
                if quick and label == "gap":
                    continue
                name = f"{'x'.join(map(str, shape))} {data2} {label}"
                out.append(dict(family="2d", direction=path, case=name, shape=shape,
                                dtype="float32", args=(data2, max_iter, tol, sample)))  # fmt: skip
    for (family, direction, shape, dtype), us in MEASURED_H100.items():
        if quick and (shape not in QUICK_MEASURED or dtype != "float32"):
            continue
        name = f"{'x'.join(map(str, shape))} H100 case"
        if family == "1d":
            args = (
                "N(0,1)",
                BENCH_1D_LAM,
                min(shape[0], 256 if quick else 8192, 2**18 // shape[1]),
            )
        else:
            data2 = "image" if shape[-1] == 512 else "fmap"
            args = (data2, FIXED_ITER, 0.0, 1 if shape[-1] >= 128 else (2 if quick else 32))
        out.append(dict(family=family, direction=direction, case=name, shape=shape, dtype=dtype,
                        args=args, measured_us=us))  # fmt: skip
    return out


def run_case(spec: dict, costs: dict) -> dict:
    start = time.perf_counter()
    if spec["family"] == "1d":
        kind, lam, sample = spec["args"]
        r = run_1d(spec["direction"], spec["shape"], spec["dtype"], kind, lam, sample)
    else:
        data2, max_iter, tol, sample = spec["args"]
        r = run_2d(spec["direction"], spec["shape"], spec["dtype"], data2, max_iter, tol, sample)
    counts, per_kernel = gpu_proxy.price(r["totals"], costs)
    launches = []
    for expr, entry in r["totals"].items():
        threads, shared = r["launch"].get(expr, (tv2d.BLOCK, 0))
        res = costs["resources"][gpu_proxy._cost_key(expr)]
        wpb = math.ceil(threads / gpu_proxy.WARP)
        launches.append({
            "kernel": expr,
            "launches": entry["launches"],
            "issued": per_kernel[expr] * r["scale"],
            "warps": entry["warps"] * r["scale"],
            "warps_per_block": wpb,
            "registers": res["registers"],
            "shared_per_block": shared + res["shared_static"],
            "resident_warps": gpu_proxy.resident_warps(
                res["registers"], wpb, shared + res["shared_static"]
            ),
        })  # fmt: skip
    row = {
        "kernel": r["kernel"],
        "case": f"{spec['direction']} {spec['case']}",
        "dtype": spec["dtype"],
        "family": spec["family"],
        "shape": list(spec["shape"]),
        "sampled": r["sampled"],
        "metrics": gpu_proxy.metrics(counts, r["samples"]),
        "issued_total": counts.issued * r["scale"],
        "launches": launches,
        "floor_us": gpu_proxy.floor_us(r["floor_bytes"]),
        "proxy_seconds": round(time.perf_counter() - start, 2),
    }
    if "iterations" in r:
        row["iterations"] = r["iterations"]
    if "measured_us" in spec:
        row["measured_us"] = spec["measured_us"]
    return row


def model_cycles(row: dict, latency: float) -> float:
    """The case's GPU cycles under gpu_proxy.launch_cycles, every launch one after another."""
    return sum(
        k["launches"]
        * gpu_proxy.launch_cycles(
            k["issued"] / k["launches"], k["warps"] / k["launches"], k["warps_per_block"],
            k["resident_warps"], latency,
        )
        for k in row["launches"]
    )  # fmt: skip


def calibrate(rows: list[dict]) -> dict:
    """Per family, the two parameters of the time model fitted to the measured cases:
    time = launches x per_launch_us + model_cycles(latency) / CLOCK_HZ, where latency is the
    cycles per warp-instruction of one warp (its dependent chain) and per_launch_us the host and
    launch cost of each kernel launch (the measurements time whole wrapper calls). Fitted by
    least relative squares: a grid over latency, per_launch_us >= 0 in closed form. Also the
    plain fit the issue asks for: one issue rate per family (warp-instructions / cycle / SM over
    132 SMs, geometric mean over the measured cases above FIT_MIN_US)."""
    fits = {}
    for family in ("1d", "2d"):
        measured = [r for r in rows if r["family"] == family and "measured_us" in r]
        if not measured:
            fits[family] = {"latency_cycles": float("nan"), "per_launch_us": float("nan"),
                            "issue_rate": float("nan")}  # fmt: skip
            continue
        best = None
        for latency in np.arange(1.0, 64.0, 0.25):
            kernel_us = np.array([model_cycles(r, latency) / gpu_proxy.CLOCK_HZ * 1e6
                                  for r in measured])  # fmt: skip
            n = np.array([sum(k["launches"] for k in r["launches"]) for r in measured])
            t = np.array([r["measured_us"] for r in measured])
            # minimise sum ((n a + k - t) / t)^2 over a >= 0
            a = max(0.0, float(np.sum(n * (t - kernel_us) / t**2) / np.sum(n**2 / t**2)))
            err = float(np.sum(((n * a + kernel_us - t) / t) ** 2))
            if best is None or err < best[0]:
                best = (err, float(latency), a)
        implied = [
            r["issued_total"] / (r["measured_us"] * 1e-6 * gpu_proxy.SMS * gpu_proxy.CLOCK_HZ)
            for r in measured
            if r["measured_us"] >= FIT_MIN_US
        ] or [r["issued_total"] / (r["measured_us"] * 1e-6 * gpu_proxy.SMS * gpu_proxy.CLOCK_HZ)
              for r in measured]  # fmt: skip
        fits[family] = {
            "latency_cycles": best[1],
            "per_launch_us": best[2],
            "issue_rate": float(np.exp(np.mean(np.log(implied)))),
        }
    errors = []
    for r in rows:
        fit = fits[r["family"]]
        n = sum(k["launches"] for k in r["launches"])
        r["kernel_us"] = model_cycles(r, fit["latency_cycles"]) / gpu_proxy.CLOCK_HZ * 1e6
        r["predicted_us"] = n * fit["per_launch_us"] + r["kernel_us"]
        r["predicted_rate_only_us"] = gpu_proxy.predicted_us(r["issued_total"], fit["issue_rate"])
        if "measured_us" in r:
            r["implied_rate"] = r["issued_total"] / (
                r["measured_us"] * 1e-6 * gpu_proxy.SMS * gpu_proxy.CLOCK_HZ
            )
            r["error"] = r["predicted_us"] / r["measured_us"] - 1
            r["error_rate_only"] = r["predicted_rate_only_us"] / r["measured_us"] - 1
            errors.append({k: r[k] for k in ("kernel", "case", "dtype", "measured_us",
                                             "predicted_us", "error", "predicted_rate_only_us",
                                             "error_rate_only", "implied_rate")})  # fmt: skip
    return {"fits": fits, "fit_min_us": FIT_MIN_US, "cases": errors}


COLUMNS = (
    ("kernel", "kernel", "{:<24}"),
    ("case", "case", "{:<42}"),
    ("dtype", "dtype", "{:<7}"),
    ("issued_per_sample", "inst/s", "{:>7.2f}"),
    ("issued_no_divergence_per_sample", "no-div", "{:>6.2f}"),
    ("useful_lanes", "lanes", "{:>5.2f}"),
    ("loop_trip_efficiency", "trips", "{:>5.2f}"),
    ("fp64_per_sample", "fp64/s", "{:>6.1f}"),
    ("fp64_div_per_sample", "div/s", "{:>5.2f}"),
    ("smem_wavefronts_per_request", "wf/ld", "{:>5.2f}"),
    ("global_sectors_per_request", "sec/rq", "{:>6.2f}"),
    ("predicted_us", "pred us", "{:>9.1f}"),
    ("kernel_us", "kern us", "{:>9.1f}"),
    ("floor_us", "floor", "{:>7.1f}"),
    ("measured_us", "H100 us", "{:>8.0f}"),
)


def table(rows: list[dict]) -> str:
    head = " ".join(fmt.replace(".2f", "").replace(".1f", "").replace(".0f", "").format(title)
                    for _, title, fmt in COLUMNS)  # fmt: skip
    lines = [head]
    for r in rows:
        cells = []
        for key, _, fmt in COLUMNS:
            value = r.get(key, r["metrics"].get(key))
            if value is None or (isinstance(value, float) and math.isnan(value)):
                cells.append(fmt.replace(".2f", "").replace(".1f", "").replace(".0f", "")
                             .format("-"))  # fmt: skip
            else:
                cells.append(fmt.format(value))
        lines.append(" ".join(cells))
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few small samples (CI)")
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    costs = gpu_proxy.load_costs()
    rows = []
    for spec in cases(args.quick):
        rows.append(run_case(spec, costs))
        print(f"  {rows[-1]['case']} {spec['dtype']}: {rows[-1]['proxy_seconds']} s",
              file=sys.stderr, flush=True)  # fmt: skip
    calibration = calibrate(rows)
    print(table(rows))
    for family, fit in calibration["fits"].items():
        print(
            f"{family}: latency {fit['latency_cycles']:.2f} cycles per warp-instruction, "
            f"{fit['per_launch_us']:.1f} us per launch; plain issue rate "
            f"{fit['issue_rate']:.3f} warp-instructions / cycle / SM"
        )
    print("measured on the H100: predicted / measured - 1 (model, plain rate)")
    for e in calibration["cases"]:
        print(
            f"  {e['kernel']:<22} {e['case']:<36} {e['dtype']:<8} {e['measured_us']:>8.0f} us"
            f" {e['error']:+7.0%} {e['error_rate_only']:+7.0%}"
        )
    if args.json:
        report = {
            "meta": {
                "benchmark": "gpu_proxy",
                "quick": args.quick,
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": platform.machine(),
                "model": {
                    "sms": gpu_proxy.SMS,
                    "clock_hz": gpu_proxy.CLOCK_HZ,
                    "hbm_bytes_per_s": gpu_proxy.HBM_BYTES_PER_S,
                    "warp": gpu_proxy.WARP,
                },
                "costs": {
                    k: json.loads(gpu_proxy.COSTS_PATH.read_text())[k]
                    for k in ("arch", "nvcc", "source_sha256")
                },
            },
            "calibration": calibration,
            "cases": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
