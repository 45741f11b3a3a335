"""The host executor honours CUDA's execution model, and refuses what a GPU would refuse.

Feature kernels are compiled from a string (one compilation for all of them). Each test runs on
the host executor with the hand-written x86-64 context switch and with the portable ucontext
fallback, and, under the ``gpu`` marker, on CuPy: the expected values come from NumPy, so the
three must agree.
"""

from __future__ import annotations

import os
import platform
import stat
import threading
import time

import numpy as np
import pytest

import cupytv
from cupytv import _loader
from cupytv._host import HostCompilerNotFoundError, HostModule
from cupytv._host import build as host_build

FEATURES = r"""
// One output row of 8 values per CUDA thread, at the thread's linear position in the launch.
__global__ void indices(long long* out) {
  const long long block =
      blockIdx.x + (long long)gridDim.x * (blockIdx.y + (long long)gridDim.y * blockIdx.z);
  const long long thread =
      threadIdx.x + (long long)blockDim.x * (threadIdx.y + (long long)blockDim.y * threadIdx.z);
  long long* o = out + 8 * (block * blockDim.x * blockDim.y * blockDim.z + thread);
  o[0] = threadIdx.x; o[1] = threadIdx.y; o[2] = threadIdx.z;
  o[3] = blockIdx.x; o[4] = blockIdx.y; o[5] = blockIdx.z;
  o[6] = blockDim.x * 10000 + blockDim.y * 100 + blockDim.z;
  o[7] = gridDim.x * 10000 + gridDim.y * 100 + gridDim.z;
}

// Each round, every thread publishes a block-specific value and, after a barrier, reads the slot
// of a thread further on: wrong without a true barrier or without per-block shared memory.
__global__ void neighbours(long long* out, int rounds) {
  __shared__ long long slots[1024];
  const int b = blockDim.x * blockDim.y * blockDim.z;
  const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const long long block = blockIdx.x + (long long)gridDim.x * blockIdx.y;
  long long acc = 0;
  for (int r = 0; r < rounds; ++r) {
    slots[t] = block * 1000000 + r * 1000 + t;
    __syncthreads();
    acc += slots[(t + r + 1) % b];
    __syncthreads();
  }
  out[block * b + t] = acc;
}

// A thread must see what another thread stored over its own earlier store across a barrier.
__global__ void overwrite(int* out) {
  __shared__ int s[1024];
  const int t = threadIdx.x;
  s[t] = t;
  __syncthreads();
  if (t == 0) {
    for (int k = 0; k < (int)blockDim.x; ++k) s[k] = -k - 1;
  }
  __syncthreads();
  out[blockIdx.x * blockDim.x + t] = s[t];
}

// Global and shared-memory atomics from many blocks at once.
template <typename T>
__global__ void histogram(const int* bins, long long n, T* counts, unsigned long long* total,
                          int* cas_total, int* max_bin) {
  __shared__ int block_max;
  if (threadIdx.x == 0) block_max = -1;
  __syncthreads();
  const long long stride = (long long)blockDim.x * gridDim.x;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += stride) {
    atomicAdd(&counts[bins[i]], T(1));
    atomicAdd(total, 1ULL);
    int old = *cas_total, assumed;
    do {
      assumed = old;
      old = atomicCAS(cas_total, assumed, assumed + 1);
    } while (assumed != old);
    atomicMax(&block_max, bins[i]);
  }
  __syncthreads();
  if (threadIdx.x == 0) atomicMax(max_bin, block_max);
}

// Barriers at two different stack depths: a suspended thread must resume in the right frame.
__device__ __noinline__ int sync_deeper(int* s, int v) {
  volatile int pad[64];
  pad[0] = v;
  __syncthreads();
  s[threadIdx.x] = pad[0] + 1;
  __syncthreads();
  return s[(threadIdx.x + 1) % blockDim.x];
}
__global__ void depths(int* out) {
  __shared__ int s[1024];
  s[threadIdx.x] = threadIdx.x;
  __syncthreads();
  const int a = s[(threadIdx.x + 1) % blockDim.x];
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = sync_deeper(s, a);
}

// A large frame that stays live across a barrier, on every thread of a full block.
#define DEEP_STACK_DOUBLES 4096
__global__ void deep_stack(double* out) {
  double local[DEEP_STACK_DOUBLES];
  for (int k = 0; k < DEEP_STACK_DOUBLES; ++k) local[k] = threadIdx.x + k;
  __syncthreads();
  double s = 0;
  for (int k = 0; k < DEEP_STACK_DOUBLES; ++k) s += local[k];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}

// Launches of more than 2^31 threads: only threads first..n-1 write, y[i - first] = i - first + 1
// (small integers, exact in float; float stores keep the host's fast path at full speed).
__global__ void tail_marks(float* y, long long first, long long n) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= first && i < n) y[i - first] = (float)(i - first + 1);
}

// Threads that leave early or take part in fewer barriers count as arrived (host semantics).
__global__ void staggered(int* out) {
  __shared__ int s[1024];
  const int t = threadIdx.x;
  if (t % 5 == 4) return;
  int acc = 0;
  for (int r = 0; r <= t % 4; ++r) {
    s[t] = r;
    __syncthreads();
    acc += s[t];
  }
  out[blockIdx.x * blockDim.x + t] = acc;
}
"""
NAMES = (
    "indices",
    "neighbours",
    "overwrite",
    "depths",
    "histogram<float>",
    "histogram<double>",
    "deep_stack",
    "tail_marks",
    "staggered",
)
UCONTEXT = ("-DCUPYTV_HOST_UCONTEXT",)
X86_64 = platform.machine() in ("x86_64", "AMD64")


