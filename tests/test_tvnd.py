"""N-axis anisotropic TV (cupytv.tvnd.prox_tv / prox_tv_vjp).

Every test body runs on the host executor (NumPy arrays, always) and on CuPy (``gpu`` marker).

References. (1) An exact QP: the dual min_z ½‖x − Kᵀz‖², |z_e| <= lam_e (K stacks the forward
differences along every TV axis) solved by dense BVLS (an active-set method that terminates at
the exact solution), y* = x − Kᵀz*. (2) A pure-NumPy parallel Dykstra over the exact float64 1D
reference, run for the same number of iterations as the operator.

Tolerances. F is 1-strongly convex, so ½‖y − y*‖² <= F(y) − F* <= gap(y), and the operator's
certified gap (info.gap · F(y)) bounds both the objective error and, through the square root, the
distance to y*; the tests check those bounds, allowing QP_RTOL for the QP's own rounding (BVLS on
~200 edges: ~1e-13 relative, measured). Against the iteration-matched reference the only
difference is rounding: the kernels' 1D prox (~n eps per call) and the float64 averaging,
accumulated over the iterations by a non-expansive map, hence DYKSTRA_ATOL per unit of scale.
Gradients are checked against central differences of the forward with its iteration counts fixed:
that map is piecewise affine, so a step far below the distance to the next kink is exact up to
rounding (eps · |f| / h ~ 1e-10).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import lsq_linear

import cupytv
from cupytv import ProxInfo, reference, tvnd
from cupytv._validation import host_array
from cupytv.tvnd import prox_tv, prox_tv_vjp

QP_RTOL = 1e-11
DYKSTRA_ATOL = 1e-11
FD_STEP = 1e-6
FD_RTOL = 1e-6
FD_ATOL = 1e-8
# float32 iterates make u_i only approximately dual feasible, so a float32 gap certifies the
# objective error up to rounding: measured floor ~5e-8 of F (3x4x5, tol 1e-9), checked at 20x that.
F32_SLACK = 1e-6
# float32 gradients of the replayed map against float64: measured <= 4e-7 of max|grad| after ~200
# iterations (eps32 = 1.2e-7, growing mildly through the unrolled iterations); checked at 25x.
F32_GRAD_RTOL = 1e-5
# The same reductions summed in another order (a transposed batch).
REORDER_RTOL = 1e-12


def difference_operators(vol_shape):
    """K_i, the forward differences along each axis of a C-ordered volume, as sparse matrices."""
    ops = []
    for axis, n in enumerate(vol_shape):
        factors = [sp.identity(s, format="csr") for s in vol_shape]
        factors[axis] = sp.diags([-np.ones(n - 1), np.ones(n - 1)], [0, 1], shape=(n - 1, n))
        k = factors[0]
        for f in factors[1:]:
            k = sp.kron(k, f, format="csr")
        ops.append(k)
    return ops


def exact_prox(x, lams):
    """y* of one volume (TV over every axis of x, weight lams[i] along axis i) by dense BVLS."""
    ops = difference_operators(x.shape)
    # An edge of weight 0 has z_e = 0: it leaves the problem (BVLS needs lower < upper).
    ops, lams = zip(*[(k, lam) for k, lam in zip(ops, lams, strict=True) if lam > 0], strict=True)
    kt = sp.vstack(ops).T.toarray()
    bound = np.concatenate([np.full(k.shape[0], lam) for k, lam in zip(ops, lams, strict=True)])
    res = lsq_linear(kt, x.ravel(), bounds=(-bound, bound), method="bvls", tol=1e-15)
    return (x.ravel() - kt @ res.x).reshape(x.shape)


def objective(x, y, lams):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    tv = sum(lam * np.abs(np.diff(y, axis=i)).sum() for i, lam in enumerate(lams))
    return 0.5 * np.sum((y - x) ** 2) + tv


def reference_dykstra(x, lams, n_iter):
    """Parallel Dykstra on one volume (TV over every axis of x) with the exact 1D reference."""
    m = x.ndim
    z = [x.copy() for _ in range(m)]
    y = x.copy()
    for _ in range(n_iter):
        p = [reference.prox_tv1d(z[i], m * lams[i], axis=i) for i in range(m)]
        y = sum(p) / m
        z = [y + z_i - p_i for z_i, p_i in zip(z, p, strict=True)]
    return y


def run(xp, x, lam, axes, **kwargs):
    """prox_tv on x's kind; returns (y, info) on the host."""
    lam_dev = tuple(_dev(xp, w) for w in lam) if isinstance(lam, tuple) else _dev(xp, lam)
    y, info = prox_tv(xp.asarray(x), lam_dev, axes, return_info=True, **kwargs)
    assert isinstance(info, ProxInfo)
    host = ProxInfo(host_array(info.n_iter), host_array(info.gap), host_array(info.converged))
    return host_array(y), host


