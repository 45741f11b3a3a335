"""cupytv.prox_tv2d / prox_tv2d_vjp (cuda_src/tv2d.cu) against the exact reference.

Tolerances follow from the stopping rule. A slice stops when its duality gap certifies
F(y) - F* <= tol * F(y); F is 1-strongly convex, so ||y - y*||_2 <= sqrt(2 tol F(y)) (ERR_FACTOR
adds rounding). float32 iterates carry rounding of ~1e-7 relative, so float32 tests ask for a tol
no tighter than F32_TOL and compare with a bound widened by that rounding.

Every test runs on the host executor in CI (NumPy) and on CuPy under the ``gpu`` marker. Tests
that iterate to tight tolerances (thousands of launches) carry the ``slow`` marker: they run in
CI's full suite but not under the sanitizers, where the other tests exercise every kernel.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from cupytv import ProxInfo, prox_tv2d, prox_tv2d_vjp, tv2d
from cupytv import reference as ref
from cupytv._validation import host_array
from cupytv.testing import images_2d

TIGHT = {"tol": 1e-12, "max_iter": 20000}
METHODS = pytest.mark.parametrize("method", ["dykstra", "accelerated"])
CONVERGED_ITERS = 2000
F32_TOL = 1e-6
# Rounding allowance on top of the strong-convexity bound: float64 sums over a slice, and the
# float32 iterates' own rounding (a few ulps of max|x| per pixel).
ERR_FACTOR = 1.01
F32_ABS = 2e-5


def objective(y, x, lam0, lam1):
    y, x = np.asarray(y, np.float64), np.asarray(x, np.float64)
    return (
        0.5 * np.sum((y - x) ** 2)
        + lam0 * np.abs(np.diff(y, axis=-2)).sum()
        + lam1 * np.abs(np.diff(y, axis=-1)).sum()
    )


def assert_close_to_reference(y, x, lam0, lam1, tol, dtype):
    """y (one slice) against the exact prox, within the bound the certified gap gives."""
    y, x = host_array(y).astype(np.float64), np.asarray(x, np.float64)
    y_ref = ref.prox_tv2d(x, (lam0, lam1))
    f = objective(y, x, lam0, lam1)
    bound = ERR_FACTOR * math.sqrt(2 * tol * f) + 1e-12 * (1 + np.abs(x).max())
    if dtype == np.float32:
        bound += F32_ABS * (1 + np.abs(x).max()) * math.sqrt(x.size)
    err = np.linalg.norm(y - y_ref)
    assert err <= bound, f"||y - y_ref|| = {err:.3e} > {bound:.3e}"


def to(xp, a, dtype=np.float64):
    return xp.asarray(np.asarray(a, dtype=dtype))


# ---------------------------------------------------------------------------------------------
# Forward against the reference


# Both methods on fused sizes; the larger (multi-launch) sizes mostly with the accelerated
# method, whose tight-tolerance runs take ~10x fewer iterations (CI time).
_ADVERSARIAL_CASES = [
    *(
        (shape, dtype, method)
        for shape in ((9, 13), (32, 32))
        for dtype in (np.float64, np.float32)
        for method in ("dykstra", "accelerated")
    ),
    *(((64, 64), dtype, "accelerated") for dtype in (np.float64, np.float32)),
    *(((70, 40), dtype, "accelerated") for dtype in (np.float64, np.float32)),
    ((70, 40), np.float32, "dykstra"),
    ((5, 130), np.float64, "accelerated"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("shape", "dtype", "method"), _ADVERSARIAL_CASES)
def test_matches_reference_on_adversarial_images(xp, rng, dtype, shape, method):
    tol = TIGHT["tol"] if dtype == np.float64 else F32_TOL
    for name, img in images_2d(*shape, rng).items():
        for lam in (0.05, 0.7):
            y = prox_tv2d(
                to(xp, img, dtype), lam, tol=tol, max_iter=TIGHT["max_iter"], method=method
            )
            assert y.dtype == dtype, name
            assert_close_to_reference(y, img, lam, lam, tol, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("n", [*range(1, 20), 31, 32, 33, 47, 63, 64, 65, 66, 80])
def test_dense_sweep_across_word_warp_and_fused_boundaries(xp, rng, n):
    # 16 samples per word of the backward's record, 32 per warp, 64 = the fused path's limit.
    for shape, method in (((n, 3), "accelerated"), ((3, n), "dykstra")):
        x = rng.standard_normal(shape)
        y = prox_tv2d(to(xp, x), (0.2, 0.4), method=method, **TIGHT)
        assert_close_to_reference(y, x, 0.2, 0.4, TIGHT["tol"], np.float64)


@pytest.mark.slow
@pytest.mark.parametrize("n", [15, 16, 17, 31, 33, 63, 64, 65])
def test_square_slices_across_boundaries(xp, rng, n):
    x = rng.standard_normal((n, n))
    y = prox_tv2d(to(xp, x), 0.3, **TIGHT)
    assert_close_to_reference(y, x, 0.3, 0.3, TIGHT["tol"], np.float64)


@pytest.mark.parametrize("method", ["auto", "dykstra"])
def test_defaults_reach_the_documented_accuracy(xp, rng, method):
    # Piecewise-constant images with noise and smooth images with noise ("typical inputs"): the
    # default tol certifies a relative objective gap of 1e-3, measured here against the exact
    # optimum.
    r, c = np.mgrid[0:48, 0:48] / 48.0
    images = {
        "squares": (abs(r - 0.5) < 0.25) * 1.0 + (c > 0.7) * 0.5,
        "smooth": np.sin(6 * r) * np.cos(4 * c),
    }
    for name, clean in images.items():
        x = clean + 0.1 * rng.standard_normal(clean.shape)
        for lam in (0.02, 0.1, 0.3):
            y, info = prox_tv2d(to(xp, x), lam, method=method, return_info=True)
            assert bool(host_array(info.converged)), (name, lam)
            f = objective(host_array(y), x, lam, lam)
            f_star = objective(ref.prox_tv2d(x, lam), x, lam, lam)
            assert (f - f_star) / f_star <= tv2d.DEFAULT_TOL, (name, lam)
            assert float(host_array(info.gap)) >= (f - f_star) / f - 1e-12  # a true bound


@pytest.mark.slow
@METHODS
def test_tiny_tol_reaches_1e6_relative_gap(xp, rng, method):
    x = (np.add.outer(np.arange(32), np.arange(32)) > 30) + 0.1 * rng.standard_normal((32, 32))
    y, info = prox_tv2d(to(xp, x), 0.1, tol=1e-7, max_iter=20000, method=method, return_info=True)
    f = objective(host_array(y), x, 0.1, 0.1)
    f_star = objective(ref.prox_tv2d(x, 0.1), x, 0.1, 0.1)
    assert (f - f_star) / f_star <= 1e-6
    assert bool(host_array(info.converged))


@METHODS
def test_float32_certificate_stays_an_upper_bound(xp, method):
    # The certificate's inner product is off by the float32 rounding of the stored iterates;
    # without a slack for it a float32 gap came out negative (-1.9e-7 against a true 3.5e-7 on
    # this square) and the solve stopped early, 1.2e-4 off the optimum. Now the reported gap
    # bounds the true (F(y) - F*) / F(y) at every iteration count, and a tolerance below what
    # float32 can certify runs to max_iter, saying it did not converge.
    rng = np.random.default_rng(4)
    for name, img in images_2d(16, 16, rng).items():
        x = img.astype(np.float32)
        lam = (0.02, 0.003)
        f_star = objective(ref.prox_tv2d(x.astype(np.float64), lam), x, *lam)
        for k in (1, 3, 10, 40):
            y, info = prox_tv2d(to(xp, x, np.float32), lam, tol=0, max_iter=k, method=method,
                                return_info=True)  # fmt: skip
            f = objective(host_array(y), x, *lam)
            true_gap = (f - f_star) / f if f > 0 else 0.0  # F = 0: a constant slice, exact
            assert float(info.gap) >= true_gap - 1e-12, (name, k)
    square = images_2d(16, 16, np.random.default_rng(4))["square"].astype(np.float32)
    y, info = prox_tv2d(to(xp, square, np.float32), (0.02, 0.003), tol=1e-7, max_iter=300,
                        method=method, return_info=True)  # fmt: skip
    assert not bool(info.converged)
    assert int(info.n_iter) == 300
    assert_close_to_reference(y, square, 0.02, 0.003, float(info.gap), np.float32)


@METHODS
def test_float32_offset_images_converge_at_the_default_tol(xp, rng, method):
    # A large offset must not swamp the certificate's rounding slack (it is measured from the
    # slice's first value): 1000 + 50 * noisy photo certifies 1e-3 in a normal count.
    x = (1000 + 50 * (0.5 + 0.1 * rng.standard_normal((2, 40, 40)))).astype(np.float32)
    _, info = prox_tv2d(to(xp, x, np.float32), 5.0, method=method, return_info=True)
    assert bool(np.all(host_array(info.converged)))
    assert int(host_array(info.n_iter).max()) < 60


def test_axis_order_does_not_change_the_solution(xp, rng):
    # Dykstra solves along axes[1] first; swapping the axes (and the pair) must converge to the
    # same prox.
    x = rng.standard_normal((2, 17, 23))
    a = prox_tv2d(to(xp, x), (0.2, 0.5), axes=(-2, -1), **TIGHT)
    b = prox_tv2d(to(xp, x), (0.5, 0.2), axes=(-1, -2), **TIGHT)
    for s in range(2):
        f = objective(host_array(a)[s], x[s], 0.2, 0.5)
        bound = 2 * ERR_FACTOR * math.sqrt(2 * TIGHT["tol"] * f) + 1e-12
        assert np.linalg.norm(host_array(a)[s] - host_array(b)[s]) <= bound


def test_per_slice_and_per_axis_lam(xp, rng):
    x = rng.standard_normal((3, 2, 10, 12))
    lam0 = np.array([0.1, 0.5, 1.0]).reshape(3, 1, 1, 1)
    lam1 = np.array([0.3, 0.0]).reshape(1, 2, 1, 1)
    y = host_array(prox_tv2d(to(xp, x), (to(xp, lam0), lam1), **TIGHT))
    for i in range(3):
        for j in range(2):
            assert_close_to_reference(
                y[i, j], x[i, j], lam0.flat[i], lam1.flat[j], TIGHT["tol"], np.float64
            )
    # One array for both axes, per slice.
    y = host_array(prox_tv2d(to(xp, x), lam0, **TIGHT))
    for i in range(3):
        assert_close_to_reference(y[i, 0], x[i, 0], lam0.flat[i], lam0.flat[i], 1e-12, np.float64)


# Weights as the kernels read them (cupytv::FiberWeight per slice, both weights with one
# pattern): each layout must give the bits of the same weights expanded to one per slice. x is
# (3, 4, H, 5, W) with TV axes (2, 4): slices (3, 4, 5); lam0, lam1 shapes (x's rank, or fewer).
WEIGHT_LAYOUTS_2D = [
    ((), ()),
    ((4, 1, 1, 1), None),  # one per-channel weight for both axes: div 5, mod 4
    ((3, 1, 1, 1, 1), None),  # per sample
    ((3, 4, 1, 1, 1), None),  # both
    ((5, 1), None),  # along the batch dimension between the TV axes
    ((3, 1, 1, 5, 1), None),  # separated dimensions: expanded to one entry per slice
    ((), (4, 1, 1, 1)),  # a scalar spread over the other's entries
    ((4, 1, 1, 1), (3, 1, 1, 1, 1)),  # two patterns: both expanded
    ((4, 1, 1, 1), (4, 1, 1, 1)),
]


@pytest.mark.parametrize("hw", [(6, 7), (70, 3)])  # fused, multi-launch (h > FUSED_MAX_N)
@pytest.mark.parametrize(("shape0", "shape1"), WEIGHT_LAYOUTS_2D)
def test_weight_layouts_give_the_bits_of_per_slice_weights(
    xp, rng, monkeypatch, hw, shape0, shape1
):
    from cupytv import _chunks

    h, w = hw
    x = rng.standard_normal((3, 4, h, 5, w))
    g = rng.standard_normal(x.shape)
    reduced = (3, 4, 1, 5, 1)

    def weight(shape):
        return 0.4 if shape == () else rng.uniform(0.05, 1.0, shape)

    lam0 = weight(shape0)
    lam = lam0 if shape1 is None else (lam0, weight(shape1))
    parts = (lam,) if shape1 is None else lam
    expanded = [np.ascontiguousarray(np.broadcast_to(v, reduced)) for v in parts]
    full = expanded[0] if shape1 is None else tuple(expanded)
    kw = {"axes": (2, 4), "max_iter": 12, "tol": 0.0}
    y_full = host_array(prox_tv2d(to(xp, x), full, **kw))
    gx_full, gl_full = prox_tv2d_vjp(to(xp, x), full, to(xp, g), (2, 4), n_iter=12)
    # Chunks of 7 slices on the multi-launch path: each reads the weights from its lam_first
    # (chunking changes no bit).
    monkeypatch.setattr(_chunks, "chunk_items", lambda count, *args: min(count, 7))
    np.testing.assert_array_equal(host_array(prox_tv2d(to(xp, x), lam, **kw)), y_full)
    gx, gl = prox_tv2d_vjp(to(xp, x), lam, to(xp, g), (2, 4), n_iter=12)
    np.testing.assert_array_equal(host_array(gx), host_array(gx_full))
    grads = (gl,) if shape1 is None else gl
    grads_full = (gl_full,) if shape1 is None else gl_full
    for part, got, want in zip(parts, grads, grads_full, strict=True):
        # Each weight's gradient is the per-slice one summed over the slices sharing an entry.
        assert np.shape(got) == np.shape(part)
        padded = (1,) * (5 - np.ndim(part)) + np.shape(part)
        summed = host_array(want).sum(axis=tuple(d for d in range(5) if padded[d] == 1))
        np.testing.assert_allclose(host_array(got).reshape(-1), summed.reshape(-1), rtol=1e-12,
                                   atol=1e-12)  # fmt: skip


def test_axes_anywhere_and_batch_axes(xp, rng):
    x = rng.standard_normal((4, 9, 3, 11))
    y = host_array(prox_tv2d(to(xp, x), (0.3, 0.1), axes=(1, 3), **TIGHT))
    for a in range(4):
        for b in range(3):
            assert_close_to_reference(y[a, :, b, :], x[a, :, b, :], 0.3, 0.1, 1e-12, np.float64)


def test_tol_zero_runs_exactly_max_iter(xp, rng):
    x = rng.standard_normal((3, 6, 7)).astype(np.float32)
    x[1] = 2.0  # a constant slice: its gap is 0 from the start
    _, info = prox_tv2d(to(xp, x, np.float32), 0.2, max_iter=13, tol=0.0, return_info=True)
    np.testing.assert_array_equal(host_array(info.n_iter), [13, 13, 13])


def test_lam_zero_max_iter_zero_and_constant_slices(xp, rng):
    x = rng.standard_normal((2, 6, 7))
    y, info = prox_tv2d(to(xp, x), 0.0, return_info=True)
    np.testing.assert_array_equal(host_array(y), x)
    np.testing.assert_array_equal(host_array(info.n_iter), [0, 0])
    y, info = prox_tv2d(to(xp, x), 1.0, max_iter=0, return_info=True)
    np.testing.assert_array_equal(host_array(y), x)
    assert not host_array(info.converged).any()
    const = np.full((5, 5), 2.5)
    y, info = prox_tv2d(to(xp, const), 3.0, return_info=True)
    np.testing.assert_array_equal(host_array(y), const)
    assert int(host_array(info.n_iter)) == 0


def test_huge_lam_gives_the_slice_mean(xp, rng):
    x = rng.standard_normal((2, 8, 9))
    y = host_array(prox_tv2d(to(xp, x), 1e6, **TIGHT))
    np.testing.assert_allclose(
        y, np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape), atol=1e-9
    )


def test_non_finite_slices_are_confined(xp, rng):
    x = rng.standard_normal((4, 9, 10))
    bad = x.copy()
    bad[1, 3, 4] = np.nan
    bad[2, 0, 0] = np.inf
    y_ok, _ = prox_tv2d(to(xp, x), 0.3, return_info=True)
    y, info = prox_tv2d(to(xp, bad), 0.3, return_info=True)
    y, y_ok = host_array(y), host_array(y_ok)
    assert np.isnan(y[1:3]).all()
    np.testing.assert_array_equal(y[[0, 3]], y_ok[[0, 3]])
    np.testing.assert_array_equal(host_array(info.n_iter)[1:3], [0, 0])
    assert np.isnan(host_array(info.gap)[1:3]).all()
    gx, gl = prox_tv2d_vjp(to(xp, bad), 0.3, to(xp, np.ones_like(x)), n_iter=info.n_iter)
    assert np.isnan(host_array(gx)[1:3]).all()
    assert np.isfinite(host_array(gx)[[0, 3]]).all()
    assert np.isnan(float(host_array(gl)))


def test_info_and_determinism(xp, rng):
    x = rng.standard_normal((2, 3, 20, 20)).astype(np.float32)
    y1, info = prox_tv2d(to(xp, x, np.float32), 0.2, return_info=True)
    y2 = prox_tv2d(to(xp, x, np.float32), 0.2)
    assert isinstance(info, ProxInfo)
    assert info.n_iter.shape == (2, 3)
    assert info.n_iter.dtype == np.int32
    assert info.gap.shape == (2, 3)
    assert info.converged.shape == (2, 3)
    assert (host_array(info.gap) <= tv2d.DEFAULT_TOL).all()
    np.testing.assert_array_equal(host_array(y1), host_array(y2))


def test_float16_and_out(xp, rng):
    x = rng.standard_normal((2, 12, 12))
    y16 = prox_tv2d(to(xp, x, np.float16), 0.3)
    assert y16.dtype == np.float16
    y32 = prox_tv2d(to(xp, x.astype(np.float16), np.float32), 0.3)
    np.testing.assert_array_equal(host_array(y16), host_array(y32).astype(np.float16))
    out = xp.empty((2, 12, 12))
    res = prox_tv2d(to(xp, x), 0.3, out=out)
    assert res is out
    np.testing.assert_array_equal(host_array(out), host_array(prox_tv2d(to(xp, x), 0.3)))


_PATH_CASES = [
    ((3, 9, 13), np.float64),
    ((3, 9, 13), np.float32),
    ((2, 48, 48), np.float32),
    ((2, 32, 33), np.float64),
    ((2, 1, 30), np.float64),
    ((2, 30, 1), np.float32),
    ((1, 33, 5), np.float64),
]


@pytest.mark.parametrize(
    ("shape", "dtype", "method"),
    [(*case, m) for case in _PATH_CASES for m in ("dykstra", "accelerated")]
    # The largest fused float32 slice: Dykstra keeps three arrays, the accelerated method four.
    + [((2, 64, 64), np.float32, "dykstra")],
)
def test_fused_and_multi_launch_paths_are_bit_identical(xp, rng, shape, dtype, method):
    x = to(xp, rng.standard_normal(shape), dtype)
    g = to(xp, rng.standard_normal(shape), dtype)
    results = []
    for path in ("fused", "multi"):
        pb = tv2d._Problem(x, (0.2, 0.35), (-2, -1), 300, 1e-6, method)
        y = tv2d._forward(pb, path)
        gx, gl = tv2d._backward(pb, pb.flat(g), pb.n_iter, path)
        results.append([host_array(a) for a in (y, pb.n_iter, pb.gap, gx, gl)])
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("path", ["fused", "multi"])
def test_the_record_is_written_before_it_is_read(monkeypatch, xp, rng, path):
    # The backward's record is allocated uninitialised; garbage in it must change no bit of the
    # gradients or of the tangent. Slices run different counts (one runs none: zero x), so words
    # of iterations a slice did not run are left as garbage.
    x = to(xp, rng.standard_normal((3, 20, 24)), np.float64)
    x[1] = 0
    g = to(xp, rng.standard_normal((3, 20, 24)), np.float64)
    counts = xp.asarray(np.array([7, 0, 3], np.int32))

    def run():
        pb = tv2d._Problem(x, (0.2, 0.35), (-2, -1), 300, 1e-6, "accelerated")
        gx, gl = tv2d._backward(pb, pb.flat(g), counts, path)
        lam_dot = [tv2d._slice_values(pb, v, "lam_dot") for v in (0.3, -0.1)]
        tangent = tv2d._tangent(pb, pb.flat(g), *lam_dot, counts)
        return [host_array(a) for a in (gx, gl, tangent)]

    def record(value):
        return lambda xp, words: xp.full(max(1, words), value, dtype=np.uint32)

    monkeypatch.setattr(tv2d, "_record", record(0))
    clean = run()
    monkeypatch.setattr(tv2d, "_record", record(0xAAAAAAAA))  # every code "down"
    for a, b in zip(run(), clean, strict=True):
        np.testing.assert_array_equal(a, b)


def test_fused_limit(rng):
    # 64 x 64 float32 with Dykstra (issue: "certainly" fused) and smaller fit; 64 x 64 float64
    # and 65 wide do not.
    fits = {
        ((64, 64), np.float32, "dykstra"): True,
        ((64, 64), np.float32, "accelerated"): False,  # a fourth array (the momentum's)
        ((48, 48), np.float32, "accelerated"): True,
        ((32, 32), np.float64, "accelerated"): True,
        ((64, 64), np.float64, "dykstra"): False,
        ((65, 8), np.float32, "dykstra"): False,
    }
    for (shape, dtype, method), expected in fits.items():
        pb = tv2d._Problem(np.zeros(shape, dtype), 0.1, (-2, -1), 10, 1e-3, method)
        assert (pb.fused() is not None) == expected, (shape, dtype, method)


# ---------------------------------------------------------------------------------------------
# Backward


@METHODS
@pytest.mark.parametrize("shape", [(2, 5, 6), (1, 12, 17), (1, 70, 9)])
def test_vjp_matches_finite_differences_of_the_unrolled_map(xp, rng, shape, method):
    # A fixed number of iterations (tol = 0) makes the forward a fixed piecewise-affine map; few
    # iterations keep every intermediate jump far above the step h, so central differences see
    # the same affine piece the VJP differentiates.
    n_iter, h = 4, 1e-6
    x = rng.standard_normal(shape)
    g = rng.standard_normal(shape)
    v = rng.standard_normal(shape)
    lam = (0.3, 0.2)

    def f(xx, ll):
        return host_array(prox_tv2d(to(xp, xx), ll, max_iter=n_iter, tol=0.0, method=method))

    gx, (gl0, gl1) = prox_tv2d_vjp(to(xp, x), lam, to(xp, g), n_iter=n_iter, method=method)
    fd_x = np.sum((f(x + h * v, lam) - f(x - h * v, lam)) * g) / (2 * h)
    assert np.sum(host_array(gx) * v) == pytest.approx(fd_x, rel=1e-6, abs=1e-8)
    fd0 = np.sum((f(x, (0.3 + h, 0.2)) - f(x, (0.3 - h, 0.2))) * g) / (2 * h)
    fd1 = np.sum((f(x, (0.3, 0.2 + h)) - f(x, (0.3, 0.2 - h))) * g) / (2 * h)
    assert float(host_array(gl0)) == pytest.approx(fd0, rel=1e-6, abs=1e-8)
    assert float(host_array(gl1)) == pytest.approx(fd1, rel=1e-6, abs=1e-8)


@pytest.mark.slow
@METHODS
@pytest.mark.parametrize("shape", [(3, 8, 11), (1, 40, 40), (1, 70, 40)])
def test_vjp_converges_to_the_exact_gradient(xp, rng, shape, method):
    # Run long enough, the unrolled map's gradient is the exact prox's (tiny intermediate jumps
    # are recorded as fused, see jump_rtol in cuda_src/tv2d.cu). The segment structure settles
    # later than the objective: the accelerated method reaches a 1e-13 gap in ~150 iterations on
    # (40, 40) while its gradient is exact only from ~300 on (measured); CONVERGED_ITERS leaves
    # room for Dykstra's slower iterates.
    x = rng.standard_normal(shape)
    g = rng.standard_normal(shape)
    for lam in (0.3, (0.1, 0.6)):
        gx, gl = prox_tv2d_vjp(to(xp, x), lam, to(xp, g), n_iter=CONVERGED_ITERS, method=method)
        gx_ref, gl_ref = ref.prox_tv2d_vjp(x, lam, g)
        np.testing.assert_allclose(host_array(gx), gx_ref, atol=1e-9)
        gl = [host_array(a) for a in (gl if isinstance(gl, tuple) else (gl,))]
        gl_ref = gl_ref if isinstance(gl_ref, tuple) else (gl_ref,)
        for a, b in zip(gl, gl_ref, strict=True):
            assert float(a) == pytest.approx(float(b), rel=1e-8, abs=1e-9)


@pytest.mark.slow
@METHODS
def test_vjp_near_a_zero_solution(xp, method):
    # A checkerboard's prox is (nearly) its mean, 0: a jump threshold relative to the values
    # compared let ulp-sized jumps of late iterates count (the accelerated gradient was 0.3 off
    # after exactly 2000 iterations; found by `python -m cupytv check`). The threshold is relative
    # to the slice's max|x|.
    r, c = np.mgrid[0:33, 0:20]
    x = np.where((r + c) % 2 == 0, 1.0, -1.0)
    g = np.random.default_rng(5).standard_normal(x.shape)
    gx, gl = prox_tv2d_vjp(to(xp, x), (0.2, 0.4), to(xp, g), n_iter=CONVERGED_ITERS, method=method)
    gx_ref, gl_ref = ref.prox_tv2d_vjp(x, (0.2, 0.4), g)
    np.testing.assert_allclose(host_array(gx), gx_ref, atol=1e-9)
    for a, b in zip(gl, gl_ref, strict=True):
        assert float(host_array(a)) == pytest.approx(float(b), abs=1e-9)


def test_vjp_lam_shapes_and_replay(xp, rng):
    x = rng.standard_normal((3, 2, 9, 10))
    g = rng.standard_normal(x.shape)
    lam = np.array([0.2, 0.4]).reshape(1, 2, 1, 1)
    _, info = prox_tv2d(to(xp, x), to(xp, lam), return_info=True)
    gx, gl = prox_tv2d_vjp(to(xp, x), to(xp, lam), to(xp, g), n_iter=info.n_iter)
    gx2, gl2 = prox_tv2d_vjp(to(xp, x), to(xp, lam), to(xp, g))  # re-runs the stopping rule
    np.testing.assert_array_equal(host_array(gx), host_array(gx2))
    np.testing.assert_array_equal(host_array(gl), host_array(gl2))
    assert gl.shape == lam.shape
    assert gx.shape == x.shape
    # Per-slice gradients summed over the batch axis they share: the same as per-slice lam.
    lam_full = np.broadcast_to(lam, (3, 2, 1, 1))
    _, gl_full = prox_tv2d_vjp(to(xp, x), to(xp, lam_full), to(xp, g), n_iter=info.n_iter)
    np.testing.assert_allclose(host_array(gl), host_array(gl_full).sum(0, keepdims=True))
    # A scalar lam's gradient is the sum of the pair's.
    _, gs = prox_tv2d_vjp(to(xp, x), 0.3, to(xp, g), n_iter=5)
    _, (ga, gb) = prox_tv2d_vjp(to(xp, x), (0.3, 0.3), to(xp, g), n_iter=5)
    assert float(host_array(gs)) == pytest.approx(float(host_array(ga) + host_array(gb)))


def test_vjp_float32(xp, rng):
    x = rng.standard_normal((2, 16, 16))
    g = rng.standard_normal(x.shape)
    gx32, gl32 = prox_tv2d_vjp(to(xp, x, np.float32), 0.3, to(xp, g, np.float32), n_iter=20)
    gx64, gl64 = prox_tv2d_vjp(to(xp, x), 0.3, to(xp, g), n_iter=20)
    assert gx32.dtype == np.float32
    np.testing.assert_allclose(host_array(gx32), host_array(gx64), atol=1e-4)
    assert float(host_array(gl32)) == pytest.approx(float(host_array(gl64)), rel=1e-4)


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"x": np.zeros((4, 4), np.int32)}, TypeError, "expected a real floating-point"),
        ({"x": np.zeros(4)}, ValueError, "at least 2 dimensions"),
        ({"lam": -1.0}, ValueError, "expected values >= 0, got -1"),
        ({"lam": np.ones(3)}, ValueError, "broadcastable to"),
        ({"lam": (0.1, 0.2, 0.3)}, ValueError, "a pair"),
        ({"axes": (1, 1)}, ValueError, "two distinct axes"),
        ({"axes": (0, 5)}, ValueError, r"axes\[1\]: expected an axis"),
        ({"max_iter": -1}, ValueError, "max_iter: expected an int in"),
        ({"max_iter": 2.5}, TypeError, "max_iter: expected an int"),
        ({"tol": -1e-3}, ValueError, "tol: expected a finite number >= 0"),
        ({"tol": float("nan")}, ValueError, "tol: expected a finite number"),
        ({"method": "admm"}, ValueError, "method: expected one of"),
        ({"out": np.zeros((3, 3))}, ValueError, "out: expected x's shape"),
    ],
)
def test_bad_input_errors(kwargs, error, match):
    args = {"x": np.zeros((4, 5)), "lam": 0.1, **kwargs}
    x, lam = args.pop("x"), args.pop("lam")
    with pytest.raises(error, match=match):
        prox_tv2d(x, lam, **args)


def test_vjp_bad_input_errors():
    x = np.zeros((2, 4, 5))
    with pytest.raises(ValueError, match="g: expected x's shape"):
        prox_tv2d_vjp(x, 0.1, np.zeros((4, 5)))
    with pytest.raises(ValueError, match="n_iter: expected an int or an array of the batch"):
        prox_tv2d_vjp(x, 0.1, np.zeros_like(x), n_iter=np.zeros(3, np.int32))
    with pytest.raises(TypeError, match="n_iter: expected integers"):
        prox_tv2d_vjp(x, 0.1, np.zeros_like(x), n_iter=np.zeros(2))
    with pytest.raises(ValueError, match="n_iter: expected counts >= 0"):
        prox_tv2d_vjp(x, 0.1, np.zeros_like(x), n_iter=-1)


def test_empty_batch(xp):
    x = xp.zeros((0, 5, 6))
    y, info = prox_tv2d(x, 0.1, return_info=True)
    assert y.shape == (0, 5, 6)
    assert info.n_iter.shape == (0,)
    gx, gl = prox_tv2d_vjp(x, 0.1, xp.zeros_like(x))
    assert gx.shape == x.shape
    assert float(host_array(gl)) == 0.0
