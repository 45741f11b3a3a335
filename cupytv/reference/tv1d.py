"""Exact 1D TV proximal operator and its vector-Jacobian product, on the CPU.

The solver is Johnson's dynamic programme for the fused-lasso signal approximator (N. A. Johnson,
"A dynamic programming algorithm for the fused lasso and L0-segmentation", JCGS 2013): linear
time, no iterations, no tolerance. It is deliberately a different algorithm from the ones our
kernels run (projected Newton, Condat's direct method), so agreement between them means something.
Its output is then *polished*: each constant segment gets the closed-form value that the
optimality conditions give for that segment, so the result is exact up to the rounding of one sum.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from .._validation import (
    check_float_dtype,
    host_array,
    lam_to_array,
    normalize_axis,
    unbroadcast,
)


def prox_tv1d(x, lam, axis: int = -1) -> np.ndarray:
    r"""Exact TV proximal operator of every 1D fiber of ``x`` along ``axis``.

    For each fiber :math:`x \in \mathbb{R}^n` it returns

    .. math::
        y = \arg\min_y \tfrac12 \lVert y - x\rVert_2^2 + \lambda \sum_{i=0}^{n-2} |y_{i+1} - y_i|.

    Args:
        x: real floating array of shape ``(*, n, *)``. Computed in float64, returned in x's dtype.
        lam: weight :math:`\lambda \ge 0`: a scalar, or an array broadcastable to x's shape with
            ``axis`` reduced to 1 (one weight per fiber).
        axis: the axis along which the fibers run.

    Returns:
        ``y`` with x's shape and dtype. A fiber holding NaN or ±Inf comes back as all NaN; every
        other fiber is unaffected.

    Example:
        >>> prox_tv1d(np.array([0.0, 0.0, 3.0, 3.0]), 1.0)
        array([0.5, 0.5, 2.5, 2.5])
    """
    x, lam_f, moved = _prepare(x, lam, axis)
    if x.size == 0:
        return x.copy()
    y = np.empty_like(moved, dtype=np.float64)
    for f in range(moved.shape[0]):
        y[f] = _solve_fiber(moved[f], lam_f[f]).y
    return _restore(y, x, axis)


def prox_tv1d_vjp(x, lam, g, axis: int = -1):
    r"""Gradients of :math:`\langle g, \mathrm{prox}(x, \lambda)\rangle` with respect to x and lam.

    The exact prox is piecewise affine in ``(x, lam)``. On a constant segment :math:`S` of the
    output, with :math:`s_{in}` the sign of the jump into :math:`S` and :math:`s_{out}` the sign
    of the jump out of it (0 at the ends of the fiber), the optimality conditions
    :math:`u = \mathrm{cumsum}(y - x)`, :math:`u_{end(S)} = \lambda s_{out}`,
    :math:`u_{start(S)-1} = \lambda s_{in}` give

    .. math:: y_S = \operatorname{mean}_S(x) + \lambda (s_{out} - s_{in}) / |S|.

    Differentiating, :math:`\partial y_S / \partial x_i = 1/|S|` for :math:`i \in S` and
    :math:`\partial y_S/\partial\lambda = (s_{out} - s_{in})/|S|`, hence

    .. math::
        \nabla_x = \operatorname{mean}_S(g) \text{ on each } S, \qquad
        \nabla_\lambda = \sum_S -(s_{in} - s_{out})\, \operatorname{mean}_S(g).

    Args:
        x, lam, axis: as for :func:`prox_tv1d`.
        g: upstream gradient, same shape as ``x``.

    Returns:
        ``(grad_x, grad_lam)``: grad_x has x's shape and dtype; grad_lam has lam's shape (0-d
        for a scalar lam), summed over the fibers that shared a weight, in x's dtype. A fiber
        holding NaN or ±Inf gets NaN in grad_x and contributes NaN to its weight's gradient.
    """
    x, lam_f, moved = _prepare(x, lam, axis)
    g_moved = _match_gradient(g, x, axis)
    if x.size == 0:
        return np.zeros_like(x), np.zeros(host_array(lam).shape, dtype=x.dtype)
    grad_x = np.empty_like(moved, dtype=np.float64)
    grad_lam = np.empty(moved.shape[0], dtype=np.float64)
    for f in range(moved.shape[0]):
        seg = _solve_fiber(moved[f], lam_f[f])
        if np.isnan(seg.y[0]):  # a non-finite fiber: no derivative, and NaN says so
            grad_x[f], grad_lam[f] = np.nan, np.nan
            continue
        g_mean = np.add.reduceat(g_moved[f], seg.starts) / seg.lengths
        grad_x[f] = np.repeat(g_mean, seg.lengths)
        grad_lam[f] = np.dot(seg.s_out - seg.s_in, g_mean)
    lam_full = lam_to_array(lam, x.shape, (normalize_axis(axis, x.ndim),))
    grad_lam = unbroadcast(grad_lam.reshape(lam_full.shape), host_array(lam).shape)
    return _restore(grad_x, x, axis), grad_lam.astype(x.dtype)


class _Segments:
    """A fiber's solution with its segment structure (what the VJP needs)."""

    __slots__ = ("lengths", "s_in", "s_out", "starts", "y")

    def __init__(self, y, starts, lengths, s_in, s_out):
        self.y, self.starts, self.lengths, self.s_in, self.s_out = y, starts, lengths, s_in, s_out


