"""How fast the PyTorch TV layer is: TV2d forward and forward + backward, CPU and CUDA.

Not a test: prints a table and writes JSON. The issue's case: a TV2d layer (one learnable weight
per channel, lam 0.1, TV-Smooth) on a (128, 64, 32, 32) float32 feature map x ~ N(0, 1)
(seeded), each method at a fixed 10 iterations (tol = 0, the seed's fixed-iteration layer) and to
a certified relative gap of 1e-3 (the default). Forward: `layer(x)`; forward + backward:
`layer(x).square().mean().backward()` (gradients to x and to the layer's weight). CPU rows use
all OpenMP threads; CUDA rows (when a device is usable) synchronise before and after each call
and take the median of REPS. --quick: (16, 64, 32, 32) on the CPU (the GPU keeps the issue's size).

Usage: python benchmarks/bench_torch.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if (ROOT / "pyproject.toml").is_file():  # a checkout: its cupytv (installed: the wheel's)
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_tv1d import QUICK_REPS, REPS, cpu_model  # noqa: E402

SHAPE, QUICK_SHAPE = (128, 64, 32, 32), (16, 64, 32, 32)
LAM = 0.1
SEED = 0
SETTINGS = (("fixed 10", {"max_iter": 10, "tol": 0.0}), ("tol 1e-3", {}))


def median_seconds(fn, reps: int, sync) -> tuple[float, list[float]]:
    fn()  # warm-up (kernel compilation, allocator)
    times = []
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller batch, fewer repetitions")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/bench_torch.json")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print("note: torch is not installed; nothing to measure")
        return
    from cupytv import tv2d
    from cupytv.torch import TV2d

    reps = QUICK_REPS if args.quick else REPS
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    else:
        print("note: no CUDA device; CUDA rows skipped")
    rows = []
    print(f"TV2d on float32 feature maps, lam {LAM} per channel; {cpu_model()}")
    header = (
        f"{'device':<6} {'shape':<18} {'method':<12} {'setting':<9} {'forward ms':>11} "
        f"{'fwd+bwd ms':>11}"
    )
    print(header)
    for device in devices:
        # The size on GPUs always; --quick shrinks only the CPU case.
        shape = QUICK_SHAPE if args.quick and device.type == "cpu" else SHAPE
        x = torch.randn(shape, generator=torch.Generator().manual_seed(SEED)).to(device)

        def sync(device=device):
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        for method in tv2d.METHODS:
            for setting, options in SETTINGS:
                layer = TV2d(LAM, num_channels=shape[1], method=method, **options).to(device)
                xg = x.clone().requires_grad_()

                def forward(layer=layer, x=x):
                    with torch.no_grad():
                        layer(x)

                def both(layer=layer, xg=xg):
                    layer(xg).square().mean().backward()

                fwd, fwd_all = median_seconds(forward, reps, sync)
                fb, fb_all = median_seconds(both, reps, sync)
                row = {
                    "device": str(device),
                    "shape": list(shape),
                    "method": method,
                    "setting": setting,
                    "forward_s": fwd,
                    "forward_backward_s": fb,
                    "forward_all_s": fwd_all,
                    "forward_backward_all_s": fb_all,
                }
                rows.append(row)
                print(
                    f"{device.type:<6} {tuple(shape)!s:<18} {method:<12} {setting:<9} "
                    f"{fwd * 1e3:>11.2f} "
                    f"{fb * 1e3:>11.2f}"
                )
    report = {
        "benchmark": "bench_torch",
        "quick": args.quick,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.node(),
        "cpu": cpu_model(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
        "lam": LAM,
        "results": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
