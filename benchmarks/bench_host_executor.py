"""How fast the host executor runs kernels, against the same loops written as plain C.

Not a test: prints a table and writes JSON. Each kernel case has a plain-C twin, compiled by the
same compiler with the same optimisation flags and parallelised over the same OpenMP threads; the
ratio executor / plain C is the executor's overhead.

Cases:
  axpy         one CUDA thread per element, no barrier: the worst case for per-thread overhead.
  row_scan     one CUDA thread per row, a sequential loop along it (the shape of a TV-1D solver).
  tile_scan    cuda_src/smoke.cu's scan: ceil(log2 256) = 8 barriers per block, so every thread
               runs as a fiber; its twin is a sequential per-tile cumulative sum.

Usage: python benchmarks/bench_host_executor.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if (ROOT / "pyproject.toml").is_file():  # a checkout: its cupytv (installed: the wheel's)
    sys.path.insert(0, str(ROOT))

from cupytv import _loader  # noqa: E402
from cupytv._host import HostModule  # noqa: E402
from cupytv._host import build as host_build  # noqa: E402

BLOCK = 256

KERNELS = r"""
__global__ void axpy(float a, const float* __restrict__ x, float* __restrict__ y, long long n) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + y[i];
}

__global__ void row_scan(const float* __restrict__ x, float* __restrict__ y, long long rows,
                         long long cols) {
  const long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  float acc = 0.0f;
  for (long long c = 0; c < cols; ++c) {
    acc += x[r * cols + c];
    y[r * cols + c] = acc;
  }
}
"""

PLAIN_C = r"""
#include <omp.h>
#define EXPORT __attribute__((visibility("default")))
extern "C" {
EXPORT void set_threads(int n) { omp_set_num_threads(n); }
EXPORT void axpy(float a, const float* __restrict__ x, float* __restrict__ y, long long n) {
#pragma omp parallel for schedule(static)
  for (long long i = 0; i < n; ++i) y[i] = a * x[i] + y[i];
}
EXPORT void row_scan(const float* __restrict__ x, float* __restrict__ y, long long rows,
                     long long cols) {
#pragma omp parallel for schedule(static)
  for (long long r = 0; r < rows; ++r) {
    float acc = 0.0f;
    for (long long c = 0; c < cols; ++c) {
      acc += x[r * cols + c];
      y[r * cols + c] = acc;
    }
  }
}
EXPORT void tile_scan(const float* __restrict__ x, float* __restrict__ y, long long n,
                      long long tile) {
  const long long tiles = (n + tile - 1) / tile;
#pragma omp parallel for schedule(static)
  for (long long t = 0; t < tiles; ++t) {
    float acc = 0.0f;
    const long long end = (t + 1) * tile < n ? (t + 1) * tile : n;
    for (long long i = t * tile; i < end; ++i) {
      acc += x[i];
      y[i] = acc;
    }
  }
}
}
"""


def build_plain_c(workdir: Path) -> ctypes.CDLL:
    """The baseline, with the executor's optimisation flags (sanitizers never apply here)."""
    src = workdir / "plain.cpp"
    src.write_text(PLAIN_C)
    out = workdir / "plain.so"
    subprocess.run(
        # The executor runs blocks on its own thread pool; the baseline uses OpenMP.
        [
            *host_build.find_compiler(),
            *host_build.compile_flags(tuple(host_build.find_compiler())),
            "-fopenmp",
            str(src),
            "-o",
            str(out),
        ],
        check=True,
    )
    lib = ctypes.CDLL(str(out))
    f32p = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
    lib.set_threads.argtypes = (ctypes.c_int,)
    lib.axpy.argtypes = (ctypes.c_float, f32p, f32p, ctypes.c_longlong)
    lib.row_scan.argtypes = (f32p, f32p, ctypes.c_longlong, ctypes.c_longlong)
    lib.tile_scan.argtypes = (f32p, f32p, ctypes.c_longlong, ctypes.c_longlong)
    return lib


def median_seconds(fn, reps: int) -> float:
    fn()  # warm-up: first touch of pages, thread-pool start, stack allocation
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cases(quick: bool):
    n = 2**20 if quick else 2**24
    rows, cols = (2048, 256) if quick else (16384, 1024)
    scan_n = 2**18 if quick else 2**22
    module = HostModule(KERNELS, ("axpy", "row_scan"))
    rng = np.random.default_rng(0)

    x, y = rng.standard_normal(n, dtype=np.float32), np.zeros(n, np.float32)
    a = np.float32(0.5)
    yield (
        "axpy",
        f"n={n}",
        lambda: module.get_function("axpy")(
            ((n + BLOCK - 1) // BLOCK,), (BLOCK,), (a, x, y, np.int64(n))
        ),
        lambda lib: lib.axpy(a, x, y, n),
    )

    xr, yr = rng.standard_normal(rows * cols, dtype=np.float32), np.zeros(rows * cols, np.float32)
    yield (
        "row_scan",
        f"{rows}x{cols}",
        lambda: module.get_function("row_scan")(
            ((rows + BLOCK - 1) // BLOCK,), (BLOCK,), (xr, yr, np.int64(rows), np.int64(cols))
        ),
        lambda lib: lib.row_scan(xr, yr, rows, cols),
    )

    xs, ys = rng.standard_normal(scan_n, dtype=np.float32), np.zeros(scan_n, np.float32)
    scan = _loader.get_kernel("smoke", "smoke_tile_scan<float>", xs)
    yield (
        "tile_scan",
        f"n={scan_n}",
        lambda: scan(((scan_n + BLOCK - 1) // BLOCK,), (BLOCK,), (xs, ys, np.int64(scan_n))),
        lambda lib: lib.tile_scan(xs, ys, scan_n, BLOCK),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "results" / "bench_host_executor.json"
    )
    args = parser.parse_args()
    if host_build.sanitize_enabled():
        sys.exit("unset CUPYTV_HOST_SANITIZE: sanitized builds are not what this measures")
    reps = 3 if args.quick else 7
    all_threads = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        lib = build_plain_c(Path(tmp))
        for name, size, executor, plain in cases(args.quick):
            for threads in sorted({1, all_threads}):
                lib.set_threads(threads)  # one libgomp per process: this sets both sides
                t_exec = median_seconds(executor, reps)
                t_plain = median_seconds(lambda plain=plain: plain(lib), reps)
                rows.append(
                    {
                        "case": name,
                        "size": size,
                        "threads": threads,
                        "executor_s": t_exec,
                        "plain_c_s": t_plain,
                        "ratio": t_exec / t_plain,
                    }
                )
    print(
        f"{'case':<10} {'size':<12} {'threads':>7} {'executor ms':>12} {'plain C ms':>11} "
        f"{'ratio':>6}"
    )
    for r in rows:
        print(
            f"{r['case']:<10} {r['size']:<12} {r['threads']:>7} {r['executor_s'] * 1e3:>12.3f} "
            f"{r['plain_c_s'] * 1e3:>11.3f} {r['ratio']:>6.2f}"
        )
    report = {
        "benchmark": "host_executor",
        "quick": args.quick,
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": all_threads,
        "compiler": host_build.find_compiler(),
        "flags": list(host_build.compile_flags(tuple(host_build.find_compiler()))),
        "block": BLOCK,
        "results": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
