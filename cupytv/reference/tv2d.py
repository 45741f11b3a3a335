"""Exact anisotropic 2D TV proximal operator and its vector-Jacobian product, on the CPU.

Route (independent of the kernels' proximal Dykstra): the dual problem

    min_z ½‖x − Kᵀz‖²  subject to  |z_e| <= lam_e,        y = x − Kᵀz,

where K stacks the forward differences along both axes (one row per edge of the pixel grid), is
a sparse bound-constrained least-squares problem, solved with SciPy's trust-region reflective
``lsq_linear``. Its output is then *polished*: pixels joined by edges of (numerically) zero jump
form connected regions, and each region R gets the value the optimality conditions give,

    y_R = (Σ_R x + Σ_{edges e from R to a neighbour N} lam_e · sign(y_N − y_R)) / |R|,

which is exact once the regions and the signs between them are right.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
from scipy.optimize import lsq_linear
from scipy.sparse.csgraph import connected_components

from .._validation import (
    check_float_dtype,
    host_array,
    lam_to_array,
    normalize_axes,
    split_lam_pair,
    unbroadcast,
)

#: Two pixels whose dual solution differs by at most this times max|x| are taken as fused.
#: The dual solve resolves fused differences to ~1e-11 relative, while true jumps of random data
#: are many orders larger; a true jump below this threshold is misread, which costs an error of
#: that size (see the module docstring), never a wrong structure elsewhere.
FUSE_RTOL = 1e-8

#: lsq_linear stopping tolerance. Polishing needs only the structure, so the solve may stop early;
#: at 1e-12 fused pixels still agree to ~1e-11 relative, far inside FUSE_RTOL (1e-8 was seen to
#: misread a 64 x 64 slice).
_DUAL_TOL = 1e-12
_DUAL_MAX_ITER = 2000


def prox_tv2d(x, lam, axes=(-2, -1)) -> np.ndarray:
    r"""Exact anisotropic 2D TV proximal operator of every 2D slice of ``x`` over ``axes``.

    For each slice :math:`X` (axes[0] indexes rows :math:`i`, axes[1] columns :math:`j`):

    .. math::
        Y = \arg\min_Y \tfrac12\lVert Y - X\rVert_F^2
            + \lambda_0 \sum_{i,j} |Y_{i+1,j} - Y_{i,j}|
            + \lambda_1 \sum_{i,j} |Y_{i,j+1} - Y_{i,j}|.

    Args:
        x: real floating array of shape ``(*, H, W)`` (or the TV axes anywhere). Computed in
            float64, returned in x's dtype.
        lam: a weight for both axes (scalar, or an array broadcastable to x's shape with both
            ``axes`` reduced to 1: one weight per slice), or a tuple/list pair
            ``(lam0, lam1)`` of such weights, one per axis.
        axes: the two axes spanning each slice.

    Returns:
        ``Y`` with x's shape and dtype; a slice holding NaN or ±Inf comes back as all NaN.

    Example:
        >>> prox_tv2d(np.array([[0.0, 4.0], [0.0, 4.0]]), 1.0)
        array([[1., 3.],
               [1., 3.]])
    """
    x, slices, lam0, lam1, _ = _prepare(x, lam, axes)
    if x.size == 0:
        return x.copy()
    y = np.empty_like(slices)
    for s in range(slices.shape[0]):
        y[s] = _solve_slice(slices[s], lam0[s], lam1[s]).y
    return _restore(y, x, axes)


def prox_tv2d_vjp(x, lam, g, axes=(-2, -1)):
    r"""Gradients of :math:`\langle g, \mathrm{prox}(x)\rangle` with respect to x and lam.

    Let the output's regions :math:`R` be the connected sets of equal value. From the closed form
    above, :math:`\partial Y_R/\partial x_p = 1/|R|` for :math:`p \in R` and
    :math:`\partial Y_R/\partial\lambda_a = \sigma_{R,a}/|R|` with
    :math:`\sigma_{R,a} = \sum_{e \text{ along axis } a \text{ leaving } R}
    \operatorname{sign}(Y_N - Y_R)`. Hence

    .. math::
        \nabla_x = \operatorname{mean}_R(g) \text{ on each } R, \qquad
        \nabla_{\lambda_a} = \sum_R \sigma_{R,a}\, \operatorname{mean}_R(g).

    For a single weight used on both axes, :math:`\nabla_\lambda = \nabla_{\lambda_0} +
    \nabla_{\lambda_1}`. At a zero weight the derivative is the one-sided one for lam -> 0+.

    Args:
        x, lam, axes: as for :func:`prox_tv2d`.
        g: upstream gradient, same shape as ``x``.

    Returns:
        ``(grad_x, grad_lam)``; grad_lam has lam's shape, or is a pair of arrays shaped like
        ``lam0`` and ``lam1`` when lam is a pair. All in x's dtype.
    """
    x, slices, lam0, lam1, is_pair = _prepare(x, lam, axes)
    g = host_array(g)
    if g.shape != x.shape:
        raise ValueError(f"g: expected the shape of x, {x.shape}, got {g.shape}")
    check_float_dtype(g.dtype, "g")
    if x.size == 0:
        zeros = tuple(np.zeros(host_array(p).shape, x.dtype) for p in split_lam_pair(lam)[:2])
        return np.zeros_like(x), zeros if is_pair else zeros[0]
    g_slices = _to_slices(g.astype(np.float64, copy=False), axes)
    grad_x = np.empty_like(slices)
    grad_l = np.empty((2, slices.shape[0]))
    for s in range(slices.shape[0]):
        reg = _solve_slice(slices[s], lam0[s], lam1[s])
        g_flat = g_slices[s].ravel()
        g_mean = np.bincount(reg.labels, g_flat, reg.n_regions) / reg.sizes
        grad_x[s] = g_mean[reg.labels].reshape(g_slices[s].shape)
        grad_l[:, s] = reg.sigma @ g_mean
    grad_x = _restore(grad_x, x, axes)
    a0, a1 = normalize_axes(axes, x.ndim)
    reduced = tuple(1 if d in (a0, a1) else n for d, n in enumerate(x.shape))
    per_axis = []
    for k, lam_k in enumerate(split_lam_pair(lam)[:2]):
        full = _from_slices(grad_l[k], reduced, (a0, a1))
        per_axis.append(unbroadcast(full, host_array(lam_k).shape).astype(x.dtype))
    grad_lam = tuple(per_axis) if is_pair else per_axis[0] + per_axis[1]
    return grad_x, grad_lam


class _Regions:
    """A slice's solution with its region structure (what the VJP needs)."""

    __slots__ = ("labels", "n_regions", "sigma", "sizes", "y")

    def __init__(self, y, labels, sizes, sigma):
        self.y, self.labels, self.sizes, self.sigma = y, labels, sizes, sigma
        self.n_regions = sizes.shape[0]


