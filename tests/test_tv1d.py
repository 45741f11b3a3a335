"""The 1D TV kernels (cuda_src/tv1d.cu) through cupytv.prox_tv1d / prox_tv1d_vjp.

Every test body runs on the host executor (NumPy arrays, always) and on CuPy (``gpu`` marker).
Results are compared with the exact reference (cupytv.reference, Johnson's dynamic programme in
float64) and, where many fibers are checked at once, with the optimality (KKT) conditions, which
certify a solution without another solver.

Tolerances. float64: every output is a segment mean plus lam (s_out - s_in) / |S|, formed from
sums of at most n terms of size <= max|x| (Condat: running segment sums; taut string: differences
of running sums), so its rounding error is at most a small multiple of n * eps * max|x|;
F64_FACTOR * n * eps * max|x| bounds it (<= 1e-12 relative to scale for the n <= ~1000 used
here). float32: the kernels read float32, accumulate in float64 and round the result once, and lam
is rounded to float32 on the way in; compared with the exact solution for the float32 input and
float32(lam), the error is the final rounding (half an ulp of max|x|) plus the float64 error,
bounded by F32_ULPS * eps32 * max|x|.
"""

from __future__ import annotations

import numpy as np
import pytest

import cupytv
from cupytv import reference, tv1d
from cupytv._validation import host_array
from cupytv.testing import signals_1d, tv1d_lam_max

METHODS = ("condat", "taut_string", "pn")  # condat first: the others are compared with it
DTYPES = (np.float32, np.float64)
BLOCK = 128  # cuda_src/tv1d.cu TV1D_BLOCK: fibers per block
F64_FACTOR = 8
F32_ULPS = 4
# Fiber counts around one and two blocks (partial, full, one over) and a single fiber.
FIBER_COUNTS = (1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK + 1)


def tolerance(x: np.ndarray, dtype) -> float:
    """Absolute tolerance for prox outputs of fibers like x (see the module docstring)."""
    scale = max(float(np.max(np.abs(x), initial=0.0)), np.finfo(np.float64).tiny)
    n = x.shape[-1] if x.ndim else 1
    f64 = F64_FACTOR * max(n, 1) * np.finfo(np.float64).eps * scale
    if np.dtype(dtype) == np.float64:
        return f64
    return F32_ULPS * np.finfo(np.float32).eps * scale + f64


def expected(x: np.ndarray, lam, axis=-1, dtype=np.float64) -> np.ndarray:
    """The reference for the input as the kernel sees it: x and lam rounded to dtype."""
    x_in = np.asarray(x, dtype=dtype).astype(np.float64)
    lam_in = np.asarray(lam, dtype=dtype).astype(np.float64)
    return reference.prox_tv1d(x_in, lam_in, axis=axis)


def assert_kkt(x: np.ndarray, y: np.ndarray, lam: np.ndarray, tol: float) -> None:
    """y is the prox of x (rows, last axis) iff u = cumsum(x - y) certifies it: |u| <= lam,
    u[-1] = 0, u = -lam where y steps up, +lam where it steps down."""
    u = np.cumsum(x.astype(np.float64) - y.astype(np.float64), axis=-1)
    lam = np.broadcast_to(np.asarray(lam, dtype=np.float64).reshape(-1, 1), u.shape)
    n = x.shape[-1]
    # The dual sums up to n output errors, hence the factor n on the per-output tolerance.
    tol_u = n * tol
    np.testing.assert_allclose(u[:, -1], 0.0, atol=tol_u)
    inner, lam_i = u[:, :-1], lam[:, :-1]
    assert np.all(np.abs(inner) <= lam_i + tol_u)
    step = np.diff(y.astype(np.float64), axis=-1)
    up, down = step > 0, step < 0
    np.testing.assert_allclose(inner[up], -lam_i[up], atol=tol_u)
    np.testing.assert_allclose(inner[down], lam_i[down], atol=tol_u)


def signal_batch(n: int, rng) -> np.ndarray:
    return np.stack(list(signals_1d(n, rng).values()))


# ----------------------------------------------------------------------------------------------
# Forward against the reference


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", METHODS)
def test_adversarial_signals_match_reference(xp, rng, method, dtype):
    for n in (1, 2, 3, 4, 17, 64, 65, 66, 300):
        x = signal_batch(n, rng)
        for lam in (1e-9, 0.05, 1.0, 30.0):
            y = host_array(cupytv.prox_tv1d(xp.asarray(x.astype(dtype)), lam, method=method))
            assert y.dtype == dtype
            np.testing.assert_allclose(
                y, expected(x, lam, dtype=dtype), rtol=0, atol=tolerance(x, dtype), err_msg=f"{n=}"
            )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", METHODS)
