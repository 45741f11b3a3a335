"""NVRTC, the compiler CuPy runs, called through ctypes: no GPU and no CuPy needed.

tests/test_nvrtc.py compiles every kernel file with it as CuPy would; scripts/kernel_report.py
asks it for the machine code (CUBIN) and ptxas's resource report. The libraries come from the
``nvidia-cuda-nvrtc`` wheels (the ``cuda12`` / ``cuda13`` and ``test`` extras) or a CUDA toolkit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from pathlib import Path


def candidate_libraries() -> list[Path]:
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
        ok, log, lowered, _ = self.compile_cubin(source, name_expressions, options)
        return ok, log, lowered

    def compile_cubin(self, source: str, name_expressions, options):
        """(success, log, {name expression: lowered name}, machine code or None): the code is the
        CUBIN when ``options`` name a real architecture (``--gpu-architecture=sm_XX``)."""
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
            cubin = None
            if status == 0 and any("=sm_" in o for o in options):
                self._check(self.lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "cubin size")
                code = ctypes.create_string_buffer(size.value)
                self._check(self.lib.nvrtcGetCUBIN(prog, code), "cubin")
                cubin = code.raw
            return status == 0, log.value.decode(errors="replace"), lowered, cubin
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))


@functools.cache
def nvrtc_by_major() -> dict[int, Nvrtc]:
    """One NVRTC per major version found (12 serves cupy-cuda12x, 13 cupy-cuda13x)."""
    found: dict[int, Nvrtc] = {}
    for path in candidate_libraries():
        nvrtc = Nvrtc(path)
        found.setdefault(nvrtc.version[0], nvrtc)
    return found
