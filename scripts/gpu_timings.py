"""Time issue #17's cases on a GPU: raw kernels, full wrappers, the copy floor, the proxy beside.

Run by scripts/gpu_perf_check.sh (one mode per step, each under its own timeout):
  --timings JSON  per case: the median of REPS CUDA-event timings of (a) the raw kernels: the
                  launches one wrapper call made, recorded (``_loader.launch`` wrapped) and
                  replayed back to back with their own arguments, every array the kernels touch
                  restored to its pre-call content before each replay (outside the timed span);
                  (b) the full wrapper (cupytv.prox_* called as a user would); (c) the floor: a
                  device-to-device copy of as many bytes as the case must move (read x and write
                  y, plus g for a VJP: a copy of B bytes moves 2B); and the proxy's prediction
                  from benchmarks/results/gpu_proxy.json when that file has the case.
  --ulp JSON      max ulp difference between the GPU and the host executor on a small subset.
  --profile       each main kernel once, for Nsight Compute (the script's ncu step).
  --list          the cases, no GPU needed.
  --cpu           the same measurements on NumPy arrays with wall-clock timers and tiny shapes:
                  what CI runs to keep this file from rotting (numbers meaningless).

Usage: PYTHONPATH=. python scripts/gpu_timings.py (--timings P | --ulp P | --profile | --list)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cupytv  # noqa: E402
from cupytv import _loader, tv2d  # noqa: E402

REPS = 20  # timings per measurement; the median is reported (the issue asks for >= 20)
PROXY_JSON = ROOT / "benchmarks" / "results" / "gpu_proxy.json"
SHAPES_1D = ((262144, 32), (4096, 1024))
SHAPES_2D = ((128, 64, 32, 32), (3, 512, 512))
CPU_SHAPES_1D = ((256, 32), (8, 1024))
CPU_SHAPES_2D = ((2, 2, 32, 32), (1, 96, 96))
DTYPES_1D = (np.float32, np.float64)
# Data of the 1D cases: N(0, 1) at three weights, and a random walk (cumulative N(0, 1) along
# the fiber: long constant runs after the prox, the regime of large segments).
DATA_1D = (("normal", 0.1), ("normal", 0.3), ("normal", 0.5), ("walk", 0.3))
LAM_2D = 0.1
ITERS_2D = (10, None)  # 10 Dykstra iterations (tol=0), and to the default gap (None)
# The ulp subset: small enough to run on the host executor in seconds.
ULP_SHAPE_1D = (8192, 32)
ULP_SHAPE_2D = (4, 32, 32)
SEED = 17


@dataclass
class Case:
    op: str  # "1d forward", "1d vjp", "2d forward", "2d vjp"
    shape: tuple[int, ...]
    dtype: type
    data: str
    lam: float
    path: str | None = None  # 2D: "fused" or "multi"
    iters: int | None = None  # 2D: fixed iterations, or None for the default tolerance
    key: str = field(init=False)

    def __post_init__(self):
        parts = [self.op, str(self.shape), np.dtype(self.dtype).name, f"{self.data} lam={self.lam}"]
        if self.path:
            parts.append(self.path)
            parts.append(f"{self.iters} it" if self.iters else "default gap")
        self.key = " ".join(parts)


def cases(cpu: bool = False) -> list[Case]:
    out = []
    for shape in CPU_SHAPES_1D if cpu else SHAPES_1D:
        for dtype in DTYPES_1D:
            for data, lam in DATA_1D:
                for op in ("1d forward", "1d vjp"):
                    out.append(Case(op, shape, dtype, data, lam))
    for shape in CPU_SHAPES_2D if cpu else SHAPES_2D:
        for path in ("fused", "multi"):
            if path == "fused" and max(shape[-2:]) > tv2d.FUSED_MAX_N:
                continue  # the wrapper has no fused kernel for it
            for iters in ITERS_2D:
                for op in ("2d forward", "2d vjp"):
                    if op == "2d vjp" and iters is None:
                        continue  # the backward replays the forward's counts: 10 is the case
                    out.append(Case(op, shape, np.float32, "normal", LAM_2D, path, iters))
    return out


def make_input(case: Case, xp):
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal(case.shape)
    if case.data == "walk":
        x = np.cumsum(x, axis=-1)
    g = rng.standard_normal(case.shape)
    return xp.asarray(x.astype(case.dtype)), xp.asarray(g.astype(case.dtype))


def call(case: Case, x, g):
    """A closure that runs the case through the public API once."""
    if case.op.startswith("1d"):
        if case.op == "1d forward":
            return lambda: cupytv.prox_tv1d(x, case.lam)
        y = cupytv.prox_tv1d(x, case.lam)
        return lambda: cupytv.prox_tv1d_vjp(None, case.lam, g, -1, y=y)
    opts = {"max_iter": case.iters, "tol": 0.0} if case.iters else {}
    if case.op == "2d forward":
        return lambda: _tv2d_forward(x, case, opts)
    _, info = _tv2d_forward(x, case, opts, info=True)
    return lambda: _tv2d_vjp(x, g, case, info.n_iter)


def _tv2d_forward(x, case, opts, info=False):
    pb = tv2d._Problem(x, case.lam, (-2, -1), opts.get("max_iter", tv2d.DEFAULT_MAX_ITER),
                       opts.get("tol", tv2d.DEFAULT_TOL), "auto")  # fmt: skip
    if case.path == "fused" and pb.fused() is not None:
        # The public call picks the fused kernel itself for these slices.
        return cupytv.prox_tv2d(x, case.lam, return_info=info, **opts)
    z = tv2d._forward(pb, case.path)  # the multi-launch path, forced (what larger slices get)
    return (z, tv2d.ProxInfo(pb.batch(pb.n_iter), pb.gap, pb.gap <= pb.tol)) if info else z


def _tv2d_vjp(x, g, case, n_iter):
    if case.path == "fused":
        return cupytv.prox_tv2d_vjp(x, case.lam, g, n_iter=n_iter)
    pb = tv2d._Problem(x, case.lam, (-2, -1), 1, 0.0, "auto")
    counts, n_max = pb.counts_from(n_iter)
    return tv2d._backward(pb, pb.flat(g), counts, "multi", n_max)


def moved_bytes(case: Case) -> int:
    """Bytes the case must read and write at the least: x in, y out (+ g in for a VJP)."""
    nbytes = int(np.prod(case.shape)) * np.dtype(case.dtype).itemsize
    return nbytes * (3 if "vjp" in case.op else 2)


class Recorder:
    """Wraps ``_loader.launch``: keeps every launch and a copy of each array it touches, taken
    (in stream order) before the first launch that uses it, so the sequence can be replayed."""

    def __init__(self, xp):
        self.xp, self.launches, self.saved = xp, [], {}
        self.real = _loader.launch

    def __call__(self, stem, name, grid, block, args, shared_mem=0):
        for a in args:
            # Read-only and broadcast views are inputs the kernels never write.
            writable = getattr(a, "flags", None) and a.flags.c_contiguous
            writable = writable and getattr(a.flags, "writeable", True)
            if isinstance(a, self.xp.ndarray) and writable and id(a) not in self.saved:
                self.saved[id(a)] = (a, a.copy())
        self.launches.append((stem, name, grid, block, args, shared_mem))
        self.real(stem, name, grid, block, args, shared_mem)

    def restore(self):
        for a, initial in self.saved.values():
            a[...] = initial

    def replay(self):
        for stem, name, grid, block, args, shared in self.launches:
            self.real(stem, name, grid, block, args, shared)


class Timer:
    """CUDA events on a GPU (the stream's time between two marks), wall clock on the CPU."""

    def __init__(self, xp):
        self.gpu = xp is not np
        if self.gpu:
            import cupy

            self.cupy = cupy

    def time(self, fn, before=None, reps=REPS) -> list[float]:
        out = []
        for _ in range(reps):
            if before:
                before()
            if self.gpu:
                start, end = self.cupy.cuda.Event(), self.cupy.cuda.Event()
                start.record()
                fn()
                end.record()
                end.synchronize()
                out.append(self.cupy.cuda.get_elapsed_time(start, end) * 1e-3)
            else:
                t = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t)
        return out


