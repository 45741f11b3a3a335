"""How fast the 1D TV prox runs: cupytv's kernels, the same algorithm as plain C, and peers.

Not a test: prints a table and writes JSON. Every row solves
    y = argmin_y 1/2 ||y - x||^2 + lam * sum_i |y[i+1] - y[i]|
along the last axis of x ~ N(0, 1) (seeded), lam = 0.1, or computes its VJP, side by side in one
process, on 1 thread and on all cores (--threads). Each implementation is warmed up once, then
timed REPS times in interleaved rounds; the table shows medians. A first call slower than
SLOW_CALL_S is the only one timed (the slow peers: Python loops over 262144 fibers, quadratic
worst cases).

Rows:
  cupytv host    cupytv.prox_tv1d (into a preallocated `out`) and prox_tv1d_vjp on NumPy arrays:
                 the host executor plus the Python wrapper, each method the API offers.
  cupytv gpu     the same on CuPy arrays when a device is usable: CUDA events around
                 GPU_BATCH back-to-back calls on the current stream, per call.
  plain C        tv1d.cu's per-fiber device functions (tv1d_<algorithm>_fiber), compiled from the
                 loader's text with the executor's compiler and flags but without the executor,
                 called from `#pragma omp parallel` + `omp for schedule(dynamic)` over fibers with
                 one scratch buffer per thread. The backward calls the tv1d_vjp kernel's per-fiber
                 body (tv1d::vjp_fiber) once per fiber the same way. executor / plain C is the
                 overhead of the executor and the wrapper. Methods without a per-fiber function
                 (pn) are compared with the first plain C algorithm.
  proxTV         prox_tv.tvgen (batched in C, OpenMP) and prox_tv.tv1_1d per fiber (Python loop),
                 computed in float64 whatever the input dtype.
  TVDCondat2013  Condat's own C code (tvd_2013, tvd_2017, tvd_tautstring), per fiber.
  Condat C       Condat's published C code for his 2013 algorithm (TV1D_denoise in
                 condat_fast_tv.cpp, as proxTV's source distribution ships it; fetched with pip
                 at run time, or --condat-c PATH), compiled with -O3 -march=native and called
                 from an OpenMP loop over fibers (float64 only: the code is double). The issue's
                 CPU anchor: the host executor's forward against it, side by side.
Peers are optional: a missing one is skipped with a note. Each row's output (of its warm-up
call) is checked against the exact reference (cupytv.reference) on its first CHECK_FIBERS
fibers: column max|d|. GB/s = the bytes-moved floor / median: forward reads x and writes y,
backward reads y and g and writes grad_x.
The worst case of Condat 2013 (ramp x[i] = 10 i / N, lam = 1000, N = 2e5) runs on one thread.
With --quick and a GPU, the issue's GPU target case (262144 x 32 float32) is timed on the GPU too.

Usage: python benchmarks/bench_tv1d.py [--quick] [--json PATH] [--methods M,...] [--threads N,...]
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if (ROOT / "pyproject.toml").is_file():  # a checkout: its cupytv (installed: the wheel's)
    sys.path.insert(0, str(ROOT))

import cupytv  # noqa: E402
from cupytv import _loader  # noqa: E402
from cupytv._host import build as host_build  # noqa: E402
from cupytv.bench import progress, progress_done  # noqa: E402
from cupytv.reference import tv1d as reference  # noqa: E402

LAM = 0.1
SEED = 0
SHAPES = ((262144, 32), (4096, 1024), (1, 10**6))
QUICK_SHAPES = ((8192, 32), (128, 1024), (1, 10**5))
DTYPES = (np.float32, np.float64)
RAMP_N, QUICK_RAMP_N = 200_000, 20_000
RAMP_LAM = 1000.0
RAMP_SLOPE = 10.0  # x[i] = RAMP_SLOPE * i / N
REPS, QUICK_REPS = 7, 3
SLOW_CALL_S = 1.0  # a warm-up slower than this is the only call timed
GPU_BATCH = 10  # calls between two CUDA events, so that Python's launch overhead overlaps
CHECK_FIBERS = 256  # fibers checked against the exact reference, per row
PROXTV_METHODS = ("hybridtautstring", "condat", "pn")  # hybridtautstring is proxTV's default
CONDAT_FUNCTIONS = ("tvd_2013", "tvd_2017", "tvd_tautstring")
# The targets (benchmarks, not tests).
TARGET_CASE = ((262144, 32), "float64")
TARGET_RATIO = 1.3
TARGET_CONDAT_RATIO = 1.0  # issue 18: the host executor against Condat's own C code
# Where Condat's C code comes from: proxTV's source distribution (src/condat_fast_tv.cpp, .h).
CONDAT_C_SDIST = "prox-tv==3.1.0"
CONDAT_C_FILES = ("condat_fast_tv.cpp", "condat_fast_tv.h")
TARGET_RAMP_S = 20e-3
TARGET_GPU_CASE = ((262144, 32), "float32")
TARGET_GPU_FORWARD_S = 60e-6
TARGET_GPU_FORWARD_BACKWARD_S = 150e-6

# Per-fiber device functions of tv1d.cu, by algorithm: `tv1d_<algorithm>_fiber(`.
_FIBER = re.compile(r"^__device__\s+void\s+tv1d_(\w+?)_fiber\s*\(", re.MULTILINE)

PLAIN_C = r"""
// Plain C + OpenMP loops over fibers; the kernel text above is tv1d.cu as the loader inlines it.
#define EXPORT extern "C" __attribute__((visibility("default")))

