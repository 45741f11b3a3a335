"""The exact 2D reference: an independent active-set solver, an optimality certificate,
reductions to 1D, gradients and errors.

Tolerances: polishing leaves only the rounding of region sums, so against dense active-set BVLS
we allow 1e-12 * scale. The certificate finds a dual z with |z| <= lam, z = ±lam on every jump,
and measures r = x − y − Kᵀz; y is then exactly prox(x − r), so ‖y − prox(x)‖ <= ‖r‖ (the prox
is non-expansive). We require ‖r‖ <= 1e-9 * scale, limited by the LP solver's feasibility
tolerance, not by the reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import linprog, lsq_linear

from cupytv.reference import prox_tv1d, prox_tv2d, prox_tv2d_vjp
from cupytv.testing import images_2d


def grid_edges(h, w):
    idx = np.arange(h * w).reshape(h, w)
    i = np.concatenate((idx[:-1, :].ravel(), idx[:, :-1].ravel()))
    j = np.concatenate((idx[1:, :].ravel(), idx[:, 1:].ravel()))
    axis = np.r_[np.zeros((h - 1) * w, int), np.ones(h * (w - 1), int)]
    return i, j, axis


def k_transpose(h, w):
    """Kᵀ as a dense matrix: column e has +1 at pixel j and -1 at pixel i (difference y_j − y_i)."""
    i, j, axis = grid_edges(h, w)
    kt = np.zeros((h * w, i.size))
    kt[j, np.arange(i.size)] = 1.0
    kt[i, np.arange(i.size)] = -1.0
    return kt, axis


def bvls_prox2d(x, lam0, lam1):
    """Independent route: the dual as dense bound-constrained least squares (active set)."""
    h, w = x.shape
    kt, axis = k_transpose(h, w)
    lam_e = np.where(axis == 0, lam0, lam1)
    keep = lam_e > 0
    if not keep.any():
        return x.copy()
    res = lsq_linear(
        kt[:, keep],
        x.ravel(),
        bounds=(-lam_e[keep], lam_e[keep]),
        method="bvls",
        tol=1e-15,
        max_iter=100_000,
    )
    return (x.ravel() - kt[:, keep] @ res.x).reshape(h, w)


def certificate_residual(x, y, lam0, lam1):
    """‖r‖ for the best dual certificate of y's optimality (see the module docstring)."""
    h, w = x.shape
    i, j, axis = grid_edges(h, w)
    lam_e = np.where(axis == 0, lam0, lam1)
    yf, xf = y.ravel(), x.ravel()
    d = yf[j] - yf[i]
    free = (d == 0) & (lam_e > 0)
    z_fixed = np.where(free, 0.0, lam_e * np.sign(d))
    kt = sp.csr_matrix(k_transpose(h, w)[0])
    rhs = xf - yf - kt @ z_fixed
    if not free.any():
        return np.linalg.norm(rhs)
    bounds = np.c_[-lam_e[free], lam_e[free]]
    res = linprog(
        np.zeros(int(free.sum())),
        A_eq=kt[:, free],
        b_eq=rhs,
        bounds=bounds,
        method="highs",
        options={"primal_feasibility_tolerance": 1e-10},
    )
    assert res.status == 0, f"no dual certificate exists: {res.message}"
    return np.linalg.norm(kt[:, free] @ res.x - rhs)


TINY_SHAPES = [(1, 1), (1, 5), (5, 1), (2, 2), (3, 4), (6, 7)]
LAM_PAIRS = [(0.05, 0.05), (0.4, 0.4), (0.3, 0.0), (0.0, 0.7), (2.0, 0.1), (50.0, 50.0)]


@pytest.mark.parametrize("shape", TINY_SHAPES)
@pytest.mark.parametrize("lams", LAM_PAIRS)
def test_matches_dense_active_set_bvls(shape, lams, rng):
    for name, x in images_2d(*shape, rng).items():
        scale = 1.0 + np.max(np.abs(x))
        np.testing.assert_allclose(
            prox_tv2d(x, lams), bvls_prox2d(x, *lams), rtol=0, atol=1e-12 * scale, err_msg=name
        )