def measure(case: Case, xp, reps: int, proxy) -> dict:
    x, g = make_input(case, xp)
    timer = Timer(xp)
    fn = call(case, x, g)
    fn()  # compile and warm up
    rec = Recorder(xp)
    with _patched(rec):
        fn()
    wrapper = timer.time(fn, reps=reps)
    raw = timer.time(rec.replay, before=rec.restore, reps=reps)
    src = xp.zeros(moved_bytes(case) // 2, dtype=np.uint8)
    dst = xp.empty_like(src)
    if xp is np:
        floor = timer.time(lambda: np.copyto(dst, src), reps=reps)
    else:  # cudaMemcpyAsync, device to device
        floor = timer.time(lambda: dst.data.copy_from_device_async(src.data, src.nbytes), reps=reps)
    row = {
        "case": case.key,
        "kernels": sorted({name for _, name, *_ in rec.launches}),
        "launches": len(rec.launches),
        "raw_ms": statistics.median(raw) * 1e3,
        "wrapper_ms": statistics.median(wrapper) * 1e3,
        "floor_ms": statistics.median(floor) * 1e3,
        "reps": reps,
        "bytes": moved_bytes(case),
    }
    row["proxy_ms"] = proxy_prediction(proxy, case)
    return row


@contextlib.contextmanager
def _patched(recorder):
    saved = _loader.launch
    _loader.launch = recorder
    try:
        yield
    finally:
        _loader.launch = saved


def load_proxy(path: Path = PROXY_JSON):
    """The proxy's records (benchmarks/results/gpu_proxy.json, written by ``python -m cupytv bench
    --suite gpu_proxy``), or [] when it is absent or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if isinstance(data, dict):
        data = next((v for v in data.values() if isinstance(v, list)), [])
    return [r for r in data if isinstance(r, dict)]


def proxy_prediction(records, case: Case):
    """The proxy's predicted time (ms) for this case, or None where it predicts none (the 2D
    VJPs). Records are benchmarks/results/gpu_proxy.json's ``cases`` (its schema is in
    benchmarks/NOTES.md, "GPU proxy"): shape, dtype, ``predicted_us``, and a ``case`` label such
    as "forward 262144x32 N(0,1) lam 0.1", "vjp 4096x1024 walk lam 0.3", "fused 128x64x32x32
    fmap 10 it" or "multi 3x512x512 image gap"."""
    family, direction = case.op.split()
    for r in records:
        label = str(r.get("case", ""))
        if list(r.get("shape", ())) != list(case.shape):
            continue
        if r.get("dtype") != np.dtype(case.dtype).name or "predicted_us" not in r:
            continue
        if family == "1d":
            data = "walk" if case.data == "walk" else "N(0,1)"
            if not label.startswith(f"{direction} ") or f"{data} lam {case.lam:g}" not in label:
                continue
        else:
            steps = f"{case.iters} it" if case.iters else "gap"
            if direction != "forward" or not label.startswith(f"{case.path} "):
                continue
            if not label.endswith(steps):
                continue
        return float(r["predicted_us"]) * 1e-3
    return None


