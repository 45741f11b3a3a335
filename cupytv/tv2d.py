r"""Anisotropic 2D total-variation proximal operator (proximal Dykstra) and its exact gradient.

Kernels live in ``cuda_src/tv2d.cu`` (its header documents the algorithm, the stopping rule, the
backward and the launch contract this module implements). NumPy arrays run on the CPU through the
host executor, CuPy arrays on their own device and current stream.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np

from cupytv import _chunks, _loader
from cupytv._validation import (
    MAX_ITERATIONS,
    check_float_dtype,
    check_like,
    check_max_iter,
    check_tol,
    method_entry,
    normalize_axes,
    reduced_shape,
    split_lam_pair,
    vjp_arguments,
)
from cupytv.tv1d import (
    GUARD_MIN_N,
    Weight,
    _array_module,
    _check_out,
    _compute_dtype,
    _scratch_per_fiber,
    weight_grad,
)

STEM = "tv2d"
#: 2D methods: name -> momentum flag of the kernels (cuda_src/tv2d.cu). "auto" picks "accelerated".
METHODS = {"dykstra": 0, "accelerated": 1}
DEFAULT_METHOD = "accelerated"
#: Defaults of the stopping rule. tol bounds the relative duality gap gap(y) / F(y), which bounds
#: the relative objective gap (F(y) - F*) / F* by tol / (1 - tol): 1e-3 is the accuracy the issue
#: asks of the defaults, certified per slice. Typical images need 10-25 iterations for it
#: (benchmarks/NOTES.md); max_iter only guards against slow cases, whose info says so.
DEFAULT_MAX_ITER = 200
DEFAULT_TOL = 1e-3
# Launch contract of cuda_src/tv2d.cu: threads per block of the multi-launch kernels, the warp
# (fused blocks are rounded up to it), and the fused path's limits: fibers short enough for
# Condat without workspace, and the dynamic shared memory every supported GPU grants (64 KB,
# Turing's opt-in limit; 48 KB would leave 64 x 64 float32 slices out by 2 KB of row padding).
BLOCK = 128
WARP = 32
FUSED_MAX_N = GUARD_MIN_N
FUSED_MAX_SHARED_BYTES = 64 * 1024
# On GPUs the host checks whether any slice is still iterating every this many iterations (one
# 4-byte device-to-host copy, which waits for the queued work); the device skips finished slices
# in between. The host executor is synchronous, so it checks every iteration.
GPU_POLL_EVERY = 8
_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_DOUBLE_BYTES = 8
#: Doubles per thread of the fused kernel's partial sums: the certificate's terms per row
#: (TV2D_GAP_TERMS in cuda_src/tv2d.cu).
_GAP_TERMS = 4
_SAMPLES_PER_WORD = 16  # 2-bit jump codes per 32-bit word of the backward's record
_WORD_BYTES = 4
_NONFINITE = 2  # TV2D_NONFINITE


@dataclass(frozen=True)
class ProxInfo:
    """What :func:`prox_tv2d` did for each slice (arrays of x's kind, shaped like the batch).

    Attributes:
        n_iter: int32, the Dykstra iterations run (pass it to :func:`prox_tv2d_vjp`).
        gap: float64, the relative duality gap gap(y) / F(y) of the returned slice. It bounds
            (F(y) - F*) / F(y), so the relative objective gap (F(y) - F*) / F* is at most
            gap / (1 - gap) (1.001e-3 for gap = 1e-3); NaN for non-finite input.
        converged: bool, ``gap <= tol``.
    """

    n_iter: object
    gap: object
    converged: object


def prox_tv2d(
    x,
    lam,
    axes=(-2, -1),
    *,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    method: str = "auto",
    out=None,
    return_info: bool = False,
):
    r"""Anisotropic TV proximal operator of every 2D slice of ``x`` over ``axes``.

    For each slice :math:`X` (``axes[0]`` indexes rows :math:`i`, ``axes[1]`` columns :math:`j`)
    it approximates

    .. math::
        Y^* = \arg\min_Y F(Y) = \tfrac12\lVert Y - X\rVert_F^2
            + \lambda_0 \sum_{i,j} |Y_{i+1,j} - Y_{i,j}|
            + \lambda_1 \sum_{i,j} |Y_{i,j+1} - Y_{i,j}|

    by alternating the exact 1D solver along ``axes[1]`` and then ``axes[0]`` (every iteration
    in one kernel launch for slices up to 64 x 64, and with the convergence test on the device for
    larger ones). Each slice stops at the first iterate whose duality gap certifies
    :math:`F(Y) - F(Y^*) \le` ``tol`` :math:`\cdot F(Y)`, or after ``max_iter`` iterations.

    =================  ==========================================================================
    method             algorithm (both alternate the same exact 1D solves; cuda_src/tv2d.cu)
    =================  ==========================================================================
    ``"auto"``         ``"accelerated"``.
    ``"accelerated"``  Dykstra accelerated by FISTA momentum on its dual (Chambolle & Pock, SMAI
                       JCM 2015): about half of Dykstra's iterations at tol 1e-3 and a sixth at
                       1e-6 (benchmarks/NOTES.md), for one more array of state.
    ``"dykstra"``      Proximal Dykstra, the seed's method.
    =================  ==========================================================================

    Accuracy of the defaults (``tol=1e-3``): a relative objective gap of at most 1.001e-3 for every
    slice that converged (``info.converged``); natural and noisy piecewise-constant images need
    about 10-15 accelerated iterations (15-25 with Dykstra). ``tol=1e-6`` takes about 50
    accelerated iterations (hundreds with Dykstra). The gap stays an upper bound at any offset and
    magnitude (a power-of-two scaling and a slack for the iterates' rounding, cuda_src/tv2d.cu), so
    it cannot certify below what that rounding allows: float32 ~1e-5 on small images, float64
    ~1e-6 for a small feature far from zero; such a ``tol`` runs ``max_iter`` iterations and
    reports ``converged`` False.

    Args:
        x: NumPy or CuPy array of float16, float32 or float64 with at least 2 dimensions. float16
            is computed in float32. The slices may sit on any two axes; other axes are batch.
        lam: :math:`\lambda \ge 0` for both axes (a scalar or an array broadcastable to x's shape
            with both ``axes`` reduced to 1, one weight per slice), or a tuple/list pair
            ``(lam0, lam1)`` of such weights: ``lam0`` along ``axes[0]``, ``lam1`` along
            ``axes[1]``.
        axes: the two distinct axes spanning each slice. Default: the last two.
        max_iter: the most iterations per slice (>= 0). Default 200.
        tol: the relative duality gap at which a slice stops (>= 0). Default 1e-3. 0 runs
            exactly ``max_iter`` iterations (the seed's fixed-iteration mode).
        method: ``"auto"`` (default), ``"accelerated"`` or ``"dykstra"``.
        out: optional C-contiguous array of x's shape, dtype and kind for the result.
        return_info: also return a :class:`ProxInfo`.

    Returns:
        ``y`` with x's shape and dtype, or ``(y, info)``. A slice holding NaN or ±Inf comes back
        all NaN (with ``info.n_iter`` 0 and ``info.gap`` NaN); no other slice is affected.

    Raises:
        TypeError: x is not a NumPy/CuPy floating array, or arrays of different kinds are mixed.
        ValueError: bad axes, lam, max_iter, tol, method or out.

    Example:
        >>> import numpy as np
        >>> from cupytv import prox_tv2d
        >>> prox_tv2d(np.array([[0.0, 4.0], [0.0, 4.0]]), 1.0, tol=1e-9)
        array([[1., 3.],
               [1., 3.]])
    """
    result, problem = _solve(x, lam, axes, max_iter, tol, method, out)
    if not return_info:
        return result
    xp = problem.xp
    n_iter = problem.batch(problem.n_iter)
    gap = problem.batch(problem.gap)
    return result, ProxInfo(n_iter, gap, xp.asarray(gap <= tol))


def _solve(x, lam, axes, max_iter, tol, method, out=None):
    """:func:`prox_tv2d`'s work: ``(y, problem)``, the problem holding the per-slice counts
    (``problem.batch(problem.n_iter)``) and gaps. The torch op calls this: it needs the counts
    but not a ProxInfo (microseconds a call)."""
    problem = _Problem(x, lam, axes, max_iter, tol, method)
    if out is not None:
        _check_out(out, x, problem.xp)
    result = problem.restore(_forward(problem))
    if out is not None:
        out[...] = result
        result = out
    return result, problem


def prox_tv2d_vjp(
    x,
    lam,
    g,
    axes=(-2, -1),
    *,
    n_iter=None,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    method: str = "auto",
):
    r"""Gradients of :math:`\langle g, \mathrm{prox\_tv2d}(x)\rangle` w.r.t. x and lam.

    Exact for the map the forward computed: the composition of the ``n_iter`` iterations each
    slice ran, each 1D prox piecewise affine (on a constant segment :math:`S` of its output,
    :math:`y_S = \operatorname{mean}_S(v) + \lambda (s_{out} - s_{in}) / |S|`). The backward
    re-runs the forward from ``x`` recording 4 bits per sample per iteration (the jump signs),
    then runs the iterations' adjoints in reverse (derivation in ``cuda_src/tv2d.cu``). So a
    framework keeps only ``x`` and ``info.n_iter`` between forward and backward; the backward's
    workspace (three arrays of a slice's size, four accelerated, plus the bits) is held for one
    chunk of slices at a time (about 1/8 of x, README "Memory"), and it costs about 1.5 forwards.
    Jumps of an intermediate 1D solution smaller than rounding (1e-9 relative in
    float64, 1e-6 in float32, of the slice's max|x|) count as no jump: the map has kinks that
    close to the point, and this choice is the one whose gradient converges to the exact prox's
    as the iterations do.

    Args:
        x: the forward's input (not its output).
        lam, axes, max_iter, tol, method: as given to :func:`prox_tv2d`.
        g: upstream gradient, x's shape, dtype and kind.
        n_iter: the forward's ``info.n_iter`` (an int array of the batch shape, or an int for
            every slice): the iterations to differentiate through. When None, the forward's
            stopping rule is re-run first (deterministic, so the counts are the same; one more
            forward's cost).

    Returns:
        ``(grad_x, grad_lam)``: grad_x has x's shape and dtype; grad_lam has lam's shape, or is a
        pair for a pair lam, in x's dtype. Slices with non-finite x get NaN gradients.

    Raises:
        TypeError, ValueError: as :func:`prox_tv2d`, plus mismatched ``g`` or a bad ``n_iter``.
            The order before 0.2, ``(g, x, lam)``, still works for this release with a
            DeprecationWarning.

    Example:
        >>> import numpy as np
        >>> from cupytv import prox_tv2d_vjp
        >>> x = np.array([[0.0, 4.0], [0.0, 4.0]])
        >>> gx, gl = prox_tv2d_vjp(x, 1.0, np.array([[1.0, 0.0], [0.0, 0.0]]), tol=1e-9)
        >>> gx, gl
        (array([[0.5, 0. ],
               [0.5, 0. ]]), array(1.))
    """
    x, lam, g, _ = vjp_arguments("prox_tv2d_vjp", x, lam, g)
    problem = _Problem(x, lam, axes, max_iter, tol, method)
    xp = problem.xp
    check_like(g, x, "g")
    if n_iter is None:
        _forward(problem)
        counts, n_max = problem.n_iter, None
    else:
        counts, n_max = problem.counts_from(n_iter)
    grad_x, grad_slices = _backward(problem, problem.flat(g), counts, n_max=n_max)
    grad_x = problem.restore(grad_x)
    # Summed to each weight's own entries as the 1D VJP sums its fibers' (a kernel when many
    # slices share an entry), so a per-channel weight costs no O(slices) host work; one weight
    # for both axes sums both rows.
    rows = (grad_slices[0], grad_slices[1]) if problem.is_pair else (grad_slices.reshape(-1),)
    per_axis = [
        xp.asarray(weight_grad(row, weight, xp)).astype(x.dtype)
        for row, weight in zip(rows, problem.weights, strict=True)
    ]
    return grad_x, (tuple(per_axis) if problem.is_pair else per_axis[0])


def prox_tv2d_jvp(
    x,
    lam,
    x_dot,
    lam_dot,
    axes=(-2, -1),
    *,
    n_iter=None,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    method: str = "auto",
):
    r"""Forward mode: the derivative of :func:`prox_tv2d` at ``(x, lam)`` along ``(x_dot,
    lam_dot)``.

    The transpose of :func:`prox_tv2d_vjp`, for the same map (the ``n_iter`` iterations each
    slice ran, with the same segments): the forward is re-run from ``x`` recording its jumps, then
    the tangent runs through the iterations in order, each 1D prox's tangent being the mean of its
    input's tangent over each segment plus the weight's tangent times ``(s_out - s_in) / |S|``
    (``cuda_src/tv2d.cu``). Cost: about two forwards; workspace as the backward's.

    Args:
        x, lam, axes, max_iter, tol, method: as given to :func:`prox_tv2d`.
        x_dot: the tangent of x (x's shape, dtype and kind).
        lam_dot: the tangent of lam: a number, an array broadcastable like lam (any sign), or a
            pair for a pair lam.
        n_iter: the forward's ``info.n_iter``, as for :func:`prox_tv2d_vjp`.

    Returns:
        The tangent of the output, x's shape and dtype (NaN on slices with non-finite x).
    """
    problem = _Problem(x, lam, axes, max_iter, tol, method)
    check_like(x_dot, x, "x_dot")
    lam0_dot, lam1_dot, is_pair = split_lam_pair(lam_dot)
    if is_pair != problem.is_pair:
        raise ValueError(
            f"lam_dot: expected {'a pair' if problem.is_pair else 'one tangent'}, like lam"
        )
    if n_iter is None:
        _forward(problem)
        counts = problem.n_iter
    else:
        counts, _ = problem.counts_from(n_iter)
    names = ("lam_dot[0]", "lam_dot[1]") if is_pair else ("lam_dot", "lam_dot")
    tangents = [
        _slice_values(problem, v, name) for v, name in zip((lam0_dot, lam1_dot), names, strict=True)
    ]
    return problem.restore(_tangent(problem, problem.flat(x_dot), *tangents, counts))


def _slice_values(pb: _Problem, values, name: str):
    """A weight's tangent per slice (any sign, unlike a weight), in the compute dtype."""
    xp = pb.xp
    reduced = reduced_shape(pb.x.shape, pb.axes)
    values = xp.asarray(values, dtype=pb.compute)
    try:
        values = xp.broadcast_to(values, reduced)
    except ValueError:
        raise ValueError(
            f"{name}: expected a scalar or an array broadcastable to {reduced} (lam's), got shape "
            f"{values.shape}"
        ) from None
    return xp.ascontiguousarray(xp.moveaxis(values, pb.axes, (-2, -1)).reshape(pb.slices))


def _tangent(pb: _Problem, xd, lam0d, lam1d, counts):
    """The output's tangent as (slices, h, w) (see prox_tv2d_jvp)."""
    xp = pb.xp
    if pb.xc.size == 0:
        return xp.empty_like(pb.xc)
    n_max = int(counts.max())
    ct, dims = pb.ctype(), pb.dims()
    bits, (ub, u, wbuf, z), state = _replay(pb, counts, n_max)
    rows, cols = _grid(pb.slices * pb.h), _grid(pb.slices * pb.w)
    # Tangents of Ub, U, W and Z (the forward's buffers reused).
    ubd, ud, wd, zd = ub, u, wbuf, z
    ubd[...] = 0
    ud[...] = 0
    for t in range(n_max):
        _multi(f"tv2d_rows_jvp<{ct}>", rows, (xd, ubd, wd, lam1d, *dims, counts, np.int32(t),
                                             bits))  # fmt: skip
        _multi(f"tv2d_cols_jvp<{ct}>", cols, (ubd, ud, wd, zd, lam0d, *dims,
                                             np.int32(pb.momentum), counts, np.int32(t),
                                             bits))  # fmt: skip
    # A slice that ran no iteration returned x itself: its tangent is x_dot.
    out = xp.where((counts == 0)[:, None, None], xd, zd)
    _multi(f"tv2d_fill_nan<{ct}>", rows, (out, *dims, state))
    return out


def momentum_flag(method) -> int:
    """The kernels' momentum flag for a method name (``"auto"`` included), else ValueError."""
    return method_entry(method, METHODS, DEFAULT_METHOD)


class _Problem:
    """A validated call: the (slices, h, w) view of x, the per-slice weights, the options."""

    def __init__(self, x, lam, axes, max_iter, tol, method):
        self.momentum = momentum_flag(method)
        self.xp = xp = _array_module(x, "x")
        self.dtype = check_float_dtype(x.dtype)
        self.x = x
        self.axes = normalize_axes(axes, x.ndim)
        lam0, lam1, self.is_pair = split_lam_pair(lam)
        self.lam_parts = (lam0, lam1) if self.is_pair else (lam,)
        names = ("lam[0]", "lam[1]") if self.is_pair else ("lam", "lam")
        self.compute = _compute_dtype(self.dtype)
        # Each weight as given (cupytv.tv1d.Weight, one value per slice), kept for its gradient.
        self.weights = [
            Weight.of(part, x.shape, self.axes, self.compute, name)
            for part, name in zip(self.lam_parts, names, strict=False)
        ]
        # Shared checks: a bool or a string tol used to pass here as 1.0 or a ValueError.
        self.max_iter, self.tol = check_max_iter(max_iter, 0), check_tol(tol)
        # The TV axes last: for the usual axes (-2, -1) no moveaxis (microseconds a call each).
        self.last = self.axes == (x.ndim - 2, x.ndim - 1)
        moved = x if self.last else xp.moveaxis(x, self.axes, (-2, -1))
        self.moved_shape = moved.shape
        self.batch_shape = moved.shape[:-2]
        self.h, self.w = moved.shape[-2:]
        self.slices = math.prod(self.batch_shape)
        self.xc = xp.ascontiguousarray(moved, dtype=self.compute).reshape(
            self.slices, self.h, self.w
        )
        # The kernels read both weights with one pattern; one weight for both axes is converted
        # once and passed as both. first: the slice this problem's slice 0 is (part()).
        w0 = self.weights[0]
        w1 = self.weights[-1]
        w0, w1 = w0.aligned(w1), w1.aligned(w0)
        lams = [
            xp.asarray(w.data.astype(self.compute)) if w.mod else xp.empty(1, self.compute)
            for w in ((w0, w1) if self.is_pair else (w0,))
        ]
        self.lam0, self.lam1 = lams if self.is_pair else lams * 2
        self.lam_values = (self.compute.type(w0.value or 0), self.compute.type(w1.value or 0))
        self.lam_pattern = (np.int64(w0.div), np.int64(w0.mod))
        self.first = 0
        self.n_iter = xp.zeros(self.slices, dtype=np.int32)
        self.gap = xp.empty(self.slices)
        self.gap.fill(np.nan)

    def _slice_order(self, a):
        """``a`` (x's dimensions) with the TV axes moved last, as the slices are laid out."""
        return a if self.last else self.xp.moveaxis(a, self.axes, (-2, -1))

    def part(self, lo: int, hi: int) -> _Problem:
        """Slices ``lo:hi`` as a problem of their own, on views: what a solve of the part writes
        (n_iter, gap) lands in this problem's arrays."""
        if (lo, hi) == (0, self.slices):  # one chunk: the problem itself
            return self
        sub = copy.copy(self)
        sub.xc, sub.slices, sub.first = self.xc[lo:hi], hi - lo, self.first + lo
        sub.n_iter, sub.gap = self.n_iter[lo:hi], self.gap[lo:hi]
        return sub

    def flat(self, a):
        return self.xp.ascontiguousarray(self._slice_order(a), dtype=self.compute).reshape(
            self.slices, self.h, self.w
        )

    def restore(self, y):
        """(slices, h, w) back to x's layout and dtype."""
        y = y.reshape(self.moved_shape)
        if not self.last:
            y = self.xp.moveaxis(y, (-2, -1), self.axes)
        return y if y.dtype == self.dtype else y.astype(self.dtype)

    def batch(self, per_slice):
        return per_slice.reshape(self.batch_shape)

    def counts_from(self, n_iter):
        """``(counts, n_max)``: the per-slice counts (int32, slice order) and their maximum,
        read once (on a GPU, each read of a count is a synchronisation)."""
        xp = self.xp
        if type(n_iter) is int and 0 <= n_iter <= MAX_ITERATIONS:  # one count for every slice
            counts = xp.empty(self.slices, dtype=np.int32)
            counts.fill(n_iter)
            return counts, n_iter
        counts = xp.asarray(n_iter)
        if counts.dtype.kind not in "iu":
            raise TypeError(f"n_iter: expected integers (info.n_iter), got dtype {counts.dtype}")
        try:
            counts = xp.broadcast_to(counts, self.batch_shape)
        except ValueError:
            raise ValueError(
                f"n_iter: expected an int or an array of the batch shape {self.batch_shape} "
                f"(info.n_iter), got shape {counts.shape}"
            ) from None
        low, high = (int(counts.min()), int(counts.max())) if counts.size else (0, 0)
        if low < 0:
            raise ValueError(f"n_iter: expected counts >= 0, got {low}")
        # The kernels count in int32: 2**32 used to wrap to 0 and return g as the gradient.
        if high > MAX_ITERATIONS:
            raise ValueError(f"n_iter: expected counts <= 2**31 - 2 (int32), got {high}")
        return xp.ascontiguousarray(counts, dtype=np.int32).reshape(self.slices), high

    def fused(self) -> tuple[int, int] | None:
        """(threads, shared bytes) of the fused kernel, or None when the slice needs the
        multi-launch path."""
        if self.h > FUSED_MAX_N or self.w > FUSED_MAX_N:
            return None
        threads = -(-max(self.h, self.w) // WARP) * WARP
        arrays = 3 + self.momentum
        shared = (
            _GAP_TERMS * threads * _DOUBLE_BYTES
            + arrays * self.h * (self.w | 1) * self.compute.itemsize
        )
        return (threads, shared) if shared <= FUSED_MAX_SHARED_BYTES else None

    def lam_args(self):
        """The kernels' (lam0, lam1, lam_value0, lam_value1, lam_first, lam_div, lam_mod)."""
        return (self.lam0, self.lam1, *self.lam_values, np.int64(self.first), *self.lam_pattern)

    def lam_arg(self, k: int):
        """The row (k = 1) or column (k = 0) half's (lam, lam_value, lam_first, lam_div,
        lam_mod)."""
        lam = self.lam1 if k else self.lam0
        return (lam, self.lam_values[k], np.int64(self.first), *self.lam_pattern)

    def dims(self):
        return (np.int64(self.slices), np.int64(self.h), np.int64(self.w))

    def ctype(self) -> str:
        return _CTYPES[self.compute]


def _forward(pb: _Problem, path: str | None = None):
    """Run the forward; fills pb.n_iter and pb.gap, returns z as (slices, h, w).

    ``path``: None picks by size (the contract in cuda_src/tv2d.cu); "fused" or "multi" forces
    one (tests compare the two). The multi-launch path solves chunks of slices in turn, so its
    state and workspace are a chunk's (cupytv._chunks); the fused one keeps them on chip.
    """
    xp = pb.xp
    z = xp.empty_like(pb.xc)
    if pb.xc.size == 0:
        # Empty slices are solved exactly by doing nothing: gap 0 (as prox_tv reports for one or
        # three axes), not the NaN that marks non-finite input.
        pb.gap[...] = 0
        return z
    fused = _fused_config(pb, path)
    if fused is not None:
        threads, shared = fused
        args = (pb.xc, z, *pb.lam_args(), *pb.dims(), np.int32(pb.momentum),
                np.int32(pb.max_iter), np.float64(pb.tol), pb.n_iter, pb.gap)  # fmt: skip
        _loader.launch(STEM, f"tv2d_solve<{pb.ctype()}>", (pb.slices,), (threads,), args, shared)
        return z
    per_chunk = _chunks.chunk_items(pb.slices, _multi_workspace(pb), pb.xc.nbytes, pb.h * pb.w, xp)
    for lo, hi in _chunks.ranges(pb.slices, per_chunk):
        _forward_multi(pb.part(lo, hi), z[lo:hi])
    return z


def _forward_multi(pb: _Problem, z) -> None:
    """The multi-launch forward of every slice of ``pb`` into ``z``."""
    xp = pb.xp
    ct, dims = pb.ctype(), pb.dims()
    z[...] = pb.xc
    ub, u, wbuf = _state(pb)
    state = xp.zeros(pb.slices, dtype=np.int32)
    terms = xp.empty(_GAP_TERMS * pb.slices * pb.h)
    # Each slice's max|x|: the certificate is computed on the slice scaled by a power of two near
    # it (gap_unit; the fused kernel computes the same maximum itself).
    scale = _slice_max_abs(pb)
    active = xp.zeros(pb.max_iter + 1, dtype=np.int32)
    scratch = _scratch(pb)
    # The forward records nothing (replay == 0): placeholders for the record's arguments.
    no_bits = xp.zeros(1, dtype=np.uint32)
    rows = _grid(pb.slices * pb.h)
    _multi(f"tv2d_check_finite<{ct}>", rows, (pb.xc, *dims, state))
    poll = 1 if xp is np else GPU_POLL_EVERY
    for t in range(pb.max_iter + 1):
        _multi(f"tv2d_rows_gap<{ct}>", rows,
               (pb.xc, z, *pb.lam_args(), *dims, state, scale, terms))  # fmt: skip
        _multi("tv2d_decide", _grid(pb.slices),
               (terms, *dims, np.int32(t), np.int32(pb.max_iter), np.float64(pb.tol), state,
                pb.n_iter, pb.gap, active))  # fmt: skip
        if t == pb.max_iter:
            break
        _iteration(pb, t, (pb.xc, ub, u, wbuf, z), state, 0, no_bits, scale, scratch)
        if (t + 1) % poll == 0 and int(active[t]) == 0:
            break
    _multi(f"tv2d_fill_nan<{ct}>", rows, (z, *dims, state))


def _backward(pb: _Problem, gc, counts, path: str | None = None, n_max: int | None = None):
    """grad_x as (slices, h, w) and the per-slice lam gradients as a (2, slices) float64 array:
    row 0 for lam0 (axes[0]), row 1 for lam1. Chunks of slices in turn, as the forward.
    ``n_max``: the largest count when the caller knows it (on a GPU, reading it is a
    synchronisation)."""
    xp = pb.xp
    grad_x = xp.empty_like(pb.xc)
    if pb.xc.size == 0:
        return grad_x, xp.zeros((2, pb.slices))
    fused = _fused_config(pb, path)
    if n_max is None:
        n_max = int(counts.max())
    workspace = n_max * _record_words(pb) * _WORD_BYTES
    if fused is None:
        workspace += _multi_workspace(pb, backward=True)
    per_chunk = _chunks.chunk_items(pb.slices, workspace, pb.xc.nbytes, pb.h * pb.w, xp)
    if per_chunk == pb.slices:  # one chunk: its gradients are the result
        if fused is not None:
            return grad_x, _backward_fused(pb, gc, counts, fused, grad_x, n_max)
        return grad_x, _backward_multi(pb, gc, counts, grad_x, n_max)
    grad_lam = xp.empty((2, pb.slices))
    for lo, hi in _chunks.ranges(pb.slices, per_chunk):
        part, out = pb.part(lo, hi), grad_x[lo:hi]
        if fused is not None:
            grad_lam[:, lo:hi] = _backward_fused(part, gc[lo:hi], counts[lo:hi], fused, out)
        else:
            grad_lam[:, lo:hi] = _backward_multi(part, gc[lo:hi], counts[lo:hi], out)
    return grad_x, grad_lam


def _backward_fused(pb: _Problem, gc, counts, fused, grad_x, n_max: int | None = None):
    """The fused backward of every slice of ``pb`` into ``grad_x``; returns its lam gradients.
    ``n_max``: counts' maximum, when known."""
    xp = pb.xp
    grad_lam = xp.empty((2, pb.slices))  # the kernel writes both rows whole
    n_max = int(counts.max()) if n_max is None else n_max
    bits = _record(xp, n_max * pb.slices * _record_words(pb))
    threads, shared = fused
    args = (pb.xc, gc, *pb.lam_args(), *pb.dims(), np.int32(pb.momentum), counts, bits, grad_x,
            grad_lam)  # fmt: skip
    _loader.launch(STEM, f"tv2d_solve_vjp<{pb.ctype()}>", (pb.slices,), (threads,), args, shared)
    return grad_lam


def _backward_multi(pb: _Problem, gc, counts, grad_x, n_max: int | None = None):
    """The multi-launch backward of every slice of ``pb`` into ``grad_x``; returns its lam
    gradients."""
    xp = pb.xp
    grad_lam = xp.zeros((2, pb.slices))
    n_max = int(counts.max()) if n_max is None else n_max
    ct, dims = pb.ctype(), pb.dims()
    bits, (ub, u, wbuf, z), state = _replay(pb, counts, n_max)
    rows, cols = _grid(pb.slices * pb.h), _grid(pb.slices * pb.w)
    # Adjoints (the forward's buffers reused): a of Ub, b of U, xb of X, tb the work array.
    a, b, xb, tb = ub, u, z, wbuf
    a[...] = 0
    b[...] = 0
    xb[...] = 0
    row_glam = xp.zeros(pb.slices * pb.h)
    col_glam = xp.zeros(pb.slices * pb.w)
    for t in reversed(range(n_max)):
        _multi(f"tv2d_cols_vjp<{ct}>", cols,
               (gc, a, b, tb, *dims, np.int32(pb.momentum), counts, np.int32(t), bits,
                col_glam))  # fmt: skip
        _multi(f"tv2d_rows_vjp<{ct}>", rows,
               (a, xb, tb, *dims, counts, np.int32(t), bits, row_glam))  # fmt: skip
    _multi("tv2d_lam_grad", _grid(pb.slices), (row_glam, col_glam, *dims, grad_lam))
    # A slice that ran no iteration returned x itself: its gradient is g.
    grad_x[...] = xp.where((counts == 0)[:, None, None], gc, xb)
    _multi(f"tv2d_fill_nan<{ct}>", rows, (grad_x, *dims, state))
    return xp.where(((state & _NONFINITE) != 0)[None, :], np.nan, grad_lam)


def _replay(pb: _Problem, counts, n_max: int):
    """Re-run the multi-launch forward of every slice for its ``counts`` iterations, recording
    each 1D solution's jumps: ``(bits, (Ub, U, W, Z) as left by the last iteration, state)``,
    what the backward and the tangent then run through (the fused kernel records the same)."""
    xp = pb.xp
    bits = _record(xp, n_max * pb.slices * _record_words(pb))
    ct, dims = pb.ctype(), pb.dims()
    ub, u, wbuf = _state(pb)
    z = xp.empty_like(pb.xc)
    state = xp.zeros(pb.slices, dtype=np.int32)
    scratch = _scratch(pb)
    _multi(f"tv2d_check_finite<{ct}>", _grid(pb.slices * pb.h), (pb.xc, *dims, state))
    # The scale of the threshold below which a jump counts as none.
    scale = _slice_max_abs(pb)
    for t in range(n_max):
        _iteration(pb, t, (pb.xc, ub, u, wbuf, z), counts, 1, bits, scale, scratch)
    return bits, (ub, u, wbuf, z), state


def _iteration(pb: _Problem, t: int, arrays, control, replay: int, bits, scale, scratch) -> None:
    """One multi-launch iteration: the row half, then the column half."""
    x, ub, u, wbuf, z = arrays
    ct, dims = pb.ctype(), pb.dims()
    _multi(f"tv2d_rows_prox<{ct}>", _grid(pb.slices * pb.h),
           (x, ub, wbuf, z, *pb.lam_arg(1), *dims, control, np.int32(replay), np.int32(t), bits,
            scale, scratch))  # fmt: skip
    _multi(f"tv2d_cols_prox<{ct}>", _grid(pb.slices * pb.w),
           (ub, u, wbuf, z, *pb.lam_arg(0), *dims, np.int32(pb.momentum), control,
            np.int32(replay), np.int32(t), bits, scale, scratch))  # fmt: skip


def _slice_max_abs(pb: _Problem):
    """Each slice's max|x|, as the fused kernel computes it (a maximum is exact: paths agree)."""
    return pb.xp.ascontiguousarray(pb.xp.abs(pb.xc).max(axis=(1, 2)))


def _state(pb: _Problem):
    """Ub, U and W of the multi-launch iteration (U is a placeholder without momentum)."""
    xp = pb.xp
    ub = xp.zeros_like(pb.xc)
    u = xp.zeros_like(pb.xc) if pb.momentum else xp.zeros(1, dtype=pb.compute)
    return ub, u, xp.empty_like(pb.xc)


def _fused_config(pb: _Problem, path: str | None):
    if path not in (None, "fused", "multi"):
        raise ValueError(f"path: expected None, 'fused' or 'multi', got {path!r}")
    fused = pb.fused() if path != "multi" else None
    if path == "fused" and fused is None:
        raise ValueError(f"a {pb.h} x {pb.w} {pb.compute} slice does not fit the fused kernel")
    return fused


def _multi(name: str, grid: tuple[int], args) -> None:
    _loader.launch(STEM, name, grid, (BLOCK,), args)


def _grid(threads: int) -> tuple[int]:
    return (max(1, -(-threads // BLOCK)),)


def _scratch(pb: _Problem):
    """Condat's fallback workspace for fibers longer than GUARD_MIN_N (tv1d_solvers.cuh): the 1D
    kernels' per-fiber size, for the rows and the columns sharing one buffer."""
    return pb.xp.empty(max(1, pb.slices * _scratch_per_slice(pb)), dtype=pb.compute)


def _scratch_per_slice(pb: _Problem) -> int:
    rows = pb.h * _scratch_per_fiber("tv1d_condat", pb.w, pb.compute)
    cols = pb.w * _scratch_per_fiber("tv1d_condat", pb.h, pb.compute)
    return max(rows, cols)


def _record(xp, words: int):
    """The backward's record, uninitialised: every word a kernel reads (iteration t of a slice
    that ran more than t iterations) was written whole by the replay first (record_jumps stores
    each word), so zeroing it, a memset of 4 bits per sample and iteration (~1.5 ms per call at
    (128, 64, 32, 32) on the host), was wasted."""
    return xp.empty(max(1, words), dtype=np.uint32)


def _record_words(pb: _Problem) -> int:
    """32-bit words of the backward's record per slice and iteration (2-bit jump codes of the
    rows' and the columns' 1D solutions)."""
    return pb.h * -(-pb.w // _SAMPLES_PER_WORD) + pb.w * -(-pb.h // _SAMPLES_PER_WORD)


def _multi_workspace(pb: _Problem, backward: bool = False) -> int:
    """Bytes per slice the multi-launch path allocates besides its output: Ub, W and U (with
    momentum), Condat's scratch, the certificate's partial sums; the backward adds X's adjoint,
    its select and the per-fiber lam gradients (its record is counted by the caller)."""
    item = pb.compute.itemsize
    arrays = 2 + pb.momentum + (2 if backward else 0)
    per_fiber_sums = (_GAP_TERMS * pb.h if not backward else pb.h + pb.w) * _DOUBLE_BYTES
    return (arrays * pb.h * pb.w + _scratch_per_slice(pb)) * item + per_fiber_sums
