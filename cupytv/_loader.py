"""The one door to the CUDA kernels: reads ``cuda_src/``, builds and caches executable modules.

Every kernel file ``cuda_src/<stem>.cu`` is read as text and its ``#include "<file>"`` lines are
replaced by the text of that file from ``cuda_src/`` (recursively, each file once). CuPy keys its
disk cache on the source string alone, so an edited header must change that string; the same
string goes to NVRTC (through CuPy) and to the host executor, so both compile identical code.

A kernel file lists the template instantiations it provides, one per line, as
``// instantiate: <name expression>`` (e.g. ``// instantiate: smoke_tile_scan<float>``). All of
them are compiled together, once per file: with ``cupy.RawModule(name_expressions=...)`` per
(device, source hash) for CuPy arrays, and into one host library for NumPy arrays.

Wrappers call :func:`launch`, which picks the executor from the argument arrays: NumPy arrays run
on the host executor, CuPy arrays on their own device and the current CuPy stream. The launch call
is the same either way: ``launch(stem, name_expression, grid, block, args, shared_mem)``.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import numpy as np

from cupytv._host import HostModule
from cupytv._host.build import PROBE_DEFINE, sanitize_enabled
from cupytv._validation import is_cupy_array

# Options every NVRTC compilation of a cuda_src/ file gets; cupy.RawModule adds -arch and
# CUPY_ADDED_NVRTC_OPTIONS itself. tests/test_nvrtc.py and scripts/check_cuda_extras.py call NVRTC
# without CuPy's device query (no GPU there), so they pass both tuples themselves.
NVRTC_OPTIONS: tuple[str, ...] = ("--std=c++17",)
# What cupy/cuda/compiler.py appends on the way to NVRTC (CuPy 14; --pch, a compile-time cache
# only, left out).
CUPY_ADDED_NVRTC_OPTIONS: tuple[str, ...] = ("-ftz=true", "--device-as-default-execution-space")
# CUDA grants a kernel this much dynamic shared memory by default; more needs a per-kernel opt-in.
DEFAULT_DYNAMIC_SHARED_BYTES = 48 * 1024

_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.MULTILINE)
_PRAGMA_ONCE = re.compile(r"^[ \t]*#[ \t]*pragma[ \t]+once[ \t]*$", re.MULTILINE)
_INSTANTIATE = re.compile(r"^[ \t]*//[ \t]*instantiate:[ \t]*(.+?)[ \t]*$", re.MULTILINE)


def source_dir() -> Path:
    """``cuda_src/``: shipped as ``cupytv/cuda_src`` in a wheel, at the top of a checkout."""
    installed = Path(__file__).resolve().parent / "cuda_src"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parent.parent / "cuda_src"


def stems() -> tuple[str, ...]:
    """Every kernel file, by stem (``smoke`` for ``cuda_src/smoke.cu``)."""
    return tuple(sorted(p.stem for p in source_dir().glob("*.cu")))


def _inline(path: Path, seen: set[str]) -> str:
    text = _PRAGMA_ONCE.sub("", path.read_text())

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        header = source_dir() / name
        if not header.is_file():
            raise FileNotFoundError(
                f"{path.name} includes {name!r}, which is not in {source_dir()}"
            )
        if name in seen:
            return f"// {name} already inlined above"
        seen.add(name)
        # #line directives keep compiler messages pointing at the right file and line.
        line = text.count("\n", 0, match.end()) + 2
        return f'#line 1 "{name}"\n{_inline(header, seen)}\n#line {line} "{path.name}"'

    return _INCLUDE.sub(replace, text)


@cache
def source(stem: str) -> str:
    """The full text of ``cuda_src/<stem>.cu`` with its shared headers inlined."""
    path = source_dir() / f"{stem}.cu"
    if not path.is_file():
        raise ValueError(f"no kernel file {path.name} in {source_dir()}; there are {stems()}")
    return f'#line 1 "{path.name}"\n' + _inline(path, set())


@cache
def instantiations(stem: str) -> tuple[str, ...]:
    """The name expressions ``cuda_src/<stem>.cu`` declares with ``// instantiate:`` lines."""
    names = tuple(_INSTANTIATE.findall((source_dir() / f"{stem}.cu").read_text()))
    if not names:
        raise ValueError(f"{stem}.cu declares no '// instantiate: <name expression>' lines")
    return names


_lock = threading.Lock()
_cupy_modules: dict[tuple[int, str], object] = {}


def _cupy_module(stem: str, device_id: int):
    text = source(stem)
    key = (device_id, hashlib.sha256(text.encode()).hexdigest())
    with _lock:
        module = _cupy_modules.get(key)
        if module is None:
            import cupy

            module = cupy.RawModule(
                code=text, options=NVRTC_OPTIONS, name_expressions=list(instantiations(stem))
            )
            _cupy_modules[key] = module
        return module