def ulp_diff(a: np.ndarray, b: np.ndarray) -> int:
    """Max distance in units in the last place (ordered integer representations)."""
    itype = {4: np.int32, 8: np.int64}[a.dtype.itemsize]
    ai, bi = (v.view(itype).astype(np.int64) for v in (a, b))
    sign = np.int64(np.iinfo(itype).min)
    ai = np.where(ai < 0, sign - ai, ai)
    bi = np.where(bi < 0, sign - bi, bi)
    return int(np.max(np.abs(ai - bi))) if a.size else 0


def ulp_rows(xp) -> list[dict]:
    rows = []
    subset = [Case(op, ULP_SHAPE_1D, dt, data, lam) for op in ("1d forward", "1d vjp")
              for dt in DTYPES_1D for data, lam in (("normal", 0.3), ("walk", 0.3))]  # fmt: skip
    subset += [Case(op, ULP_SHAPE_2D, np.float32, "normal", LAM_2D, path, 10)
               for op in ("2d forward", "2d vjp") for path in ("fused", "multi")]  # fmt: skip
    for case in subset:
        results = []
        for mod in (xp, np):
            x, g = make_input(case, mod)
            out = call(case, x, g)()
            out = out[0] if isinstance(out, tuple) else out
            results.append(np.asarray(out.get() if hasattr(out, "get") else out))
        rows.append({"case": case.key, "max_ulp": ulp_diff(*results),
                     "max_abs": float(np.max(np.abs(results[0] - results[1])))})  # fmt: skip
    return rows


def profile(xp) -> None:
    """One call of each main case, for ncu (which filters the kernels by name)."""
    for case in cases():
        if case.data == "walk" or case.dtype is np.float64 or case.iters is None:
            continue
        if case.op.startswith("1d") and case.lam == 0.3:
            continue
        x, g = make_input(case, xp)
        if case.path == "multi":
            case.iters = 2  # each iteration profiles the same two kernels again
        call(case, x, g)()
    if xp is not np:
        xp.cuda.runtime.deviceSynchronize()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--timings", type=Path, metavar="JSON")
    mode.add_argument("--ulp", type=Path, metavar="JSON")
    mode.add_argument("--profile", action="store_true")
    mode.add_argument("--list", action="store_true")
    parser.add_argument("--cpu", action="store_true", help="NumPy arrays, tiny shapes (CI)")
    parser.add_argument("--only", default="", help="cases whose key contains this text")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(c.key for c in cases(args.cpu)))
        return 0
    if args.cpu:
        xp = np
    else:
        import cupy as xp
    if args.profile:
        profile(xp)
        return 0
    if args.ulp:
        rows = ulp_rows(xp)
        args.ulp.write_text(json.dumps(rows, indent=1) + "\n")
        for r in rows:
            print(f"{r['case']:<60} max ulp {r['max_ulp']:>6}  max |d| {r['max_abs']:.3g}")
        return 0
    proxy = load_proxy()
    rows = []
    reps = 3 if args.cpu else REPS
    for case in cases(args.cpu):
        if args.only not in case.key:
            continue
        try:
            row = measure(case, xp, reps, proxy)
        except Exception as exc:  # one failing case is a finding; the others still run
            rows.append({"case": case.key, "error": f"{type(exc).__name__}: {exc}"})
            print(f"{case.key:<64} FAILED {rows[-1]['error']}", flush=True)
            continue
        rows.append(row)
        pred = f"{row['proxy_ms']:.3f}" if row["proxy_ms"] is not None else "-"
        print(f"{case.key:<64} raw {row['raw_ms']:8.3f}  wrapper {row['wrapper_ms']:8.3f}  "
              f"floor {row['floor_ms']:7.3f}  proxy {pred} ms", flush=True)  # fmt: skip
        # Written after every case: a step cut short by its timeout keeps what it measured.
        args.timings.write_text(json.dumps({"proxy_file": PROXY_JSON.is_file(), "rows": rows},
                                           indent=1) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
