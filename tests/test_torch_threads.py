"""Through cupytv.torch, host launches follow torch.get_num_threads(); cupytv.set_num_threads wins.

The thread count of each launch is read where the launch configuration is built
(``cupytv._host.launch.launch_workers``); that the C++ side honours it is tested in
tests/test_host_executor.py.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cupytv  # noqa: E402
import cupytv.torch  # noqa: E402
from cupytv._host import launch  # noqa: E402


@pytest.fixture
def launches(monkeypatch):
    """The thread count of every host launch made while the test runs."""
    seen = []
    resolve = launch.launch_workers

    def spy():
        seen.append(resolve())
        return seen[-1]

    monkeypatch.setattr(launch, "launch_workers", spy)
    return seen


@pytest.fixture
def torch_threads():
    """Restores torch's and cupytv's thread settings after the test."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
    cupytv.set_num_threads(None)


# Two counts that differ from each other and from this machine's default (its core count), so
# a launch that ignored torch's setting, or took another's, shows up.
def distinct_counts() -> tuple[int, int]:
    default = launch.default_num_threads()
    a, b = [n for n in range(1, default + 3) if n != default][:2]
    return a, b


def ops(x: torch.Tensor):
    """One forward + backward per torch op family (1D, 2D, N-D)."""
    x = x.clone().requires_grad_(True)
    cupytv.torch.prox_tv1d(x, 0.1).sum().backward()
    cupytv.torch.prox_tv2d(x, 0.1, max_iter=3).sum().backward()
    cupytv.torch.prox_tv(x, 0.1, axes=(-3, -2, -1), max_iter=3).sum().backward()


@pytest.mark.usefixtures("torch_threads")
def test_torch_ops_follow_torch_get_num_threads(launches):
    x = torch.randn(2, 3, 8, 9, dtype=torch.float64)
    for n in distinct_counts():
        torch.set_num_threads(n)
        launches.clear()
        ops(x)
        assert launches, "no host launch was seen"
        assert set(launches) == {n}, f"torch.set_num_threads({n}), launches used {set(launches)}"


@pytest.mark.usefixtures("torch_threads")
def test_explicit_set_num_threads_wins_over_torch(launches):
    torch_n, ours = distinct_counts()
    torch.set_num_threads(torch_n)
    cupytv.set_num_threads(ours)
    ops(torch.randn(2, 3, 8, 9, dtype=torch.float64))
    assert set(launches) == {ours}


@pytest.mark.usefixtures("torch_threads")
def test_array_api_keeps_its_own_default(launches):
    # torch's setting covers only calls made through cupytv.torch, and does not leak out of them.
    torch_n, _ = distinct_counts()
    torch.set_num_threads(torch_n)
    ops(torch.randn(2, 3, 8, 9, dtype=torch.float64))
    launches.clear()
    cupytv.prox_tv1d(np.random.default_rng(0).standard_normal((4, 16)), 0.1)
    assert set(launches) == {launch.default_num_threads()}