@pytest.mark.parametrize("shape", [(16, 16), (9, 23)])
@pytest.mark.parametrize("lams", [(1e-3, 1e-3), (0.2, 0.2), (1.0, 0.3)])
def test_optimality_certificate(shape, lams, rng):
    for name, x in images_2d(*shape, rng).items():
        y = prox_tv2d(x, lams)
        scale = 1.0 + np.max(np.abs(x))
        assert certificate_residual(x, y, *lams) <= 1e-9 * scale, name


def test_lam_zero_is_the_exact_identity(rng):
    x = rng.standard_normal((3, 6, 7))
    np.testing.assert_array_equal(prox_tv2d(x, 0.0), x)
    np.testing.assert_array_equal(prox_tv2d(x, (0.0, 0.0)), x)


def test_huge_lam_gives_the_mean(rng):
    x = rng.standard_normal((5, 8))
    np.testing.assert_allclose(prox_tv2d(x, 1e6), np.full_like(x, x.mean()), rtol=0, atol=1e-12)


def test_reductions_to_1d(rng):
    x = rng.standard_normal((6, 9))
    # One row: only the axis-1 weight acts.
    np.testing.assert_allclose(prox_tv2d(x[:1], (5.0, 0.3)), prox_tv1d(x[:1], 0.3), atol=1e-13)
    # No coupling between rows: each row is a 1D problem along axis 1, and vice versa.
    np.testing.assert_allclose(prox_tv2d(x, (0.0, 0.3)), prox_tv1d(x, 0.3, axis=1), atol=1e-13)
    np.testing.assert_allclose(prox_tv2d(x, (0.3, 0.0)), prox_tv1d(x, 0.3, axis=0), atol=1e-13)
    # Rows that are all equal stay equal: the 2D solution is the 1D one copied down.
    row = rng.standard_normal(9)
    tiled = np.tile(row, (4, 1))
    np.testing.assert_allclose(
        prox_tv2d(tiled, 0.3), np.tile(prox_tv1d(row, 0.3), (4, 1)), atol=1e-13
    )


def test_every_axis_pair_matches_per_slice_solves(rng):
    x = rng.standard_normal((3, 4, 5, 2))
    for axes in [(1, 2), (2, 1), (0, 3), (-1, 0), (-2, -1)]:
        y = prox_tv2d(x, (0.2, 0.5), axes=axes)
        moved_x = np.moveaxis(x, axes, (-2, -1))
        moved_y = np.moveaxis(y, axes, (-2, -1))
        for idx in np.ndindex(moved_x.shape[:-2]):
            np.testing.assert_array_equal(moved_y[idx], prox_tv2d(moved_x[idx], (0.2, 0.5)))


def test_per_slice_and_per_axis_lam(rng):
    x = rng.standard_normal((2, 3, 5, 6))
    lam0 = rng.uniform(0, 1, (3, 1, 1))  # per channel
    lam1 = rng.uniform(0, 1, (2, 1, 1, 1))  # per sample
    y = prox_tv2d(x, (lam0, lam1))
    for b in range(2):
        for c in range(3):
            expected = prox_tv2d(x[b, c], (lam0[c, 0, 0], lam1[b, 0, 0, 0]))
            np.testing.assert_array_equal(y[b, c], expected)
    # A NumPy array is never a pair: shape (2,) here would not broadcast and says so.
    with pytest.raises(ValueError, match=r"broadcastable to \(2, 3, 1, 1\).*got shape \(2,\)"):
        prox_tv2d(x, np.array([0.1, 0.2]))


def test_float32_in_float32_out(rng):
    x = rng.standard_normal((5, 6)).astype(np.float32)
    y = prox_tv2d(x, 0.3)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, prox_tv2d(x.astype(np.float64), 0.3).astype(np.float32))


def test_non_finite_values_stay_in_their_slice(rng):
    x = rng.standard_normal((3, 4, 5))
    x[1, 2, 2] = np.inf
    y = prox_tv2d(x, 0.3)
    assert np.all(np.isnan(y[1]))
    for s in (0, 2):
        np.testing.assert_array_equal(y[s], prox_tv2d(x[s], 0.3))
    grad_x, (grad0, grad1) = prox_tv2d_vjp(x, (np.full((3, 1, 1), 0.3), 0.2), np.ones_like(x))
    assert np.all(np.isnan(grad_x[1]))
    assert np.isnan(grad0[1, 0, 0])
    assert np.isnan(grad1)  # a weight shared with the NaN slice
    assert np.all(np.isfinite(grad_x[[0, 2]]))
    assert np.all(np.isfinite(grad0[[0, 2]]))


