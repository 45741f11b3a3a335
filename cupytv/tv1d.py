r"""1D total-variation proximal operator and its vector-Jacobian product, on NumPy or CuPy arrays.

Kernels live in ``cuda_src/tv1d.cu`` (its header documents the algorithms and the launch
contract this module implements). NumPy arrays run on the CPU through the host executor, CuPy
arrays on their own device and current stream; the code path is the same for both.
"""

from __future__ import annotations

import math

import numpy as np

from cupytv import _chunks, _loader
from cupytv._validation import (
    check_float_dtype,
    check_like,
    check_same_array_kind,
    check_weight,
    host_array,
    is_cupy_array,
    method_entry,
    normalize_axis,
    reduced_shape,
    unbroadcast,
    vjp_arguments,
)

STEM = "tv1d"
#: Forward methods: name -> kernel name (without the template arguments). "auto" picks condat.
METHODS = {"condat": "tv1d_condat", "taut_string": "tv1d_taut_string", "pn": "tv1d_pn"}
DEFAULT_METHOD = "condat"
# Launch contract of cuda_src/tv1d.cu (see its header): threads per block, the largest staged tile,
# and the fiber length above which Condat's worst-case guard may defer a fiber to the fallback.
BLOCK = 128
STAGE_MAX_BYTES = 48 * 1024
GUARD_MIN_N = 64
#: The fallback pass (tv1d_fallback) holds workspace for as many fibers at once as the larger of
#: this and WORKSPACE_FRACTION of the input takes (32 bytes per sample each), and no more: every
#: fiber gets a slot while that fits (up to ~1000 fibers of 1024 samples), and a large input's
#: deferred fibers share slots in turn. Deferred fibers are rare (adversarial ramps and walks
#: with a large lam), so this workspace is the bound of a worst case, not a cost of every call.
FALLBACK_MIN_BYTES = 32 * 2**20
# The VJP stages contiguous fibers up to this length (cuda_src/tv1d.cu TV1D_VJP_STAGE_MAX_N).
VJP_STAGE_MAX_N = 64
# tv1d_condat_short's longest fiber (cuda_src/tv1d.cu TV1D_SHORT_MAX_N).
SHORT_MAX_N = 64
# Projected Newton's workspace (cuda_src/tv1d_pn.cuh): two planes of n values per fiber.
PN_SCRATCH_BYTES_PER_SAMPLE = 16
_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_DOUBLE_BYTES = 8