def _prepare(x, lam, axes):
    """Validate; return (x, slices (S, H, W) float64, lam0 (S,), lam1 (S,), is_pair)."""
    x = host_array(x)
    check_float_dtype(x.dtype)
    a0, a1 = normalize_axes(axes, x.ndim)
    lam_a, lam_b, is_pair = split_lam_pair(lam)
    names = ("lam[0]", "lam[1]") if is_pair else ("lam", "lam")
    lam0 = lam_to_array(lam_a, x.shape, (a0, a1), names[0])
    lam1 = lam_to_array(lam_b, x.shape, (a0, a1), names[1])
    slices = _to_slices(x.astype(np.float64, copy=False), (a0, a1))
    per_slice = [
        _to_slices(np.broadcast_to(v, v.shape), (a0, a1)).reshape(-1) for v in (lam0, lam1)
    ]
    return x, slices, per_slice[0], per_slice[1], is_pair


def _to_slices(a, axes):
    moved = np.moveaxis(a, axes, (-2, -1))
    return moved.reshape((math.prod(moved.shape[:-2]), *moved.shape[-2:]))  # -1 fails on size 0


def _restore(y_slices, x, axes):
    moved_shape = np.moveaxis(np.empty(x.shape, dtype=np.bool_), axes, (-2, -1)).shape
    return np.moveaxis(y_slices.reshape(moved_shape), (-2, -1), axes).astype(x.dtype, copy=False)