def test_tile_and_block_boundary_sweep(xp, rng, method, dtype):
    # Every fiber length across the staged-tile rows (odd padding, 47 = last double tile at 128
    # threads, 64/65 = the guard threshold) and fiber counts around block multiples. Certified by
    # the KKT conditions (the reference would take seconds for these ~40k fibers).
    for n in range(1, 70):
        for fibers in FIBER_COUNTS:
            x = rng.standard_normal((fibers, n)).astype(dtype)
            lam = rng.uniform(0.0, 1.5, fibers).astype(dtype)
            y = host_array(cupytv.prox_tv1d(xp.asarray(x), xp.asarray(lam[:, None]), method=method))
            assert_kkt(x, y, lam, tolerance(x, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_projected_newton_and_direct_solvers_agree(xp, rng, dtype):
    # Projected Newton (iterative, then polished to the closed form per segment) against the two
    # direct solvers, on many random fibers in one launch each, with per-fiber lam.
    x = rng.standard_normal((300, 150)).astype(dtype)
    lam = (10.0 ** rng.uniform(-2, 1, (300, 1))).astype(dtype)
    ys = {
        m: host_array(cupytv.prox_tv1d(xp.asarray(x), xp.asarray(lam), method=m)) for m in METHODS
    }
    for m in METHODS[1:]:
        np.testing.assert_allclose(ys[m], ys[METHODS[0]], rtol=0, atol=2 * tolerance(x, dtype))


@pytest.mark.parametrize("method", [*METHODS, "auto"])
def test_lam_zero_is_the_exact_identity(xp, rng, method):
    for dtype in DTYPES:
        x = (rng.standard_normal((5, 33)) * 10.0 ** rng.integers(-30, 30, (5, 33))).astype(dtype)
        x[0, 3] = -0.0
        y = host_array(cupytv.prox_tv1d(xp.asarray(x), 0.0, method=method))
        np.testing.assert_array_equal(y, x)
        assert np.signbit(y[0, 3])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", METHODS)
def test_huge_lam_gives_the_mean(xp, rng, method, dtype):
    for n in (2, 7, 200):
        x = signal_batch(n, rng)
        lam = 2.0 * max(tv1d_lam_max(row) for row in x) + 1.0
        y = host_array(cupytv.prox_tv1d(xp.asarray(x.astype(dtype)), lam, method=method))
        # One constant segment per fiber, equal to the mean of the (rounded) input.
        assert np.all(y == y[:, :1])
        mean = x.astype(dtype).astype(np.float64).mean(axis=1, keepdims=True)
        np.testing.assert_allclose(y, np.broadcast_to(mean, y.shape), atol=tolerance(x, dtype))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(3, 4, 70), (2, 3, 4, 5)])
def test_every_axis_with_per_fiber_lam(xp, rng, method, shape):
    x = rng.standard_normal(shape)
    for axis in range(-len(shape), len(shape)):
        reduced = tuple(1 if d == axis % len(shape) else s for d, s in enumerate(shape))
        # A scalar, one weight per fiber, and one per trailing index (broadcast over dim 0).
        for lam in (0.3, rng.uniform(0.0, 2.0, reduced), rng.uniform(0.0, 2.0, reduced[1:])):
            lam_dev = xp.asarray(lam) if np.ndim(lam) else lam
            y = host_array(cupytv.prox_tv1d(xp.asarray(x), lam_dev, axis=axis, method=method))
            np.testing.assert_allclose(
                y,
                reference.prox_tv1d(x, lam, axis=axis),
                rtol=0,
                atol=tolerance(x, np.float64) * max(shape),
                err_msg=f"{axis=}",
            )


def test_non_contiguous_input_and_float16(xp, rng):
    x = rng.standard_normal((40, 30))
    view = xp.asarray(x)[::2, ::-1]
    y = host_array(cupytv.prox_tv1d(view, 0.5, axis=0))
    np.testing.assert_allclose(y, reference.prox_tv1d(x[::2, ::-1], 0.5, axis=0), atol=1e-13)
    half = cupytv.prox_tv1d(xp.asarray(x.astype(np.float16)), 0.5)
    assert half.dtype == np.float16
    exact = expected(x.astype(np.float16), 0.5, dtype=np.float32)
    # float16 is computed in float32 and rounded once to float16: half an ulp of max|x|.
    np.testing.assert_allclose(host_array(half), exact, atol=np.finfo(np.float16).eps * 4)


@pytest.mark.parametrize("method", METHODS)
def test_constant_segments_are_bit_identical(xp, rng, method):
    x = np.concatenate([rng.standard_normal((20, 500)), signal_batch(500, rng)])
    y = host_array(cupytv.prox_tv1d(xp.asarray(x), 0.7, method=method))
    ref = reference.prox_tv1d(x, 0.7)
    tol = tolerance(x, np.float64)
    # Same segments as the reference (whose pieces are exact repeats), and no near-ties: every
    # step of the output is either exactly zero or far above rounding.
    steps, ref_steps = np.diff(y, axis=1), np.diff(ref, axis=1)
    np.testing.assert_array_equal(steps != 0, np.abs(ref_steps) > tol)
    assert np.all((steps == 0) | (np.abs(steps) > 100 * tol))


@pytest.mark.parametrize("method", METHODS)
def test_long_ramp_falls_back_and_stays_exact(xp, method):
    # A ramp with a large lam is Condat's quadratic case: it exceeds the work budget and is solved
    # again by the taut string. Small enough for the default run.
    n = 3000
    x = 10.0 * np.arange(n) / n
    y = host_array(cupytv.prox_tv1d(xp.asarray(x), 20.0, method=method))
    np.testing.assert_allclose(
        y, reference.prox_tv1d(x, 20.0), rtol=0, atol=tolerance(x, np.float64)
    )


