"""The host executor's debug mode: kernels built with AddressSanitizer + UBSan.

A sanitized library can only be loaded into a process whose sanitizer runtime was loaded first,
so each check runs Python in a subprocess with ``LD_PRELOAD`` set and ``CUPYTV_HOST_SANITIZE=1``.
The kernel test modules (``tests/test_<stem>.py`` for every ``cuda_src/<stem>.cu``, plus the
executor's own tests) run there on small sizes, and so does the fuzz corpus (tests/test_fuzz.py:
random shapes, axes, layouts, adversarial data and weights through every kernel); deliberately
broken kernels prove that an out-of-bounds read or undefined behaviour makes the run fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cupytv import _loader
from cupytv._host import build as host_build

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
# Generous: the sanitized builds compile in a few seconds each and run small sizes only.
TIMEOUT_S = 600


def sanitizer_env() -> dict[str, str]:
    compiler = host_build.find_compiler()
    runtime = subprocess.run(
        [*compiler, "-print-file-name=libasan.so"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert os.path.isabs(runtime), f"{compiler[0]} has no AddressSanitizer runtime ({runtime!r})"
    env = dict(os.environ)
    env.update(
        {
            host_build.SANITIZE_ENV: "1",
            "LD_PRELOAD": runtime,
            # CPython keeps its interned objects until exit; those are not kernel bugs.
            "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0",
            "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
        }
    )
    return env


def run_sanitized(
    args: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        env={**sanitizer_env(), **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def kernel_test_modules() -> list[Path]:
    modules = [TESTS / f"test_{stem}.py" for stem in _loader.stems()]
    missing = [p.name for p in modules if not p.is_file()]
    assert not missing, f"every cuda_src/<stem>.cu needs tests/test_<stem>.py; missing {missing}"
    return [*modules, TESTS / "test_host_executor.py"]


def test_kernel_tests_pass_under_sanitizers():
    modules = [str(p.relative_to(ROOT)) for p in kernel_test_modules()]
    # Host executor only: `-m "not gpu"` leaves out the CuPy runs, "ucontext" halves the work.
    result = run_sanitized(
        [
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            "-m",
            "not gpu and not slow",
            "-k",
            "not ucontext",
            *modules,
        ]
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]


# The fuzz corpus under the sanitizers: this many examples per property (tests/test_fuzz.py reads
# the count from CUPYTV_FUZZ_EXAMPLES), from a fixed seed so a report can be replayed.
FUZZ_EXAMPLES = 30
FUZZ_SEED = 0
# What the runtimes print before they stop the process (abort_on_error=0, halt_on_error=1).
SANITIZER_REPORTS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer")


def test_fuzz_corpus_runs_clean_under_sanitizers():
    # Every kernel over the fuzz corpus in the sanitized build. What this test owns is memory and
    # undefined behaviour: the properties themselves are tests/test_fuzz.py's in the ordinary run
    # (a failing property is reported there, without shrinking here, which would only cost time).
    # A sanitizer stops the process at its first report, before pytest's summary line.
    result = run_sanitized(
        [
            "-m",
            "pytest",
            "-q",
            "-s",  # a sanitizer report goes to this process's stderr, not to pytest's capture
            "-p",
            "no:cacheprovider",
            f"--hypothesis-seed={FUZZ_SEED}",
            str((TESTS / "test_fuzz.py").relative_to(ROOT)),
        ],
        env={"CUPYTV_FUZZ_EXAMPLES": str(FUZZ_EXAMPLES), "CUPYTV_FUZZ_SHRINK": "0"},
    )
    output = result.stdout[-6000:] + result.stderr[-6000:]
    reports = [r for r in SANITIZER_REPORTS if r in result.stderr]
    assert not reports, output
    summary = (result.stdout.strip().splitlines() or [""])[-1]
    assert result.returncode in (0, 1), output  # 1: a property failed, reported by test_fuzz.py
    assert " passed" in summary or " failed" in summary, output  # the session ran to its end


SCRIPT = """
import sys
import numpy as np
from cupytv._host import HostModule