class Executor:
    def __init__(self, name: str):
        self.name = name
        if name == "cupy":
            import cupy

            self.xp = cupy
            self.module = cupy.RawModule(
                code=FEATURES, options=_loader.NVRTC_OPTIONS, name_expressions=list(NAMES)
            )
        else:
            self.xp = np
            self.module = HostModule(FEATURES, NAMES, UCONTEXT if name == "ucontext" else ())

    def run(self, name, grid, block, args, shared_mem=0):
        self.module.get_function(name)(grid, block, args, shared_mem=shared_mem)

    def numpy(self, a) -> np.ndarray:
        return a.get() if self.xp is not np else a


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(
            "asm",
            id="host-asm",
            marks=pytest.mark.skipif(not X86_64, reason="the asm switch is x86-64 only"),
        ),
        pytest.param("ucontext", id="host-ucontext"),
        pytest.param("cupy", id="cupy", marks=pytest.mark.gpu),
    ],
)
def ex(request) -> Executor:
    return Executor(request.param)


@pytest.mark.parametrize(
    ("grid", "block"), [((3, 2, 2), (4, 3, 2)), ((5,), (7,)), ((1, 4), (1, 1, 3))]
)
def test_indices_cover_3d_launch(ex, grid, block):
    grid3 = (*grid, 1, 1)[:3]
    block3 = (*block, 1, 1)[:3]
    out = ex.xp.full((int(np.prod(grid3)) * int(np.prod(block3)), 8), -1, dtype=np.int64)
    ex.run("indices", grid, block, (out,))
    bz, by, bx, tz, ty, tx = np.meshgrid(
        *(np.arange(d) for d in (*grid3[::-1], *block3[::-1])), indexing="ij"
    )
    expected = np.stack(
        [
            tx.ravel(),
            ty.ravel(),
            tz.ravel(),
            bx.ravel(),
            by.ravel(),
            bz.ravel(),
            np.full(tx.size, block3[0] * 10000 + block3[1] * 100 + block3[2]),
            np.full(tx.size, grid3[0] * 10000 + grid3[1] * 100 + grid3[2]),
        ],
        axis=1,
    )
    np.testing.assert_array_equal(ex.numpy(out), expected)


