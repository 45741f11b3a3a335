"""Shared test configuration: the ``gpu`` marker and deterministic random generators."""

from __future__ import annotations

import numpy as np
import pytest

from cupytv._device import gpu_unavailable_reason


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