def _from_slices(values, reduced_shape, axes):
    moved_shape = np.moveaxis(np.empty(reduced_shape, dtype=np.bool_), axes, (-2, -1)).shape
    return np.moveaxis(values.reshape(moved_shape), (-2, -1), axes)


def _grid_edges(h: int, w: int):
    """Edges (i, j, axis) of an h x w grid in row-major pixel numbering; difference y_j − y_i."""
    idx = np.arange(h * w).reshape(h, w)
    i = np.concatenate((idx[:-1, :].ravel(), idx[:, :-1].ravel()))
    j = np.concatenate((idx[1:, :].ravel(), idx[:, 1:].ravel()))
    axis = np.concatenate((np.zeros((h - 1) * w, np.intp), np.ones(h * (w - 1), np.intp)))
    return i, j, axis


def _solve_slice(x: np.ndarray, lam0: float, lam1: float) -> _Regions:
    h, w = x.shape
    n = h * w
    xf = x.ravel()
    ei, ej, eaxis = _grid_edges(h, w)
    lam_e = np.where(eaxis == 0, lam0, lam1)
    if not np.all(np.isfinite(xf)):
        # No minimiser exists; keep the damage inside this slice and make it visible.
        return _Regions(np.full((h, w), np.nan), np.zeros(n, np.intp), np.ones(1), np.zeros((2, 1)))
    coupled = lam_e > 0  # a zero weight couples nothing: such edges are never fused
    y_dual = _dual_solution(xf, ei[coupled], ej[coupled], lam_e[coupled])
    tol = FUSE_RTOL * np.max(np.abs(xf)) if n else 0.0
    fused = coupled & (np.abs(y_dual[ej] - y_dual[ei]) <= tol)
    while True:
        labels, y, sizes, sigma, bad = _polish(xf, ei, ej, eaxis, lam0, lam1, fused, y_dual)
        if not bad.any():
            return _Regions(y.reshape(h, w), labels, sizes, sigma)
        # Polishing contradicted a jump's sign: those neighbours belong together. Regions only
        # grow, so this loop ends after at most n - 1 merges.
        fused = fused | bad


def _dual_solution(xf, ei, ej, lam_e):
    """y = x − Kᵀz for the dual minimiser z (bound-constrained least squares)."""
    if ei.size == 0:
        return xf.copy()
    m = ei.size
    rows = np.concatenate((ej, ei))
    cols = np.concatenate((np.arange(m), np.arange(m)))
    vals = np.concatenate((np.ones(m), -np.ones(m)))
    k_t = sp.csr_matrix((vals, (rows, cols)), shape=(xf.size, m))  # Kᵀ: pixels x edges
    res = lsq_linear(
        k_t, xf, bounds=(-lam_e, lam_e), method="trf", tol=_DUAL_TOL, max_iter=_DUAL_MAX_ITER
    )
    if res.status < 0 or not np.all(np.isfinite(res.x)):
        raise RuntimeError(f"reference 2D dual solve failed: {res.message}")
    return xf - k_t @ res.x


def _polish(xf, ei, ej, eaxis, lam0, lam1, fused, y_dual):
    """Closed-form region values for the structure ``fused``; also flag contradicted jumps."""
    n = xf.size
    graph = sp.csr_matrix((np.ones(int(fused.sum())), (ei[fused], ej[fused])), shape=(n, n))
    n_regions, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels, minlength=n_regions).astype(np.float64)
    li, lj = labels[ei], labels[ej]
    jump = (li != lj) & np.where(eaxis == 0, lam0, lam1).astype(bool)
    step = np.sign(y_dual[ej] - y_dual[ei]) * jump  # sign(y_N − y_R) seen from i's region
    sigma = np.zeros((2, n_regions))
    for a in (0, 1):
        on_axis = eaxis == a
        sigma[a] = np.bincount(li[on_axis], step[on_axis], n_regions) - np.bincount(
            lj[on_axis], step[on_axis], n_regions
        )
    values = (np.bincount(labels, xf, n_regions) + lam0 * sigma[0] + lam1 * sigma[1]) / sizes
    bad = jump & (np.sign(values[lj] - values[li]) != step)
    return labels, values[labels], sizes, sigma, bad
