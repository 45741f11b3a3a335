"""Host cost of one call: every wrapper with its kernel launches stubbed out (issue 17, item 5).

Not a test: prints a table and writes JSON. What a call costs the host before and after its
launches (validation, the weight's preparation, allocation, shape work) is what bounds small
GPU calls and adds to every large one; the target is <= 25 us per call at any size, for a scalar
and a per-channel weight. Launches are replaced by a no-op (``cupytv._loader.launch``), so the
kernels' time and the work they would feed back (iteration counts, certificates) are absent:
2D cases run a fixed 10 iterations (``tol=0``). NumPy arrays on the CPU; work the wrappers do in
array operations (the VJP's sum of per-fiber weight gradients, the 2D gap's reductions) runs here
on the CPU as it would on the GPU as kernels.

Usage: python benchmarks/bench_host_cost.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if (ROOT / "pyproject.toml").is_file():  # a checkout: its cupytv (installed: the wheel's)
    sys.path.insert(0, str(ROOT))

import cupytv  # noqa: E402
from cupytv import _chunks, _loader  # noqa: E402

TARGET_US = 25.0
FIXED = {"max_iter": 10, "tol": 0.0}
#: (name, 1D shape (N, C, L), 2D shape (N, C, H, W)): the issue's sizes and a small one.
SIZES = (("small", (8, 4, 32), (2, 4, 32, 32)), ("large", (8192, 32, 32), (128, 64, 32, 32)))
ROUNDS, CALLS, QUICK_CALLS = 5, 50, 10


def per_call_us(fn, calls: int) -> float:
    """Best of ROUNDS of ``calls`` back-to-back calls, per call (the machine's noise is upward)."""
    fn()
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def cases(shape1, shape2):
    """(op, weight, callable) for the array API and, when importable, the torch ops."""
    x1, x2 = np.zeros(shape1, np.float32), np.zeros(shape2, np.float32)
    lams = {
        "scalar": (0.1, 0.1),
        "per-channel": (
            np.full((1, shape1[1], 1), 0.1, np.float32),
            np.full((1, shape2[1], 1, 1), 0.1, np.float32),
        ),
    }
    out = []
    for kind, (l1, l2) in lams.items():
        out += [
            ("prox_tv1d", kind, lambda l1=l1: cupytv.prox_tv1d(x1, l1)),
            ("prox_tv1d_vjp", kind, lambda l1=l1: cupytv.prox_tv1d_vjp(None, l1, x1, y=x1)),
            ("prox_tv2d", kind, lambda l2=l2: cupytv.prox_tv2d(x2, l2, **FIXED)),
            ("prox_tv2d_vjp", kind, lambda l2=l2: cupytv.prox_tv2d_vjp(x2, l2, x2, n_iter=10)),
        ]
    try:
        import torch

        from cupytv.torch import prox_tv1d, prox_tv2d
    except ImportError:
        return out
    t1, t2 = torch.zeros(shape1), torch.zeros(shape2)
    # Training: x requires grad, so the call records its autograd node (the forward only).
    g1, g2 = t1.clone().requires_grad_(), t2.clone().requires_grad_()
    for kind, (l1, l2) in lams.items():
        w1, w2 = (torch.as_tensor(v) for v in (l1, l2))
        out += [
            ("torch prox_tv1d", kind, lambda w1=w1: prox_tv1d(t1, w1)),
            ("torch prox_tv1d (grad)", kind, lambda w1=w1: prox_tv1d(g1, w1)),
            ("torch prox_tv2d", kind, lambda w2=w2: prox_tv2d(t2, w2, **FIXED)),
            ("torch prox_tv2d (grad)", kind, lambda w2=w2: prox_tv2d(g2, w2, **FIXED)),
        ]
    return out


def allocation_us(op: str, shape, calls: int) -> float:
    """What allocating and freeing the call's outputs costs NumPy (the VJPs: grad_x too): large
    arrays come from mmap and go back with munmap, ~10 us that a GPU's memory pool does not
    spend. Shown beside each row, so the wrappers' own cost can be read off."""
    arrays = 1 if "vjp" not in op else 2
    dtype = np.float32
    return per_call_us(lambda: [np.empty(shape, dtype) for _ in range(arrays)], calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls per round")
    parser.add_argument(
        "--host-chunks",
        action="store_true",
        help="cut large inputs into the host executor's chunks (2**20 samples) rather than a "
        "GPU's (2**25): each chunk costs its own wrapper work",
    )
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks/results/bench_host_cost.json"
    )
    args = parser.parse_args()
    calls = QUICK_CALLS if args.quick else CALLS
    real_launch = _loader.launch
    # The target is the host cost of a GPU call, so inputs are chunked as on a GPU (the NumPy
    # arrays here would otherwise get the host executor's smaller chunks; cupytv/_chunks.py).
    real_min = _chunks.MIN_CHUNK_ELEMENTS
    if not args.host_chunks:
        _chunks.MIN_CHUNK_ELEMENTS = _chunks.GPU_MIN_CHUNK_ELEMENTS
    rows = []
    try:
        for size, shape1, shape2 in SIZES:
            for op, kind, fn in cases(shape1, shape2):
                fn()  # with the real kernels once: compile and load before stubbing
                _loader.launch = lambda *a, **k: None
                try:
                    us = per_call_us(fn, calls)
                finally:
                    _loader.launch = real_launch
                shape = shape2 if "2d" in op else shape1
                alloc = allocation_us(op, shape, calls)
                rows.append({"op": op, "lam": kind, "size": size, "shape": list(shape), "us": us,
                             "alloc_us": alloc})  # fmt: skip
    finally:
        _loader.launch = real_launch
        _chunks.MIN_CHUNK_ELEMENTS = real_min
    print(f"{'op':<23} {'lam':<12} {'shape':<18} {'us/call':>8} {'alloc':>6}  "
          f"target <= {TARGET_US:g}")  # fmt: skip
    for r in rows:
        met = "met" if r["us"] <= TARGET_US else "MISSED"
        print(f"{r['op']:<23} {r['lam']:<12} {tuple(r['shape'])!s:<18} {r['us']:>8.1f} "
              f"{r['alloc_us']:>6.1f}  {met}")  # fmt: skip
    report = {
        "benchmark": "host_cost",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "quick": args.quick,
        "chunks": "host" if args.host_chunks else "gpu",
        "target_us": TARGET_US,
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