EXPORT void set_threads(int n) { omp_set_num_threads(n); }

// Fibers per dynamically scheduled chunk: 8 chunks per thread, as the executor splits its grid.
// Static scheduling would make every loop wait for its slowest thread, which on a shared machine
// is one the OS has parked for a 4 ms tick. One fiber runs serially, as one block does there.
static long long chunk(long long fibers) {
  const long long c = fibers / (8LL * omp_get_max_threads());
  return c > 0 ? c : 1;
}

"""

# The backward kernel's per-fiber body (tv1d::vjp_fiber, what tv1d_vjp<T, false> runs for each
# thread), called once per fiber from a plain loop: no executor in between.
PLAIN_C_VJP = r"""
template <typename T>
static void vjp_loop(const T* y, const T* g, T* grad_x, T* grad_lam, long long fibers,
                     long long n) {
#pragma omp parallel for schedule(dynamic, chunk(fibers)) if (fibers > 1)
  for (long long f = 0; f < fibers; ++f) {
    grad_lam[f] = tv1d::vjp_fiber<false>(y + f * n, g + f * n, grad_x + f * n, 1, n, 0.0, nullptr);
  }
}
EXPORT void vjp_float(const float* y, const float* g, float* gx, float* gl, long long f,
                      long long n) { vjp_loop(y, g, gx, gl, f, n); }
EXPORT void vjp_double(const double* y, const double* g, double* gx, double* gl, long long f,
                       long long n) { vjp_loop(y, g, gx, gl, f, n); }
"""

# One forward loop per algorithm; scratch is per OpenMP thread, sized by the caller.
PLAIN_C_FORWARD = r"""
template <typename T>
static void forward_{algo}(const T* x, T* y, long long fibers, long long n, T lam,
                          long long scratch_per_fiber) {{
#pragma omp parallel if (fibers > 1)
  {{
    // Uninitialised, as the wrapper's np.empty: untouched pages cost nothing.
    const std::unique_ptr<T[]> scratch(new T[scratch_per_fiber > 0 ? scratch_per_fiber : 1]);
#pragma omp for schedule(dynamic, chunk(fibers))
    for (long long f = 0; f < fibers; ++f)
      tv1d_{algo}_fiber<T>(x + f * n, 1, y + f * n, 1, n, lam, scratch.get());
  }}
}}
EXPORT void forward_{algo}_float(const float* x, float* y, long long f, long long n, float lam,
                                 long long s) {{ forward_{algo}(x, y, f, n, lam, s); }}
EXPORT void forward_{algo}_double(const double* x, double* y, long long f, long long n,
                                  double lam, long long s) {{ forward_{algo}(x, y, f, n, lam, s); }}
