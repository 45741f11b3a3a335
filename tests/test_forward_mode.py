"""Forward mode of the array API: ``prox_tv2d_jvp`` and ``prox_tv_jvp``.

A fixed number of iterations (tol = 0) makes the forward a piecewise-affine map; at random data
central differences of it agree with the JVP up to rounding (~1e-10 at step 1e-6, float64). With
a tolerance the counts differ per slice; the JVP must then still be the exact transpose of the VJP
for the same counts: <g, J t> = <J^T g, t> up to the rounding of the sums.
"""

from __future__ import annotations

import numpy as np
import pytest

import cupytv
from cupytv._validation import host_array

FIXED = {"tol": 0.0, "max_iter": 6}
FD_STEP = 1e-6
FD_TOL = {"rtol": 1e-7, "atol": 1e-7}
TRANSPOSE_RTOL = 1e-12  # two sums of ~100 products of O(1) terms in float64
# (shape, lam, lam_dot): one pair for all; one weight per slice; a pair of per-slice weights.
# 70 > 64 rows: the forward takes the multi-launch path, the others the fused one.
CASES_2D = {
    "scalar": ((2, 3, 5, 6), 0.3, 0.7),
    "per_slice": ((2, 3, 5, 6), np.linspace(0.1, 0.5, 6).reshape(2, 3, 1, 1), -0.4),
    "pair": ((3, 4, 7), (0.2, np.array([0.1, 0.3, 0.2]).reshape(3, 1, 1)), (0.5, -0.2)),
    "multi_launch": ((1, 70, 5), 0.3, 0.7),
}


def moved(lam, lam_dot, h):
    if isinstance(lam, tuple):
        return tuple(a + h * np.asarray(b) for a, b in zip(lam, lam_dot, strict=True))
    return lam + h * np.asarray(lam_dot)


def central_difference(forward, x, lam, x_dot, lam_dot):
    plus = host_array(forward(x + FD_STEP * x_dot, moved(lam, lam_dot, FD_STEP)))
    minus = host_array(forward(x - FD_STEP * x_dot, moved(lam, lam_dot, -FD_STEP)))
    return (plus - minus) / (2 * FD_STEP)


@pytest.mark.parametrize("method", ["dykstra", "accelerated"])
@pytest.mark.parametrize("case", list(CASES_2D))
def test_prox_tv2d_jvp_matches_central_differences(xp, method, case):
    shape, lam, lam_dot = CASES_2D[case]
    rng = np.random.default_rng(0)
    x, x_dot = xp.asarray(rng.standard_normal(shape)), xp.asarray(rng.standard_normal(shape))

    def forward(a, b):
        return cupytv.prox_tv2d(a, b, method=method, **FIXED)

    expected = central_difference(forward, x, lam, x_dot, lam_dot)
    assert np.abs(expected).max() > 0.1
    tangent = cupytv.prox_tv2d_jvp(x, lam, x_dot, lam_dot, method=method, **FIXED)
    np.testing.assert_allclose(host_array(tangent), expected, **FD_TOL)


@pytest.mark.parametrize(
    ("axes", "lam", "lam_dot"),
    [((1,), 0.3, 0.5), ((0, 1, 2), (0.2, 0.3, 0.1), (0.5, -0.3, 0.2)), ((1, 2, 3), 0.3, 0.7)],
    ids=["one_axis", "three_axes_per_axis", "three_axes"],
)
def test_prox_tv_jvp_matches_central_differences(xp, axes, lam, lam_dot):
    shape = (2, 3, 4, 5) if len(axes) != 3 or axes[0] else (3, 4, 5)
    rng = np.random.default_rng(1)
    x, x_dot = xp.asarray(rng.standard_normal(shape)), xp.asarray(rng.standard_normal(shape))
    kw = FIXED if len(axes) > 1 else {}

    def forward(a, b):
        return cupytv.prox_tv(a, b, axes, **kw)

    expected = central_difference(forward, x, lam, x_dot, lam_dot)
    assert np.abs(expected).max() > 0.1
    tangent = cupytv.prox_tv_jvp(x, lam, x_dot, lam_dot, axes, **kw)
    np.testing.assert_allclose(host_array(tangent), expected, **FD_TOL)


