"""Every kernel instantiation in cuda_src/ compiles with NVRTC, as CuPy would compile it.

No GPU is needed: NVRTC is a compiler library (the ``nvidia-cuda-nvrtc`` wheels in the ``test``
extra), called here through ctypes. Each kernel file is compiled with the loader's inlined source,
its declared name expressions and ``cupytv._loader.NVRTC_OPTIONS`` plus what CuPy adds itself
(``_loader.CUPY_ADDED_NVRTC_OPTIONS``), for the oldest and the newest architecture we support.
NVRTC 13 (cupy-cuda13x) no longer targets Volta, so there the oldest architecture it accepts
stands in for compute_70. That each ``cuda12`` / ``cuda13`` extra alone brings an NVRTC that CuPy
finds is scripts/check_cuda_extras.py's job (run by CI in its own environment).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from pathlib import Path

import pytest

from cupytv import _loader

OLDEST_ARCH = 70
NEWEST_ARCH = 90


def _candidate_libraries() -> list[Path]:
    found = []
    try:
        import nvidia

        for root in nvidia.__path__:
            found += sorted(Path(root).glob("*/lib/libnvrtc.so.[0-9]*"))
    except ImportError:
        pass
    for env in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(env):
            found += sorted(Path(os.environ[env]).glob("lib64/libnvrtc.so.[0-9]*"))
    system = ctypes.util.find_library("nvrtc")
    if system:
        found.append(Path(system))
    return found


class Nvrtc:
    """The few NVRTC entry points a compile check needs."""

    def __init__(self, path: Path):
        self.path = path
        self.lib = ctypes.CDLL(str(path))
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "version")
        self.version = (major.value, minor.value)
        count = ctypes.c_int()
        self._check(self.lib.nvrtcGetNumSupportedArchs(ctypes.byref(count)), "archs")
        archs = (ctypes.c_int * count.value)()
        self._check(self.lib.nvrtcGetSupportedArchs(archs), "archs")
        self.archs = tuple(archs)

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p
            raise RuntimeError(f"nvrtc {what}: {self.lib.nvrtcGetErrorString(status).decode()}")

    def compile(self, source: str, name_expressions, options) -> tuple[bool, str, dict]:
        """(success, log, {name expression: lowered name})."""
        prog = ctypes.c_void_p()
        self._check(
            self.lib.nvrtcCreateProgram(
                ctypes.byref(prog), source.encode(), b"kernel.cu", 0, None, None
            ),
            "create",
        )
        try:
            for expr in name_expressions:
                self._check(self.lib.nvrtcAddNameExpression(prog, expr.encode()), "name")
            opts = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
            status = self.lib.nvrtcCompileProgram(prog, len(options), opts)
            size = ctypes.c_size_t()
            self._check(self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "log size")
            log = ctypes.create_string_buffer(size.value)
            self._check(self.lib.nvrtcGetProgramLog(prog, log), "log")
            lowered = {}
            if status == 0:
                for expr in name_expressions:
                    name = ctypes.c_char_p()
                    self._check(
                        self.lib.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(name)),
                        "lowered name",
                    )
                    lowered[expr] = name.value.decode()
            return status == 0, log.value.decode(errors="replace"), lowered
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))


@functools.cache
def nvrtc_by_major() -> dict[int, Nvrtc]:
    """One NVRTC per major version found (12 serves cupy-cuda12x, 13 cupy-cuda13x)."""
    found: dict[int, Nvrtc] = {}
    for path in _candidate_libraries():
        nvrtc = Nvrtc(path)
        found.setdefault(nvrtc.version[0], nvrtc)
    return found


def _cases():
    majors = sorted(nvrtc_by_major())
    if not majors:
        # Not a skip: the wheels are in the test extra, so a missing NVRTC is a broken setup.
        return [pytest.param(None, None, None, id="no-nvrtc-found")]
    cases = []
    for major in majors:
        oldest = min(a for a in nvrtc_by_major()[major].archs if a >= OLDEST_ARCH)
        for arch in sorted({oldest, NEWEST_ARCH}):
            for stem in _loader.stems():
                cases.append(pytest.param(major, arch, stem, id=f"nvrtc{major}-sm{arch}-{stem}"))
    return cases


def _compile(major: int, arch: int, source: str, names):
    options = (
        *_loader.NVRTC_OPTIONS,
        *_loader.CUPY_ADDED_NVRTC_OPTIONS,
        f"--gpu-architecture=compute_{arch}",
    )
    return nvrtc_by_major()[major].compile(source, names, options)


@pytest.mark.parametrize(("major", "arch", "stem"), _cases())
def test_every_instantiation_compiles(major, arch, stem):
    assert major is not None, (
        "no libnvrtc found: install the test extra (pip install '.[test]'), which brings the "
        f"nvidia-cuda-nvrtc wheels; looked in {_candidate_libraries()}"
    )
    names = _loader.instantiations(stem)
    ok, log, lowered = _compile(major, arch, _loader.source(stem), names)
    assert ok, f"NVRTC {major} rejected {stem}.cu for compute_{arch}:\n{log}"
    assert set(lowered) == set(names)


def test_a_kernel_nvrtc_rejects_fails_the_check():
    # The check above must be able to fail: host-only C++ (std::vector) is not device code.
    major = max(nvrtc_by_major(), default=None)
    assert major is not None, "no libnvrtc found (see test_every_instantiation_compiles)"
    bad = "#include <vector>\ntemplate <typename T> __global__ void k(T* x) { std::vector<T> v; }\n"
    ok, log, _ = _compile(major, NEWEST_ARCH, bad, ["k<float>"])
    assert not ok
    assert "vector" in log