"""

# The loop around Condat's TV1D_denoise (ours: his file is compiled as he published it).
CONDAT_C_DRIVER = r"""
#include <omp.h>
extern "C" void TV1D_denoise(double* input, double* output, const int width, const double lambda);
#define EXPORT extern "C" __attribute__((visibility("default")))
EXPORT void condat_set_threads(int n) { omp_set_num_threads(n); }
EXPORT void condat_forward(const double* x, double* y, long long fibers, long long n,
                           double lam) {
  const long long c = fibers / (8LL * omp_get_max_threads());  // as PLAIN_C's chunk()
#pragma omp parallel for schedule(dynamic, c > 0 ? c : 1) if (fibers > 1)
  for (long long f = 0; f < fibers; ++f)
    TV1D_denoise(const_cast<double*>(x + f * n), y + f * n, static_cast<int>(n), lam);
}
"""

C_TYPES = {np.float32: ("float", ctypes.c_float), np.float64: ("double", ctypes.c_double)}


# ---------------------------------------------------------------------------------------------
# What is available


def load_api():
    """cupytv.tv1d (prox_tv1d, prox_tv1d_vjp, METHODS), or None before it exists."""
    try:
        return importlib.import_module("cupytv.tv1d")
    except ImportError as exc:
        print(f"note: cupytv.tv1d not importable ({exc}); cupytv rows skipped")
        return None


def kernel_source() -> str | None:
    try:
        return _loader.source("tv1d")
    except ValueError:
        return None


def fiber_algorithms(source: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_FIBER.findall(source)))


def scratch_per_fiber(api, algorithm: str, n: int, dtype) -> int:
    """Elements of T that tv1d_<algorithm>_fiber needs, as the wrapper sizes them."""
    return api._scratch_per_fiber(f"tv1d_{algorithm}", n, np.dtype(dtype))


def optional_import(module: str, distribution: str):
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        print(f"note: {distribution} not importable ({exc}); its rows are skipped")
        return None, None
    return mod, importlib.metadata.version(distribution)


def usable_gpu():
    """CuPy, when it imports and can run a kernel on a device; else None (saying why)."""
    from cupytv._device import gpu_unavailable_reason, usable_cupy

    cupy = usable_cupy()
    if cupy is None:
        print(f"note: no usable GPU ({gpu_unavailable_reason()}); GPU rows skipped")
    return cupy


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------------------------------------
# Plain C


def start_plain_c_build(workdir: Path, source: str | None, algorithms: tuple[str, ...]):
    """Compile in the background (it overlaps the executor's own first compilation)."""
    # Standard headers first: the CUDA header defines __noinline__, which libstdc++ spells too.
    parts = ["#include <memory>", "#include <omp.h>"]
    if source is not None:
        # The executor's own translation unit (CUDA header, kernel text), without its launchers.
        parts.append(host_build.host_source(source, ()))
    parts.append(PLAIN_C)
    parts += [PLAIN_C_VJP] if source is not None else []
    parts += [PLAIN_C_FORWARD.format(algo=a) for a in algorithms]
    src, out = workdir / "plain_tv1d.cpp", workdir / "plain_tv1d.so"
    src.write_text("\n".join(parts))
    # The executor runs blocks on its own thread pool; the baseline uses OpenMP.
    command = [
        *host_build.find_compiler(),
        *host_build.compile_flags(tuple(host_build.find_compiler())),
        "-fopenmp",
        str(src),
        "-o",
        str(out),
    ]
    return subprocess.Popen(command, stderr=subprocess.PIPE, text=True), out


def load_plain_c(process, out: Path, algorithms: tuple[str, ...], vjp: bool) -> ctypes.CDLL:
    _, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"plain C build failed:\n{stderr[-4000:]}")
    lib = ctypes.CDLL(str(out))
    lib.set_threads.argtypes = (ctypes.c_int,)
    for dtype, (cname, cscalar) in C_TYPES.items():
        ptr = np.ctypeslib.ndpointer(dtype, flags="C_CONTIGUOUS")
        ll = ctypes.c_longlong
        if vjp:
            getattr(lib, f"vjp_{cname}").argtypes = (ptr, ptr, ptr, ptr, ll, ll)
        for a in algorithms:
            getattr(lib, f"forward_{a}_{cname}").argtypes = (ptr, ptr, ll, ll, cscalar, ll)
    return lib