def _prepare(x, lam, axis):
    """Validate and return (x, per-fiber lam, x as float64 of shape (fibers, n))."""
    x = host_array(x)
    check_float_dtype(x.dtype)
    if x.ndim == 0:
        raise ValueError("x: expected an array with at least 1 dimension, got a 0-d array")
    ax = normalize_axis(axis, x.ndim)
    lam_b = lam_to_array(lam, x.shape, (ax,))
    moved = np.moveaxis(x.astype(np.float64, copy=False), ax, -1)
    moved = moved.reshape(-1, moved.shape[-1]) if x.size else moved
    lam_f = np.moveaxis(lam_b, ax, -1).reshape(-1)
    return x, lam_f, moved


def _restore(y2d, x, axis):
    ax = normalize_axis(axis, x.ndim)
    shape = np.moveaxis(np.empty(x.shape, dtype=np.bool_), ax, -1).shape
    return np.moveaxis(y2d.reshape(shape), -1, ax).astype(x.dtype, copy=False)


def _match_gradient(g, x, axis):
    g = host_array(g)
    if g.shape != x.shape:
        raise ValueError(f"g: expected the shape of x, {x.shape}, got {g.shape}")
    check_float_dtype(g.dtype, "g")
    ax = normalize_axis(axis, x.ndim)
    g_moved = np.moveaxis(g.astype(np.float64, copy=False), ax, -1)
    return g_moved.reshape(-1, x.shape[ax]) if x.size else g_moved


def _solve_fiber(x: np.ndarray, lam: float) -> _Segments:
    n = x.shape[0]
    if not np.all(np.isfinite(x)):
        # No minimiser exists; keep the damage inside this fiber and make it visible.
        nan = np.full(n, np.nan)
        return _Segments(nan, np.array([0]), np.array([n]), np.zeros(1), np.zeros(1))
    if lam == 0.0:
        # The identity, bit-exact. Every sample is its own segment (a zero weight couples
        # nothing) and the steps keep their signs: the one-sided derivative in lam at 0+.
        steps = np.sign(np.diff(x))
        starts, lengths = np.arange(n), np.ones(n, dtype=np.intp)
        return _Segments(x.copy(), starts, lengths, np.r_[0.0, steps], np.r_[steps, 0.0])
    return _polish(x, lam, _johnson_jump_signs(x.tolist(), float(lam)))