def _dev(xp, w):
    return xp.asarray(w) if np.ndim(w) else w


def assert_certified(x, y, lams, rel_gap, tol, rel_slack=QP_RTOL):
    """y's objective error and distance to the exact prox are within what its gap certifies.

    ``rel_slack`` (relative to F*) covers the QP's rounding, and a float32 certificate's.
    """
    y_star = exact_prox(x, lams)
    f_star, f_y = objective(x, y_star, lams), objective(x, y, lams)
    assert rel_gap <= tol
    bound = rel_gap * f_y + rel_slack * max(f_star, 1.0)
    assert f_y - f_star <= bound
    assert np.linalg.norm(y - y_star) <= np.sqrt(2.0 * bound)


# ----------------------------------------------------------------------------------------------
# Forward against the exact QP and the reference iteration


@pytest.mark.parametrize("tol", [1e-3, 1e-10])
@pytest.mark.parametrize(
    ("shape", "lams"),
    [((3, 4, 5), (0.3, 0.5, 0.2)), ((3, 4, 5), (0.4, 0.0, 0.7)), ((2, 3, 3, 4), (0.2,) * 4)],
)
def test_matches_exact_qp(xp, rng, shape, lams, tol):
    x = rng.standard_normal(shape)
    y, info = run(xp, x, lams, tuple(range(len(shape))), tol=tol, max_iter=20_000)
    assert info.converged
    assert info.n_iter >= 1
    # With tol = 1e-10 this pins y within sqrt(2e-10 F) ~ 1e-5 of y*.
    assert_certified(x, y, lams, float(info.gap), tol)


def test_float32_matches_exact_qp(xp, rng):
    lams = (0.3, 0.6, 0.25)
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    y, info = run(xp, x, lams, (0, 1, 2), tol=1e-4, max_iter=5000)
    assert y.dtype == np.float32
    assert info.converged
    assert_certified(x.astype(np.float64), y.astype(np.float64), lams, info.gap, 1e-4, F32_SLACK)


def test_matches_reference_dykstra_iteration_for_iteration(xp, rng):
    # Batch axis 0, TV axes in a scrambled order, one weight per volume and per axis.
    x = rng.standard_normal((3, 4, 3, 5))
    axes = (3, 1, 2)
    lam = (rng.uniform(0.1, 1.0, (3, 1, 1, 1)), 0.4, rng.uniform(0.1, 1.0, (3, 1, 1, 1)))
    y, info = run(xp, x, lam, axes, tol=1e-5, max_iter=1000)
    assert info.n_iter.shape == (3,)
    for v in range(3):
        vol = np.moveaxis(x[v], [a - 1 for a in axes], [0, 1, 2])
        lams = [float(np.asarray(w).reshape(-1)[v]) if np.ndim(w) else w for w in lam]
        expect = reference_dykstra(vol, lams, int(info.n_iter[v]))
        got = np.moveaxis(y[v], [a - 1 for a in axes], [0, 1, 2])
        np.testing.assert_allclose(got, expect, rtol=0, atol=DYKSTRA_ATOL * np.abs(x).max())
        assert_certified(vol, got, lams, float(info.gap[v]), 1e-5)