def prox_tv1d(x, lam, axis: int = -1, *, method: str = "auto", out=None):
    r"""TV proximal operator of every 1D fiber of ``x`` along ``axis``.

    For each fiber :math:`x \in \mathbb{R}^n` (the entries of ``x`` along ``axis`` with every
    other index fixed) it returns

    .. math::
        y = \arg\min_y \tfrac12 \lVert y - x\rVert_2^2 + \lambda \sum_{k=0}^{n-2} |y_{k+1} - y_k|.

    The direct methods are exact (no iterations, no tolerance): the result matches
    :func:`cupytv.reference.prox_tv1d` up to the rounding of sums. Projected Newton iterates to a
    duality-gap tolerance and then snaps each segment to its exact value (see
    ``cuda_src/tv1d_pn.cuh``).

    ===================  =======================================================================
    method               algorithm
    ===================  =======================================================================
    ``"auto"``           ``"condat"`` (the fastest exact method measured; see the README).
    ``"condat"``         Condat's direct algorithm (IEEE SPL 2013): O(1) memory per fiber, about
                         1-2 reads per sample on typical data. Its worst case (e.g. a long ramp
                         with a large ``lam``) is quadratic, so fibers longer than 64 samples that
                         exceed 4 reads per sample are re-solved by the taut string in a second
                         pass (its workspace bounded by ``FALLBACK_MIN_BYTES`` or 1/8 of x, not
                         by the fibers): linear time for every input.
    ``"taut_string"``    The taut-string algorithm (Davies & Kovac 2001): linear time with no
                         restarts, but keeps two hulls in workspace (32 bytes per sample).
    ``"pn"``             Projected Newton on the dual (Barbero & Sra 2011), the whole solve in
                         one launch, then each segment set to its closed-form value; 16 bytes of
                         workspace per sample. A fiber it cannot certify within its iteration
                         cap (long ramps with a large ``lam``) is re-solved by the taut string.
                         For comparison with the literature.
    ===================  =======================================================================

    Args:
        x: NumPy or CuPy array of float16, float32 or float64, shape ``(*, n, *)``. float16 is
            computed in float32 and returned as float16. Sums are accumulated in float64.
        lam: weight :math:`\lambda \ge 0`: a scalar, or an array broadcastable to x's shape with
            ``axis`` reduced to 1 (one weight per fiber), NumPy or of x's kind.
        axis: the axis along which the fibers run. Default: the last. Any axis is read in place
            (no transposing copy).
        method: ``"auto"`` (default), ``"condat"``, ``"taut_string"`` or ``"pn"``.
        out: optional C-contiguous array of x's shape, dtype and kind (and device) to write the
            result into. It may be ``x`` itself.

    Returns:
        ``y`` with x's shape and dtype (``out`` when given). Every constant segment of a fiber
        holds one bit-identical value. ``lam == 0`` returns x exactly; a fiber holding NaN or ±Inf
        comes back as all NaN, and no other fiber is affected.

    Raises:
        TypeError: x is not a NumPy/CuPy floating array, or arrays mix NumPy and CuPy.
        ValueError: bad axis, lam shape or value, method name, or ``out``.

    Example:
        >>> import numpy as np
        >>> from cupytv import prox_tv1d
        >>> prox_tv1d(np.array([0.0, 0.0, 3.0, 3.0]), 1.0)
        array([0.5, 0.5, 2.5, 2.5])
    """
    kernel = _kernel_name(method)
    xp = _array_module(x, "x")
    dtype = check_float_dtype(x.dtype)
    if x.ndim == 0:
        raise ValueError("x: expected an array with at least 1 dimension, got a 0-d array")
    ax = normalize_axis(axis, x.ndim)
    compute = _compute_dtype(dtype)
    weight = Weight.of(lam, x.shape, ax, compute)
    if out is not None:
        _check_out(out, x, xp)
    outer, n, inner = _fiber_view(x.shape, ax)
    if x.size == 0:
        return xp.empty_like(x) if out is None else out
    if out is not None and xp.may_share_memory(out, x):
        x = x.copy()  # the kernels take x and y __restrict__: keep the two apart
    xc = xp.ascontiguousarray(x, dtype=compute)
    direct = out is not None and compute == dtype
    y = out if direct else xp.empty(x.shape, dtype=compute)
    # The host executor runs the unstaged kernels: CPU caches already serve a thread's contiguous
    # fiber, and a block barrier there costs ~35 ns per thread (docs/ARCHITECTURE.md).
    staged = xp is not np
    _launch_forward(kernel, xc, y, weight, (outer, n, inner), staged)
    if direct:
        return out
    if out is not None:
        out[...] = y
        return out
    return y.astype(dtype, copy=False)


