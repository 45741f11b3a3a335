"""Peak memory of one call: what it allocates beyond the arrays that exist before it.

Three meters, one question (the most bytes held at once during the call, counted from the
state just before it, so the call's output is included):

* ``host_peak``: ``tracemalloc``. It sees every NumPy allocation (NumPy reports its data buffers
  to it), whether or not the pages are ever touched, and nothing that C++ code or torch allocate
  themselves. The host executor's kernels allocate nothing but their per-worker shared-memory
  buffer (at most 64 KB a worker, cupytv._host.launch.MAX_DYNAMIC_SHARED_BYTES) and fiber stacks
  for kernels with barriers: the wrappers pass every workspace in as NumPy arrays, so this meter
  sees all of an op's sizeable memory on the host.
* ``rss_peak``: the process's resident-set high-water mark (Linux: reset through
  /proc/self/clear_refs, read as VmHWM). It sees every allocation that is touched, torch's
  included, but only pages actually written (a workspace the kernel never touches costs nothing
  here) and only allocations large enough for malloc to map them apart: run with
  ``MALLOC_MMAP_THRESHOLD_`` set (``RSS_ENV``) so that freed blocks leave the resident set.
* ``gpu_peak``: CuPy's memory pool, through a ``cupy.cuda.MemoryHook`` that adds up the sizes
  the pool hands out and takes back during the call: the device memory the call held at most
  (allocations outside CuPy's pool, e.g. torch's CUDA caching allocator, are not seen).
"""

from __future__ import annotations

import gc
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

#: Environment for ``rss_peak``: glibc maps blocks of at least this many bytes on their own (and
#: unmaps them when freed); setting it also stops glibc raising the threshold as blocks are freed.
RSS_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")
_RESET_PEAK_RSS = "5"  # clear_refs code that resets VmHWM to the current resident set


def host_peak(fn: Callable[[], object]) -> tuple[object, int]:
    """``(fn(), bytes)``: the most bytes NumPy (and Python) held during ``fn`` beyond what they
    held before it, as tracemalloc counts them."""
    gc.collect()
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        if started:
            tracemalloc.stop()
    return result, peak - before


def rss_available() -> str | None:
    """None when ``rss_peak`` can measure in this process, else why not."""
    if not _CLEAR_REFS.exists():
        return "no /proc/self/clear_refs (not Linux)"
    missing = [k for k, v in RSS_ENV.items() if os.environ.get(k) != v]
    if missing:
        return f"the process did not start with {RSS_ENV} (freed blocks would stay resident)"
    return None


def rss_peak(fn: Callable[[], object]) -> tuple[object, int]:
    """``(fn(), bytes)``: the resident-set high-water mark during ``fn`` over the resident set
    before it. Needs ``rss_available()`` to be None."""
    reason = rss_available()
    if reason is not None:
        raise RuntimeError(f"rss_peak: {reason}")
    gc.collect()
    before = _status_kib("VmRSS")
    _CLEAR_REFS.write_text(_RESET_PEAK_RSS)
    result = fn()
    return result, (_status_kib("VmHWM") - before) * 1024


def gpu_peak(fn: Callable[[], object]) -> tuple[object, int]:
    """``(fn(), bytes)``: the most bytes CuPy's default pool had in use during ``fn`` beyond what
    it had in use before it, counted from the pool's own malloc and free callbacks."""
    import cupy

    class HighWater(cupy.cuda.MemoryHook):
        name = "cupytv_high_water"

        def __init__(self):
            self.used = self.high = 0

        def malloc_postprocess(self, **kwargs):
            self.used += kwargs["mem_size"]
            self.high = max(self.high, self.used)

        def free_postprocess(self, **kwargs):
            self.used -= kwargs["mem_size"]

    gc.collect()
    cupy.cuda.Device().synchronize()
    hook = HighWater()
    with hook:
        result = fn()
        cupy.cuda.Device().synchronize()
    return result, hook.high


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])  # "VmHWM:   123456 kB"
    raise RuntimeError(f"{_STATUS} has no {field} line")
