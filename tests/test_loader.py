"""The loader: source assembly from cuda_src/, declared instantiations, dispatch, packaging."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cupytv import _loader

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def kernel_dir(tmp_path, monkeypatch):
    """A private cuda_src/ for tests that edit kernel files."""
    monkeypatch.setattr(_loader, "source_dir", lambda: tmp_path)
    _loader.source.cache_clear()
    _loader.instantiations.cache_clear()
    yield tmp_path
    _loader.source.cache_clear()
    _loader.instantiations.cache_clear()


def test_shipped_kernels_inline_their_headers():
    assert "smoke" in _loader.stems()
    text = _loader.source("smoke")
    assert not [line for line in text.splitlines() if line.startswith("#include")]
    assert "typedef long long index_t;" in text
    assert "#pragma once" not in text


def test_header_edit_changes_the_source_string(kernel_dir):
    # CuPy keys its disk cache on this string: a stale kernel after a header edit is the bug.
    (kernel_dir / "k.cu").write_text('// instantiate: k<float>\n#include "h.cuh"\nint after;\n')
    (kernel_dir / "h.cuh").write_text("#pragma once\nint version_1;\n")
    before = _loader.source("k")
    (kernel_dir / "h.cuh").write_text("#pragma once\nint version_2;\n")
    _loader.source.cache_clear()
    after = _loader.source("k")
    assert "version_1" in before
    assert "version_2" in after
    assert before != after


def test_nested_headers_are_inlined_once_with_line_markers(kernel_dir):
    (kernel_dir / "k.cu").write_text(
        '// instantiate: k<float>\n#include "a.cuh"\n#include "b.cuh"\nint k_line_4;\n'
    )
    (kernel_dir / "a.cuh").write_text('#pragma once\n#include "b.cuh"\nint in_a;\n')
    (kernel_dir / "b.cuh").write_text("#pragma once\nint in_b;\n")
    text = _loader.source("k")
    assert text.count("int in_b;") == 1
    assert text.index("int in_b;") < text.index("int in_a;")
    # Counting from the last #line marker before it, the declaration is on line 4 of k.cu.
    lines = text.splitlines()
    target = lines.index("int k_line_4;")
    marker = max(i for i in range(target) if lines[i].startswith("#line"))
    number, name = lines[marker].split()[1:]
    assert name == '"k.cu"'
    assert int(number) + (target - marker - 1) == 4


def test_missing_header_is_reported(kernel_dir):
    (kernel_dir / "k.cu").write_text('// instantiate: k<float>\n#include "nope.cuh"\n')
    with pytest.raises(FileNotFoundError, match=r"nope\.cuh"):
        _loader.source("k")


def test_instantiations_are_read_from_the_kernel_file(kernel_dir):
    (kernel_dir / "k.cu").write_text(
        "// instantiate: k<float, 64>\n//  instantiate:   k<double, 64>  \n// k<int> is not one\n"
    )
    assert _loader.instantiations("k") == ("k<float, 64>", "k<double, 64>")
    (kernel_dir / "none.cu").write_text("__global__ void k() {}\n")
    with pytest.raises(ValueError, match="declares no"):
        _loader.instantiations("none")


def test_unknown_stem_and_name_are_reported():
    with pytest.raises(ValueError, match=r"no kernel file nope\.cu"):
        _loader.source("nope")
    with pytest.raises(KeyError, match="does not instantiate"):
        _loader.get_kernel("smoke", "smoke_tile_scan<int>", np.empty(1))


def test_numpy_arrays_dispatch_to_the_host_executor():
    x = np.arange(6, dtype=np.float64)
    y = np.zeros_like(x)
    _loader.launch("smoke", "smoke_tile_scan<double>", (2,), (4,), (x, y, np.int64(6)))
    np.testing.assert_array_equal(y, [0, 1, 3, 6, 4, 9])


class FakeCupyArray:
    """Looks like a cupy.ndarray to the loader's type check, without CuPy."""

    __module__ = "cupy._core.core"
    device = None


def test_dispatch_refuses_mixed_or_missing_arrays():
    x = np.zeros(4, np.float32)
    with pytest.raises(TypeError, match="mix NumPy and CuPy"):
        _loader.launch("smoke", "smoke_tile_scan<float>", 1, 4, (x, FakeCupyArray(), np.int64(4)))
    with pytest.raises(TypeError, match="no array argument"):
        _loader.launch("smoke", "smoke_tile_scan<float>", 1, 4, ([0.0], [0.0], np.int64(1)))
    with pytest.raises(TypeError, match=r"numpy\.ndarray .* or cupy\.ndarray"):
        _loader.get_kernel("smoke", "smoke_tile_scan<float>", [0.0])


@pytest.mark.gpu
def test_cupy_arrays_run_on_their_own_device():
    import cupy

    with cupy.cuda.Device(cupy.cuda.runtime.getDeviceCount() - 1) as device:
        x = cupy.arange(6, dtype=cupy.float64)
        y = cupy.zeros_like(x)
    _loader.launch("smoke", "smoke_tile_scan<double>", (2,), (4,), (x, y, np.int64(6)))
    assert y.device == device
    np.testing.assert_array_equal(y.get(), [0, 1, 3, 6, 4, 9])


def _can_build_wheels_offline() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    major, minor = (int(v) for v in setuptools.__version__.split(".")[:2])
    try:
        import wheel  # noqa: F401  (setuptools < 70.1 builds wheels through it)
    except ImportError:
        return (major, minor) >= (70, 1)
    return True


@pytest.mark.skipif(
    not _can_build_wheels_offline(), reason="an offline wheel build needs setuptools>=70.1"
)
def test_wheel_ships_kernels_and_host_runtime(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("cupytv-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ROOT.joinpath("cuda_src").iterdir():
        assert f"cupytv/cuda_src/{path.name}" in names
    for name in ("cuda_host.h", "build.py", "launch.py", "__init__.py"):
        assert f"cupytv/_host/{name}" in names


def test_dynamic_shared_memory_is_granted_beyond_the_default_less_static():
    # CUDA lets a kernel take 48 KB less its static shared memory by default: tv1d_vjp<double>
    # (a 1 KB static table of reciprocals) with a 47-sample tile (48128 bytes) needs an opt-in.
    class Kernel:
        def __init__(self, static):
            self.limit, self.reads, self.writes = (
                _loader.DEFAULT_DYNAMIC_SHARED_BYTES - static,
                0,
                0,
            )

        def __eq__(self, other):  # unhashable, as a kernel object may be: keyed by id
            return self is other

        @property
        def max_dynamic_shared_size_bytes(self):
            self.reads += 1
            return self.limit

        @max_dynamic_shared_size_bytes.setter
        def max_dynamic_shared_size_bytes(self, value):
            self.writes += 1
            self.limit = value

    kernel = Kernel(static=1024 + 8)
    for _ in range(3):
        _loader.grant_dynamic_shared(kernel, 128 * 47 * 8)
    assert kernel.limit == 128 * 47 * 8
    assert (kernel.reads, kernel.writes) == (1, 1)  # read once, raised once
    small = Kernel(static=0)
    _loader.grant_dynamic_shared(small, 1024)
    assert small.writes == 0