@pytest.mark.parametrize(
    ("grid", "block"), [((13, 3), (64,)), ((4,), (8, 4, 2)), ((2,), (1024,)), ((3,), (1,))]
)
def test_barrier_and_private_shared_memory(ex, grid, block):
    rounds = 3
    nblocks, b = int(np.prod(grid)), int(np.prod(block))
    out = ex.xp.zeros(nblocks * b, dtype=np.int64)
    ex.run("neighbours", grid, block, (out, np.int32(rounds)))
    blk, t = np.divmod(np.arange(nblocks * b), b)
    expected = sum(blk * 1000000 + r * 1000 + (t + r + 1) % b for r in range(rounds))
    np.testing.assert_array_equal(ex.numpy(out), expected)


def test_stores_by_other_threads_are_seen_after_barrier(ex):
    out = ex.xp.zeros(6 * 256, dtype=np.int32)
    ex.run("overwrite", (6,), (256,), (out,))
    np.testing.assert_array_equal(ex.numpy(out), -(np.arange(6 * 256) % 256) - 1)


@pytest.mark.parametrize("block", [1, 2, 33])
def test_barriers_at_different_stack_depths(ex, block):
    out = ex.xp.zeros(3 * block, dtype=np.int32)
    ex.run("depths", (3,), (block,), (out,))
    t = np.arange(3 * block) % block
    np.testing.assert_array_equal(ex.numpy(out), (t + 2) % block + 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_atomics_across_blocks(ex, rng, dtype):
    n, nbins = 50_000, 37
    bins_host = rng.integers(0, nbins, n).astype(np.int32)
    xp = ex.xp
    counts = xp.zeros(nbins, dtype=dtype)
    total = xp.zeros(1, dtype=np.uint64)
    cas_total = xp.zeros(1, dtype=np.int32)
    max_bin = xp.full(1, -1, dtype=np.int32)
    name = f"histogram<{'float' if dtype == np.float32 else 'double'}>"
    args = (xp.asarray(bins_host), np.int64(n), counts, total, cas_total, max_bin)
    ex.run(name, (40,), (128,), args)
    np.testing.assert_array_equal(ex.numpy(counts), np.bincount(bins_host, minlength=nbins))
    assert int(ex.numpy(total)[0]) == n
    assert int(ex.numpy(cas_total)[0]) == n
    assert int(ex.numpy(max_bin)[0]) == bins_host.max()


def test_large_frames_survive_barriers(ex):
    out = ex.xp.zeros(2 * 1024, dtype=np.float64)
    ex.run("deep_stack", (2,), (1024,), (out,))
    t = np.arange(2 * 1024) % 1024
    k = 4096
    np.testing.assert_array_equal(ex.numpy(out), k * t + k * (k - 1) / 2)


@pytest.mark.slow
def test_grid_beyond_2_31_threads(ex):
    # About 2^31 barrier-free threads: seconds on the host's fast path, and no big memory. Every
    # thread past index 2^31 - 1 needs 64-bit index arithmetic to find its slot.
    if ex.name == "ucontext":
        pytest.skip("no barrier here, so the fallback's fibers are never used")
    block, tail = 256, 1000
    n = 2**31 + 3 * block + 7
    grid = (n + block - 1) // block
    y = ex.xp.zeros(tail, dtype=np.float32)
    ex.run("tail_marks", (grid,), (block,), (y, np.int64(n - tail), np.int64(n)))
    np.testing.assert_array_equal(ex.numpy(y), np.arange(1, tail + 1))


def test_exited_threads_count_as_arrived(ex):
    if ex.name == "cupy":
        pytest.skip("uneven barrier counts are undefined behaviour in CUDA; host semantics only")
    out = ex.xp.full(3 * 100, -7, dtype=np.int32)
    ex.run("staggered", (3,), (100,), (out,))
    t = np.arange(300) % 100
    rounds = t % 4 + 1
    expected = np.where(t % 5 == 4, -7, rounds * (rounds - 1) // 2)
    np.testing.assert_array_equal(ex.numpy(out), expected)


# ---- launch checks: what a GPU would refuse (or silently misread) fails on the host too ----


@pytest.fixture(scope="module")
def reverse():
    return _loader.get_kernel("smoke", "smoke_tile_reverse<float>", np.empty(0))


def good_args(n=8):
    return (np.zeros(n, np.float32), np.zeros(n, np.float32), np.int64(n))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((np.zeros(8), np.zeros(8, np.float32), np.int64(8)), "needs dtype float32, got float64"),
        ((np.zeros(8, np.float32), np.zeros(8, np.float32), 8), "numpy.int64 scalar"),
        ((np.zeros(8, np.float32), np.zeros(8, np.float32), np.int32(8)), "got numpy.int32"),
        ((np.zeros(8, np.float32), np.zeros(8, np.float32)), "takes 3 arguments, got 2"),
        (([0.0] * 8, np.zeros(8, np.float32), np.int64(8)), "must be a numpy.ndarray"),
    ],
)
def test_argument_types_are_checked(reverse, args, match):
    with pytest.raises(TypeError, match=match):
        reverse((1,), (8,), args, shared_mem=32)