def test_empty_input():
    assert prox_tv2d(np.zeros((2, 0, 4)), 0.3).shape == (2, 0, 4)
    grad_x, (g0, g1) = prox_tv2d_vjp(np.zeros((0, 4)), (0.1, 0.2), np.zeros((0, 4)))
    assert grad_x.shape == (0, 4)
    assert g0.shape == g1.shape == ()


# ---- lam negligible next to the data, and data far from zero --------------------------------
# Found by fuzzing. Tiny weights made the interior-point stopping rule underflow ("did not
# converge" at lam = 1e-300); an offset of the data inflated the scale the fusing tolerance is
# relative to, so small steps far from zero were merged.

#: Weights that no solver resolves next to O(1) data: 1e-300 broke the stopping rule, 1e-310 and
#: 5e-324 (the smallest subnormal) are subnormal.
TINY_LAMS = [1e-300, 1e-310, 5e-324]
#: Rounding allowed on top of the exact answer, in units of max|x|: the reference solves x − c
#: and adds c back (c within the range of x), two roundings of at most one unit each.
SHIFT_ROUNDING = 4 * np.finfo(np.float64).eps
#: Offsets that put the data far from zero, and the size of its steps relative to the offset:
#: below FUSE_RTOL = 1e-9, which the fusing tolerance used to be relative to, yet 1e5 rounding
#: units, so merging a step costs far more than the tolerance.
OFFSETS = [1e3, 1e5, 1e8]
STEP_PER_OFFSET = 1e-10


@pytest.mark.parametrize("tiny", TINY_LAMS)
@pytest.mark.parametrize("shape", [(1, 5), (5, 1), (6, 7)])
def test_tiny_lam_moves_no_pixel_beyond_its_bound(shape, tiny, rng):
    # |y − x| = |Kᵀz| <= 2(lam0 + lam1) per pixel, which rounds to nothing here: y is x.
    for name, x in images_2d(*shape, rng).items():
        for lams in [(tiny, tiny), (0.0, tiny), (tiny, 0.0)]:
            atol = 2 * sum(lams) + SHIFT_ROUNDING * np.max(np.abs(x))
            np.testing.assert_allclose(
                prox_tv2d(x, lams), x, rtol=0, atol=atol, err_msg=f"{name}, lam {lams}"
            )


@pytest.mark.parametrize("tiny", TINY_LAMS)
def test_one_tiny_weight_leaves_the_1d_problems_of_the_other_axis(tiny, rng):
    # The tiny weight moves no pixel by more than 2 * tiny (the prox is non-expansive in the max
    # norm), so the rows (columns) are the independent 1D problems of test_reductions_to_1d.
    for name, x in images_2d(9, 23, rng).items():
        np.testing.assert_allclose(
            prox_tv2d(x, (tiny, 0.3)), prox_tv1d(x, 0.3, axis=1), atol=1e-13, err_msg=name
        )
        np.testing.assert_allclose(
            prox_tv2d(x, (0.3, tiny)), prox_tv1d(x, 0.3, axis=0), atol=1e-13, err_msg=name
        )


def test_a_tiny_per_slice_weight_stays_in_its_slice(rng):
    x = rng.standard_normal((3, 6, 7))
    lam = np.array([0.3, 1e-300, 5e-324]).reshape(3, 1, 1)
    y = prox_tv2d(x, lam)
    np.testing.assert_array_equal(y[0], prox_tv2d(x[0], 0.3))
    np.testing.assert_allclose(y[1:], x[1:], rtol=0, atol=SHIFT_ROUNDING * np.max(np.abs(x)))


