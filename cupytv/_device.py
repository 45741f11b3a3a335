"""Whether CuPy can run kernels here: the one test the CLI, the tests and the benchmarks share."""

from __future__ import annotations

import functools


@functools.cache
def gpu_unavailable_reason() -> str | None:
    """Why CuPy cannot run kernels here, or None when it can.

    Importing CuPy is not enough (it imports on machines without a driver); a device must be
    counted and a tiny kernel must actually run. Cached: the answer does not change within a
    process, and asking costs a context creation.
    """
    try:
        import cupy
    except ImportError as exc:  # CuPy is an optional extra
        return f"CuPy is not installed ({exc})"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy sees no CUDA device"
        (cupy.arange(4) * 2).sum().item()
    except Exception as exc:  # any driver/runtime failure means: no usable GPU
        return f"no usable CUDA device ({type(exc).__name__}: {str(exc)[:120]})"
    return None


def usable_cupy():
    """The ``cupy`` module when it can run kernels here, else None (see the reason above)."""
    if gpu_unavailable_reason() is not None:
        return None
    import cupy

    return cupy