def test_reference_dykstra_converges_to_the_same_point(xp, rng):
    # The reference run much longer than the operator: both land within their certified radius.
    x = rng.standard_normal((3, 3, 4))
    lams = (0.5, 0.3, 0.4)
    y, info = run(xp, x, lams, (0, 1, 2), tol=1e-8, max_iter=5000)
    f_y = objective(x, y, lams)
    radius = np.sqrt(2.0 * float(info.gap) * f_y)
    long_run = reference_dykstra(x, lams, 4 * int(info.n_iter))
    assert np.linalg.norm(y - long_run) <= 2 * radius + QP_RTOL


def test_axes_anywhere_match_axes_last(xp, rng):
    x = rng.standard_normal((4, 2, 3, 5))  # TV axes 0, 2, 3 (not last-only), batch axis 1
    lam = (0.2, 0.7, 0.4)
    y, info = run(xp, x, lam, (2, 0, -1), tol=1e-7, max_iter=2000)
    assert info.n_iter.shape == (2,)
    moved = np.ascontiguousarray(np.moveaxis(x, 1, 0))  # (2, 4, 3, 5), TV axes now 2, 1, 3
    y_last, _ = run(xp, moved, lam, (2, 1, 3), tol=1e-7, max_iter=2000)
    # Same volumes, same axis order: the same arithmetic, bit for bit.
    np.testing.assert_array_equal(np.moveaxis(y, 1, 0), y_last)
    for b in range(2):
        vol = np.transpose(x[:, b], (1, 0, 2))  # axes (2, 0, 3) of x in that order
        got = np.transpose(y[:, b], (1, 0, 2))
        assert_certified(vol, got, lam, float(info.gap[b]), 1e-7)


def test_four_axes_with_batch_and_per_volume_lam(xp, rng):
    x = rng.standard_normal((2, 3, 2, 3, 4))
    lam = rng.uniform(0.1, 0.6, (2, 1, 1, 1, 1))
    y, info = run(xp, x, lam, (1, 2, 3, 4), tol=1e-5, max_iter=5000)
    for v in range(2):
        assert_certified(x[v], y[v], (float(lam[v, 0, 0, 0, 0]),) * 4, float(info.gap[v]), 1e-5)