def test_read_only_output_is_refused(reverse):
    x, y, n = good_args()
    y.flags.writeable = False
    with pytest.raises(ValueError, match="written but read-only"):
        reverse((1,), (8,), (x, y, n), shared_mem=32)


@pytest.mark.parametrize(
    ("grid", "block", "shared", "match"),
    [
        ((1,), (1025,), 0, r"block\[0\] must be in \[1, 1024\]"),
        ((1,), (32, 32, 2), 0, "at most 1024 threads"),
        ((1,), (1, 1, 65), 0, r"block\[2\] must be in \[1, 64\]"),
        ((0,), (8,), 0, r"grid\[0\] must be in"),
        ((1, 65536), (8,), 0, r"grid\[1\] must be in"),
        ((1,), (8,), 64 * 1024 + 1, "shared_mem must be in"),
        ((1, 2, 3, 4), (8,), 0, "tuple of 1 to 3 ints"),
    ],
)
def test_launch_configuration_is_checked(reverse, grid, block, shared, match):
    with pytest.raises((ValueError, TypeError), match=match):
        reverse(grid, block, good_args(), shared_mem=shared)


# ---- worker threads: cupytv.set_num_threads and the pool ----

# Host-only source (cupytv_host:: and gettid come with the host executor's header). `who` records,
# per block, the launch's worker index (0: the launching thread) and the OS thread that ran it.
# `wait_for_helper`: block 0 polls, for up to `polls` rounds of a short sleep, until a block run by
# another worker than its own has recorded itself, so it passes only if two workers (the launching
# thread and a helper, in either role) ran blocks of the launch at once (a bounded wait, not a
# timing assertion: on any machine a helper wakes within the minutes the bound allows).
WHO_RUNS = """
__global__ void who(int* worker, long long* tid) {
  if (threadIdx.x == 0) {
    worker[blockIdx.x] = cupytv_host::worker_index();
    tid[blockIdx.x] = gettid();
  }
}

__global__ void wait_for_helper(int* worker, int* saw_helper, long long polls) {
  if (threadIdx.x != 0) return;
  const int me = cupytv_host::worker_index();
  std::atomic_ref<int>(worker[blockIdx.x]).store(me);
  if (blockIdx.x != 0) return;
  for (long long i = 0; i < polls; ++i) {
    for (unsigned b = 1; b < gridDim.x; ++b) {
      const int other = std::atomic_ref<int>(worker[b]).load();
      if (other >= 0 && other != me) {
        *saw_helper = 1;
        return;
      }
    }
    usleep(1000);
  }
}
"""
# block 0 gives the helpers up to this many 1 ms sleeps (~2 minutes) to show up
HELPER_POLLS = 120_000


