"""Every kernel instantiation in cuda_src/ compiles with NVRTC, as CuPy would compile it.

No GPU is needed: NVRTC is a compiler library (the ``nvidia-cuda-nvrtc`` wheels in the ``test``
extra), called through ctypes (cupytv/_nvrtc.py). Each kernel file is compiled with the loader's
inlined source, its declared name expressions and ``cupytv._loader.NVRTC_OPTIONS`` plus what CuPy
adds itself (``_loader.CUPY_ADDED_NVRTC_OPTIONS``), for the oldest and the newest architecture we
support.
NVRTC 13 (cupy-cuda13x) no longer targets Volta, so there the oldest architecture it accepts
stands in for compute_70. That each ``cuda12`` / ``cuda13`` extra alone brings an NVRTC that CuPy
finds is scripts/check_cuda_extras.py's job (run by CI in its own environment).
"""

from __future__ import annotations

import pytest

from cupytv import _loader
from cupytv._nvrtc import candidate_libraries, nvrtc_by_major

OLDEST_ARCH = 70
NEWEST_ARCH = 90


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
        f"nvidia-cuda-nvrtc wheels; looked in {candidate_libraries()}"
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