@pytest.mark.parametrize("method", ["dykstra", "accelerated"])
@pytest.mark.parametrize("axes", [(1, 2), (1, 2, 3)], ids=["2d", "3d"])
def test_jvp_is_the_transpose_of_the_vjp(xp, method, axes):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 5, 6))
    x[1] *= 4  # the slices (volumes) stop at different counts
    x, x_dot, g = (xp.asarray(a) for a in (x, *rng.standard_normal((2, *x.shape))))
    lam = np.array([0.2, 0.3, 0.4]).reshape(3, 1, 1, 1)
    lam_dot = np.array([0.5, -0.1, 0.3]).reshape(3, 1, 1, 1)
    if axes == (1, 2):
        _, info = cupytv.prox_tv2d(x, lam, axes, tol=1e-4, method=method, return_info=True)
        jvp = cupytv.prox_tv2d_jvp(x, lam, x_dot, lam_dot, axes, n_iter=info.n_iter, method=method)
        gx, gl = cupytv.prox_tv2d_vjp(x, lam, g, axes, n_iter=info.n_iter, method=method)
    else:
        _, info = cupytv.prox_tv(x, lam, axes, tol=1e-4, return_info=True)
        jvp = cupytv.prox_tv_jvp(x, lam, x_dot, lam_dot, axes, n_iter=info.n_iter)
        gx, gl = cupytv.prox_tv_vjp(x, lam, g, axes, n_iter=info.n_iter)
    assert len(set(host_array(info.n_iter).ravel().tolist())) > 1
    lhs = float((g * jvp).sum())
    rhs = float((gx * x_dot).sum()) + float((host_array(gl) * lam_dot).sum())
    assert abs(lhs - rhs) <= TRANSPOSE_RTOL * abs(lhs) * x.size


def test_non_finite_slices_and_empty_input(xp):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 5, 6))
    x[1, 2, 3] = np.nan
    x, x_dot = xp.asarray(x), xp.asarray(rng.standard_normal(x.shape))
    volume, volume_dot = x[..., None].repeat(2, axis=3), x_dot[..., None].repeat(2, axis=3)
    for tangent in (
        cupytv.prox_tv2d_jvp(x, 0.3, x_dot, 0.5, **FIXED),
        cupytv.prox_tv_jvp(volume, 0.3, volume_dot, 0.5, (1, 2, 3), **FIXED)[..., 0],
    ):
        tangent = host_array(tangent)
        assert np.isnan(tangent[1]).all()
        assert np.isfinite(tangent[[0, 2]]).all()
    empty = xp.zeros((0, 3, 4))
    assert cupytv.prox_tv2d_jvp(empty, 0.3, empty, 0.5).shape == (0, 3, 4)
    assert cupytv.prox_tv_jvp(empty[..., None], 0.3, empty[..., None], 0.5, (1, 2, 3)).shape == (
        0, 3, 4, 1,
    )  # fmt: skip


def test_errors(xp):
    x = xp.zeros((2, 3, 4))
    with pytest.raises(ValueError, match=r"x_dot: expected x's shape and dtype \(2, 3, 4\)"):
        cupytv.prox_tv2d_jvp(x, 0.3, xp.zeros((2, 3, 5)), 0.5)
    with pytest.raises(ValueError, match="lam_dot: expected a pair, like lam"):
        cupytv.prox_tv2d_jvp(x, (0.1, 0.2), x, 0.5)
    with pytest.raises(ValueError, match=r"lam_dot: expected a scalar or an array broadcastable"):
        cupytv.prox_tv2d_jvp(x, 0.3, x, np.ones(5))
    with pytest.raises(ValueError, match="lam_dot: expected one tangent per axis, like lam"):
        cupytv.prox_tv_jvp(x, (0.1, 0.2, 0.3), x, 0.5, (0, 1, 2))