@pytest.fixture(scope="module")
def who_module():
    return HostModule(WHO_RUNS, ("who", "wait_for_helper"))


def run_who(module, blocks: int = 4096):
    worker = np.full(blocks, -1, np.int32)
    tid = np.zeros(blocks, np.int64)
    module.get_function("who")((blocks,), (32,), (worker, tid))
    return worker, tid


@pytest.mark.parametrize("n", [1, 2, 3])
def test_set_num_threads_bounds_the_workers_of_every_launch(who_module, n):
    # n = 1 fails if the setting is ignored (the default here is 2, the cores of this machine);
    # n = 3 asks for more workers than cores (allowed). Run twice: the second launch reuses the
    # pool's helpers, which must not exceed n either.
    cupytv.set_num_threads(n)
    try:
        assert cupytv.get_num_threads() == n
        for _ in range(2):
            worker, tid = run_who(who_module)
            assert worker.min() >= 0, "every block ran"
            assert worker.max() < n, f"a block ran on worker {worker.max()} with {n} threads set"
            assert len(set(tid)) <= n, f"{len(set(tid))} OS threads ran blocks, {n} allowed"
            assert tid[worker == 0].size == 0 or len(set(tid[worker == 0])) == 1
    finally:
        cupytv.set_num_threads(None)
    assert cupytv.get_num_threads() is None


def test_a_launch_after_idle_time_wakes_a_sleeping_helper(who_module):
    """Idle helpers spin only briefly, then block; a later launch must still wake one."""
    cupytv.set_num_threads(2)
    try:
        run_who(who_module)  # the pool starts its helper
        time.sleep(1.0)  # far beyond the spin: the helper is asleep now
        worker = np.full(64, -1, np.int32)
        saw_helper = np.zeros(1, np.int32)
        who_module.get_function("wait_for_helper")(
            (worker.size,), (1,), (worker, saw_helper, np.int64(HELPER_POLLS))
        )
    finally:
        cupytv.set_num_threads(None)
    assert worker.min() >= 0, "every block ran"
    assert saw_helper[0] == 1, "no other worker ran a block while block 0 waited"


def test_one_chunk_runs_on_the_calling_thread_alone(who_module):
    # A grid with one block wakes no helper, whatever the thread count.
    cupytv.set_num_threads(2)
    try:
        worker, tid = run_who(who_module, blocks=1)
    finally:
        cupytv.set_num_threads(None)
    assert worker.tolist() == [0]
    assert tid[0] == threading.get_native_id()


def test_concurrent_launches_from_several_threads_all_complete(who_module):
    # One launch owns the pool; another thread's launch meanwhile runs on that thread alone.
    cupytv.set_num_threads(2)
    results = {}

    def launch(k):
        results[k] = [run_who(who_module, 2048)[0].min() for _ in range(20)]

    try:
        threads = [threading.Thread(target=launch, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        cupytv.set_num_threads(None)
    assert sorted(results) == [0, 1, 2]
    assert all(m >= 0 for r in results.values() for m in r), "a block of some launch never ran"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_runs_launches_on_its_own_pool(who_module):
    # The child inherits no helper threads (DataLoader workers are forked): its launches must
    # still run every block, on a pool of its own.
    cupytv.set_num_threads(2)
    try:
        run_who(who_module)  # the parent's pool is started
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report and leave without running pytest's teardown
            status = 1
            try:
                worker, _ = run_who(who_module)
                status = 0 if worker.min() >= 0 and worker.max() < 2 else 2
            finally:
                os.write(write, bytes([status]))
                os._exit(0)
        os.close(write)
        status = os.read(read, 1)
        os.close(read)
        os.waitpid(pid, 0)
    finally:
        cupytv.set_num_threads(None)
    assert status == bytes([0]), f"the child's launch failed (status {status!r})"


def test_default_thread_count_follows_omp_num_threads_then_affinity(monkeypatch):
    from cupytv._host import launch

    cores = len(os.sched_getaffinity(0))
    for env, expected in (("3", 3), ("4,2", 4), ("0", cores), ("x", cores), (None, cores)):
        if env is None:
            monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        else:
            monkeypatch.setenv("OMP_NUM_THREADS", env)
        launch.default_num_threads.cache_clear()
        assert launch.default_num_threads() == expected, env
    launch.default_num_threads.cache_clear()


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "2"])
def test_set_num_threads_refuses_bad_counts(bad):
    with pytest.raises(ValueError, match=r"n: expected an int >= 1 or None"):
        cupytv.set_num_threads(bad)
    assert cupytv.get_num_threads() is None


