"""Tensors to cupytv's arrays and back, without copies, on the caller's device and stream.

CPU tensors become NumPy views (the host executor); CUDA tensors become CuPy arrays through
DLPack, and kernels launch on PyTorch's *current* stream of the tensor's device, so a model that
runs on a side stream, or on several GPUs, orders our kernels with its own work.
"""

from __future__ import annotations

import contextlib
import numbers

import numpy as np
import torch
from torch.autograd import forward_ad

from cupytv._host.launch import default_threads_for_caller
from cupytv._validation import is_cupy_array

#: Dtypes computed in float32 and returned in their own dtype (the kernels have no half types).
HALF_DTYPES = (torch.float16, torch.bfloat16)


def to_array(t: torch.Tensor):
    """A zero-copy NumPy (CPU) or CuPy (CUDA) view of ``t``'s data (detached)."""
    # is_cpu / is_cuda rather than device.type: a device object per call costs ~0.3 us.
    if t.is_cpu:
        return t.detach().numpy()
    if t.is_cuda:
        t = t.detach()
        import cupy

        return cupy.from_dlpack(t)
    raise ValueError(f"expected a CPU or CUDA tensor, got one on {t.device}")


def from_array(a) -> torch.Tensor:
    """The tensor viewing a NumPy or CuPy array: zero copy when it is in C order.

    The ops' fake implementations promise C order, and the 2D and N-D wrappers hand back views
    with their TV axes moved into place (solved as contiguous slices), which are copied here.
    The torch wrappers lay their inputs out so that this is rare (:class:`Layout`).
    """
    if isinstance(a, (np.ndarray, np.generic)):  # a reduction may hand back a NumPy scalar
        a = np.asarray(a)  # (np.ascontiguousarray would make a 0-d array 1-d)
        return torch.from_numpy(a if a.flags.c_contiguous else np.ascontiguousarray(a))
    return torch.from_dlpack(a).contiguous()


class on_stream:  # used as a function: ``with on_stream(x):``
    """Make CuPy launch on ``t``'s device and PyTorch's current stream there; on the CPU, run
    host launches on ``torch.get_num_threads()`` threads (unless ``cupytv.set_num_threads`` was
    called), so that a model's thread setting covers our ops as it covers torch's own.

    A class rather than a generator context manager: this is on every call's path, and
    contextlib's machinery cost ~2 us of it.
    """

    __slots__ = ("_inner", "_t")

    def __init__(self, t: torch.Tensor):
        self._t = t
        self._inner = None

    def __enter__(self):
        t = self._t
        if t.is_cpu:
            self._inner = default_threads_for_caller(torch.get_num_threads())
            self._inner.__enter__()
        elif t.is_cuda:
            import cupy

            stream = torch.cuda.current_stream(t.device)
            self._inner = contextlib.ExitStack()
            self._inner.enter_context(cupy.cuda.Device(t.device.index))
            self._inner.enter_context(cupy.cuda.ExternalStream(stream.cuda_stream))
        return self

    def __exit__(self, *exc):
        if self._inner is not None:
            self._inner.__exit__(*exc)
        return False


#: Each op's Python implementation, by the op's name ("cupytv::prox_tv1d"), for :func:`call`.
_IMPLEMENTATIONS: dict[str, object] = {}


def custom_op(name: str):
    """``torch.library.custom_op(name)`` that also keeps the implementation for :func:`call`."""

    def register(fn):
        _IMPLEMENTATIONS[name] = fn
        return torch.library.custom_op(name, mutates_args=())(fn)

    return register


def call(op, *args):
    """``op(*args)``, or in plain eager mode its implementation directly.

    torch runs every custom op's implementation inside ``torch._dynamo``'s disable wrapper, so the
    first dispatch imports dynamo: 0.7-1.3 s on the first call of a process that never compiles.
    The autograd Functions' forwards (which run with autograd already handled) call this; under a
    torch.func transform the op is dispatched, for its vmap rule and functorch's wrapping.
    """
    if torch._C._are_functorch_transforms_active() or not _plain(args):
        return op(*args)
    return _IMPLEMENTATIONS[op.name()](*args)


def _plain(args) -> bool:
    """Every argument is not a tensor, or a tensor that is its own data: no subclass (fake,
    functional) and no batching of the legacy vmap (gradcheck's batched checks), whose rules
    the op dispatches. A loop over types rather than isinstance per argument: this runs on
    every call."""
    for arg in args:
        kind = type(arg)
        if kind is torch.Tensor:
            # A legacy batched tensor has no backend key of its own (its data is the wrapped
            # one's).
            keys = torch._C._dispatch_keys(arg)
            if not (keys.has(_CPU) or keys.has(_CUDA)):
                return False
        elif kind in _PLAIN_TYPES:
            continue
        elif isinstance(arg, (list, tuple)):
            if not _plain(arg):
                return False
        elif isinstance(arg, torch.Tensor):  # a subclass (fake, functional) is not plain
            return False
    return True