def prox_tv1d_vjp(x, lam, g, axis: int = -1, *, y=None, fuse_atol: float = 0.0):
    r"""Gradients of :math:`\langle g, \mathrm{prox}_{\lambda TV}(x)\rangle` w.r.t. x and lam.

    Every VJP in cupytv (and in :mod:`cupytv.reference`) takes ``(x, lam, g, axes, ...)`` in that
    order. The gradient depends on x only through the forward's *output* ``y``: the prox is
    piecewise affine, and on each constant segment :math:`S` of ``y``,
    :math:`y_S = \operatorname{mean}_S(x) + \lambda (s_{out} - s_{in}) / |S|`, with
    :math:`s_{in}, s_{out}` the signs of the jumps into and out of :math:`S` (0 at the fiber
    ends), so

    .. math::
        \nabla_x = \operatorname{mean}_S(g) \text{ on each } S, \qquad
        \nabla_\lambda = \sum_S (s_{out} - s_{in})\, \operatorname{mean}_S(g).

    Pass the forward's output as ``y=`` (the fast path a framework uses: it saves one array and
    the backward is one O(n) pass per fiber; ``x`` may then be None); without it, ``y`` is
    recomputed from ``x`` with the default method. Segments are runs of equal values of ``y``;
    :func:`prox_tv1d` writes one bit-identical value per segment, so pass its output unchanged.
    At lam == 0 every sample is its own segment (the one-sided derivative at 0+, as in
    :func:`cupytv.reference.prox_tv1d_vjp`).

    Args:
        x: the forward's input, or None when ``y`` is given.
        lam: the weight used in the forward (with ``y=``, only its shape matters).
        g: upstream gradient, the shape, dtype and kind of x (or y).
        axis: the axis the forward ran along.
        y: optional, the output of :func:`prox_tv1d` for this ``x``, ``lam`` and ``axis``.
        fuse_atol: samples within this of their segment's first value belong to the segment.
            0 (default) for :func:`prox_tv1d`'s outputs, whose segments are bit-identical; a small
            multiple of the data's scale for outputs of iterative solvers (cupytv.prox_tv passes
            1e-9 of max|x| in float64), whose segments carry rounding noise.

    Returns:
        ``(grad_x, grad_lam)``: grad_x has y's shape and dtype; grad_lam has lam's shape (0-d
        for a scalar lam), summed over the fibers that shared a weight, in y's dtype. A fiber
        whose ``y`` holds NaN gets NaN gradients.

    Raises:
        TypeError, ValueError: neither x nor y given; x and y (or g) of different shapes, dtypes
            or kinds; the checks of :func:`prox_tv1d`. The order before 0.2, ``(g, y, lam)``,
            still works for this release with a DeprecationWarning.

    Example:
        >>> import numpy as np
        >>> from cupytv import prox_tv1d, prox_tv1d_vjp
        >>> x = np.array([0.0, 0.0, 3.0, 3.0])
        >>> prox_tv1d_vjp(x, 1.0, np.array([1.0, 0.0, 0.0, 0.0]))
        (array([0.5, 0.5, 0. , 0. ]), array(0.5))
        >>> y = prox_tv1d(x, 1.0)  # a framework saves the output and passes it on
        >>> prox_tv1d_vjp(None, 1.0, np.array([1.0, 0.0, 0.0, 0.0]), y=y)[0]
        array([0.5, 0.5, 0. , 0. ])
    """
    x, lam, g, legacy = vjp_arguments("prox_tv1d_vjp", x, lam, g)
    if legacy:  # the old second argument was the output
        x, y = None, x
    if x is None and y is None:
        raise TypeError(
            "prox_tv1d_vjp: expected x (the forward's input) or y= (its output), got neither"
        )
    # g is checked against the array the caller passed (x, else y), so messages name that one.
    name, given = ("x", x) if x is not None else ("y", y)
    xp = _array_module(given, name)
    dtype = check_float_dtype(given.dtype, name)
    check_like(g, given, "g", name)
    if x is not None and y is not None:
        check_like(y, x, "y")
    if y is None:
        y = prox_tv1d(x, lam, axis)
    if y.ndim == 0:
        raise ValueError("y: expected an array with at least 1 dimension, got a 0-d array")
    ax = normalize_axis(axis, y.ndim)
    weight = Weight.of(lam, y.shape, ax)
    if not (fuse_atol >= 0 and fuse_atol != float("inf")):  # NaN fails the first test
        raise ValueError(f"fuse_atol: expected a finite number >= 0, got {fuse_atol!r}")
    outer, n, inner = _fiber_view(y.shape, ax)
    if y.size == 0:
        return xp.zeros_like(y), xp.zeros(weight.shape, dtype=dtype)
    compute = _compute_dtype(dtype)
    yc = xp.ascontiguousarray(y, dtype=compute)
    gc = xp.ascontiguousarray(g, dtype=compute)
    grad_x = xp.empty(y.shape, dtype=compute)
    grad_fiber = xp.empty(outer * inner, dtype=compute)
    _launch_vjp(yc, gc, grad_x, grad_fiber, (outer, n, inner), fuse_atol, staged=xp is not np)
    if weight.has_zero():
        lam_b = weight.broadcast()
        grad_x, grad_fiber = _identity_vjp(gc, yc, grad_x, grad_fiber, lam_b, (outer, n, inner), xp)
    grad_lam = weight_grad(grad_fiber, weight, xp)
    return grad_x.astype(dtype, copy=False), grad_lam.astype(dtype, copy=False)