def test_vjp_at_tiny_lam_has_the_structure_of_x(rng):
    # Distinct pixel values: at a tiny weight every pixel is its own region and every edge jumps
    # with the sign of x, so grad_x = g and grad_lam_a = Σ_edges sign(x_j − x_i)(g_i − g_j).
    x = rng.standard_normal((6, 7))
    g = rng.standard_normal(x.shape)
    grad_x, (grad0, grad1) = prox_tv2d_vjp(x, (1e-300, 5e-324), g)
    np.testing.assert_array_equal(grad_x, g)
    for a, grad in enumerate((grad0, grad1)):
        signs = np.sign(np.diff(x, axis=a))
        g_lo, g_hi = np.delete(g, -1, axis=a), np.delete(g, 0, axis=a)
        np.testing.assert_allclose(grad, np.sum(signs * (g_lo - g_hi)), rtol=1e-13)


def test_a_small_step_far_from_zero_keeps_its_closed_form():
    # Each pixel moves by lam toward the other: the step 4e-7 survives. The fusing tolerance
    # used to be relative to max|x| = 1e3 and merged the pair (both 1000.0000002, 2e-7 off).
    row = np.array([[1e3, 1e3 + 4e-7]])
    want = np.array([[1e3 + 1e-12, 1e3 + 4e-7 - 1e-12]])
    atol = SHIFT_ROUNDING * 1e3
    for lams in [1e-12, (0.0, 1e-12), (5.0, 1e-12)]:
        np.testing.assert_allclose(prox_tv2d(row, lams), want, rtol=0, atol=atol)
    np.testing.assert_allclose(prox_tv2d(row.T, (1e-12, 0.0)), want.T, rtol=0, atol=atol)


def far_from_zero(img, offset):
    """offset + small steps, and those steps exactly as the array holds them (Sterbenz: x − offset
    is exact for x within a factor 2 of offset)."""
    x = offset + STEP_PER_OFFSET * offset * img
    return x, x - offset


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("lam_per_step", [0.05, 0.4])
@pytest.mark.parametrize("shape", [(1, 9), (9, 1)])
def test_small_steps_far_from_zero_match_the_1d_reference(shape, offset, lam_per_step, rng):
    lam = lam_per_step * STEP_PER_OFFSET * offset
    axis = 1 if shape[0] == 1 else 0
    for name, img in images_2d(*shape, rng).items():
        x, steps = far_from_zero(img, offset)
        # The reference's tolerance relative to the steps it has to resolve, plus the rounding
        # of values near the offset.
        atol = 1e-12 * np.max(np.abs(steps)) + SHIFT_ROUNDING * np.max(np.abs(x))
        np.testing.assert_allclose(
            prox_tv2d(x, (lam, lam)), prox_tv1d(x, lam, axis=axis), rtol=0, atol=atol, err_msg=name
        )


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("lam_per_step", [0.05, 0.4])
@pytest.mark.parametrize("shape", [(6, 7), (9, 23)])
def test_small_steps_far_from_zero_match_the_shifted_solve(shape, offset, lam_per_step, rng):
    # prox(x) = offset + prox(x − offset): the shifted problem has no offset to lose steps to.
    lam = lam_per_step * STEP_PER_OFFSET * offset
    for name, img in images_2d(*shape, rng).items():
        x, steps = far_from_zero(img, offset)
        atol = 1e-12 * np.max(np.abs(steps)) + SHIFT_ROUNDING * np.max(np.abs(x))
        np.testing.assert_allclose(
            prox_tv2d(x, lam), offset + prox_tv2d(steps, lam), rtol=0, atol=atol, err_msg=name
        )


@pytest.mark.parametrize("offset", OFFSETS)
def test_vjp_is_invariant_to_an_offset(offset, rng):
    # Gradients see only the regions, which the offset does not change: the same regions give
    # bit-identical means of g, a different region would change them by O(|g|).
    lam = (0.3 * STEP_PER_OFFSET * offset, 0.1 * STEP_PER_OFFSET * offset)
    for name, img in images_2d(6, 7, rng).items():
        x, steps = far_from_zero(img, offset)
        g = rng.standard_normal(x.shape)
        grad_x, grad_lam = prox_tv2d_vjp(x, lam, g)
        want_x, want_lam = prox_tv2d_vjp(steps, lam, g)
        np.testing.assert_array_equal(grad_x, want_x, err_msg=name)
        np.testing.assert_array_equal(grad_lam, want_lam, err_msg=name)


