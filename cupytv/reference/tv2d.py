"""Exact anisotropic 2D TV proximal operator and its vector-Jacobian product, on the CPU.

Route (independent of the kernels' proximal Dykstra): the dual problem

    min_z ½‖x − Kᵀz‖²  subject to  |z_e| <= lam_e,        y = x − Kᵀz,

where K stacks the forward differences along both axes (one row per edge of the pixel grid), is
a bound-constrained least-squares problem, solved by a primal-dual interior-point method
(Mehrotra's predictor-corrector; Nocedal & Wright, *Numerical Optimization*, ch. 16). Each
Newton system (KKᵀ + D) dz = r is reduced by the Woodbury identity to the pixel-space system
(I + Kᵀ D⁻¹ K) w = Kᵀ D⁻¹ r, a weighted grid Laplacian plus the identity (SPD), factorised with
SuperLU: about 15 factorisations per slice, 0.2 s for 64 x 64.

Three reductions, two exact and one within two rounding units, keep every tolerance below
relative to what the slice itself resolves:

- *Offset.* The prox commutes with adding a constant, so each slice is solved as x − c with c
  its midrange and shifted back: an offset of the data does not inflate the scale that the
  tolerances are relative to.
- *Provable jumps.* |y_p − x_p| = |(Kᵀz)_p| <= M_p = Σ_{edges e at p} lam_e, so an edge with
  |x_j − x_i| > M_i + M_j keeps the sign of x_j − x_i in y and is never fused, whatever the
  solver reads; when lam is negligible next to the data's steps, this decides every such step.
- *Negligible weights.* An edge whose lam_e is below what the solver resolves is left out of the
  interior-point solve (z_e = 0); the polish below still uses its weight. This is what keeps a
  tiny lam (down to the smallest subnormal) from stalling the solver.

All of it runs on x − c, the polish included; c is added back at the end.

Its output is then *polished*: pixels joined by edges of (numerically) zero jump form connected
regions, and each region R gets the value the optimality conditions give,

    y_R = (Σ_R x + Σ_{edges e from R to a neighbour N} lam_e · sign(y_N − y_R)) / |R|,

which is exact once the regions and the signs between them are right.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import splu

from .._validation import (
    check_float_dtype,
    host_array,
    lam_to_array,
    normalize_axes,
    reduced_shape,
    split_lam_pair,
    unbroadcast,
)

#: Two pixels whose interior-point solution differs by at most this times the slice's spread
#: max|x − c| (c its midrange) are fused, unless their step is a provable jump. The solve leaves
#: fused pixels within ~1e-12 relative of each other (measured on 64 x 64 and 128 x 128 slices);
#: true jumps of noisy data are orders larger. A true jump below this threshold that is also too
#: small to be provable (|x_j − x_i| <= M_i + M_j <= 4(lam0 + lam1)) would be misread as fused,
#: costing an error of that size.
FUSE_RTOL = 1e-9

#: Interior-point stopping rule on the scaled problem (max|x − c| = 1): mean complementarity
#: below _IPM_MU_TOL * max(lam) and stationarity below _IPM_RES_TOL. Tighter than the structure
#: needs: the extra two or three iterations widen the gap between fused and jumping pixels.
#: With max(lam) >= _IPM_LAM_FLOOR the complementarity target stays >= 1e-36, far from underflow.
_IPM_MU_TOL = 1e-20
_IPM_RES_TOL = 1e-13
_IPM_MAX_ITER = 100
#: Edges with lam_e below this times the spread are left out of the interior-point solve. Their
#: dual variables move no pixel by more than 4 * _IPM_LAM_FLOOR * spread (each pixel has at most
#: four edges; the prox is non-expansive in the max norm, being monotone and commuting with
#: constants), two rounding units of the data, far below the ~1e-12 the solve resolves. It also
#: keeps max(lam) >= the floor, so the complementarity target cannot underflow: at lam = 1e-300 it
#: did, and the solve never stopped.
_IPM_LAM_FLOOR = 1e-16
#: Lower bound on the barrier term D = s/w. Free edges drive D to 0 and the Woodbury system to a
#: pure Laplacian whose per-region constant mode SuperLU can then lose; flooring D keeps the
#: identity visible (condition number <= ~1e9) at the cost of slightly inexact Newton steps.
_IPM_D_FLOOR = 1e-9
#: Fraction of the way to the boundary a step may go (standard value).
_IPM_STEP_FRACTION = 0.995
#: Slack on the provable-jump test |x_j − x_i| > (M_i + M_j) * margin: the difference, the seven
#: additions behind M_i + M_j and the product round nine times, by at most eps/2 relative each,
#: so a step that passes with this margin passes in exact arithmetic.
_JUMP_MARGIN = 1.0 + 8 * np.finfo(np.float64).eps


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
        ``lam0`` and ``lam1`` when lam is a pair. All in x's dtype. A slice holding NaN or ±Inf
        gets NaN in grad_x and contributes NaN to its weights' gradients.
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
        if np.isnan(reg.y.flat[0]):  # a non-finite slice: no derivative, and NaN says so
            grad_x[s], grad_l[:, s] = np.nan, np.nan
            continue
        g_flat = g_slices[s].ravel()
        g_mean = np.bincount(reg.labels, g_flat, reg.n_regions) / reg.sizes
        grad_x[s] = g_mean[reg.labels].reshape(g_slices[s].shape)
        grad_l[:, s] = reg.sigma @ g_mean
    grad_x = _restore(grad_x, x, axes)
    a0, a1 = normalize_axes(axes, x.ndim)
    reduced = reduced_shape(x.shape, (a0, a1))
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
    if not coupled.any():
        # y = x exactly; returned as is, since the shift below would round it.
        return _Regions(x.copy(), np.arange(n), np.ones(n), np.zeros((2, n)))
    # Solve for x − offset, which is exact in exact arithmetic and makes the spread, not the
    # offset, set the scale of FUSE_RTOL and of the interior-point method. The midrange gives the
    # smallest spread; halving each term first cannot overflow.
    offset = 0.5 * xf.max() + 0.5 * xf.min()
    xs = xf - offset
    spread = np.max(np.abs(xs))
    proven = coupled & _provable_jumps(xf, ei, ej, lam_e)
    solved = coupled & (lam_e > _IPM_LAM_FLOOR * spread)
    y_dual = _dual_solution(xs, spread, ei[solved], ej[solved], lam_e[solved])
    dual_step = y_dual[ej] - y_dual[ei]
    fused = coupled & ~proven & (np.abs(dual_step) <= FUSE_RTOL * spread)
    # A proven jump takes its sign from x, the other edges from the solve.
    direction = np.where(proven, np.sign(xf[ej] - xf[ei]), np.sign(dual_step))
    while True:
        labels, y, sizes, sigma, bad = _polish(xs, ei, ej, eaxis, lam0, lam1, fused, direction)
        bad &= ~proven  # a proven sign holds; a rounded tie between the values says nothing
        if not bad.any():
            return _Regions((y + offset).reshape(h, w), labels, sizes, sigma)
        # Polishing contradicted a jump's sign: those neighbours belong together. Regions only
        # grow, so this loop ends after at most n - 1 merges.
        fused = fused | bad


def _provable_jumps(xf, ei, ej, lam_e):
    """Edges on which y provably jumps, keeping the sign of x_j − x_i (see the module docstring)."""
    reach = np.bincount(ei, lam_e, xf.size) + np.bincount(ej, lam_e, xf.size)  # M_p
    return np.abs(xf[ej] - xf[ei]) > (reach[ei] + reach[ej]) * _JUMP_MARGIN


def _dual_solution(xf, scale, ei, ej, lam_e):
    """y = x − Kᵀz at the dual minimiser z, by the interior-point method of the module docstring.

    Solved on the scaled problem x / scale, lam / scale with scale = max|x| (the prox is
    positively homogeneous), so every tolerance above is relative. Variables: z, slacks
    wl = z + lam, wu = lam − z (kept as variables, so rounding can never put z on a bound) and
    their multipliers sl, su.
    """
    if ei.size == 0 or scale == 0:
        return xf.copy()
    x, lam = xf / scale, lam_e / scale
    n, m = x.size, ei.size
    k = sp.csr_matrix(
        (np.r_[np.ones(m), -np.ones(m)], (np.r_[np.arange(m), np.arange(m)], np.r_[ej, ei])),
        shape=(m, n),
    )
    k_t = k.T.tocsr()
    eye = sp.identity(n, format="csc")
    # v = (z, wl, wu, sl, su); a step has the same layout.
    v = (np.zeros(m), lam.copy(), lam.copy(), np.ones(m), np.ones(m))
    for _ in range(_IPM_MAX_ITER):
        z, wl, wu, sl, su = v
        res = (
            -(k @ (x - k_t @ z)) - sl + su,  # stationarity: ∇f(z) − sl + su
            z - wl + lam,  # primal feasibility of the slacks
            z + wu - lam,
        )
        mu = (wl @ sl + wu @ su) / (2 * m)
        if mu < _IPM_MU_TOL * lam.max() and np.max(np.abs(res[0])) < _IPM_RES_TOL:
            return (x - k_t @ z) * scale
        d_inv = 1.0 / np.maximum(sl / wl + su / wu, _IPM_D_FLOOR)
        solve = splu((eye + k_t @ sp.diags(d_inv) @ k).tocsc()).solve
        system = (k, k_t, d_inv, solve)
        aff = _newton_step(system, v, res, -wl * sl, -wu * su)  # predictor: complementarity 0
        a = _longest_step(v, aff)
        mu_aff = (wl + a * aff[1]) @ (sl + a * aff[3]) + (wu + a * aff[2]) @ (su + a * aff[4])
        sigma = (mu_aff / (2 * m) / mu) ** 3  # Mehrotra's centring heuristic
        c_l = sigma * mu - wl * sl - aff[1] * aff[3]
        c_u = sigma * mu - wu * su - aff[2] * aff[4]
        step = _newton_step(system, v, res, c_l, c_u)  # corrector
        a = _IPM_STEP_FRACTION * _longest_step(v, step)
        v = tuple(vi + a * di for vi, di in zip(v, step, strict=True))
    raise RuntimeError(
        f"reference 2D solve: the interior-point method did not converge in {_IPM_MAX_ITER} "
        f"iterations (complementarity {mu:.2e}); please report this input"
    )


def _newton_step(system, v, res, c_l, c_u):
    """One Newton step of the interior-point method for complementarity targets c_l, c_u.

    Eliminating the slacks and multipliers leaves (KKᵀ + D) dz = rhs with D = sl/wl + su/wu,
    solved through the Woodbury identity with the factorised pixel-space matrix.
    """
    k, k_t, d_inv, solve = system
    _, wl, wu, sl, su = v
    r_d, r_l, r_u = res
    t = d_inv * (-r_d + (c_l - sl * r_l) / wl - (c_u + su * r_u) / wu)
    dz = t - d_inv * (k @ solve(k_t @ t))
    dwl, dwu = dz + r_l, -dz - r_u
    return dz, dwl, dwu, (c_l - sl * dwl) / wl, (c_u - su * dwu) / wu


def _longest_step(v, step):
    """Largest a <= 1 keeping the slacks and multipliers (all but z) non-negative."""
    a = 1.0
    for vi, di in zip(v[1:], step[1:], strict=True):
        shrinking = di < 0
        if shrinking.any():
            a = min(a, float(np.min(-vi[shrinking] / di[shrinking])))
    return a


def _polish(xf, ei, ej, eaxis, lam0, lam1, fused, direction):
    """Closed-form region values for the structure ``fused`` and the signs ``direction`` of
    y_j − y_i on the jumps; also flag the jumps whose sign the values contradict."""
    n = xf.size
    graph = sp.csr_matrix((np.ones(int(fused.sum())), (ei[fused], ej[fused])), shape=(n, n))
    n_regions, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels, minlength=n_regions).astype(np.float64)
    li, lj = labels[ei], labels[ej]
    jump = (li != lj) & np.where(eaxis == 0, lam0, lam1).astype(bool)
    step = direction * jump  # sign(y_N − y_R) seen from i's region
    sigma = np.zeros((2, n_regions))
    for a in (0, 1):
        on_axis = eaxis == a
        sigma[a] = np.bincount(li[on_axis], step[on_axis], n_regions) - np.bincount(
            lj[on_axis], step[on_axis], n_regions
        )
    values = (np.bincount(labels, xf, n_regions) + lam0 * sigma[0] + lam1 * sigma[1]) / sizes
    bad = jump & (np.sign(values[lj] - values[li]) != step)
    return labels, values[labels], sizes, sigma, bad
