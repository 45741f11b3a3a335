"""Shared test configuration: the ``gpu`` marker and deterministic random generators."""

from __future__ import annotations

import functools

import numpy as np
import pytest


@functools.cache
def gpu_unavailable_reason() -> str | None:
    """Why CuPy cannot run kernels here, or None when it can.

    Importing CuPy is not enough (it imports on machines without a driver); a device must be
    counted and a tiny kernel must actually run.
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
        return f"no usable CUDA device ({type(exc).__name__}: {exc})"
    return None


def pytest_collection_modifyitems(config, items):
    reason = gpu_unavailable_reason()
    if reason is None:
        return
    skip_gpu = pytest.mark.skip(reason=f"gpu test: {reason}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(
    params=[
        pytest.param("numpy", id="host"),
        pytest.param("cupy", id="cupy", marks=pytest.mark.gpu),
    ]
)
def xp(request):
    """The array module a kernel test runs on: NumPy (host executor, always) and CuPy (``gpu``).

    One test body serves both executors, as the house style asks; compare results on the host
    with ``cupytv._validation.host_array``.
    """
    if request.param == "numpy":
        return np
    import cupy

    return cupy


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A generator seeded from the test's node id, so every test is reproducible on its own."""
    seed = sum(request.node.nodeid.encode()) * 7919
    return np.random.default_rng(seed)
