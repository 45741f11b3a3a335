"""How much memory each op holds at its peak, as a multiple of its input's bytes.

Not a test: prints a table and writes JSON. Each case calls one op once on x ~ N(0, 1) (seeded),
lam = 0.1, after a warm-up call on the same input (kernel compilation, caches), and reports the
most bytes held at once during the call beyond what existed before it (so the output counts),
divided by x's bytes. Forward cases hold x; backward cases hold what a framework saved (y for
the 1D VJP, x for the others) and the upstream gradient g, and the column counts only what the
VJP allocates (grad_x included). Meters (cupytv._memory):

  host   tracemalloc: every NumPy allocation, touched or not; not torch's own allocations.
  rss    resident-set high-water (Linux VmHWM): every touched page, torch's included; the
         script re-runs itself with MALLOC_MMAP_THRESHOLD_ set so freed blocks leave the set.
  gpu    CuPy's default memory pool (the same cases on CuPy arrays), when a GPU is usable.

Targets (issue 16): forward <= 1.25 (the output plus a quarter of the input), backward <= 3 (the
gradient plus twice the input). Sizes: 2**22 elements per input (16 MiB in float32), large
enough that fixed costs (per-slice scalars, kernel arguments) are below 1% of the input.

Chunks (cupytv._chunks) hold at least MIN_CHUNK_ELEMENTS samples, so at these sizes the
workspace is a quarter of the input's instead of the asymptotic eighth; --min-chunk 16384 shows
what inputs of 2**26 samples and more get, at this size.

Usage: python benchmarks/bench_memory.py [--quick] [--json PATH] [--ops NAME,...]
       [--min-chunk ELEMENTS]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if (ROOT / "pyproject.toml").is_file():  # a checkout: its cupytv (installed: the wheel's)
    sys.path.insert(0, str(ROOT))

import cupytv  # noqa: E402
from cupytv import _chunks, _memory  # noqa: E402
from cupytv._device import gpu_unavailable_reason  # noqa: E402
from cupytv.tvnd import prox_tv, prox_tv_vjp  # noqa: E402

LAM = 0.1
SEED = 0
DTYPES = (np.float32, np.float64)
FORWARD_TARGET = 1.25  # x bytes: the output plus a quarter of the input
BACKWARD_TARGET = 3.0  # x bytes: the gradient plus twice the input
# Shapes of 2**22 elements (--quick: 2**20): 1D fibers of 256 (longer than the 64 up to which
# Condat needs no workspace), 32 x 32 slices (the fused 2D kernel for both methods and dtypes;
# 64 x 64 fits it only in float32 without momentum), 256 x 256 slices (the multi-launch path),
# 32^3 volumes.
SHAPES = {"1d": (16384, 256), "fused": (4096, 32, 32), "multi": (64, 256, 256),
          "3d": (128, 32, 32, 32)}  # fmt: skip
QUICK_SHAPES = {"1d": (4096, 256), "fused": (1024, 32, 32), "multi": (16, 256, 256),
                "3d": (32, 32, 32, 32)}  # fmt: skip
ND_AXES = (1, 2, 3)


class Case(NamedTuple):
    op: str
    shape: str  # a key of SHAPES
    direction: str  # "forward" or "backward"
    # (x, g, xp) -> the call to measure, its setup (forward runs, saved tensors) done outside it.
    prepare: Callable


def _tv1d_fwd(x, g, xp):
    return lambda: cupytv.prox_tv1d(x, LAM)


def _tv1d_bwd(x, g, xp):
    y = cupytv.prox_tv1d(x, LAM)
    return lambda: cupytv.prox_tv1d_vjp(None, LAM, g, y=y)


def _tv2d_fwd(method):
    def prepare(x, g, xp):
        return lambda: cupytv.prox_tv2d(x, LAM, method=method)

    return prepare


def _tv2d_bwd(x, g, xp):
    _, info = cupytv.prox_tv2d(x, LAM, return_info=True)
    return lambda: cupytv.prox_tv2d_vjp(x, LAM, g, n_iter=info.n_iter)


def _tvnd_fwd(x, g, xp):
    return lambda: prox_tv(x, LAM, axes=ND_AXES)


def _tvnd_bwd(x, g, xp):
    _, info = prox_tv(x, LAM, axes=ND_AXES, return_info=True)
    return lambda: prox_tv_vjp(x, LAM, g, axes=ND_AXES, n_iter=info.n_iter)


def _torch(op_name, backward):
    def prepare(x, g, xp):
        import torch

        import cupytv.torch as ct

        op = getattr(ct, op_name)
        kwargs = {"axes": ND_AXES} if op_name == "prox_tv" else {}
        xt = torch.from_numpy(x) if xp is np else torch.from_dlpack(x)
        gt = torch.from_numpy(g) if xp is np else torch.from_dlpack(g)
        if not backward:
            return lambda: op(xt, LAM, **kwargs)
        xt.requires_grad_()
        # autograd.grad, not .backward(): nothing accumulates in x.grad between the calls.
        return lambda: torch.autograd.grad(op(xt, LAM, **kwargs), xt, gt)

    return prepare


CASES = (
    Case("prox_tv1d", "1d", "forward", _tv1d_fwd),
    Case("prox_tv1d_vjp", "1d", "backward", _tv1d_bwd),
    Case("prox_tv2d accelerated", "fused", "forward", _tv2d_fwd("accelerated")),
    Case("prox_tv2d dykstra", "fused", "forward", _tv2d_fwd("dykstra")),
    Case("prox_tv2d accelerated", "multi", "forward", _tv2d_fwd("accelerated")),
    Case("prox_tv2d dykstra", "multi", "forward", _tv2d_fwd("dykstra")),
    Case("prox_tv2d_vjp", "fused", "backward", _tv2d_bwd),
    Case("prox_tv2d_vjp", "multi", "backward", _tv2d_bwd),
    Case("prox_tv (3 axes)", "3d", "forward", _tvnd_fwd),
    Case("prox_tv_vjp (3 axes)", "3d", "backward", _tvnd_bwd),
    Case("torch prox_tv1d", "1d", "forward", _torch("prox_tv1d", False)),
    Case("torch prox_tv1d", "1d", "fwd+bwd", _torch("prox_tv1d", True)),
    Case("torch prox_tv2d", "multi", "forward", _torch("prox_tv2d", False)),
    Case("torch prox_tv2d", "multi", "fwd+bwd", _torch("prox_tv2d", True)),
    Case("torch prox_tv (3 axes)", "3d", "forward", _torch("prox_tv", False)),
    Case("torch prox_tv (3 axes)", "3d", "fwd+bwd", _torch("prox_tv", True)),
)


def measure(case: Case, shape, dtype, xp, meters) -> dict:
    rng = np.random.default_rng(SEED)
    x = xp.asarray(rng.standard_normal(shape).astype(dtype))
    g = xp.asarray(rng.standard_normal(shape).astype(dtype))
    call = case.prepare(x, g, xp)
    call()  # warm-up: kernel compilation and loading are not the op's memory
    ratios = {}
    for name, meter in meters.items():
        result, peak = meter(call)
        del result
        ratios[name] = peak / x.nbytes
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2**20 elements per input")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/bench_memory.json")
    parser.add_argument("--ops", default="", help="comma-separated substrings of op names")
    parser.add_argument(
        "--min-chunk",
        type=int,
        default=None,
        metavar="ELEMENTS",
        help="override cupytv._chunks.MIN_CHUNK_ELEMENTS (the host's smallest chunk): e.g. "
        "16384 shows at 2**22 samples what larger inputs get",
    )
    parser.add_argument("--no-reexec", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if _memory.rss_available() is not None and os.name == "posix" and not args.no_reexec:
        # The resident-set meter needs malloc's threshold fixed from the process's start.
        env = {**os.environ, **_memory.RSS_ENV}
        os.execve(sys.executable, [sys.executable, *sys.argv, "--no-reexec"], env)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.min_chunk is not None:
        _chunks.MIN_CHUNK_ELEMENTS = args.min_chunk
    wanted = [w for w in args.ops.split(",") if w]
    cases = [c for c in CASES if not wanted or any(w in c.op for w in wanted)]
    try:
        import torch  # noqa: F401
    except ImportError:
        print("note: torch is not installed; torch rows skipped")
        cases = [c for c in cases if not c.op.startswith("torch")]
    meters = {"host": _memory.host_peak}
    if _memory.rss_available() is None:
        meters["rss"] = _memory.rss_peak
    else:
        print(f"note: no rss column: {_memory.rss_available()}")
    devices = [("host", np, meters)]
    reason = gpu_unavailable_reason()
    if reason is None:
        import cupy

        devices.append(("gpu", cupy, {"gpu": _memory.gpu_peak}))
    else:
        print(f"note: no gpu column: {reason}")
    print(f"peak bytes held during one call / input bytes; targets: forward <= {FORWARD_TARGET}, "
          f"backward <= {BACKWARD_TARGET}")  # fmt: skip
    columns = [f"{m} {np.dtype(d).name}" for _, _, ms in devices for m in ms for d in DTYPES]
    print(f"{'op':<24} {'shape':<17} {'direction':<9} " + " ".join(f"{c:>12}" for c in columns))
    rows = []
    for case in cases:
        shape = shapes[case.shape]
        row = {"op": case.op, "path": case.shape, "shape": list(shape),
               "direction": case.direction, "peak_over_input": {}}  # fmt: skip
        cells = []
        for _, xp, ms in devices:
            for dtype in DTYPES:
                ratios = measure(case, shape, dtype, xp, ms)
                for meter, value in ratios.items():
                    row["peak_over_input"][f"{meter} {np.dtype(dtype).name}"] = round(value, 3)
        for column in columns:
            value = row["peak_over_input"].get(column)
            cells.append(f"{value:>12.2f}" if value is not None else f"{'-':>12}")
        rows.append(row)
        print(f"{case.op:<24} {tuple(shape)!s:<17} {case.direction:<9} " + " ".join(cells))
    report = {
        "benchmark": "bench_memory",
        "quick": args.quick,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "versions": {"python": platform.python_version(), "numpy": np.__version__},
        "lam": LAM,
        "min_chunk_elements": _chunks.MIN_CHUNK_ELEMENTS,
        "targets": {"forward": FORWARD_TARGET, "backward": BACKWARD_TARGET},
        "results": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