# ---- gradients ------------------------------------------------------------------------------


def central_difference(f, x, direction, h=1e-6):
    return (f(x + h * direction) - f(x - h * direction)) / (2 * h)


@pytest.mark.parametrize(
    "lam",
    [0.3, (0.2, 0.6), np.array([[[0.1]], [[0.4]]]), (np.array([[[0.1]], [[0.4]]]), 0.25)],
    ids=["scalar", "pair", "per-slice", "pair-with-array"],
)
def test_vjp_matches_finite_differences(lam, rng):
    x = rng.standard_normal((2, 7, 8))
    g = rng.standard_normal(x.shape)
    grad_x, grad_lam = prox_tv2d_vjp(x, lam, g)
    assert grad_x.shape == x.shape

    dx = rng.standard_normal(x.shape)
    fd_x = np.sum(g * central_difference(lambda z: prox_tv2d(z, lam), x, dx))
    np.testing.assert_allclose(np.sum(grad_x * dx), fd_x, rtol=1e-7)

    parts = lam if isinstance(lam, tuple) else (lam,)
    grads = grad_lam if isinstance(lam, tuple) else (grad_lam,)
    for k, (part, grad) in enumerate(zip(parts, grads, strict=True)):
        assert np.shape(grad) == np.shape(part)
        dl = rng.standard_normal(np.shape(part))

        def with_part(p, k=k):
            return prox_tv2d(
                x,
                tuple(p if m == k else q for m, q in enumerate(lam))
                if isinstance(lam, tuple)
                else p,
            )

        fd = np.sum(g * central_difference(with_part, np.asarray(part, float), dl))
        np.testing.assert_allclose(np.sum(grad * dl), fd, rtol=1e-7)


def test_vjp_structure_on_a_known_case():
    # [[0, 4], [0, 4]], lam = 1 -> [[1, 3], [1, 3]]: two column regions, two upward jumps.
    x = np.array([[0.0, 4.0], [0.0, 4.0]])
    g = np.array([[1.0, 2.0], [3.0, -6.0]])
    grad_x, grad_lam = prox_tv2d_vjp(x, (1.0, 1.0), g)
    np.testing.assert_allclose(grad_x, [[2.0, -2.0], [2.0, -2.0]])
    # Left region sees two neighbours above it (+2 mean 2), right region two below (-2 mean -2).
    np.testing.assert_allclose(grad_lam[0], 0.0)
    np.testing.assert_allclose(grad_lam[1], 2 * 2.0 + (-2) * (-2.0))


# ---- input validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "lam", "kwargs", "error", "match"),
    [
        (np.ones(4), 0.1, {}, ValueError, "at least 2 dimensions.*got 1"),
        (np.ones((3, 3)), (0.1, -1.0), {}, ValueError, r"lam\[1\]: expected values >= 0, got -1"),
        (np.ones((3, 3)), (0.1, 0.2, 0.3), {}, ValueError, "pair.*tuple of length 3"),
        (np.ones((3, 3)), 0.1, {"axes": (0, 0)}, ValueError, "two distinct axes"),
        (np.ones((3, 3)), 0.1, {"axes": 0}, ValueError, "a pair of distinct axes, got 0"),
        (np.ones((3, 3)), 0.1, {"axes": (0, 2)}, ValueError, r"axes\[1\].*got 2"),
        (np.ones((3, 3), np.int32), 0.1, {}, TypeError, "got int32"),
        (np.ones((2, 3, 3)), np.ones((3, 1, 1)), {}, ValueError, r"broadcastable to \(2, 1, 1\)"),
    ],
)
def test_bad_input_is_rejected_with_expected_and_got(x, lam, kwargs, error, match):
    with pytest.raises(error, match=match):
        prox_tv2d(x, lam, **kwargs)


@pytest.mark.slow
def test_optimality_certificate_on_a_larger_slice(rng):
    for name, x in images_2d(64, 64, rng).items():
        y = prox_tv2d(x, 0.25)
        assert certificate_residual(x, y, 0.25, 0.25) <= 1e-9 * (1 + np.max(np.abs(x))), name