# ---- building: compiler discovery, disk cache ----


def test_missing_compiler_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HostCompilerNotFoundError, match=r"No C\+\+ compiler found") as info:
        HostModule("__global__ void k(int* x) {}", ("k",))
    assert "cupytv.reference" in str(info.value)


def test_cxx_naming_no_executable_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    with pytest.raises(HostCompilerNotFoundError, match="does not name an executable"):
        host_build.find_compiler()


def test_cache_dir_is_overridable_and_reused(monkeypatch, tmp_path):
    monkeypatch.setenv(host_build.CACHE_DIR_ENV, str(tmp_path))
    source = "__global__ void fill(int* x) { x[threadIdx.x] = 7; }"
    first = HostModule(source, ("fill",))
    assert first.path.parent == tmp_path / "host"
    first.path.chmod(stat.S_IRUSR)  # a rebuild would have to replace it; reuse only reads it
    mtime = os.stat(first.path).st_mtime_ns
    second = HostModule(source, ("fill",))
    assert second.path == first.path
    assert os.stat(second.path).st_mtime_ns == mtime
    x = np.zeros(4, np.int32)
    second.get_function("fill")((1,), (4,), (x,))
    np.testing.assert_array_equal(x, 7)


def test_compile_errors_show_the_compiler_output(monkeypatch, tmp_path):
    monkeypatch.setenv(host_build.CACHE_DIR_ENV, str(tmp_path))
    with pytest.raises(RuntimeError, match=r"host compilation.*failed") as info:
        HostModule("__global__ void k(int* x) { undeclared_name(x); }", ("k",))
    assert "undeclared_name" in str(info.value)


def test_extern_shared_rewrite_ignores_comments():
    text = (
        "// an extern __shared__ array is declared once\n"
        "  extern __shared__ __align__(16) unsigned char raw[];\n"
    )
    out = host_build.rewrite_extern_shared(text)
    assert out.splitlines()[0] == "// an extern __shared__ array is declared once"
    assert out.splitlines()[1] == (
        "  unsigned char* const raw = "
        "reinterpret_cast<unsigned char*>(::cupytv_host::dynamic_shared());"
    )


def test_native_builds_are_cached_per_cpu(monkeypatch):
    # -march=native code may not run on another CPU: a cache shared between machines must key
    # each build by what -march=native means where it was built.
    compiler = tuple(host_build.find_compiler())
    flags = host_build.compile_flags(compiler)
    if host_build._native_target(compiler) is None:
        pytest.skip(f"{compiler[0]} does not accept {host_build.NATIVE_FLAGS}")
    assert set(host_build.NATIVE_FLAGS) <= set(flags)
    here = host_build.cache_path("kernel text", compiler, flags)
    assert host_build.cache_path("kernel text", compiler, flags) == here
    monkeypatch.setattr(host_build, "_native_target", lambda command: "-march=another-cpu")
    assert host_build.cache_path("kernel text", compiler, flags) != here


def test_no_contraction_on_the_host():
    # FMA contraction (g++'s default in C++, on by -march=native where the CPU has FMA) would
    # make the host's results depend on the CPU.
    assert "-ffp-contract=off" in host_build.compile_flags(tuple(host_build.find_compiler()))