@cache
def _host_module(stem: str, sanitize: bool, probe: bool = False) -> HostModule:
    defines = (PROBE_DEFINE,) if probe else ()
    return HostModule(source(stem), instantiations(stem), defines=defines, sanitize=sanitize)


# Whether host launches use the probe builds (cupytv/gpu_proxy.py); a process-wide switch, as the
# proxy runs one wrapper call at a time.
_probe_on = False


@contextmanager
def probe_mode() -> Iterator[None]:
    """Run host launches on the warp-lockstep probe builds (-DCUPYTV_PROBE) inside the block."""
    global _probe_on
    before, _probe_on = _probe_on, True
    try:
        yield
    finally:
        _probe_on = before


def probe_module(stem: str) -> HostModule:
    """The probe build of ``cuda_src/<stem>.cu`` (its library exports the probe's report)."""
    return _host_module(stem, False, True)


def get_kernel(stem: str, name_expression: str, like):
    """The kernel ``name_expression`` of ``cuda_src/<stem>.cu`` for arrays like ``like``.

    For a NumPy array, a :class:`cupytv._host.HostKernel`; for a CuPy array, a
    ``cupy.RawKernel`` compiled for ``like``'s device. Both are called as
    ``kernel(grid, block, args, shared_mem=0)``.
    """
    if name_expression not in instantiations(stem):
        raise KeyError(
            f"{stem}.cu does not instantiate {name_expression!r}; it has {instantiations(stem)}"
        )
    if isinstance(like, np.ndarray):
        if _probe_on:
            return probe_module(stem).get_function(name_expression)
        return _host_module(stem, sanitize_enabled()).get_function(name_expression)
    if is_cupy_array(like):
        with like.device:
            return _cupy_module(stem, like.device.id).get_function(name_expression)
    raise TypeError(
        f"kernels run on numpy.ndarray (CPU) or cupy.ndarray (GPU), got {type(like).__name__}"
    )


def launch(stem, name_expression, grid, block, args, shared_mem: int = 0) -> None:
    """Run a kernel where its array arguments live; the one launch call the wrappers make.

    All arrays in ``args`` must be NumPy arrays (host executor) or all CuPy arrays on one device
    (launched on that device, on the current stream). Scalars must be NumPy scalars of exactly the
    kernel parameter's type.
    """
    arrays = [a for a in args if isinstance(a, np.ndarray) or is_cupy_array(a)]
    if not arrays:
        raise TypeError(f"{name_expression}: no array argument tells where to run")
    on_gpu = [is_cupy_array(a) for a in arrays]
    if any(on_gpu) and not all(on_gpu):
        raise TypeError(
            f"{name_expression}: arguments mix NumPy and CuPy arrays; pass all of one kind"
        )
    kernel = get_kernel(stem, name_expression, arrays[0])
    if not on_gpu[0]:
        kernel(grid, block, args, shared_mem=shared_mem)
        return
    device = arrays[0].device
    if any(a.device != device for a in arrays):
        raise ValueError(
            f"{name_expression}: arrays are on devices {sorted({a.device.id for a in arrays})}; "
            "all must be on one device"
        )
    with device:
        if shared_mem:
            grant_dynamic_shared(kernel, shared_mem)
        kernel(grid, block, args, shared_mem=shared_mem)


def grant_dynamic_shared(kernel, shared_mem: int) -> None:
    """Let ``kernel`` launch with ``shared_mem`` bytes of dynamic shared memory.

    A kernel may take DEFAULT_DYNAMIC_SHARED_BYTES less its *static* shared memory by default
    (CUDA's ``cudaFuncAttributeMaxDynamicSharedMemorySize``): a 48 KB tile beside a 1 KB static
    table failed to launch. So the kernel's own limit is read (once per kernel: CuPy caches the
    kernel objects per device, and reading it is a driver call) and raised when the launch needs
    more (an opt-in, up to the device's per-block maximum).
    """
    entry = _GRANTED.get(id(kernel))
    if entry is None or entry[0] is not kernel:
        entry = _GRANTED[id(kernel)] = (kernel, kernel.max_dynamic_shared_size_bytes)
    if entry[1] < shared_mem:
        kernel.max_dynamic_shared_size_bytes = shared_mem
        _GRANTED[id(kernel)] = (kernel, shared_mem)


#: Each GPU kernel's dynamic shared memory limit as last read or set (grant_dynamic_shared), by
#: id: the entry holds the kernel too, so an id is never reused while it is here (and the kernel
#: objects need not be hashable).
_GRANTED: dict[int, tuple[object, int]] = {}