_PLAIN_TYPES = frozenset((int, float, str, bool, type(None)))


_CPU, _CUDA = torch._C.DispatchKey.CPU, torch._C.DispatchKey.CUDA
# What torch._functorch.utils.unwrap_dead_wrappers applies to each tensor argument.
_unwrap_if_dead = torch._C._functorch.unwrap_if_dead


def apply(function: type[torch.autograd.Function], op, *args):
    """Run ``op`` through ``function``, its ``torch.autograd.Function`` twin, in eager mode.

    The Function adds what ``custom_op`` + ``register_autograd`` lack: a forward-mode rule
    (``jvp``, without which forward AD sees no derivative and returns a zero tangent) and the
    ``setup_context`` / vmap support torch.func needs. Dynamo refuses a Function with a custom
    ``jvp`` (a graph break), so under ``torch.compile`` the op is called as is: its registered
    autograd (the same backward) is what AOT autograd traces. In plain eager mode a call with
    nothing to differentiate skips the Function (see :func:`_records_autograd`).
    """
    if torch.compiler.is_compiling():
        return op(*args)
    if torch._C._are_functorch_transforms_active():
        return function.apply(*(Leaf(a) if isinstance(a, list) else a for a in args))
    if not _records_autograd(args):
        # Nothing to differentiate (inference, or a backward without create_graph): no graph
        # node to build, so no Function (~10 us of a small call).
        return call(op, *args)
    # What Function.apply does when no torch.func transform is active, less the
    # inspect.signature binding of the forward's default arguments it runs first on every call
    # (~30 us, more than the rest of a small call; our forwards have no defaults to bind). Its
    # unwrap_dead_wrappers (functorch wrappers that outlived their transform) is done here in
    # the pass that wraps lists as leaves. super(Function, ...).apply is
    # torch._C._FunctionBase.apply, as Function.apply calls it.
    args = tuple(
        Leaf(a) if type(a) is list else _unwrap_if_dead(a) if isinstance(a, torch.Tensor) else a
        for a in args
    )
    return super(torch.autograd.Function, function).apply(*args)


def _records_autograd(args) -> bool:
    """Whether a call with ``args`` must go through its Function: a tensor that requires grad
    with grad mode on, or forward AD active (its dual tensors need not require grad)."""
    if getattr(forward_ad, "_current_level", 0) >= 0:  # unknown (private): assume active
        return True
    if not torch.is_grad_enabled():
        return False
    return any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)


class Leaf(tuple):
    """A list argument (axes) handed to an autograd.Function as one pytree leaf.

    torch.func flattens a Function's arguments as pytrees: a list of axes became one leaf per
    axis, and then the tangents were miscounted (jacfwd over jacrev of prox_tv2d failed in
    get_tangents_in_dims). A subclass of tuple is no registered pytree node; the Functions hand
    ``list(leaf)`` to the ops.
    """


def batch_first(t: torch.Tensor, in_dim: int | None, batch_size: int, ndim: int) -> torch.Tensor:
    """For a vmap rule: ``t`` with its vmapped dimension first (expanded to ``batch_size`` when
    ``t`` is not vmapped) and then ``ndim`` dimensions, leading ones added, so that it broadcasts
    against the other arguments exactly as the unbatched ones did."""
    t = t.expand(batch_size, *t.shape) if in_dim is None else t.movedim(in_dim, 0)
    return t.reshape(batch_size, *([1] * (ndim + 1 - t.dim())), *t.shape[1:])


def unbatched_shape(t: torch.Tensor, in_dim: int | None) -> tuple[int, ...]:
    """The shape the function under vmap sees for ``t``."""
    shape = list(t.shape)
    if in_dim is not None:
        del shape[in_dim]
    return tuple(shape)


def check_input(x, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__module__}."
                        f"{type(x).__name__}")  # fmt: skip
    if not x.is_floating_point() or x.is_complex():
        raise TypeError(
            f"{name}: expected a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got {x.dtype}"
        )