#: Fibers per weight entry from which the VJP sums the weight's gradient in a kernel
#: (tv1d_weight_grad, one block per entry) rather than in array operations.
WEIGHT_GRAD_MIN_FIBERS = 32


class Weight:
    """A checked weight as the kernels read it (cupytv::FiberWeight in cuda_src/common.cuh): one
    value per fiber (1D) or per slice (2D, whose kernels take two weights read alike).

    Built from what the caller passed, never expanded to one value per fiber when avoidable: a
    scalar goes by value (``mod == 0``), an array varying along consecutive dimensions of the
    fiber grid (per channel, per sample, or both) as its own entries, read at
    ``((fiber) // div) % mod``; any other pattern (e.g. varying along two separated dimensions)
    is expanded to one entry per fiber. So a call's host cost does not grow with the number of
    fibers (issue 17, item 5). Fibers (slices) are numbered in C order of x's dimensions other
    than the TV axes, as the kernels lay them out.

    Attributes: ``value`` (float, for ``mod == 0``), ``data`` (float64 NumPy entries, else
    None), ``div``, ``mod``, ``shape`` (lam's own shape: its gradient's), ``reduced`` (x's shape
    with the TV axes at 1), ``fibers``.
    """

    __slots__ = ("data", "div", "fibers", "mod", "reduced", "shape", "value")

    def __init__(self, value, data, div, mod, shape, reduced, fibers):
        self.value, self.data, self.div, self.mod = value, data, div, mod
        self.shape, self.reduced, self.fibers = shape, reduced, fibers

    @classmethod
    def of(cls, lam, shape: tuple[int, ...], axes, compute=None, name: str = "lam") -> Weight:
        """Check ``lam`` against an array of ``shape`` whose fibers run along ``axes`` (one
        normalized axis, or a tuple of them for slices)."""
        axes = (axes,) if isinstance(axes, int) else tuple(axes)
        checked = check_weight(lam, shape, axes, name, compute_dtype=compute)
        reduced = reduced_shape(shape, axes)
        fibers = math.prod(reduced)
        if isinstance(checked, float):
            return cls(checked, None, 1, 0, getattr(lam, "shape", ()), reduced, fibers)
        padded = (1,) * (len(reduced) - checked.ndim) + checked.shape
        if checked.size == 0:  # broadcast against an empty dimension: no fiber reads it
            return cls(0.0, None, 1, 0, checked.shape, reduced, fibers)
        varying = [d for d, size in enumerate(padded) if size > 1]
        if not varying:
            return cls(float(checked.reshape(-1)[0]), None, 1, 0, checked.shape, reduced, fibers)
        lo, hi = varying[0], varying[-1]
        if padded[lo : hi + 1] == reduced[lo : hi + 1]:
            data = np.ascontiguousarray(checked).reshape(-1)
            return cls(None, data, math.prod(reduced[hi + 1 :]), data.size, checked.shape,
                       reduced, fibers)  # fmt: skip
        data = np.ascontiguousarray(np.broadcast_to(checked.reshape(padded), reduced)).reshape(-1)
        return cls(None, data, 1, fibers, checked.shape, reduced, fibers)

    def arguments(self, compute: np.dtype, xp, like, first: int = 0) -> tuple:
        """(lam, lam_value, lam_first, lam_div, lam_mod) for a launch whose fibers start at
        ``first``; ``like``: any array of the compute dtype, passed where lam is never read."""
        if self.mod == 0:
            return (like, compute.type(self.value), np.int64(0), np.int64(1), np.int64(0))
        lam = xp.asarray(self.data.astype(compute, copy=False))
        return (lam, compute.type(0), np.int64(first), np.int64(self.div), np.int64(self.mod))

    def aligned(self, other: Weight) -> Weight:
        """This weight read with ``other``'s pattern where the two differ (kernels that take
        two weights, tv2d's, read them with one (div, mod)); its own ``shape`` is kept for its
        gradient. A scalar is spread over the other's entries; two different patterns both
        become one entry per fiber (``other.aligned(self)`` does the same to the other)."""
        if (self.div, self.mod) == (other.div, other.mod):
            return self
        if self.mod == 0:
            data = np.full(other.mod, self.value)
            return Weight(None, data, other.div, other.mod, self.shape, self.reduced, self.fibers)
        if other.mod == 0:
            return self
        data = self.per_fiber(np.arange(self.fibers))
        return Weight(None, data, 1, self.fibers, self.shape, self.reduced, self.fibers)

    def per_fiber(self, fibers) -> np.ndarray:
        """The weight of each (global) fiber index in ``fibers`` (a NumPy integer array)."""
        if self.mod == 0:
            return np.full(fibers.shape, self.value)
        return self.data[(fibers // self.div) % self.mod]

    def has_zero(self) -> bool:
        return self.value == 0.0 if self.mod == 0 else bool(np.any(self.data == 0))

    def broadcast(self) -> np.ndarray:
        """One value per fiber, shape ``reduced`` (a broadcast view where possible)."""
        if self.mod == 0:
            return np.broadcast_to(np.float64(self.value), self.reduced)
        return self.per_fiber(np.arange(self.fibers)).reshape(self.reduced)


def weight_grad(grad_fiber, weight: Weight, xp):
    """Sum the per-fiber weight gradients down to lam's shape (an array, 0-d for a scalar).

    ``grad_fiber``: contiguous, one value per fiber, or several such runs back to back (tv2d's
    two axes for one weight), all summed: a run is a whole number of the pattern's periods
    (``div * mod`` divides ``fibers``), so entry ``(f / div) % mod`` is right across runs."""
    if math.prod(weight.shape) == 0:  # an empty weight (broadcast against an empty batch)
        return xp.zeros(weight.shape, dtype=grad_fiber.dtype)
    if weight.mod == 0:
        entries, div = 1, 1
    elif weight.mod == weight.fibers and weight.div == 1:  # one entry per fiber: nothing to sum
        if grad_fiber.size != weight.fibers:
            grad_fiber = grad_fiber.reshape(-1, weight.fibers).sum(axis=0)
        return xp.asarray(unbroadcast(grad_fiber.reshape(weight.reduced), weight.shape))
    else:
        entries, div = weight.mod, weight.div
    if grad_fiber.size // entries < WEIGHT_GRAD_MIN_FIBERS:
        summed = grad_fiber.reshape(-1, entries, div).sum(axis=(0, 2))
    else:
        summed = xp.empty(entries, dtype=grad_fiber.dtype)
        _loader.launch(
            STEM,
            f"tv1d_weight_grad<{_CTYPES[grad_fiber.dtype]}>",
            (entries,),
            (BLOCK,),
            (grad_fiber, summed, np.int64(grad_fiber.size), np.int64(div), np.int64(entries)),
        )
    return summed.reshape(weight.shape)


def _launch_vjp(yc, gc, grad_x, grad_fiber, view, fuse_atol: float, staged: bool) -> None:
    """Launch tv1d_vjp per the contract in cuda_src/tv1d.cu: ``<T>`` stages contiguous fibers
    of up to VJP_STAGE_MAX_N samples through shared memory (GPUs), ``<T, false>`` reads them in
    place (the host executor); the two give the same bits."""
    outer, n, inner = view
    ctype = _CTYPES[yc.dtype]
    tile_bytes = BLOCK * (n | 1) * yc.dtype.itemsize
    fits = inner == 1 and n <= VJP_STAGE_MAX_N and tile_bytes <= STAGE_MAX_BYTES
    shared = tile_bytes if staged and fits and fuse_atol == 0 else 0
    _loader.launch(
        STEM,
        f"tv1d_vjp<{ctype}>" if staged else f"tv1d_vjp<{ctype}, false>",
        (_ceil_div(outer * inner, BLOCK),),
        (BLOCK,),
        (
            yc,
            gc,
            grad_x,
            grad_fiber,
            np.int64(outer),
            np.int64(n),
            np.int64(inner),
            np.float64(fuse_atol),
        ),
        shared_mem=shared,
    )


def _identity_vjp(g, y, grad_x, grad_fiber, lam_b, view, xp):
    """The VJP on fibers with lam == 0, where the prox is the identity.

    The kernel sees only y, so equal neighbours form a segment and g is averaged over it (the
    derivative for lam > 0); at lam == 0 every sample is its own segment: grad_x = g, and grad_lam
    keeps the steps' signs (the one-sided derivative at 0+, as cupytv.reference does). Fibers
    holding NaN keep the kernel's NaN gradients.
    """
    outer, _, inner = view
    gv, yv = g.reshape(view), y.reshape(view)
    turn = jump_turns(yv, 1, xp)
    zero = xp.asarray(np.ascontiguousarray(lam_b == 0).reshape(outer, 1, inner))
    zero &= xp.isfinite(yv).all(axis=1, keepdims=True)
    grad_x = xp.where(zero, gv, grad_x.reshape(view)).reshape(grad_x.shape)
    grad_fiber = xp.where(zero.reshape(-1), (turn * gv).sum(axis=1).reshape(-1), grad_fiber)
    return grad_x, grad_fiber


def jump_turns(y, axis: int, xp):
    r"""Per sample of each fiber of ``y``, the sign of the step out of it minus that of the step
    into it (0 past the fiber's ends): :math:`-D^\top \operatorname{sign}(D y)`.

    Summed over a constant segment S of a prox output it is :math:`s_{out} - s_{in}`, whatever
    the signs of rounding-sized steps inside S (they telescope), so its mean over S is
    :math:`\partial y_S / \partial \lambda`: the weight's part of the prox's derivative.
    """
    steps = xp.sign(xp.diff(y, axis=axis))
    edge_shape = list(steps.shape)
    edge_shape[axis] = 1
    edge = xp.zeros(tuple(edge_shape), dtype=steps.dtype)
    return xp.concatenate([steps, edge], axis=axis) - xp.concatenate([edge, steps], axis=axis)


def _launch_forward(kernel: str, xc, y, weight: Weight, view, staged: bool) -> None:
    """Launch a forward kernel per the contract in cuda_src/tv1d.cu.

    ``xc`` and ``y``: C-contiguous, distinct, of the compute dtype; ``weight``: lam for x's fibers
    (:class:`Weight`); ``view``: (outer, n, inner). ``staged`` picks the kernel
    that stages contiguous fibers through shared memory (``<kernel><T>``, for GPUs) over the one
    that reads them in place (``<kernel><T, false>``, for the host executor). Condat needs no
    workspace: the fibers its guard defers get it in the fallback pass (:func:`_launch_fallback`).
    The other methods' workspace (32 or 16 bytes per sample: 8 or 4 times a float32 input) is
    reused by chunks of whole ``outer`` rows (cupytv._chunks).
    """
    outer, n, inner = view
    xp = np if isinstance(xc, np.ndarray) else _array_module(xc, "x")
    compute = xc.dtype
    condat = kernel == METHODS["condat"]
    per_fiber = 0 if condat else _scratch_per_fiber(kernel, n, compute)
    row_bytes = per_fiber * inner * compute.itemsize
    # Without workspace, one launch takes every fiber.
    rows = _chunks.chunk_items(outer, row_bytes, xc.nbytes, n * inner, xp) if per_fiber else outer
    guarded = condat and n > GUARD_MIN_N
    if condat:  # the fallback list: a count, then up to one entry per fiber
        work = xp.zeros(1 + outer * inner if guarded else 1, dtype=np.int64)
    else:
        work = xp.empty(max(1, rows * inner * per_fiber), dtype=compute)
    ctype = _CTYPES[compute]
    pn = kernel == METHODS["pn"]
    if pn:  # one kernel for both executors, no shared memory
        name, shared = f"{kernel}<{ctype}>", 0
        uncertified = xp.zeros(outer * inner, dtype=np.int32)
    else:
        tile_bytes = BLOCK * (n | 1) * compute.itemsize
        shared = tile_bytes if staged and inner == 1 and tile_bytes <= STAGE_MAX_BYTES else 0
        name = f"{kernel}<{ctype}>" if staged else f"{kernel}<{ctype}, false>"
        if shared and kernel == METHODS["condat"] and n <= SHORT_MAX_N:
            name = f"tv1d_condat_short<{ctype}>"  # the GPU's kernel for short fibers
    x2, y2 = xc.reshape(outer, n * inner), y.reshape(outer, n * inner)
    for lo, hi in _chunks.ranges(outer, rows):
        extra = (uncertified[lo * inner : hi * inner],) if pn else ()
        _loader.launch(
            STEM,
            name,
            (_ceil_div((hi - lo) * inner, BLOCK),),
            (BLOCK,),
            (
                x2[lo:hi],
                y2[lo:hi],
                *weight.arguments(compute, xp, y, lo * inner),
                np.int64(hi - lo),
                np.int64(n),
                np.int64(inner),
                work,
                *extra,
            ),
            shared_mem=shared,
        )
    if pn:
        _resolve_uncertified(uncertified, xc, y, weight, view)
    if guarded:
        _launch_fallback(xc, y, weight, view, work)


def _launch_fallback(xc, y, weight: Weight, view, fallback) -> None:
    """Re-solve the fibers tv1d_condat deferred (``fallback``: its list) with tv1d_fallback, the
    taut string in place, in slots of workspace sized by FALLBACK_MIN_BYTES and the input, not
    by the fibers. On a GPU the count stays on the device (no synchronisation: the pass is
    launched every time and returns at once when the list is empty); on the host executor it
    is read, and nothing is launched for an empty list."""
    outer, n, inner = view
    xp = np if isinstance(xc, np.ndarray) else _array_module(xc, "x")
    compute = xc.dtype
    per_fiber = _scratch_per_fiber(METHODS["taut_string"], n, compute)
    budget = max(int(_chunks.WORKSPACE_FRACTION * xc.nbytes), FALLBACK_MIN_BYTES)
    slots = max(1, min(outer * inner, budget // (per_fiber * compute.itemsize)))
    if xp is np:
        count = int(fallback[0])
        if count == 0:
            return
        slots = min(slots, count)
    scratch = xp.empty(slots * per_fiber, dtype=compute)
    _loader.launch(
        STEM,
        f"tv1d_fallback<{_CTYPES[compute]}>",
        (_ceil_div(slots, BLOCK),),
        (BLOCK,),
        (xc, y, *weight.arguments(compute, xp, y), np.int64(n), np.int64(inner), fallback,
         np.int64(slots), scratch),
    )  # fmt: skip


def _resolve_uncertified(uncertified, xc, y, weight: Weight, view) -> None:
    """Re-solve with the taut string (exact, linear time) the fibers projected Newton flagged:
    stopped at its iteration cap or stalled without its certificate, where its polish may miss a
    jump (two concatenated ramps with lam = 1e3 came out 4.4 off, silently). Rare on real data
    (random signals certify in 2-6 iterations), so the gather and scatter cost nothing usually.
    """
    xp = np if isinstance(xc, np.ndarray) else _array_module(xc, "x")
    flagged = xp.flatnonzero(uncertified)
    if flagged.size == 0:
        return
    outer, n, inner = view
    o, i = flagged // inner, flagged % inner
    x3, y3 = xc.reshape(outer, n, inner), y.reshape(outer, n, inner)
    fibers = xp.ascontiguousarray(x3[o, :, i])  # (flagged, n)
    count = fibers.shape[0]
    lam_f = Weight.of(weight.per_fiber(host_array(flagged)).reshape(count, 1), (count, n), 1)
    solved = xp.empty_like(fibers)
    _launch_forward(METHODS["taut_string"], fibers, solved, lam_f, (count, n, 1),
                    staged=xp is not np)  # fmt: skip
    y3[o, :, i] = solved


def _kernel_name(method) -> str:
    return method_entry(method, METHODS, DEFAULT_METHOD)


def _array_module(a, name: str):
    """numpy for NumPy arrays, cupy for CuPy arrays; anything else is a TypeError."""
    if isinstance(a, np.ndarray):
        return np
    if is_cupy_array(a):
        import cupy

        return cupy
    kind = f"{type(a).__module__}.{type(a).__name__}"
    hint = (
        " (for torch tensors use cupytv.torch: the same operators as differentiable torch ops, "
        "on the tensor's device without copies)"
        if kind.partition(".")[0] == "torch"
        else ""
    )
    raise TypeError(f"{name}: expected a numpy.ndarray or cupy.ndarray, got {kind}{hint}")


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    # float16 has no kernel: it is computed in float32 and cast back.
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def _fiber_view(shape: tuple[int, ...], ax: int) -> tuple[int, int, int]:
    """(outer, n, inner) of a C-contiguous array viewed with the TV axis in the middle."""
    return math.prod(shape[:ax]), shape[ax], math.prod(shape[ax + 1 :])


def _check_out(out, x, xp) -> None:
    check_same_array_kind(out, x, "out", "x")
    if out.shape != x.shape or out.dtype != x.dtype:
        raise ValueError(
            f"out: expected x's shape and dtype {x.shape} {x.dtype}, got {out.shape} {out.dtype}"
        )
    if not out.flags.c_contiguous:
        raise ValueError("out: expected a C-contiguous array, got a non-contiguous one")
    if xp is np and not out.flags.writeable:
        raise ValueError("out: expected a writeable array, got a read-only one")


def _scratch_per_fiber(kernel: str, n: int, compute: np.dtype) -> int:
    """Workspace elements per fiber of each method's per-fiber solver (cuda_src/tv1d.cu,
    tv1d_solvers.cuh): "tv1d_condat" is tv1d_condat_fiber's, which tv2d's kernels call; the 1D
    kernel tv1d_condat itself takes none (see _launch_forward)."""
    if kernel == METHODS["pn"]:
        return PN_SCRATCH_BYTES_PER_SAMPLE // compute.itemsize * n  # see cuda_src/tv1d_pn.cuh
    hulls = 4 * (n + 1) * (_DOUBLE_BYTES // compute.itemsize)  # the taut string's two hulls
    if kernel == METHODS["condat"]:
        return hulls if n > GUARD_MIN_N else 0  # only guarded fibers can fall back
    return hulls


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)