def condat_c_source(where: str, workdir: Path) -> Path | None:
    """condat_fast_tv.cpp (with its header beside it) in workdir: copied from ``where`` (the
    .cpp, or a directory holding both), or fetched from proxTV's source distribution with pip
    (``where`` == "fetch"); None, with a note, when neither works ("none": not wanted)."""
    import shutil
    import tarfile

    if where == "none":
        return None
    if where != "fetch":
        src = Path(where)
        folder = src if src.is_dir() else src.parent
        try:
            for name in CONDAT_C_FILES:
                shutil.copy(folder / name, workdir / name)
        except OSError as exc:
            print(f"note: --condat-c {where}: {exc}; Condat C rows skipped")
            return None
        return workdir / CONDAT_C_FILES[0]
    sdist = workdir / "sdist"
    command = [sys.executable, "-m", "pip", "download", CONDAT_C_SDIST, "--no-binary", "prox-tv",
               "--no-deps", "--no-build-isolation", "-q", "-d", str(sdist)]  # fmt: skip
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
        (archive,) = sdist.glob("*.tar.gz")
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if name in CONDAT_C_FILES and Path(member.name).parent.name == "src":
                    (workdir / name).write_bytes(tar.extractfile(member).read())
    except (subprocess.SubprocessError, OSError, ValueError, tarfile.TarError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        print(f"note: fetching {CONDAT_C_SDIST}'s source failed ({detail}); Condat C rows "
              "skipped (--condat-c PATH to use a local copy)")  # fmt: skip
        return None
    if not all((workdir / name).is_file() for name in CONDAT_C_FILES):
        print(f"note: {CONDAT_C_SDIST}'s source has no src/{CONDAT_C_FILES[0]}; Condat C skipped")
        return None
    return workdir / CONDAT_C_FILES[0]


def build_condat_c(workdir: Path, cpp: Path | None) -> ctypes.CDLL | None:
    """Condat's file and our loop, -O3 -march=native -fopenmp, as a shared library."""
    if cpp is None:
        return None
    driver, out = workdir / "condat_driver.cpp", workdir / "condat_c.so"
    driver.write_text(CONDAT_C_DRIVER)
    compiler = host_build.find_compiler()
    command = [*compiler, "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", str(cpp),
               str(driver), "-o", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"note: Condat C build failed:\n{done.stderr[-2000:]}\nCondat C rows skipped")
        return None
    lib = ctypes.CDLL(str(out))
    ptr = np.ctypeslib.ndpointer(np.float64, flags="C_CONTIGUOUS")
    lib.condat_forward.argtypes = (ptr, ptr, ctypes.c_longlong, ctypes.c_longlong,
                                   ctypes.c_double)  # fmt: skip
    lib.condat_set_threads.argtypes = (ctypes.c_int,)
    return lib


# ---------------------------------------------------------------------------------------------
# Timing


def wall_seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def gpu_seconds(cupy, fn) -> float:
    """GPU time per call: CUDA events around GPU_BATCH calls on the current stream."""
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    for _ in range(GPU_BATCH):
        fn()
    stop.record()
    stop.synchronize()
    return cupy.cuda.get_elapsed_time(start, stop) * 1e-3 / GPU_BATCH


def per_fiber(fn, dtype):
    """A peer that takes one 1D signal, looped over the fibers of a 2D array in Python."""
    return lambda x: np.stack([np.asarray(fn(row), dtype=dtype) for row in x])


def max_abs_diff(out, ref) -> float:
    """max |out - ref| over ref's leading fibers; out may be a CuPy array."""
    head = out[: ref.shape[0]]
    head = head.get() if hasattr(head, "get") else np.asarray(head)
    return float(np.max(np.abs(head.astype(np.float64) - ref)))


# ---------------------------------------------------------------------------------------------
# The benchmark


class Entry(NamedTuple):
    """One implementation of a case: key = (case, direction, implementation, method, threads)."""

    key: tuple
    fn: Callable  # runs the implementation once and returns its output
    floor_bytes: int
    ref: np.ndarray | None = None  # exact output of the leading fibers, for the max|d| column
    gpu: bool = False


class Bench:
    """Times every implementation of a case side by side and collects the rows."""

    def __init__(self, args, api, lib, gpu, peers, condat=None):
        self.args, self.api, self.lib, self.gpu, self.peers = args, api, lib, gpu, peers
        self.condat = condat  # Condat's C code (build_condat_c), or None
        self.reps = QUICK_REPS if args.quick else REPS
        self.rows: list[dict] = []

    def set_threads(self, threads: int) -> None:
        # The host executor has its own pool (issue 16), set through cupytv; the plain C loops
        # run on OpenMP. Before this set both, the executor's "1 thread" rows ran on every core.
        cupytv.set_num_threads(threads)
        if self.lib is not None:
            self.lib.set_threads(threads)
        if self.condat is not None:
            self.condat.condat_set_threads(threads)

    def measure(self, entries: list[Entry]) -> None:
        """Warm every entry up (and check its output), then time them in interleaved rounds.

        Rounds (A B C, A B C, ...) rather than A A A, B B B: a change of load on a shared machine
        then hits every implementation alike. An entry whose warm-up took longer than
        SLOW_CALL_S is not repeated; its warm-up is its time (one-time costs are noise there).
        """
        times, diffs = [], []
        for entry in entries:
            t0 = time.perf_counter()
            out = entry.fn()  # warm-up: compilation, first touch of pages, thread-pool start
            if entry.gpu:
                self.gpu.cuda.get_current_stream().synchronize()
            first = time.perf_counter() - t0
            times.append([first] if first > SLOW_CALL_S and not entry.gpu else [])
            diffs.append(None if entry.ref is None else max_abs_diff(out, entry.ref))
            del out
        repeat = [not t for t in times]
        for _ in range(self.reps):
            for entry, t, again in zip(entries, times, repeat, strict=True):
                if again:
                    t.append(
                        gpu_seconds(self.gpu, entry.fn) if entry.gpu else wall_seconds(entry.fn)
                    )
        for entry, t, diff in zip(entries, times, diffs, strict=True):
            case, direction, impl, method, threads = entry.key
            row = {
                "case": case,
                "direction": direction,
                "implementation": impl,
                "method": method,
                "threads": threads,
                "median_s": statistics.median(t),
                "min_s": min(t),
                "reps": len(t),
                "gb_per_s": entry.floor_bytes / statistics.median(t) / 1e9,
                "max_abs_diff": diff,
            }
            self.rows.append(row)
            progress(f"{len(self.rows)} rows; {case} {direction} {impl} {method or ''}")

    def plain_forward(self, algo, x, lam):
        """The plain C loop of tv1d_<algo>_fiber over the fibers (rows) of x, into its own y."""
        fn = getattr(self.lib, f"forward_{algo}_{C_TYPES[x.dtype.type][0]}")
        scratch = scratch_per_fiber(self.api, algo, x.shape[1], x.dtype)
        y = np.empty_like(x)

        def run():
            fn(x, y, x.shape[0], x.shape[1], x.dtype.type(lam), scratch)
            return y

        return run

    def condat_forward(self, x, lam):
        """Condat's TV1D_denoise over the fibers (rows) of x, in an OpenMP loop."""
        y = np.empty_like(x)

        def run():
            self.condat.condat_forward(x, y, x.shape[0], x.shape[1], lam)
            return y

        return run

    def api_forward(self, x, lam, method):
        """cupytv.prox_tv1d into its own preallocated output (NumPy or CuPy, like x)."""
        y = x.copy()
        return lambda: self.api.prox_tv1d(x, lam, method=method, out=y)

    def forward(self, case, x, lam, threads, first=True, last=True, cpu=True) -> None:
        """Every forward implementation on x (fibers = rows), side by side, on `threads` threads.

        Over several thread counts, single-threaded peers run in the first pass (the lowest
        count) and the GPU in the last; the rest run in every pass. cpu=False: GPU rows only.
        """
        ref = reference.prox_tv1d(x[:CHECK_FIBERS], lam)

        def entry(impl, method, t, fn, gpu=False):
            return Entry((case, "forward", impl, method, t), fn, 2 * x.nbytes, ref, gpu)

        methods, entries = self.args.methods, []
        if cpu:
            entries += [
                entry("cupytv host", m, threads, self.api_forward(x, lam, m)) for m in methods
            ]
            entries += [
                entry("plain C", a, threads, self.plain_forward(a, x, lam))
                for a in self.args.plain_algorithms
            ]
            if self.condat is not None and x.dtype == np.float64:
                entries.append(
                    entry("Condat C", "TV1D_denoise", threads, self.condat_forward(x, lam))
                )
            entries += [
                entry(impl, method, t, lambda fn=fn: fn(x))
                for impl, method, t, fn in self.peer_calls(x.dtype.type, threads, lam)
                if t == threads or (t == 1 and first)
            ]
        if self.gpu is not None and last:
            xg = self.gpu.asarray(x)
            entries += [
                entry("cupytv gpu", m, None, self.api_forward(xg, lam, m), True) for m in methods
            ]
        self.set_threads(threads)
        self.measure(entries)

    def peer_calls(self, dtype, threads, lam):
        """(implementation, method, threads, fn(x2d) -> y2d) for every importable peer."""
        prox_tv, condat = self.peers.get("prox_tv"), self.peers.get("TVDCondat2013")
        if prox_tv is not None:
            # tvgen: every fiber along dimension 2 (1-based) in one C call, over `threads`.
            yield "proxTV", "tvgen", threads, lambda x: prox_tv.tvgen(x, [lam], [2], [1], threads)
            for m in PROXTV_METHODS:
                fn = per_fiber(lambda r, m=m: prox_tv.tv1_1d(r, lam, method=m), dtype)
                yield "proxTV", f"tv1_1d {m}", 1, fn
        if condat is not None:
            for name in CONDAT_FUNCTIONS:
                fn = getattr(condat, name)
                yield "TVDCondat2013", name, 1, per_fiber(lambda r, fn=fn: fn(r, lam), dtype)

    def backward(self, case, x, threads, last=True, cpu=True) -> None:
        """The VJP (grad_x; grad_lam is computed but not compared) on the exact forward output."""
        if self.args.methods:
            y = self.api.prox_tv1d(x, LAM, method=self.args.methods[0])
        elif self.args.plain_algorithms:
            y = self.plain_forward(self.args.plain_algorithms[0], x, LAM)()
        else:
            print(f"note: {case}: no cupytv forward to feed the VJP; backward skipped")
            return
        g = np.random.default_rng(SEED + 1).standard_normal(x.shape).astype(x.dtype)
        ref, _ = reference.prox_tv1d_vjp(x[:CHECK_FIBERS], LAM, g[:CHECK_FIBERS])

        def entry(impl, method, t, fn, gpu=False):
            return Entry((case, "backward", impl, method, t), fn, 3 * x.nbytes, ref, gpu)

        def api_vjp(g, y):
            return lambda: self.api.prox_tv1d_vjp(None, LAM, g, y=y)[0]

        entries = []
        if self.args.methods and cpu:
            entries.append(entry("cupytv host", "vjp", threads, api_vjp(g, y)))
        if self.lib is not None and self.api is not None and cpu:
            gx, gl = np.empty_like(x), np.empty(x.shape[0], x.dtype)
            vjp = getattr(self.lib, f"vjp_{C_TYPES[x.dtype.type][0]}")

            def plain_vjp():
                vjp(y, g, gx, gl, x.shape[0], x.shape[1])
                return gx

            entries.append(entry("plain C", "vjp", threads, plain_vjp))
        if self.gpu is not None and self.args.methods and last:
            fn = api_vjp(self.gpu.asarray(g), self.gpu.asarray(y))
            entries.append(entry("cupytv gpu", "vjp", None, fn, True))
        self.set_threads(threads)
        self.measure(entries)


# ---------------------------------------------------------------------------------------------
# Report

HEADER = (
    f"{'case':<22} {'dir':<8} {'implementation':<14} {'method':<24} {'thr':>3} "
    f"{'median ms':>10} {'reps':>4} {'vs plain C':>10} {'GB/s':>7} {'max|d|':>8}"
)


def format_row(row) -> str:
    ratio = row.get("ratio_vs_plain_c")
    diff = row["max_abs_diff"]
    threads = "-" if row["threads"] is None else row["threads"]  # a GPU row
    return (
        f"{row['case']:<22} {row['direction']:<8} {row['implementation']:<14} "
        f"{row['method']:<24} {threads:>3} {row['median_s'] * 1e3:>10.3f} "
        f"{row['reps']:>4} {'' if ratio is None else f'{ratio:.2f}':>10} "
        f"{row['gb_per_s']:>7.2f} {'' if diff is None else f'{diff:.1e}':>8}"
    )


def add_ratios(rows) -> None:
    """Each row's time over plain C's for the same case, direction and thread count.

    A cupytv method is compared with the plain C loop of its own algorithm when there is one,
    everything else with tv1d.cu's first per-fiber function; GPU rows with plain C on the most
    threads.
    """
    plain = {}
    for r in rows:
        if r["implementation"] == "plain C":
            plain.setdefault((r["case"], r["direction"], r["threads"]), r["median_s"])
            plain[(r["case"], r["direction"], r["threads"], r["method"])] = r["median_s"]
            plain[(r["case"], r["direction"])] = r["median_s"]  # the last: most threads
    for r in rows:
        keys = [(r["case"], r["direction"], r["threads"], r["method"])]
        keys += [(r["case"], r["direction"], r["threads"])] if r["threads"] else []
        keys += [(r["case"], r["direction"])] if r["threads"] is None else []
        base = next((plain[k] for k in keys if k in plain), None)
        r["ratio_vs_plain_c"] = None if base is None else r["median_s"] / base


def targets(rows, ramp_case, threads) -> list[dict]:
    """The issue's targets, evaluated on this run's rows (value None where a row is missing).

    CPU targets on `threads` (all the machine's cores), the ramp on one.
    """

    def best(case, direction, impl):
        """The fastest method's median."""
        values = [
            r["median_s"]
            for r in rows
            if (r["case"], r["direction"], r["implementation"]) == (case, direction, impl)
            and (case == ramp_case or r["threads"] in (None, threads))
        ]
        return min(values) if values else None

    def goal(text, value, unit, limit):
        return {
            "target": text,
            "value": value,
            "unit": unit,
            "limit": limit,
            "met": None if value is None else value <= limit,
        }

    cpu_case = "{}x{} {}".format(*TARGET_CASE[0], TARGET_CASE[1])
    gpu_case = "{}x{} {}".format(*TARGET_GPU_CASE[0], TARGET_GPU_CASE[1])
    fwd, bwd = best(gpu_case, "forward", "cupytv gpu"), best(gpu_case, "backward", "cupytv gpu")
    host, plain = best(cpu_case, "forward", "cupytv host"), best(cpu_case, "forward", "plain C")
    condat = best(cpu_case, "forward", "Condat C")
    return [
        goal(
            f"host executor / plain C, forward {cpu_case}, {threads} threads (fastest of each)",
            None if host is None or plain is None else host / plain,
            "x",
            TARGET_RATIO,
        ),
        goal(
            f"host executor / Condat's C (-O3 -march=native, OpenMP), forward {cpu_case}, "
            f"{threads} threads (issue 18)",
            None if host is None or condat is None else host / condat,
            "x",
            TARGET_CONDAT_RATIO,
        ),
        goal(
            f"{ramp_case}, lam={RAMP_LAM:g}, one core, host executor (fastest method)",
            best(ramp_case, "forward", "cupytv host"),
            "s",
            TARGET_RAMP_S,
        ),
        goal(f"GPU forward {gpu_case}", fwd, "s", TARGET_GPU_FORWARD_S),
        goal(
            f"GPU forward + backward {gpu_case}",
            None if fwd is None or bwd is None else fwd + bwd,
            "s",
            TARGET_GPU_FORWARD_BACKWARD_S,
        ),
    ]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "results" / "bench_tv1d.json"
    )
    parser.add_argument(
        "--methods", help="comma-separated cupytv methods (default: all the API offers)"
    )
    parser.add_argument(
        "--condat-c",
        default="fetch",
        help="Condat's condat_fast_tv.cpp (or its directory) for the Condat C rows; 'fetch' "
        f"(default) downloads {CONDAT_C_SDIST}'s source with pip, 'none' skips them",
    )
    parser.add_argument(
        "--threads",
        default=f"1,{os.cpu_count() or 1}",
        help="comma-separated OpenMP thread counts (default: 1 and all cores)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    args.threads = sorted({int(t) for t in args.threads.split(",")})
    if host_build.sanitize_enabled():
        sys.exit("unset CUPYTV_HOST_SANITIZE: sanitized builds are not what this measures")
    load_start = os.getloadavg()
    started = time.perf_counter()

    api = load_api()
    offered = tuple(api.METHODS) if api is not None else ()
    args.methods = tuple(args.methods.split(",")) if args.methods else offered
    unknown = set(args.methods) - set(offered) - {"auto"}
    if unknown:
        sys.exit(f"--methods: unknown {sorted(unknown)}; cupytv offers {offered}")
    source = kernel_source() if api is not None else None
    args.plain_algorithms = fiber_algorithms(source) if source is not None else ()
    if api is not None and not args.plain_algorithms:
        print("note: tv1d.cu has no tv1d_<algorithm>_fiber function; plain C forward skipped")

    peers, versions = {}, {}
    for module, dist in (("prox_tv", "prox-tv"), ("TVDCondat2013", "tvdcondat2013")):
        peers[module], versions[module] = optional_import(module, dist)
    gpu = usable_gpu()
    print(
        f"{cpu_model()}, {os.cpu_count()} cores, {args.threads} threads, load average "
        f"{load_start[0]:.2f}; methods {list(args.methods)}, plain C {list(args.plain_algorithms)}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        process, out = start_plain_c_build(Path(tmp), source, args.plain_algorithms)
        if api is not None:
            api.prox_tv1d(np.zeros((1, 2)), LAM)  # builds the executor's library meanwhile
        try:
            lib = load_plain_c(process, out, args.plain_algorithms, source is not None)
        except RuntimeError as exc:
            print(f"note: {exc}\nplain C rows skipped")
            lib, args.plain_algorithms = None, ()
        condat = build_condat_c(Path(tmp), condat_c_source(args.condat_c, Path(tmp)))
        bench = Bench(args, api, lib, gpu, peers, condat)
        for shape in QUICK_SHAPES if args.quick else SHAPES:
            for dtype in DTYPES:
                case = f"{shape[0]}x{shape[1]} {np.dtype(dtype).name}"
                x = np.random.default_rng(SEED).standard_normal(shape).astype(dtype)
                for t in args.threads:
                    first, last = t == args.threads[0], t == args.threads[-1]
                    bench.forward(case, x, LAM, t, first, last)
                    bench.backward(case, x, t, last)
        ramp_n = QUICK_RAMP_N if args.quick else RAMP_N
        ramp_case = f"ramp n={ramp_n} float64"
        if args.quick and gpu is not None:
            # scripts/gpu_check.sh runs --quick only: still time the GPU target case.
            (shape, dtype), t = TARGET_GPU_CASE, args.threads[-1]
            case = "{}x{} {}".format(*shape, dtype)
            x = np.random.default_rng(SEED).standard_normal(shape).astype(dtype)
            bench.forward(case, x, LAM, t, cpu=False)
            bench.backward(case, x, t, cpu=False)
        # Condat 2013's quadratic worst case, on one thread.
        bench.forward(ramp_case, (RAMP_SLOPE * np.arange(ramp_n) / ramp_n)[None], RAMP_LAM, 1)

    rows = bench.rows
    add_ratios(rows)
    progress_done()
    print(
        "Every row, with ratios (GB/s against the bytes-moved floor: forward reads x and "
        "writes y; backward reads y and g and writes grad_x):"
    )
    print(HEADER)
    for r in rows:
        print(format_row(r))
    goals = targets(rows, ramp_case, args.threads[-1])
    print("\nTargets (issue 4):")
    for t in goals:
        if t["unit"] == "x":
            value, limit = f"{t['value'] or 0:.2f}x", f"{t['limit']:.2f}x"
        else:
            value, limit = f"{(t['value'] or 0) * 1e3:.3f} ms", f"{t['limit'] * 1e3:g} ms"
        if t["value"] is None:
            value = "n/a"
        print(f"  {t['target']}: {value} (target <= {limit}), met: {t['met']}")

    device = None
    if gpu is not None:
        props = gpu.cuda.runtime.getDeviceProperties(gpu.cuda.Device().id)
        device = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    report = {
        "benchmark": "tv1d",
        "quick": args.quick,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "seconds": time.perf_counter() - started,
        "device": device,
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cupytv": cupytv.__version__,
            "cupy": gpu.__version__ if gpu is not None else None,
            **versions,
        },
        "compiler": host_build.find_compiler(),
        "flags": list(host_build.compile_flags(tuple(host_build.find_compiler()))),
        "lam": LAM,
        "methods": list(args.methods),
        "plain_c_algorithms": list(args.plain_algorithms),
        "bytes_floor": "forward: read x + write y; backward: read y + g, write grad_x",
        "targets": goals,
        "results": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