def lam_tensor(lam, x: torch.Tensor, name: str = "lam") -> torch.Tensor:
    """``lam`` as a tensor on x's device in x's compute dtype (a Python number becomes 0-d)."""
    if isinstance(lam, torch.Tensor):
        if lam.device != x.device:
            raise ValueError(
                f"{name}: expected a tensor on x's device {x.device}, got one on {lam.device}"
            )
        if lam.dtype == torch.bool or lam.is_complex():
            # .to() below used to turn these silently into 1.0 / 0.0 or the real part.
            raise TypeError(f"{name}: expected a real-valued tensor, got {lam.dtype}")
        if not lam.is_floating_point():
            lam = lam.to(compute_dtype(x.dtype))
        return lam
    dtype = compute_dtype(x.dtype)
    if type(lam) is not float or torch.compiler.is_compiling():
        _check_real(lam, name)
        return torch.as_tensor(lam, dtype=dtype, device=x.device)
    # A layer calls with the same Python weight every step: keep its 0-d tensor (never written:
    # the ops read their weights, and autograd only saves them).
    key = (lam, dtype, x.device)
    found = _SCALAR_WEIGHTS.get(key)
    if found is None:
        if len(_SCALAR_WEIGHTS) >= _SCALAR_WEIGHTS_MAX:
            _SCALAR_WEIGHTS.clear()
        found = _SCALAR_WEIGHTS[key] = torch.as_tensor(lam, dtype=dtype, device=x.device)
    return found


_SCALAR_WEIGHTS: dict[tuple, torch.Tensor] = {}
_SCALAR_WEIGHTS_MAX = 256


def _check_real(lam, name: str) -> None:
    """Refuse a non-tensor weight that is not real: ``torch.as_tensor(..., dtype=float)`` turns
    bools into 1.0 silently and fails on complex, strings or None without naming ``lam``."""
    if isinstance(lam, numbers.Real) and not isinstance(lam, bool):
        return  # the common case, kept free of NumPy so torch.compile traces it as is
    try:
        dtype = lam.dtype if is_cupy_array(lam) else np.asarray(lam).dtype
    except (TypeError, ValueError):  # ragged lists and the like
        dtype = np.dtype(object)
    if dtype.kind not in "iuf":
        raise TypeError(
            f"{name}: expected a real number, a real array or a tensor, got "
            f"{type(lam).__name__} of dtype {dtype}"
        )


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in HALF_DTYPES else dtype


def as_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)``, without the call when t has it already (a microsecond per tensor)."""
    return t if t.dtype == dtype else t.to(dtype)


class Layout:
    """Run an op on ``x`` viewed in its memory order, so the result comes back in x's layout.

    The kernels read any strides in place but write C order, and the ops' fake implementations
    promise C order (``t.new_empty(t.shape)``, not ``empty_like``, whose strides follow the
    input's): a ``channels_last`` input came back contiguous. The wrappers instead call
    the op on ``x.permute(order)`` (its dimensions by decreasing stride: C order in memory for
    any dense x, so no copy), with the axes and weights permuted alike, and permute the result
    back, which restores x's layout; autograd sees only views.
    """

    def __init__(self, x: torch.Tensor, weights=(), tv_axes=()):
        self.ndim = x.dim()
        if x.is_contiguous():  # C order already: nothing to permute (the common case)
            self.order = None
            return
        order = sorted(range(x.dim()), key=lambda d: (-x.stride(d), d))
        # Only a dense x is permuted: a strided or expanded view is read as it is (the kernels
        # take any strides), in its own order.
        dense = not x.is_contiguous() and x.permute(order).is_contiguous()
        self.order = order if dense else None
        # A weight that does not fit x is left for the array API to refuse, in x's own order
        # (its message names shapes as the caller wrote them).
        if self.order is None:
            return
        reduced = [1 if d in tv_axes else n for d, n in enumerate(x.shape)]
        for w in weights:
            # Broadcasts to exactly `reduced` (torch.broadcast_shapes costs ~15 us a call).
            shape = w.shape
            fits = len(shape) <= len(reduced) and all(
                s in (1, r) for s, r in zip(reversed(shape), reversed(reduced), strict=False)
            )
            if not fits:
                self.order = None

    def tensor(self, t: torch.Tensor) -> torch.Tensor:
        """x itself, or a weight broadcastable to it, viewed in the op's order."""
        if self.order is None:
            return t
        t = t.reshape((1,) * (self.ndim - t.dim()) + tuple(t.shape))
        return t.permute(self.order)

    def axis(self, axis: int) -> int:
        """Where x's (non-negative) ``axis`` is in the op's order."""
        return axis if self.order is None else self.order.index(axis)

    def restore(self, y: torch.Tensor) -> torch.Tensor:
        """The op's output of x's shape, back in x's dimension order and layout."""
        if self.order is None:
            return y
        return y.permute([self.order.index(d) for d in range(self.ndim)])

    def restore_batch(self, n: torch.Tensor, tv_axes) -> torch.Tensor:
        """Per-slice counts (x's dimensions without ``tv_axes``) back in x's order."""
        if self.order is None:
            return n
        kept = [d for d in self.order if d not in tv_axes]  # their order in the op's output
        return n.permute([kept.index(d) for d in sorted(kept)]).contiguous()
