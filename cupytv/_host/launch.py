"""Load a compiled host kernel library and launch its kernels like ``cupy.RawKernel``.

``HostKernel(grid, block, args, shared_mem=0)`` takes the same arguments as a CuPy raw kernel call.
Arguments are checked against the kernel's C++ signature (exported by the generated launcher), and
more strictly than CuPy does: a pointer parameter takes a NumPy array of exactly its element type
(writeable unless the pointee is const), a scalar parameter a NumPy scalar of exactly its type.
A Python int passed where the kernel takes ``int`` would be silently misread on the GPU, so it is
refused here, where CI runs.
"""

from __future__ import annotations

import contextvars
import ctypes
import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cupytv._host.build import compile_library, sanitize_enabled

# CUDA's launch limits, checked so that a configuration the GPU would refuse fails on the CPU too.
MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK_DIM = (1024, 1024, 64)
MAX_GRID_DIM = (2**31 - 1, 65535, 65535)
# The dynamic shared memory a kernel may request: what every supported GPU grants after opting in
# (cupytv._loader opts in above CUDA's 48 KB default; Turing's 64 KB is the smallest opt-in limit
# among compute capabilities >= 7.0), so a launch the GPUs would refuse fails on the CPU too.
MAX_DYNAMIC_SHARED_BYTES = 64 * 1024


class _LaunchConfig(ctypes.Structure):
    # Mirrors cupytv_host::LaunchConfig in cuda_host.h.
    _fields_ = (
        ("grid", ctypes.c_uint * 3),
        ("block", ctypes.c_uint * 3),
        ("shared_mem", ctypes.c_ulonglong),
        ("workers", ctypes.c_int),
    )


#: Worker threads per launch set by set_num_threads; 0: not set.
_workers = 0
#: The count a caller asks for when set_num_threads was not called (cupytv.torch passes
#: torch.get_num_threads()); 0: none. A context variable, so concurrent callers do not mix.
_caller_workers: contextvars.ContextVar[int] = contextvars.ContextVar(
    "cupytv_host_workers", default=0
)


def set_num_threads(n: int | None) -> None:
    """Run the host executor's launches (NumPy arrays) on ``n`` CPU threads; None: the default.

    The default is ``OMP_NUM_THREADS`` if set, else the cores this process may run on
    (``os.sched_getaffinity``); through ``cupytv.torch``, ``torch.get_num_threads()``. This
    changes it at any time, for every later launch in the process, and wins over both defaults.
    Idle threads block after a short spin, and a launch waits only for the threads that took part
    in it, so the default stays fast on a CPU other processes keep busy. GPU launches are
    unaffected.
    """
    global _workers
    if n is None:
        _workers = 0
        return
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n: expected an int >= 1 or None (the default), got {n!r}")
    _workers = int(n)


def get_num_threads() -> int | None:
    """The thread count :func:`set_num_threads` set, or None when the default applies."""
    return _workers or None


@functools.cache
def default_num_threads() -> int:
    """``OMP_NUM_THREADS`` (its first entry, as OpenMP reads it) if set to a positive int, else
    the number of cores this process may run on (its affinity mask, which taskset and container
    cpusets narrow; ``os.cpu_count()`` counts every core of the machine). Read once."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


class default_threads_for_caller:  # a context manager, named as the function it replaced
    """Within this context, launches use ``n`` threads unless :func:`set_num_threads` was called.

    A class, not a generator context manager: the torch ops enter it on every call.
    """

    __slots__ = ("_n", "_token")

    def __init__(self, n: int):
        self._n = max(1, int(n))

    def __enter__(self):
        self._token = _caller_workers.set(self._n)
        return self

    def __exit__(self, *exc):
        _caller_workers.reset(self._token)
        return False


def launch_workers() -> int:
    """The thread count of the next launch: set_num_threads, else the caller's, else the default."""
    return _workers or _caller_workers.get() or default_num_threads()


def _dims(value: int | Sequence[int], what: str, limits: tuple[int, int, int]) -> tuple[int, ...]:
    dims = (value,) if isinstance(value, int | np.integer) else tuple(value)
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, int | np.integer) for d in dims):
        raise TypeError(f"{what} must be an int or a tuple of 1 to 3 ints, got {value!r}")
    dims = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    for axis, (d, limit) in enumerate(zip(dims, limits, strict=True)):
        if not 1 <= d <= limit:
            raise ValueError(f"{what}[{axis}] must be in [1, {limit}] (as on CUDA), got {d}")
    return dims