@pytest.mark.parametrize("method", METHODS)
def test_random_walks_with_large_lam(xp, rng, method):
    # Smooth signals under heavy smoothing make Condat re-read samples 3-25 times (measured), so
    # some fibers exceed the guard's budget and fall back, others do not.
    x = np.cumsum(rng.standard_normal((12, 1000)), axis=1)
    lam = np.array([1.0, 10.0, 100.0, 1000.0] * 3)[:, None]
    y = host_array(cupytv.prox_tv1d(xp.asarray(x), xp.asarray(lam), method=method))
    np.testing.assert_allclose(
        y, reference.prox_tv1d(x, lam), rtol=0, atol=tolerance(x, np.float64)
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_projected_newton_resolves_the_fibers_it_cannot_certify(xp, rng, dtype, layout):
    # Two concatenated ramps with lam = 1e3 stop PN at its iteration cap 4.4 off the prox
    # (docs/RELIABILITY.md); the kernel flags them and the wrapper re-solves exactly those with
    # the taut string, with their own lam, in place (also along a strided axis).
    ramps = np.tile(np.arange(2000) * (10.0 / 2000), 2)
    x = np.stack([ramps, rng.standard_normal(ramps.size), ramps[::-1], ramps])
    lam = np.array([1e3, 0.5, 1e3, 2.0])[:, None]
    if layout == "strided":
        y = host_array(cupytv.prox_tv1d(xp.asarray(x.T.astype(dtype)), xp.asarray(lam.T),
                                        axis=0, method="pn")).T  # fmt: skip
    else:
        y = host_array(cupytv.prox_tv1d(xp.asarray(x.astype(dtype)), xp.asarray(lam),
                                        method="pn"))  # fmt: skip
    want = expected(x, lam, dtype=dtype)
    np.testing.assert_allclose(y, want, rtol=0, atol=tolerance(x, dtype))


@pytest.mark.slow
def test_worst_case_ramp_is_exact(xp):
    # Issue 4's worst case: x[i] = 10 i / N, lam = 1000, N = 2e5. Its time (linear: ~10 ms on one
    # core) is measured by benchmarks/bench_tv1d.py; tests assert correctness only.
    n = 200_000
    x = 10.0 * np.arange(n) / n
    y = host_array(cupytv.prox_tv1d(xp.asarray(x), 1000.0))
    np.testing.assert_allclose(
        y, reference.prox_tv1d(x, 1000.0), rtol=0, atol=tolerance(x, np.float64)
    )


def test_float32_long_fibers_stay_accurate(xp, rng):
    # 1e5 samples of mean 100 in one segment: a float32 running sum would lose ~1e-3 relative;
    # the kernels accumulate in float64 and round once.
    x = (100.0 + rng.standard_normal((2, 100_000))).astype(np.float32)
    y = host_array(cupytv.prox_tv1d(xp.asarray(x), 1e6))
    mean = x.astype(np.float64).mean(axis=1, keepdims=True)
    np.testing.assert_allclose(y, np.broadcast_to(mean, y.shape), rtol=np.finfo(np.float32).eps)


@pytest.mark.parametrize("method", METHODS)
def test_nan_and_inf_stay_in_their_fiber(xp, rng, method):
    for dtype in DTYPES:
        x = rng.standard_normal((2 * BLOCK + 3, 70)).astype(dtype)
        clean = host_array(cupytv.prox_tv1d(xp.asarray(x), 0.4, method=method))
        bad_rows = {5: np.nan, BLOCK: np.inf, 2 * BLOCK + 2: -np.inf}
        for row, value in bad_rows.items():
            x[row, row % 70] = value
        y = host_array(cupytv.prox_tv1d(xp.asarray(x), 0.4, method=method))
        good = np.setdiff1d(np.arange(x.shape[0]), list(bad_rows))
        assert np.all(np.isnan(y[list(bad_rows)]))
        np.testing.assert_array_equal(y[good], clean[good])
        # Strided fibers too: the same data with the TV axis first.
        xt = xp.asarray(np.ascontiguousarray(x.T))
        yt = host_array(cupytv.prox_tv1d(xt, 0.4, axis=0, method=method))
        assert np.all(np.isnan(yt[:, list(bad_rows)]))
        np.testing.assert_array_equal(yt[:, good].T, y[good])


def test_out_argument(xp, rng):
    x = xp.asarray(rng.standard_normal((6, 50)))
    out = xp.empty_like(x)
    assert cupytv.prox_tv1d(x, 0.2, out=out) is out
    expect = host_array(cupytv.prox_tv1d(x, 0.2))
    np.testing.assert_array_equal(host_array(out), expect)
    assert cupytv.prox_tv1d(x, 0.2, out=x) is x  # in place
    np.testing.assert_array_equal(host_array(x), expect)


def test_empty_inputs(xp):
    assert cupytv.prox_tv1d(xp.zeros((0, 5)), 1.0).shape == (0, 5)
    assert cupytv.prox_tv1d(xp.zeros((3, 0)), 1.0).shape == (3, 0)
    gx, gl = cupytv.prox_tv1d_vjp(None, xp.ones((3, 1)), xp.zeros((3, 0)), y=xp.zeros((3, 0)))
    assert gx.shape == (3, 0)
    assert gl.shape == (3, 1)


# ----------------------------------------------------------------------------------------------
# Backward


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", METHODS)
def test_vjp_matches_reference(xp, rng, method, dtype):
    for n in (1, 2, 3, 65, 300):
        # Not the staircase: its dual touches +-lam inside runs of equal values (a zero-height
        # "jump"), where the prox is not differentiable; the reference then splits the run and
        # returns another element of the generalized Jacobian, the kernels keep the run whole.
        signals = signals_1d(n, rng)
        x = np.stack([v for k, v in signals.items() if k != "staircase"])
        lam = rng.uniform(0.01, 2.0, (x.shape[0], 1))
        g = rng.standard_normal(x.shape)
        y = cupytv.prox_tv1d(xp.asarray(x.astype(dtype)), xp.asarray(lam), method=method)
        gx, gl = cupytv.prox_tv1d_vjp(None, xp.asarray(lam), xp.asarray(g.astype(dtype)), y=y)
        x_in = x.astype(dtype).astype(np.float64)
        lam_in = lam.astype(dtype).astype(np.float64)
        rgx, rgl = reference.prox_tv1d_vjp(x_in, lam_in, g.astype(dtype).astype(np.float64))
        # The gradients are segment means of g: float64 sums, one rounding to dtype.
        tol = 4 * np.finfo(dtype).eps * float(np.abs(g).max()) * (n if dtype == np.float64 else 1)
        assert gx.dtype == dtype
        assert gl.shape == lam.shape
        np.testing.assert_allclose(host_array(gx), rgx, rtol=0, atol=tol, err_msg=f"{n=}")
        np.testing.assert_allclose(host_array(gl), rgl, rtol=0, atol=4 * n * tol, err_msg=f"{n=}")


# Weights as the kernels read them (cupytv::FiberWeight): by value, by channel / sample / both
# without expanding, and the expanded fallback for a pattern that varies along two separated
# dimensions. (8, 5, 40, 3) along axis 2 has 120 fibers; (96, 4, 30) along the last, 384.
WEIGHT_LAYOUTS = [
    ((8, 5, 40, 3), 2, ()),
    ((8, 5, 40, 3), 2, (5, 1, 1)),  # per channel: div 3, mod 5
    ((8, 5, 40, 3), 2, (8, 1, 1, 1)),  # per sample: div 15, mod 8
    ((8, 5, 40, 3), 2, (8, 5, 1, 1)),  # both
    ((8, 5, 40, 3), 2, (3,)),  # along the strided fibers' inner dimension
    ((8, 5, 40, 3), 2, (8, 1, 1, 3)),  # separated dimensions: expanded to one entry per fiber
    ((8, 5, 40, 3), 2, (8, 5, 1, 3)),  # one weight per fiber
    ((8, 5, 40, 3), 0, (1, 5, 1, 3)),  # axis 0: the fibers are (5, 40, 3)
    ((96, 4, 30), -1, (4, 1)),  # 96 fibers per entry: the VJP sums them in tv1d_weight_grad
    ((96, 4, 30), -1, (96, 1, 1)),  # 4 per entry: summed in array operations
    ((96, 4, 30), -1, ()),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("shape", "axis", "lam_shape"), WEIGHT_LAYOUTS)
def test_weight_layouts_match_reference(xp, rng, method, shape, axis, lam_shape):
    x = rng.standard_normal(shape)
    lam = rng.uniform(0.05, 1.5, lam_shape) if lam_shape else 0.7
    g = rng.standard_normal(shape)
    y = cupytv.prox_tv1d(xp.asarray(x), lam, axis=axis, method=method)
    want = reference.prox_tv1d(x, lam, axis=axis)
    np.testing.assert_allclose(host_array(y), want, rtol=0, atol=tolerance(x, np.float64))
    gx, gl = cupytv.prox_tv1d_vjp(None, lam, xp.asarray(g), axis, y=y)
    rgx, rgl = reference.prox_tv1d_vjp(x, lam, g, axis)
    assert gl.shape == np.shape(lam)
    tol = 1e-12 * shape[axis] * float(np.abs(g).max())
    np.testing.assert_allclose(host_array(gx), rgx, rtol=0, atol=tol)
    np.testing.assert_allclose(host_array(gl), rgl, rtol=0, atol=tol * x.size)


def test_weight_layouts_survive_chunked_launches(monkeypatch, rng):
    # Workspace methods split the fibers into chunks; each launch reads the weight at its own
    # first fiber (lam_first). Force chunks of 7 rows of a per-channel (5) weight.
    from cupytv import _chunks

    monkeypatch.setattr(_chunks, "chunk_items", lambda count, *args: min(count, 7))
    x = rng.standard_normal((23, 5, 80))
    lam = rng.uniform(0.1, 2.0, (5, 1))
    want = reference.prox_tv1d(x, lam)
    for method in METHODS:
        y = cupytv.prox_tv1d(x, lam, method=method)
        np.testing.assert_allclose(y, want, rtol=0, atol=tolerance(x, np.float64), err_msg=method)


def test_weight_arguments_are_the_callers_values_not_one_per_fiber():
    # The host cost of a call must not grow with the fibers (issue 17, item 5).
    shape = (4096, 16, 8)
    scalar = tv1d.Weight.of(0.5, shape, 2, np.dtype(np.float32))
    assert (scalar.mod, scalar.value, scalar.data) == (0, 0.5, None)
    channel = tv1d.Weight.of(np.ones((16, 1)), shape, 2)
    assert (channel.div, channel.mod, channel.data.size) == (1, 16, 16)
    sample = tv1d.Weight.of(np.ones((4096, 1, 1)), shape, 2)
    assert (sample.div, sample.mod) == (16, 4096)
    separated = tv1d.Weight.of(np.ones((4096, 1, 8)), shape, 1)  # fibers (4096, 8): contiguous
    assert (separated.div, separated.mod) == (1, 4096 * 8)
    gapped = tv1d.Weight.of(np.ones((2, 1, 1, 3)), (2, 4, 5, 3), 2)  # varies on dims 0 and 3
    assert (gapped.div, gapped.mod, gapped.data.size) == (1, 24, 24)
    fibers = np.arange(24)
    np.testing.assert_array_equal(gapped.per_fiber(fibers), 1.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_vjp_tile_boundary_sweep(xp, rng, dtype):
    # Every length the staged VJP takes (up to 64, the tile within 48 KB: float64 stops at 47,
    # whose 48128-byte tile beside the kernel's static table needs the loader's shared memory
    # opt-in on a GPU) and just past it, for a block and one more fiber; every 16th fiber
    # against the reference.
    fibers = BLOCK + 1
    for n in range(1, 70):
        x = rng.standard_normal((fibers, n))
        lam = rng.uniform(0.05, 1.5, (fibers, 1))
        g = rng.standard_normal((fibers, n))
        y = cupytv.prox_tv1d(xp.asarray(x.astype(dtype)), xp.asarray(lam))
        gx, gl = cupytv.prox_tv1d_vjp(None, xp.asarray(lam), xp.asarray(g.astype(dtype)), y=y)
        pick = slice(None, None, 16)
        x_in = x[pick].astype(dtype).astype(np.float64)
        rgx, rgl = reference.prox_tv1d_vjp(
            x_in,
            lam[pick].astype(dtype).astype(np.float64),
            g[pick].astype(dtype).astype(np.float64),
        )
        tol = 4 * np.finfo(dtype).eps * float(np.abs(g).max()) * (n if dtype == np.float64 else 1)
        np.testing.assert_allclose(host_array(gx)[pick], rgx, rtol=0, atol=tol, err_msg=f"{n=}")
        np.testing.assert_allclose(host_array(gl)[pick], rgl, rtol=0, atol=4 * n * tol,
                                   err_msg=f"{n=}")  # fmt: skip


def test_vjp_matches_central_differences(xp, rng):
    # The prox is piecewise affine in (x, lam): a central difference with a step far below the
    # distance to the next kink is exact up to rounding (eps * |f| / h ~ 1e-10 here).
    h, n = 1e-6, 40
    x = rng.standard_normal((3, n))
    lam = np.array([[0.2], [0.5], [1.0]])
    g = rng.standard_normal(x.shape)
    v = rng.standard_normal(x.shape)

    def f(x_, lam_):
        return float(np.sum(g * host_array(cupytv.prox_tv1d(xp.asarray(x_), xp.asarray(lam_)))))

    y = cupytv.prox_tv1d(xp.asarray(x), xp.asarray(lam))
    gx, gl = cupytv.prox_tv1d_vjp(None, xp.asarray(lam), xp.asarray(g), y=y)
    fd_x = (f(x + h * v, lam) - f(x - h * v, lam)) / (2 * h)
    np.testing.assert_allclose(float(np.sum(host_array(gx) * v)), fd_x, rtol=1e-6, atol=1e-8)
    for row in range(3):
        e = np.zeros_like(lam)
        e[row] = h
        fd_lam = (f(x, lam + e) - f(x, lam - e)) / (2 * h)
        np.testing.assert_allclose(host_array(gl)[row, 0], fd_lam, rtol=1e-6, atol=1e-8)


def test_vjp_at_lam_zero_is_the_identity_even_on_ties(xp):
    # lam == 0: the prox is the identity, so grad_x = g even where neighbours are equal (the
    # kernel alone would average g over a run of equal values: the lam > 0 derivative). Mixed
    # per-fiber lam and a NaN fiber: each fiber keeps its own rule, as the reference does.
    x = np.array([[3.25, 3.25, 1.0, 1.0], [3.25, 3.25, 1.0, 1.0], [np.nan, 1.0, 1.0, 2.0]])
    lam = np.array([[0.0], [0.5], [0.0]])
    g = np.array([[1.0, 2.0, 3.0, 4.0]] * 3)
    gx, gl = cupytv.prox_tv1d_vjp(
        None, xp.asarray(lam), xp.asarray(g), y=cupytv.prox_tv1d(xp.asarray(x), xp.asarray(lam))
    )
    gx, gl = host_array(gx), host_array(gl)
    for row in range(2):
        want_x, want_lam = reference.prox_tv1d_vjp(x[row], float(lam[row, 0]), g[row])
        np.testing.assert_array_equal(gx[row], want_x)
        np.testing.assert_allclose(gl[row, 0], want_lam, atol=1e-15)
    np.testing.assert_array_equal(gx[0], g[0])
    assert np.isnan(gx[2]).all()
    assert np.isnan(gl[2, 0])


def test_vjp_every_axis_and_scalar_lam(xp, rng):
    x = rng.standard_normal((3, 20, 4, 5))
    g = rng.standard_normal(x.shape)
    for axis in range(4):
        y = cupytv.prox_tv1d(xp.asarray(x), 0.4, axis=axis)
        gx, gl = cupytv.prox_tv1d_vjp(None, 0.4, xp.asarray(g), y=y, axis=axis)
        rgx, rgl = reference.prox_tv1d_vjp(x, 0.4, g, axis=axis)
        assert gl.shape == ()
        assert type(gl) is type(gx)  # a 0-d array, not a NumPy scalar
        np.testing.assert_allclose(host_array(gx), rgx, atol=1e-13)
        np.testing.assert_allclose(host_array(gl), rgl, atol=1e-12)


def test_vjp_nan_fiber_gives_nan_gradients(xp, rng):
    x = rng.standard_normal((4, 10))
    x[2, 3] = np.nan
    y = cupytv.prox_tv1d(xp.asarray(x), 0.3)
    gx, gl = cupytv.prox_tv1d_vjp(None, xp.full((4, 1), 0.3), xp.ones_like(y), y=y)
    gx, gl = host_array(gx), host_array(gl)
    assert np.all(np.isnan(gx[2]))
    assert np.isnan(gl[2, 0])
    assert np.all(np.isfinite(np.delete(gx, 2, axis=0)))
    assert np.all(np.isfinite(np.delete(gl, 2, axis=0)))


# ----------------------------------------------------------------------------------------------
# Input validation


def test_validation_messages(xp):
    x = xp.zeros((3, 4))
    with pytest.raises(ValueError, match=r"method: expected one of \['auto', 'condat'"):
        cupytv.prox_tv1d(x, 1.0, method="newton")
    with pytest.raises(TypeError, match="expected a real floating-point dtype"):
        cupytv.prox_tv1d(xp.zeros((3, 4), dtype=np.int32), 1.0)
    with pytest.raises(
        TypeError, match=r"expected a numpy\.ndarray or cupy\.ndarray, got builtins"
    ):
        cupytv.prox_tv1d([1.0, 2.0], 1.0)
    with pytest.raises(ValueError, match=r"lam: expected values >= 0, got -1\.0"):
        cupytv.prox_tv1d(x, -1.0)
    with pytest.raises(ValueError, match=r"lam: expected a scalar or an array broadcastable"):
        cupytv.prox_tv1d(x, np.ones(4))
    with pytest.raises(ValueError, match="axis: expected an axis in"):
        cupytv.prox_tv1d(x, 1.0, axis=2)
    with pytest.raises(ValueError, match="0-d"):
        cupytv.prox_tv1d(xp.zeros(()), 1.0)
    with pytest.raises(ValueError, match=r"out: expected x's shape and dtype \(3, 4\) float64"):
        cupytv.prox_tv1d(x, 1.0, out=xp.zeros((3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="out: expected a C-contiguous array"):
        cupytv.prox_tv1d(x, 1.0, out=xp.zeros((4, 3)).T)
    with pytest.raises(ValueError, match=r"g: expected y's shape and dtype \(3, 4\)"):
        cupytv.prox_tv1d_vjp(None, 1.0, xp.zeros((3, 5)), y=x)
    with pytest.raises(TypeError, match="g: expected the same kind of array as y"):
        cupytv.prox_tv1d_vjp(None, 1.0, [[0.0] * 4] * 3, y=x)


@pytest.mark.gpu
def test_mixing_numpy_and_cupy_is_refused():
    import cupy

    with pytest.raises(TypeError, match="out: expected the same kind of array as x"):
        cupytv.prox_tv1d(cupy.zeros((3, 4)), 1.0, out=np.zeros((3, 4)))
    with pytest.raises(TypeError, match="g: expected the same kind of array as y"):
        cupytv.prox_tv1d_vjp(None, 1.0, np.zeros((3, 4)), y=cupy.zeros((3, 4)))


# ----------------------------------------------------------------------------------------------
# The staged kernels (what CuPy runs for contiguous fibers) on the host executor


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["tv1d_condat", "tv1d_taut_string"])
def test_staged_and_unstaged_kernels_agree_bit_for_bit(rng, kernel, dtype):
    # prox_tv1d runs <kernel><T, false> on NumPy arrays and <kernel><T> (shared-memory tile for
    # contiguous fibers) on CuPy ones; both must give identical bits. Lengths cover every tile
    # row up to past the guard threshold (float tiles fit up to n = 95 at 128 threads, so guarded
    # fibers that fall back re-read global x from inside the staged path: the ramp rows).
    for n in (*range(1, 70), 94, 95, 96, 130):
        for fibers in (1, BLOCK + 1, 2 * BLOCK + 1):
            x = rng.standard_normal((fibers, n)).astype(dtype)
            x[::7] = np.arange(n) / max(n, 1)  # ramps; with lam = 50 they exceed the budget
            lam = np.where(np.arange(fibers) % 7 == 0, 50.0, rng.uniform(0, 1, fibers))[:, None]
            weight = tv1d.Weight.of(lam, x.shape, 1)
            results = []
            for staged in (True, False):
                y = np.full_like(x, np.nan)
                tv1d._launch_forward(kernel, x, y, weight, (fibers, n, 1), staged)
                results.append(y)
            np.testing.assert_array_equal(results[0], results[1], err_msg=f"{n=} {fibers=}")
            assert_kkt(x, results[0], lam.astype(dtype), tolerance(x, dtype))


# ----------------------------------------------------------------------------------------------
# Condat's fallback pass (tv1d_fallback): guarded fibers that exceed their budget are deferred to
# a list and re-solved by the taut string in slots of bounded workspace.


def _deferring_batch(rng, dtype, n=150, fibers=2 * BLOCK + 11):
    """Fibers of which every 3rd is a ramp that exceeds Condat's budget at lam = 100 (deferred:
    below the ~800 from which the whole ramp is one segment), the others noise, walks,
    constants and a NaN fiber (never deferred)."""
    x = rng.standard_normal((fibers, n))
    x[1::5] = np.cumsum(x[1::5], axis=1)
    x[2::11] = 4.0
    x[7, n // 2] = np.nan
    x[::3] = np.linspace(-3.0, 40.0, n)
    lam = np.where(np.arange(fibers) % 3 == 0, 100.0, rng.uniform(0.05, 2.0, fibers))[:, None]
    return x.astype(dtype), lam


@pytest.mark.parametrize("dtype", DTYPES)
def test_deferred_fibers_are_listed_and_solved_exactly(monkeypatch, rng, dtype):
    x, lam = _deferring_batch(rng, dtype)
    fibers = x.shape[0]
    lists = []
    real = tv1d._launch_fallback
    monkeypatch.setattr(tv1d, "_launch_fallback", lambda *a: (lists.append(a[-1].copy()), real(*a)))
    y = cupytv.prox_tv1d(x, lam)
    (listed,) = lists
    count = int(listed[0])
    assert count == len(range(0, fibers, 3))  # the ramps, and nothing else
    assert sorted(listed[1 : 1 + count]) == list(range(0, fibers, 3))
    want = reference.prox_tv1d(x.astype(np.float64), lam)
    np.testing.assert_allclose(y, want, rtol=0, atol=tolerance(np.nan_to_num(x), dtype))
    assert np.isnan(y[7]).all()
    assert not np.isnan(np.delete(y, 7, axis=0)).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("slots", [1, 5, BLOCK + 3])
def test_the_fallback_pass_gives_the_same_bits_with_any_number_of_slots(monkeypatch, rng, dtype,
                                                                         slots):  # fmt: skip
    # Fewer slots than deferred fibers: each slot solves several in turn (thread t takes entries
    # t, t + slots, ...). Staged and unstaged, contiguous and strided: the bits of one slot per
    # fiber, which are the taut string's on the deferred fibers.
    x, lam = _deferring_batch(rng, dtype)
    fibers, n = x.shape
    strided = np.ascontiguousarray(x.reshape(fibers // 3, 3, n).transpose(0, 2, 1))
    layouts = [(x, (fibers, n, 1), lam), (strided, (fibers // 3, n, 3), lam.reshape(-1, 1, 3))]
    results = {}
    for bound in (None, slots):
        if bound is not None:  # a budget of `bound` fibers' workspace
            per_fiber = tv1d._scratch_per_fiber("tv1d_taut_string", n, np.dtype(dtype))
            monkeypatch.setattr(tv1d, "FALLBACK_MIN_BYTES", bound * per_fiber * x.itemsize)
            monkeypatch.setattr(tv1d._chunks, "WORKSPACE_FRACTION", 0.0)
        for k, (xs, view, lam_s) in enumerate(layouts):
            weight = tv1d.Weight.of(lam_s, xs.shape, 1)
            for staged in (True, False):
                y = np.full_like(xs, np.nan)
                tv1d._launch_forward("tv1d_condat", xs, y, weight, view, staged)
                results.setdefault((k, staged), []).append(y)
    for key, (unbounded, bounded) in results.items():
        np.testing.assert_array_equal(bounded, unbounded, err_msg=str(key))
    taut = np.empty_like(x)
    tv1d._launch_forward("tv1d_taut_string", x, taut, tv1d.Weight.of(lam, x.shape, 1),
                         (fibers, n, 1), False)  # fmt: skip
    np.testing.assert_array_equal(results[(0, False)][1][::3], taut[::3])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_sample_anywhere_gives_an_all_nan_fiber_on_every_path(rng, dtype, bad):
    # The scan checks samples as it reads them (condat_checked): a fiber it completes, one it
    # defers to the fallback pass (ramps with lam 100) and a short one must all come out NaN,
    # wherever the sample is, staged or not, contiguous or strided; the others match the
    # reference.
    for n in (5, 40, 150):
        x, lam = _deferring_batch(rng, dtype, n=n)
        fibers = x.shape[0]
        hit = {0: 0, 3: n // 2, 6: n - 1, 1: 1, 4: n - 2, 9: n // 3}  # fiber -> sample
        for f, k in hit.items():
            x[f, k] = bad
        x[7] = rng.standard_normal(n)  # the batch's own NaN fiber is not this test's
        want = reference.prox_tv1d(np.where(np.isfinite(x), x, 0.0).astype(np.float64), lam)
        strided = np.ascontiguousarray(x.reshape(fibers // 3, 3, n).transpose(0, 2, 1))
        layouts = [(x, (fibers, n, 1), lam), (strided, (fibers // 3, n, 3), lam.reshape(-1, 1, 3))]
        for staged in (True, False):
            for xs, view, lam_s in layouts:
                y = np.empty_like(xs)
                tv1d._launch_forward("tv1d_condat", xs, y, tv1d.Weight.of(lam_s, xs.shape, 1),
                                     view, staged)  # fmt: skip
                if xs is strided:
                    y = y.transpose(0, 2, 1).reshape(fibers, n)
                bad_rows = sorted(hit)
                assert np.isnan(y[bad_rows]).all(), f"{n=} {staged=} {view=}"
                good = np.setdiff1d(np.arange(fibers), bad_rows)
                atol = tolerance(want, dtype)
                np.testing.assert_allclose(y[good], want[good], rtol=0, atol=atol, err_msg=f"{n=}")


def test_the_fallback_workspace_is_bounded_by_the_budget_not_the_fibers(monkeypatch, rng):
    # (4096, 1024) float32 reserved 32 bytes per sample for every fiber before issue 18 (8x the
    # input); the fallback pass holds at most max(FALLBACK_MIN_BYTES, 1/8 of the input).
    launches = []
    monkeypatch.setattr(tv1d._loader, "launch", lambda *a, **k: launches.append(a))
    x = np.zeros((4096, 1024), np.float32)
    fallback = np.zeros(1 + 4096, np.int64)
    fallback[0] = 4096  # as if every fiber were deferred
    tv1d._launch_fallback(x, np.empty_like(x), tv1d.Weight.of(0.5, x.shape, 1), (4096, 1024, 1),
                          fallback)  # fmt: skip
    ((_, name, _, _, args),) = launches
    scratch = args[-1]
    assert name == "tv1d_fallback<float>"
    assert scratch.nbytes <= max(tv1d.FALLBACK_MIN_BYTES, x.nbytes / 8) <= 2 * x.nbytes
    assert int(args[-2]) == scratch.size // tv1d._scratch_per_fiber("tv1d_taut_string", 1024,
                                                                     x.dtype)  # fmt: skip
    launches.clear()
    fallback[0] = 0  # nothing deferred: no launch on the host
    tv1d._launch_fallback(x, np.empty_like(x), tv1d.Weight.of(0.5, x.shape, 1), (4096, 1024, 1),
                          fallback)  # fmt: skip
    assert launches == []


@pytest.mark.parametrize("dtype", DTYPES)
def test_staged_and_unstaged_vjp_agree_bit_for_bit(rng, dtype):
    # prox_tv1d_vjp runs tv1d_vjp<T, false> (in place) on NumPy arrays and tv1d_vjp<T> (y reduced
    # to segment masks in a shared tile, g solved in the tile) on CuPy ones; both must give the
    # same bits, and the reference's gradients. Lengths cover every mask width up to the staging
    # limit and past it (in place then), fiber counts a partial, a full and one more block; some
    # fibers hold NaN or Inf, long runs, single-sample segments, signed zeros.
    for n in (*range(1, 67), 95, 96):
        for fibers in (1, BLOCK, BLOCK + 1):
            x = rng.standard_normal((fibers, n)).astype(dtype)
            x[::5] = np.round(x[::5])  # plateaus: longer segments and ties
            lam = np.where(np.arange(fibers) % 3 == 0, 5.0, rng.uniform(0.01, 1.0, fibers))
            y = cupytv.prox_tv1d(x, lam[:, None])
            y[1::11, n // 2] = np.nan
            y[2::13, 0] = np.inf
            if n > 1:
                y[3::17, :2] = np.array([0.0, -0.0], dtype)
            g = rng.standard_normal(x.shape).astype(dtype)
            results = []
            for staged in (True, False):
                gx, gf = np.full_like(y, 7.0), np.full(fibers, 7.0, dtype)
                tv1d._launch_vjp(y, g, gx, gf, (fibers, n, 1), 0.0, staged)
                results.append((gx, gf))
            for a, b in zip(*results, strict=True):
                np.testing.assert_array_equal(a, b, err_msg=f"{n=} {fibers=}")
            # Strided fibers (the GPU's uniform passes in place, the host's walk): the same bits.
            if fibers > 1 and n < 40:
                view = (1, n, fibers)
                yt, gt = np.ascontiguousarray(y.T), np.ascontiguousarray(g.T)
                strided = []
                for staged in (True, False):
                    gx, gf = np.full_like(yt, 7.0), np.full(fibers, 7.0, dtype)
                    tv1d._launch_vjp(yt, gt, gx, gf, view, 0.0, staged)
                    strided.append((gx, gf))
                for a, b, c in zip(*strided, results[0], strict=True):
                    np.testing.assert_array_equal(a, b, err_msg=f"strided {n=} {fibers=}")
                    np.testing.assert_array_equal(a, c.T if a.ndim == 2 else c)
            finite = np.isfinite(y).all(axis=1)
            assert np.isnan(results[0][0][~finite]).all()
            assert np.isnan(results[0][1][~finite]).all()
            want_x, want_l = reference.prox_tv1d_vjp(
                x[finite].astype(np.float64), lam[finite, None], g[finite].astype(np.float64)
            )
            tol = 8 * np.finfo(dtype).eps * max(n, 1) * float(np.abs(g).max())
            ok = np.ones(fibers, bool)
            ok[1::11] = ok[2::13] = False
            if n > 1:
                ok[3::17] = False  # y was edited: not the prox of x any more
            sel = ok[finite]
            np.testing.assert_allclose(results[0][0][ok], want_x[sel], rtol=0, atol=tol)
            np.testing.assert_allclose(results[0][1][ok], want_l[sel, 0], rtol=0, atol=n * tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_short_fiber_kernel_matches_the_host_scan_on_adversarial_data(rng, dtype):
    # tv1d_condat_short (the GPU's kernel for contiguous fibers of <= 64 samples: scan with masks,
    # then value and spread passes) must give condat_scan's bits. Data where its settle and its
    # restarts matter: plateaus and exact ties, spikes, constants, random walks, a large offset
    # at a tiny scale; lam from 0 to huge, per fiber; every length up to the limit.
    for n in (1, 2, 3, 4, 31, 32, 33, 63, 64):
        fibers = 2 * BLOCK + 3
        base = rng.standard_normal((fibers, n))
        kinds = [
            base,
            np.round(base * 2) / 2,  # plateaus, ties
            np.where(rng.random((fibers, n)) < 0.05, 50.0, 0.0),  # spikes on zero
            np.ones((fibers, n)) * 3.0,  # constants
            np.cumsum(base, axis=1),  # random walks
            1e4 + 1e-30 * base,  # a large offset at a tiny scale (float32: constants)
            np.tile(np.arange(n, dtype=float), (fibers, 1)),  # ramps
        ]
        for x in kinds:
            x = x.astype(dtype)
            lam = np.exp(rng.uniform(-8, 6, (fibers, 1)))
            lam[::9] = 0.0
            lam[1::9] = 1e30
            lam[2::9] = 1e-30
            weight = tv1d.Weight.of(lam, x.shape, 1)
            out = []
            for staged in (True, False):
                y = np.full_like(x, np.nan)
                tv1d._launch_forward("tv1d_condat", x, y, weight, (fibers, n, 1), staged)
                out.append(y)
            np.testing.assert_array_equal(out[0], out[1], err_msg=f"{n=}")
            np.testing.assert_array_equal(out[0][::9], x[::9])  # lam = 0: an exact copy


def test_vjp_fuse_atol_joins_noisy_segments(xp):
    # Outputs of iterative solvers carry rounding noise inside segments; fuse_atol joins them.
    y = np.repeat([0.5, -1.0, 2.0], 4) + 1e-13 * np.arange(12)
    g = np.arange(12.0)
    clean = np.repeat([0.5, -1.0, 2.0], 4)
    want = cupytv.prox_tv1d_vjp(None, 0.3, xp.asarray(g), y=xp.asarray(clean))
    got = cupytv.prox_tv1d_vjp(None, 0.3, xp.asarray(g), y=xp.asarray(y), fuse_atol=1e-9)
    split = cupytv.prox_tv1d_vjp(None, 0.3, xp.asarray(g), y=xp.asarray(y))
    np.testing.assert_array_equal(host_array(got[0]), host_array(want[0]))
    assert float(host_array(got[1])) == float(host_array(want[1]))
    assert not np.array_equal(host_array(split[0]), host_array(want[0]))
    with pytest.raises(ValueError, match="fuse_atol: expected a finite number >= 0"):
        cupytv.prox_tv1d_vjp(None, 0.3, xp.asarray(g), y=xp.asarray(y), fuse_atol=-1.0)