source = \'\'\'
__global__ void read_at(const float* x, float* y, long long offset) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  y[i] = x[i + offset];
}
__global__ void shift(int* y, int amount) {
  y[threadIdx.x] = y[threadIdx.x] << amount;
}
// Out-of-bounds accesses after a barrier, i.e. on a fiber stack and in dynamic shared memory.
// UBSan is kept out of local_at so that it is AddressSanitizer, watching the fiber stack, that
// must catch the overflow.
__global__ __attribute__((no_sanitize("undefined"))) void local_at(int* y, int offset) {
  int local[8];
  for (int k = 0; k < 8; ++k) local[k] = k + threadIdx.x;
  __syncthreads();
  y[threadIdx.x] = local[(threadIdx.x + offset) % 16];
}
__global__ void shared_at(int* y, int offset) {
  extern __shared__ int tile[];
  tile[threadIdx.x] = threadIdx.x;
  __syncthreads();
  y[threadIdx.x] = tile[threadIdx.x + offset];
}
\'\'\'
module = HostModule(source, ("read_at", "shift", "local_at", "shared_at"))
case, value = sys.argv[1], int(sys.argv[2])
n = 1000
if case == "read_at":
    x = np.arange(n, dtype=np.float32)
    y = np.zeros(n, dtype=np.float32)
    module.get_function(case)((n // 100,), (100,), (x, y, np.int64(value)))
else:
    y = np.ones(8, np.int32)
    shared = 8 * y.itemsize if case == "shared_at" else 0
    module.get_function(case)((1,), (8,), (y, np.int32(value)), shared_mem=shared)
print("finished")
"""


def run_case(case: str, value: int) -> subprocess.CompletedProcess:
    return run_sanitized(["-c", SCRIPT, case, str(value)])


@pytest.mark.parametrize(
    ("case", "value"), [("read_at", 0), ("shift", 3), ("local_at", 0), ("shared_at", 0)]
)
def test_in_bounds_controls_pass_under_sanitizers(case, value):
    # The cases below with valid arguments: a failure there is the bug, not the setup.
    result = run_case(case, value)
    assert result.returncode == 0, result.stderr[-6000:]
    assert "finished" in result.stdout


@pytest.mark.parametrize(
    ("case", "value", "report"),
    [
        ("read_at", 1, "heap-buffer-overflow"),  # the last thread reads x[n]
        ("shift", 40, "shift exponent 40"),  # shifting a 32-bit int by 40 is undefined
        ("local_at", 1, "stack-buffer-overflow"),  # thread 7 reads local[8] on its fiber stack
        ("shared_at", 1, "heap-buffer-overflow"),  # thread 7 reads past the dynamic shared tile
    ],
)
def test_bugs_in_kernels_fail_under_sanitizers(case, value, report):
    result = run_case(case, value)
    assert result.returncode != 0, result.stdout
    assert report in result.stderr, result.stderr[-6000:]
    assert case in result.stderr  # the report names the kernel


# A launch from a thread that then exits: its worker unmaps its fiber stacks. The sanitizer keeps
# shadow memory across munmap, so a stack left poisoned (a driver's frame never unwinds) made the
# next mapping at that address (a Python arena in CI) report a stack-buffer-underflow on its
# first memset, long after the launch. The memsets below cover every mapping the size of a stack.
THREAD_EXIT_SCRIPT = """
import ctypes
import mmap
import threading
import numpy as np
from cupytv._host import HostModule

module = HostModule('''
__global__ void stamp(int* y) {
  __syncthreads();
  y[blockIdx.x * blockDim.x + threadIdx.x] = threadIdx.x;
}
''', ("stamp",))

def launch():
    y = np.zeros(64 * 32, np.int32)
    module.get_function("stamp")((64,), (32,), (y,))

thread = threading.Thread(target=launch)
thread.start()
thread.join()
kept = []
for _ in range(64):
    region = mmap.mmap(-1, 1 << 20)
    view = (ctypes.c_char * (1 << 20)).from_buffer(region)
    ctypes.memset(ctypes.addressof(view), 1, 1 << 20)
    kept.append((region, view))
print("finished")
"""


def test_a_thread_that_launched_kernels_exits_without_leaving_poisoned_memory():
    result = run_sanitized(["-c", THREAD_EXIT_SCRIPT])
    assert result.returncode == 0, result.stderr[-6000:]
    assert "finished" in result.stdout


@pytest.mark.parametrize("missing_stem", ["no_such_kernel_file"])
def test_every_kernel_file_needs_a_test_module(monkeypatch, missing_stem):
    monkeypatch.setattr(_loader, "stems", lambda: (missing_stem,))
    with pytest.raises(AssertionError, match=f"test_{missing_stem}.py"):
        kernel_test_modules()