def _johnson_jump_signs(x: list[float], lam: float) -> np.ndarray:
    """Sign of y[k+1] - y[k] for k < n-1, from Johnson's dynamic programme.

    Forward pass: f_k(b) is the optimal cost of x[:k+1] with y[k] = b. Its derivative f_k' is
    piecewise linear and increasing, stored as a deque of knots (position, slope step, intercept
    step) plus the line left of the first knot and the line right of the last. The message
    m_k = min_b' f_k(b') + lam |b - b'| has derivative clip(f_k', -lam, lam); clipping removes
    knots from the two ends (each knot is removed once: linear time) and adds two new ones at
    tm_k, tp_k where f_k' = -lam, +lam. Backward pass: y[k] = clip(y[k+1], tm_k, tp_k).
    """
    n = len(x)
    knots: deque[tuple[float, float, float]] = deque()
    tm = [0.0] * (n - 1)
    tp = [0.0] * (n - 1)
    a_lo, b_lo = 1.0, -x[0]  # f' = a*t + b left of the first knot
    a_hi, b_hi = 1.0, -x[0]  # ... and right of the last knot
    for k in range(n - 1):
        while knots and a_lo * knots[0][0] + b_lo < -lam:
            _, da, db = knots.popleft()
            a_lo, b_lo = a_lo + da, b_lo + db
        while knots and a_hi * knots[-1][0] + b_hi > lam:
            _, da, db = knots.pop()
            a_hi, b_hi = a_hi - da, b_hi - db
        tm[k] = (-lam - b_lo) / a_lo
        tp[k] = (lam - b_hi) / a_hi
        # Left of tm the clipped derivative is the constant -lam, right of tp it is +lam.
        knots.appendleft((tm[k], a_lo, b_lo + lam))
        knots.append((tp[k], -a_hi, lam - b_hi))
        a_lo, b_lo = 1.0, -lam - x[k + 1]
        a_hi, b_hi = 1.0, lam - x[k + 1]
    while knots and a_lo * knots[0][0] + b_lo < 0.0:
        _, da, db = knots.popleft()
        a_lo, b_lo = a_lo + da, b_lo + db
    y_next = -b_lo / a_lo
    signs = np.zeros(n - 1)
    for k in range(n - 2, -1, -1):
        if y_next > tp[k]:
            signs[k], y_next = 1.0, tp[k]
        elif y_next < tm[k]:
            signs[k], y_next = -1.0, tm[k]
    return signs


def _polish(x: np.ndarray, lam: float, jump_signs: np.ndarray) -> _Segments:
    """Closed-form segment values y_S = (sum_S x + lam (s_out - s_in)) / |S| for a structure.

    Given the right segmentation and jump signs this is the exact minimiser; near a degenerate
    jump (one that is about to vanish) it is continuous, so a borderline call costs nothing. A
    jump whose polished step vanishes or points against its sign (a tie the programme resolved
    by rounding, e.g. x = [-7, 8e-67, 1.45], lam = 1.45) is merged away and the values are
    recomputed; jumps are only ever removed, so this ends after at most n - 1 rounds.
    """
    n = x.shape[0]
    jump_signs = jump_signs.copy()
    while True:
        breaks = np.flatnonzero(jump_signs != 0)  # a jump between k and k+1
        starts = np.concatenate(([0], breaks + 1))
        lengths = np.diff(np.concatenate((starts, [n])))
        s_in = np.concatenate(([0.0], jump_signs[breaks]))
        s_out = np.concatenate((jump_signs[breaks], [0.0]))
        values = (np.add.reduceat(x, starts) + lam * (s_out - s_in)) / lengths
        contradicted = np.sign(np.diff(values)) != jump_signs[breaks]
        if not contradicted.any():
            return _Segments(np.repeat(values, lengths), starts, lengths, s_in, s_out)
        jump_signs[breaks[contradicted]] = 0.0