# ----------------------------------------------------------------------------------------------
# Special inputs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lam_zero_is_the_exact_identity(xp, rng, dtype):
    x = (rng.standard_normal((2, 3, 4, 5)) * 10.0 ** rng.integers(-20, 20, (2, 3, 4, 5))).astype(
        dtype
    )
    y = host_array(prox_tv(xp.asarray(x), 0.0, (1, 2, 3)))
    np.testing.assert_array_equal(y, x)
    # Zero weights on one volume only: that volume is x exactly, the other is smoothed.
    lam = np.array([0.0, 0.5]).reshape(2, 1, 1, 1)
    x = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
    y = host_array(prox_tv(xp.asarray(x), xp.asarray(lam), (1, 2, 3)))
    np.testing.assert_array_equal(y[0], x[0])
    assert not np.array_equal(y[1], x[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constant_volume(xp, dtype):
    x = np.full((3, 4, 5), -2.75, dtype=dtype)
    y, info = run(xp, x, 0.8, (0, 1, 2))
    np.testing.assert_array_equal(y, x)
    assert info.n_iter == 1
    assert info.gap == 0
    assert info.converged


def test_float16_and_out(xp, rng):
    x = rng.standard_normal((3, 4, 5))
    y64 = host_array(prox_tv(xp.asarray(x), 0.3, (0, 1, 2), tol=1e-6))
    x16 = x.astype(np.float16)
    half = prox_tv(xp.asarray(x16), 0.3, (0, 1, 2), tol=1e-6)
    assert half.dtype == np.float16
    # Computed in float32 and rounded once: exactly the float32 run, rounded.
    y32 = host_array(prox_tv(xp.asarray(x16.astype(np.float32)), 0.3, (0, 1, 2), tol=1e-6))
    np.testing.assert_array_equal(host_array(half), y32.astype(np.float16))
    out = xp.empty_like(xp.asarray(x))
    assert prox_tv(xp.asarray(x), 0.3, (0, 1, 2), tol=1e-6, out=out) is out
    np.testing.assert_array_equal(host_array(out), y64)


def test_nan_and_inf_stay_in_their_volume(xp, rng):
    x = rng.standard_normal((4, 3, 3, 4))
    clean, clean_info = run(xp, x, 0.4, (1, 2, 3), tol=1e-5)
    x[1, 2, 0, 1] = np.nan
    x[3, 0, 2, 3] = -np.inf
    y, info = run(xp, x, 0.4, (1, 2, 3), tol=1e-5)
    assert np.all(np.isnan(y[[1, 3]]))
    np.testing.assert_array_equal(y[[0, 2]], clean[[0, 2]])
    np.testing.assert_array_equal(info.n_iter, [clean_info.n_iter[0], 0, clean_info.n_iter[2], 0])
    assert np.all(np.isnan(info.gap[[1, 3]]))
    assert not np.any(info.converged[[1, 3]])
    np.testing.assert_array_equal(info.gap[[0, 2]], clean_info.gap[[0, 2]])


def test_converged_volumes_are_frozen(xp, rng):
    # A nearly flat volume converges in a few iterations, a rough one with a large weight needs
    # many; each must equal the single-volume run stopped at its own count (tol=0 runs exactly
    # max_iter iterations), bit for bit.
    x = np.stack([1e-3 * rng.standard_normal((3, 4, 5)), 3.0 * rng.standard_normal((3, 4, 5))])
    y, info = run(xp, x, 1.0, (1, 2, 3), tol=1e-6, max_iter=3000)
    assert info.n_iter[0] < info.n_iter[1]
    assert np.all(info.converged)
    for v in range(2):
        alone, alone_info = run(xp, x[v], 1.0, (0, 1, 2), tol=0.0, max_iter=int(info.n_iter[v]))
        assert alone_info.n_iter == info.n_iter[v]
        np.testing.assert_array_equal(y[v], alone)
    # max_iter stops what has not converged, and says so.
    y, info = run(xp, x, 1.0, (1, 2, 3), tol=1e-6, max_iter=int(info.n_iter[0]))
    assert info.converged[0]
    assert not info.converged[1]
    assert info.gap[1] > 1e-6
    assert np.all(info.n_iter == info.n_iter[0])


def test_info_fields(xp, rng):
    x = xp.asarray(rng.standard_normal((2, 3, 4, 3)))
    y, info = prox_tv(x, 0.2, (0, 2, 3), return_info=True)
    assert type(y) is type(x)
    assert y.shape == x.shape
    for field, dtype in ((info.n_iter, np.int32), (info.gap, np.float64), (info.converged, bool)):
        assert type(field) is type(x)
        assert field.shape == (3,)
        assert field.dtype == dtype
    assert np.all(host_array(info.gap) <= 1e-3)
    assert np.all(host_array(info.converged))
    with pytest.raises(AttributeError):
        info.n_iter = None


def test_empty_inputs(xp):
    y, info = prox_tv(xp.zeros((2, 0, 3, 4)), 1.0, (1, 2, 3), return_info=True)
    assert y.shape == (2, 0, 3, 4)
    assert info.n_iter.shape == (2,)
    gx, gl = prox_tv_vjp(xp.zeros((0, 3, 3, 4)), (1.0, 2.0, 3.0), xp.zeros((0, 3, 3, 4)), (1, 2, 3))
    assert gx.shape == (0, 3, 3, 4)
    assert len(gl) == 3
    assert gl[0].shape == ()


# ----------------------------------------------------------------------------------------------
# Dispatch to the 1D and 2D operators


def test_one_axis_is_the_exact_1d_prox(xp, rng):
    x = xp.asarray(rng.standard_normal((3, 7, 4)))
    expect = host_array(cupytv.prox_tv1d(x, 0.6, axis=1))
    for axes, lam in ((1, 0.6), ((1,), 0.6), ((-2,), (0.6,))):
        y, info = prox_tv(x, lam, axes, return_info=True)
        np.testing.assert_array_equal(host_array(y), expect)
        assert info.n_iter.shape == (3, 4)
        assert not np.any(host_array(info.n_iter))
        assert np.all(host_array(info.gap) == 0)
        assert np.all(host_array(info.converged))
    g = xp.asarray(rng.standard_normal((3, 7, 4)))
    gx, gl = prox_tv_vjp(x, (0.6,), g, (1,))
    rgx, rgl = cupytv.prox_tv1d_vjp(None, 0.6, g, y=cupytv.prox_tv1d(x, 0.6, axis=1), axis=1)
    np.testing.assert_array_equal(host_array(gx), host_array(rgx))
    assert isinstance(gl, tuple)
    assert len(gl) == 1
    np.testing.assert_array_equal(host_array(gl[0]), host_array(rgl))


def test_two_axes_dispatch_to_tv2d(xp, rng):
    from cupytv.tv2d import prox_tv2d, prox_tv2d_vjp

    x = xp.asarray(rng.standard_normal((2, 6, 5)))
    g = xp.asarray(rng.standard_normal((2, 6, 5)))
    lam = (0.3, 0.5)
    y, info = prox_tv(x, lam, (1, 2), tol=1e-5, return_info=True)
    y2, info2 = prox_tv2d(x, lam, axes=(1, 2), tol=1e-5, return_info=True)
    np.testing.assert_array_equal(host_array(y), host_array(y2))
    np.testing.assert_array_equal(host_array(info.n_iter), host_array(info2.n_iter))
    gx, gl = prox_tv_vjp(x, lam, g, (1, 2), tol=1e-5)
    gx2, gl2 = prox_tv2d_vjp(x, lam, g, axes=(1, 2), tol=1e-5)
    np.testing.assert_array_equal(host_array(gx), host_array(gx2))
    for a, b in zip(gl, gl2, strict=True):
        np.testing.assert_array_equal(host_array(a), host_array(b))


# ----------------------------------------------------------------------------------------------
# Backward


def forward_fixed(xp, x, lam, n_iter):
    """prox_tv over axes (1, 2, 3) of x (volumes along axis 0), volume v run n_iter[v] times.

    tol=0 never stops a volume early, so this is the map the forward computed, iteration counts
    held fixed: the function whose gradient prox_tv_vjp(n_iter=...) returns.
    """
    vols = []
    for v in range(x.shape[0]):
        w = tuple(_volume(w_i, v) for w_i in lam) if isinstance(lam, tuple) else _volume(lam, v)
        w = tuple(_dev(xp, w_i) for w_i in w) if isinstance(w, tuple) else _dev(xp, w)
        y = prox_tv(xp.asarray(x[v]), w, (0, 1, 2), tol=0.0, max_iter=int(n_iter[v]))
        vols.append(host_array(y))
    return np.stack(vols)


def _volume(w, v):
    return w[v] if np.ndim(w) else w


def lam_entries(lam):
    """Every scalar weight in lam, as (tuple position or None, array index or None)."""
    members = enumerate(lam) if isinstance(lam, tuple) else [(None, lam)]
    return [
        (i, idx)
        for i, w in members
        for idx in (list(np.ndindex(np.shape(w))) if np.ndim(w) else [None])
    ]


def lam_shifted(lam, entry, h):
    i, idx = entry

    def shift(w):
        if idx is None:
            return w + h
        w = np.array(w, dtype=np.float64)
        w[idx] += h
        return w

    if i is None:
        return shift(lam)
    return tuple(shift(w) if j == i else w for j, w in enumerate(lam))


def lam_grad_entry(grad_lam, entry):
    i, idx = entry
    g = grad_lam if i is None else grad_lam[i]
    g = host_array(g)
    return float(g if idx is None else g[idx])


LAMS = {
    "scalar": 0.3,
    "per_axis": (0.2, 0.5, 0.35),
    "per_volume": np.array([0.25, 0.6]).reshape(2, 1, 1, 1),
    "mixed": (np.array([0.25, 0.6]).reshape(2, 1, 1, 1), 0.4, 0.15),
}


@pytest.mark.parametrize("lam_kind", list(LAMS))
def test_vjp_matches_central_differences(xp, rng, lam_kind):
    # Two volumes that stop at different counts (a smooth one and a rough one), so the adjoint
    # runs through frozen volumes too.
    lam = LAMS[lam_kind]
    x = np.stack([0.2 * rng.standard_normal((3, 3, 4)), 2.0 * rng.standard_normal((3, 3, 4))])
    g = rng.standard_normal(x.shape)
    direction = rng.standard_normal(x.shape)
    lam_dev = tuple(_dev(xp, w) for w in lam) if isinstance(lam, tuple) else _dev(xp, lam)
    _, info = run(xp, x, lam, (1, 2, 3), tol=1e-4, max_iter=500)
    assert info.n_iter[0] != info.n_iter[1]
    gx, gl = prox_tv_vjp(xp.asarray(x), lam_dev, xp.asarray(g), (1, 2, 3), n_iter=info.n_iter)
    # Without n_iter the same counts come back from max_iter/tol: identical gradients.
    gx2, gl2 = prox_tv_vjp(xp.asarray(x), lam_dev, xp.asarray(g), (1, 2, 3), tol=1e-4, max_iter=500)
    np.testing.assert_array_equal(host_array(gx), host_array(gx2))
    gx = host_array(gx)

    def f(x_, lam_):
        return float(np.sum(g * forward_fixed(xp, x_, lam_, info.n_iter)))

    h = FD_STEP
    fd_x = (f(x + h * direction, lam) - f(x - h * direction, lam)) / (2 * h)
    np.testing.assert_allclose(np.sum(gx * direction), fd_x, rtol=FD_RTOL, atol=FD_ATOL)
    if isinstance(lam, tuple):
        assert isinstance(gl, tuple)
        assert len(gl) == 3
        for w, grad in zip(lam, gl, strict=True):
            assert grad.shape == np.shape(w)
            assert type(grad) is type(xp.asarray(x))
    else:
        assert gl.shape == np.shape(lam)
    for entry in lam_entries(lam):
        fd = (f(x, lam_shifted(lam, entry, h)) - f(x, lam_shifted(lam, entry, -h))) / (2 * h)
        got = lam_grad_entry(gl, entry)
        np.testing.assert_allclose(got, fd, rtol=FD_RTOL, atol=FD_ATOL, err_msg=f"{entry=}")
        assert lam_grad_entry(gl2, entry) == got


def test_vjp_converges_to_the_exact_2d_gradient(xp, rng):
    # A singleton TV axis makes the three-axis problem the 2D one (its prox is the identity), so
    # the unrolled gradient, run long enough, must equal the exact 2D prox's gradient. Measured on
    # 16 x 16: 6.5e-1 off after 50 iterations, 2e-4 after 200, 1e-12 after 800.
    x = rng.standard_normal((1, 16, 16))
    g = rng.standard_normal(x.shape)
    lam = (0.5, 0.3, 0.2)
    n = 1000
    gx, gl = prox_tv_vjp(xp.asarray(x), lam, xp.asarray(g), axes=(0, 1, 2), n_iter=n)
    gx_ref, gl_ref = reference.prox_tv2d_vjp(x[0], lam[1:], g[0])
    np.testing.assert_allclose(host_array(gx)[0], gx_ref, atol=1e-9)
    for a, b in zip(gl[1:], gl_ref, strict=True):
        assert float(host_array(a)) == pytest.approx(float(b), rel=1e-8, abs=1e-9)


def test_vjp_near_a_zero_solution(xp):
    # A checkerboard's prox is (nearly) its mean, 0: the iterates' 1D solutions hold segments
    # whose values differ by rounding noise, which exact equality split into single samples (the
    # gradient was 2.5 off, the lam gradients 4x). The backward fuses within 1e-9 of max|x|.
    r, c = np.mgrid[0:16, 0:12]
    x = np.where((r + c) % 2 == 0, 1.0, -1.0)[None]
    g = np.random.default_rng(5).standard_normal(x.shape)
    gx, gl = prox_tv_vjp(xp.asarray(x), (0.5, 0.3, 0.2), xp.asarray(g), axes=(0, 1, 2), n_iter=300)
    gx_ref, gl_ref = reference.prox_tv2d_vjp(x[0], (0.3, 0.2), g[0])
    np.testing.assert_allclose(host_array(gx)[0], gx_ref, atol=1e-9)
    for a, b in zip(gl[1:], gl_ref, strict=True):
        assert float(host_array(a)) == pytest.approx(float(b), abs=1e-9)


def test_vjp_axes_anywhere_and_float32(xp, rng, monkeypatch):
    # TV axes (0, 3, 2), batch axis 1: the same gradients as the volumes laid out first.
    x = rng.standard_normal((3, 2, 4, 3))
    g = rng.standard_normal(x.shape)
    gx, gl = prox_tv_vjp(xp.asarray(x), 0.4, xp.asarray(g), (0, 3, 2), tol=1e-5)
    moved = np.ascontiguousarray(np.transpose(x, (1, 0, 3, 2)))
    g_moved = np.ascontiguousarray(np.transpose(g, (1, 0, 3, 2)))
    gx_m, gl_m = prox_tv_vjp(xp.asarray(moved), 0.4, xp.asarray(g_moved), (1, 2, 3), tol=1e-5)
    np.testing.assert_array_equal(np.transpose(host_array(gx), (1, 0, 3, 2)), host_array(gx_m))
    np.testing.assert_allclose(host_array(gl), host_array(gl_m), rtol=REORDER_RTOL)
    # float32: the same map up to float32 rounding (same counts replayed), with the backward's
    # segment fusing at float32's threshold in both (else a near-tie between the two thresholds
    # is one segment in float32 and two in float64).
    _, info = run(xp, x, 0.4, (0, 3, 2), tol=1e-5)
    monkeypatch.setitem(tvnd.FUSE_RTOL, np.dtype(np.float64), tvnd.FUSE_RTOL[np.dtype(np.float32)])
    gx, _ = prox_tv_vjp(xp.asarray(x), 0.4, xp.asarray(g), (0, 3, 2), n_iter=info.n_iter)
    gx32, gl32 = prox_tv_vjp(
        xp.asarray(x.astype(np.float32)),
        0.4,
        xp.asarray(g.astype(np.float32)),
        (0, 3, 2),
        n_iter=info.n_iter,
    )
    assert gx32.dtype == np.float32
    assert gl32.dtype == np.float32
    scale = np.abs(host_array(gx)).max()
    np.testing.assert_allclose(host_array(gx32), host_array(gx), rtol=0, atol=F32_GRAD_RTOL * scale)


def test_vjp_nan_volume_gives_nan_gradients(xp, rng):
    x = rng.standard_normal((3, 3, 3, 4))
    x[1, 0, 0, 0] = np.nan
    lam = np.full((3, 1, 1, 1), 0.3)
    gx, gl = prox_tv_vjp(xp.asarray(x), xp.asarray(lam), xp.ones_like(xp.asarray(x)), (1, 2, 3))
    gx, gl = host_array(gx), host_array(gl)
    assert np.all(np.isnan(gx[1]))
    assert np.isnan(gl[1]).all()
    assert np.all(np.isfinite(gx[[0, 2]]))
    assert np.all(np.isfinite(gl[[0, 2]]))


# ----------------------------------------------------------------------------------------------
# Input validation


def test_validation_messages(xp):
    x = xp.zeros((3, 4, 5))
    x4 = xp.zeros((3, 4, 5, 2))
    with pytest.raises(
        ValueError, match=r"axes: expected distinct axes, got \(0, 1, -3\) \(axis 0"
    ):
        prox_tv(x, 1.0, (0, 1, -3))
    with pytest.raises(ValueError, match=r"axes\[2\]: expected an axis in \[-3, 2\].*got 3"):
        prox_tv(x, 1.0, (0, 1, 3))
    with pytest.raises(ValueError, match=r"axes: expected at least one axis, got \(\)"):
        prox_tv(x, 1.0, ())
    with pytest.raises(TypeError, match="axes: expected an int or a sequence of ints"):
        prox_tv(x, 1.0, "01")
    with pytest.raises(TypeError, match=r"x: expected a real floating-point dtype.*got int32"):
        prox_tv(xp.zeros((3, 4, 5), dtype=np.int32), 1.0, (0, 1, 2))
    with pytest.raises(ValueError, match=r"lam: expected values >= 0, got -0\.5"):
        prox_tv(x, -0.5, (0, 1, 2))
    with pytest.raises(ValueError, match=r"lam\[1\]: expected values >= 0, got -1\.0"):
        prox_tv(x, (0.5, -1.0, 0.5), (0, 1, 2))
    with pytest.raises(
        ValueError, match=r"one weight per axis \(3 for axes \(0, 1, 2\)\), got a tuple of length 2"
    ):
        prox_tv(x, (0.5, 0.5), (0, 1, 2))
    with pytest.raises(
        ValueError, match=r"lam: expected a scalar or an array broadcastable to \(1, 1, 1\)"
    ):
        prox_tv(x, np.ones(5), (0, 1, 2))
    with pytest.raises(ValueError, match="max_iter: expected an int >= 1, got 0"):
        prox_tv(x, 1.0, (0, 1, 2), max_iter=0)
    with pytest.raises(ValueError, match=r"tol: expected a finite number >= 0, got -0\.1"):
        prox_tv(x, 1.0, (0, 1, 2), tol=-0.1)
    with pytest.raises(ValueError, match="0-d"):
        prox_tv(xp.zeros(()), 1.0, 0)
    with pytest.raises(ValueError, match=r"out: expected x's shape and dtype \(3, 4, 5\) float64"):
        prox_tv(x, 1.0, (0, 1, 2), out=xp.zeros((3, 4, 5), dtype=np.float32))
    with pytest.raises(ValueError, match=r"g: expected x's shape and dtype \(3, 4, 5\)"):
        prox_tv_vjp(x, 1.0, xp.zeros((3, 4, 4)), (0, 1, 2))
    with pytest.raises(TypeError, match="g: expected the same kind of array as x"):
        prox_tv_vjp(x, 1.0, np.zeros((3, 4, 5)).tolist(), (0, 1, 2))
    with pytest.raises(ValueError, match=r"n_iter: expected an array broadcastable to \(3,\)"):
        prox_tv_vjp(x4, 1.0, x4, (1, 2, 3), n_iter=np.ones(2, dtype=np.int32))
    with pytest.raises(ValueError, match="n_iter: expected counts >= 0, got -1"):
        prox_tv_vjp(x, 1.0, xp.zeros((3, 4, 5)), (0, 1, 2), n_iter=np.array(-1))
    with pytest.raises(TypeError, match="n_iter: expected an integer array, got dtype float64"):
        prox_tv_vjp(x, 1.0, xp.zeros((3, 4, 5)), (0, 1, 2), n_iter=np.array(1.0))