class HostKernel:
    """One kernel instantiation in a host library, callable as ``kernel(grid, block, args)``."""

    def __init__(self, name: str, launcher, signature: str):
        self.name = name
        self._launcher = launcher
        # Each parameter: (is_pointer, pointee_is_const, dtype).
        self._params = [
            (code[0] in "pP", code[0] == "p", np.dtype(code.lstrip("pP")))
            for code in signature.split(",")
            if code
        ]

    def __repr__(self) -> str:
        return f"HostKernel({self.name!r})"

    def __call__(self, grid, block, args, shared_mem: int = 0) -> None:
        grid3 = _dims(grid, "grid", MAX_GRID_DIM)
        block3 = _dims(block, "block", MAX_BLOCK_DIM)
        threads = block3[0] * block3[1] * block3[2]
        if threads > MAX_THREADS_PER_BLOCK:
            raise ValueError(
                f"{self.name}: a block may hold at most {MAX_THREADS_PER_BLOCK} threads, "
                f"got {block3} = {threads}"
            )
        if not 0 <= int(shared_mem) <= MAX_DYNAMIC_SHARED_BYTES:
            raise ValueError(
                f"{self.name}: shared_mem must be in [0, {MAX_DYNAMIC_SHARED_BYTES}] bytes, "
                f"got {shared_mem}"
            )
        args = tuple(args)
        if len(args) != len(self._params):
            raise TypeError(f"{self.name} takes {len(self._params)} arguments, got {len(args)}")
        # argv[i] points at the i-th argument's value (CUDA's kernelParams convention): one
        # 8-byte slot each (every parameter type fits; x86-64 and AArch64 are little-endian, so
        # a narrower value sits at its slot's start). One buffer keeps this path cheap (~1 us
        # per argument): iterative solvers launch a few kernels per iteration.
        slots = np.zeros(max(1, len(args)), dtype=np.uint64)
        base = slots.ctypes.data
        argv = (ctypes.c_void_p * max(1, len(args)))()
        for i, (arg, (is_pointer, is_const, dtype)) in enumerate(
            zip(args, self._params, strict=True)
        ):
            if is_pointer:
                self._check_array(i, arg, is_const, dtype)
                slots[i] = arg.__array_interface__["data"][0]
            else:
                self._check_scalar(i, arg, dtype)
                slots[i : i + 1].view(np.uint8)[: dtype.itemsize].view(dtype)[0] = arg
            argv[i] = base + 8 * i
        config = _LaunchConfig(grid3, block3, int(shared_mem), launch_workers())
        self._launcher(ctypes.byref(config), argv)

    def _check_array(self, i: int, arg, is_const: bool, dtype: np.dtype) -> None:
        # Built only for a message: dtype.name costs microseconds, and kernels launch per
        # iteration of iterative solvers.
        def pointee() -> str:
            return f"{'const ' if is_const else ''}{dtype.name}*"

        if not isinstance(arg, np.ndarray):
            raise TypeError(
                f"{self.name}: argument {i} ({pointee()}) must be a numpy.ndarray on the host "
                f"executor, got {type(arg).__module__}.{type(arg).__name__}"
            )
        if arg.dtype != dtype:
            raise TypeError(
                f"{self.name}: argument {i} ({pointee()}) needs dtype {dtype}, got {arg.dtype}"
            )
        if not is_const and not arg.flags.writeable:
            raise ValueError(f"{self.name}: argument {i} ({pointee()}) is written but read-only")

    def _check_scalar(self, i: int, arg, dtype: np.dtype) -> None:
        if not isinstance(arg, np.generic) or arg.dtype != dtype:
            got = f"numpy.{arg.dtype}" if isinstance(arg, np.generic) else type(arg).__name__
            raise TypeError(
                f"{self.name}: argument {i} must be a numpy.{dtype} scalar "
                f"(e.g. numpy.{dtype}(value)), got {got}"
            )


class HostModule:
    """A compiled host library holding every requested instantiation of one kernel file."""

    def __init__(
        self,
        source: str,
        name_expressions: Sequence[str],
        defines: Sequence[str] = (),
        sanitize: bool | None = None,
    ):
        """Compile (or load from the disk cache) ``source`` for ``name_expressions``.

        ``defines`` are extra ``-D`` flags; ``sanitize`` builds with ASan + UBSan and defaults to
        the ``CUPYTV_HOST_SANITIZE`` environment variable.
        """
        self.name_expressions = tuple(name_expressions)
        if sanitize is None:
            sanitize = sanitize_enabled()
        self.path: Path = compile_library(source, self.name_expressions, tuple(defines), sanitize)
        self._lib = ctypes.CDLL(str(self.path))
        self._kernels = {}
        for i, expr in enumerate(self.name_expressions):
            signature = getattr(self._lib, f"cupytv_signature_{i}")
            signature.restype = ctypes.c_char_p
            signature.argtypes = ()
            launcher = getattr(self._lib, f"cupytv_launch_{i}")
            launcher.restype = None
            launcher.argtypes = (ctypes.POINTER(_LaunchConfig), ctypes.POINTER(ctypes.c_void_p))
            self._kernels[expr] = HostKernel(expr, launcher, signature().decode())

    def get_function(self, name_expression: str) -> HostKernel:
        """The kernel for a name expression, as ``cupy.RawModule.get_function`` returns it."""
        try:
            return self._kernels[name_expression]
        except KeyError:
            raise KeyError(
                f"{name_expression!r} was not instantiated; this module has "
                f"{list(self.name_expressions)}"
            ) from None
