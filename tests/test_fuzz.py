"""Property-based fuzzing of the kernels against the exact reference (cupytv.reference).

Hypothesis draws whole problems: the shape (1-4 dimensions, lengths 0-70 concentrated on 0-3 and
the tile and block boundaries 31-33, 63-65), the TV axis or axes (negative too), the dtype, the
memory layout (C, Fortran, every axis reversed, strided), the data family of every fiber or slice,
lam's shape (a scalar, or an array broadcastable with one weight per fiber or slice, or a pair in
2D) and values (exact zeros, tiny 1e-300..1e-7, moderate, huge 1e6), and the method. Data
families: cupytv.testing's adversarial signals and images (steps, ramps, spikes, constants,
alternating signs, staircases, wide dynamic range, N(0, 1)) and sums of two of them, each possibly
moved far from zero (1e3 + the family), scaled (1e-6 or 1e3 times it) or both (1e3 + 1e-6 times
it). Properties:

* ``prox_tv1d``, every method, equals ``reference.prox_tv1d`` within ``check.EXACT_TOL``
  relative to 1 + max|x| of each fiber;
* ``prox_tv1d_vjp`` equals ``reference.prox_tv1d_vjp`` (grad_x per fiber, grad_lam per weight)
  on every fiber away from a kink of the solution map, where no derivative exists
  (:func:`kink_fibers`);
* ``prox_tv2d``, both methods, is within the distance its certified gap allows of
  ``reference.prox_tv2d`` (||y - y*|| <= sqrt(2 gap F(y)), F 1-strongly convex), and in float64
  at tol 1e-12 within ``check.ITERATIVE_TOL``;
* ``info.gap`` is never negative and bounds the true relative objective gap (F(y) - F*) / F(y)
  after any number of iterations;
* ``prox_tv`` over three axes, one of length 1, is the 2D prox of the other two, with the same
  certificate guarantees;
* invariances, checked without the reference on larger inputs (up to 4 x 90 x 90 in 2D, across
  the fused and multi-launch paths): y(x + c) = y(x) + c, y(s x, s lam) = s y(x, lam),
  reversing or negating the fibers reverses or negates y, flipping a slice flips y.

The last section holds what these properties found, as minimal deterministic cases.

Budgets. By default (CI) each property runs a fixed number of examples, derandomized: the same
examples on every run (they change when a test's source does), no example database; the module
takes about 45 s on the 2-core CI machine when it passes (a failing property then shrinks its
example, up to a minute or two more). For a nightly run set the number of examples per
property::

    CUPYTV_FUZZ_EXAMPLES=5000 python -m pytest tests/test_fuzz.py

which draws fresh examples on every run (about 40 minutes at 5000 on 2 cores, most of it in the
2D invariances and the three-axis property); add ``--hypothesis-seed=S`` to repeat a run
exactly. A failure prints the falsifying example and a ``@reproduce_failure(...)`` line that
replays it when pasted above the test. ``CUPYTV_FUZZ_SHRINK=0`` skips shrinking, for runs that
only need the corpus executed: tests/test_sanitize.py runs this module that way under
ASan/UBSan, 30 examples per property.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, event, given, note, settings
from hypothesis import strategies as st

import cupytv
from cupytv import reference
from cupytv._validation import unbroadcast
from cupytv.check import EXACT_TOL, GRADIENT_TOL, ITERATIVE_TOL
from cupytv.testing import images_2d, signals_1d

# ---------------------------------------------------------------------------------------------
# Budgets

FUZZ_EXAMPLES_ENV = "CUPYTV_FUZZ_EXAMPLES"


def _examples_from_env() -> int | None:
    raw = os.environ.get(FUZZ_EXAMPLES_ENV, "")
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{FUZZ_EXAMPLES_ENV}: expected a positive integer, got {raw!r}")
    return int(raw)


NIGHTLY_EXAMPLES = _examples_from_env()
# "0" skips shrinking: for runs that only need the corpus executed (tests/test_sanitize.py).
SHRINK = os.environ.get("CUPYTV_FUZZ_SHRINK", "1") != "0"


def fuzz(ci_examples: int) -> settings:
    """One property's settings: ``ci_examples`` derandomized (CI), or the nightly count."""
    common = {
        "deadline": None,  # a first call compiles the host library (seconds)
        "database": None,  # reproducible from the printed blob, no files left behind
        "print_blob": True,
        "suppress_health_check": [HealthCheck.too_slow],
        # No explain phase: it re-runs a failing example many times (10 s for a 2D property).
        "phases": tuple(
            p for p in Phase if p is not Phase.explain and (SHRINK or p is not Phase.shrink)
        ),
    }
    if NIGHTLY_EXAMPLES is None:
        return settings(max_examples=ci_examples, derandomize=True, **common)
    return settings(max_examples=NIGHTLY_EXAMPLES, derandomize=False, **common)


# ---------------------------------------------------------------------------------------------
# Strategies

DTYPES = (np.float32, np.float64)
METHODS_1D = ("auto", "condat", "taut_string", "pn")
METHODS_2D = ("accelerated", "dykstra")
# Fiber lengths and sizes: the small cases and both sides of the 32-sample tile rows and of the
# 64-sample threshold of Condat's guard, then anything up to 70. Length 0 comes from
# `with_empty_axis` instead: drawn like the others, a zero among 1-4 dimensions would make a third
# of all problems empty.
EDGE_LENGTHS = (1, 2, 3, 31, 32, 33, 63, 64, 65)
lengths = st.one_of(st.sampled_from(EDGE_LENGTHS), st.integers(1, 70))
EMPTY_ONE_IN = 20
# 2D slices the reference solves in ~25 ms: up to 20 x 20, with the 16-sample words of the
# backward's record.
EDGE_SIDES = (1, 2, 3, 15, 16, 17, 20)
sides = st.one_of(st.sampled_from(EDGE_SIDES), st.integers(1, 20))
# The reference solves ~1 us per sample in 1D; its inputs stay below this many samples.
MAX_REFERENCE_SAMPLES = 3000
MAX_REFERENCE_SLICES = 3
# Invariance checks need no reference and run larger inputs.
MAX_KERNEL_SAMPLES = 40_000

FAMILIES_1D = tuple(sorted(signals_1d(1, np.random.default_rng(0))))
FAMILIES_2D = tuple(sorted(images_2d(1, 1, np.random.default_rng(0))))
MIXTURE = "mixture"  # the sum of two families
# (scale, offset) applied to a fiber or slice: as drawn, far from zero, tiny, large, and tiny
# variations far from zero (where rounding relative to max|x| is large against the signal).
TRANSFORMS = {
    "plain": (1.0, 0.0),
    "offset": (1.0, 1e3),
    "tiny": (1e-6, 0.0),
    "large": (1e3, 0.0),
    "tiny_offset": (1e-6, 1e3),
}
VARIANTS = 4  # independent draws of the random families per example
LAYOUTS = ("C", "F", "reversed", "strided")

TINY_LAMS = (1e-300, 1e-30, 1e-12, 1e-7)  # float32 rounds 1e-300 to 0
HUGE_LAM = 1e6
LAM_KINDS = ("zero", "tiny", "moderate", "huge")
scalar_lams = st.one_of(
    st.sampled_from((0.0, *TINY_LAMS, HUGE_LAM)),
    st.floats(1e-3, 10.0),
)
seeds = st.integers(0, 2**32 - 1)


def fit(shape: list[int], keep: tuple[int, ...], limit: int) -> tuple[int, ...]:
    """Halve the largest dimension not in ``keep`` until the product is at most ``limit``."""
    shape = list(shape)
    while math.prod(shape) > limit:
        free = [d for d in range(len(shape)) if d not in keep and shape[d] > 1]
        d = max(free, key=lambda k: shape[k])
        shape[d] //= 2
    return tuple(shape)


@st.composite
def with_empty_axis(draw, shape: list[int]) -> list[int]:
    """``shape``, or about one in EMPTY_ONE_IN times with one dimension set to 0."""
    # A middle value: Hypothesis favours the ends of a range (and shrinks to non-empty).
    if draw(st.integers(0, EMPTY_ONE_IN - 1)) == EMPTY_ONE_IN // 2:
        shape = list(shape)
        shape[draw(st.integers(0, len(shape) - 1))] = 0
    return shape


def with_layout(a: np.ndarray, layout: str) -> np.ndarray:
    """``a``'s values in the given memory layout (the kernels read every layout in place)."""
    if layout == "C":
        return np.ascontiguousarray(a)
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "reversed":  # negative strides along every axis
        return np.flip(np.ascontiguousarray(np.flip(a)))
    buf = np.zeros((*a.shape[:-1], 2 * a.shape[-1]), dtype=a.dtype)
    buf[..., ::2] = a
    return buf[..., ::2]


def draw_lam_values(kinds, shape, rng) -> np.ndarray:
    """An array of ``shape`` whose entries are of the given kinds, mixed at random."""
    choice = rng.integers(len(kinds), size=shape)
    pools = {
        "zero": np.zeros(shape),
        "tiny": np.asarray(TINY_LAMS)[rng.integers(len(TINY_LAMS), size=shape)],
        "moderate": 10.0 ** rng.uniform(-3.0, 1.0, shape),
        "huge": np.full(shape, HUGE_LAM),
    }
    out = np.zeros(shape)
    for k, kind in enumerate(kinds):
        out = np.where(choice == k, pools[kind], out)
    return out


@st.composite
def weights(draw, reduced: tuple[int, ...], rng):
    """A scalar lam, or an array broadcastable to ``reduced`` (the shape with TV axes at 1)."""
    if draw(st.booleans()):
        return draw(scalar_lams)
    drop = draw(st.integers(0, len(reduced)))  # leading dimensions left to broadcasting
    kept = reduced[drop:]
    ones = draw(st.lists(st.booleans(), min_size=len(kept), max_size=len(kept)))
    shape = tuple(1 if one else s for s, one in zip(kept, ones, strict=True))
    kinds = draw(st.lists(st.sampled_from(LAM_KINDS), min_size=1, max_size=4, unique=True))
    return draw_lam_values(kinds, shape, rng)


def family_sample(bank, families, base, rng):
    """One fiber or slice of a family drawn from ``families``: an entry of ``bank`` (a list of
    cupytv.testing outputs), or for MIXTURE the sum of two entries of families in ``base``."""
    family = families[rng.integers(len(families))]
    variant = bank[rng.integers(len(bank))]
    if family == MIXTURE:
        a, b = rng.choice(base, size=2)
        value = variant[a] + bank[rng.integers(len(bank))][b]
    else:
        value = variant[family]
    return value


@st.composite
def data_spec(draw, base):
    """Which families and transforms an example's fibers or slices are drawn from."""
    families = draw(
        st.lists(st.sampled_from((*base, MIXTURE)), min_size=1, max_size=3, unique=True)
    )
    transforms = draw(
        st.lists(st.sampled_from(sorted(TRANSFORMS)), min_size=1, max_size=2, unique=True)
    )
    return families, transforms


def make_fibers(n, count, spec, rng) -> np.ndarray:
    """(count, n) float64 fibers of the drawn families and transforms."""
    families, transforms = spec
    bank = [signals_1d(n, rng) for _ in range(VARIANTS)]
    out = np.empty((count, n))
    for f in range(count):
        scale, offset = TRANSFORMS[transforms[rng.integers(len(transforms))]]
        out[f] = offset + scale * family_sample(bank, families, FAMILIES_1D, rng)
    return out


def make_slices(h, w, count, spec, rng) -> np.ndarray:
    """(count, h, w) float64 slices of the drawn families and transforms."""
    families, transforms = spec
    bank = [images_2d(h, w, rng) for _ in range(VARIANTS)]
    out = np.empty((count, h, w))
    for s in range(count):
        scale, offset = TRANSFORMS[transforms[rng.integers(len(transforms))]]
        out[s] = offset + scale * family_sample(bank, families, FAMILIES_2D, rng)
    return out


class Problem1d:
    """A drawn 1D problem: x (in its dtype and layout), axis, lam, and the moved views."""

    def __init__(self, x, axis, lam):
        self.x, self.axis, self.lam = x, axis, lam
        self.dtype = x.dtype.type
        ax = axis % x.ndim
        self.reduced = tuple(1 if d == ax else s for d, s in enumerate(x.shape))

    def __repr__(self):
        lam = self.lam if np.ndim(self.lam) == 0 else f"array{np.shape(self.lam)}"
        return f"Problem1d(shape={self.x.shape}, {self.dtype.__name__}, axis={self.axis}, {lam=})"

    def kernel_inputs(self):
        """x and lam as the kernel computes with them (rounded to its dtype), in float64."""
        x_in = self.x.astype(np.float64)
        lam_in = np.asarray(self.lam, dtype=self.dtype).astype(np.float64)
        return x_in, lam_in

    def fibers(self, a) -> np.ndarray:
        """``a`` (x's shape) as (fibers, n)."""
        moved = np.moveaxis(np.asarray(a), self.axis, -1)
        return moved.reshape(math.prod(moved.shape[:-1]), moved.shape[-1])

    def per_fiber(self, lam) -> np.ndarray:
        """A weight broadcast to one value per fiber, in the order of :meth:`fibers`."""
        full = np.broadcast_to(np.asarray(lam, dtype=np.float64), self.reduced)
        return np.moveaxis(full, self.axis, -1).reshape(-1)

    def to_reduced(self, per_fiber: np.ndarray) -> np.ndarray:
        """A per-fiber array (the order of :meth:`fibers`) in the reduced shape."""
        ax = self.axis % self.x.ndim
        batch = tuple(s for d, s in enumerate(self.reduced) if d != ax)
        return np.expand_dims(per_fiber.reshape(batch), ax)


@st.composite
def problems_1d(draw, max_samples=MAX_REFERENCE_SAMPLES):
    ndim = draw(st.integers(1, 4))
    shape = draw(st.lists(lengths, min_size=ndim, max_size=ndim))
    axis = draw(st.integers(-ndim, ndim - 1))
    shape = fit(draw(with_empty_axis(shape)), (axis % ndim,), max_samples)
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(seeds))
    spec = draw(data_spec(FAMILIES_1D))
    n = shape[axis]
    others = tuple(s for d, s in enumerate(shape) if d != axis % ndim)
    fibers = make_fibers(n, math.prod(others), spec, rng)
    x = np.moveaxis(fibers.reshape(*others, n), -1, axis).astype(dtype)
    x = with_layout(x, draw(st.sampled_from(LAYOUTS)))
    reduced = tuple(1 if d == axis % ndim else s for d, s in enumerate(shape))
    lam = draw(weights(reduced, rng))
    note(f"families {spec}")
    return Problem1d(x, axis, lam)


def fiber_tolerance(x_fibers: np.ndarray, dtype) -> np.ndarray:
    """check.EXACT_TOL relative to 1 + max|x| of each fiber, shape (fibers, 1)."""
    return EXACT_TOL[dtype] * (1.0 + np.max(np.abs(x_fibers), axis=1, initial=0.0))[:, None]


def assert_fibers_close(got, want, tol, what):
    err = np.abs(got - want)
    bad = np.argwhere(~(err <= tol))  # NaN fails
    if bad.size:
        f, i = bad[0]
        raise AssertionError(
            f"{what}: {len(np.unique(bad[:, 0]))} fiber(s) off; first: fiber {f}, sample {i}: "
            f"got {got[f, i]!r}, expected {want[f, i]!r}, |error| {err[f, i]:.3e} > "
            f"{np.broadcast_to(tol, err.shape)[f, i]:.3e}"
        )


# ---------------------------------------------------------------------------------------------
# (a) 1D forward, every method, against the reference


@fuzz(ci_examples=500)
@given(problem=problems_1d(), method=st.sampled_from(METHODS_1D))
def test_prox_tv1d_matches_reference(problem, method):
    y = cupytv.prox_tv1d(problem.x, problem.lam, axis=problem.axis, method=method)
    assert y.shape == problem.x.shape
    assert y.dtype == problem.dtype
    x_in, lam_in = problem.kernel_inputs()
    want = reference.prox_tv1d(x_in, lam_in, axis=problem.axis)
    xf = problem.fibers(x_in)
    got = problem.fibers(y).astype(np.float64)
    assert_fibers_close(got, problem.fibers(want), fiber_tolerance(xf, problem.dtype), method)


# ---------------------------------------------------------------------------------------------
# (b) 1D VJP against the reference, away from kinks

# A fiber is at (or within rounding of) a kink of the piecewise-affine map (x, lam) -> y when a
# jump of y is about to close or a segment is about to split: the dual u = cumsum(y - x) touches
# +-lam inside a segment. Rounding moves both by ~n eps(dtype) max(|x|, lam); this many times
# that counts as "at a kink".
KINK_ULPS = 100


def kink_fibers(x, y, lam, lam_given, dtype) -> np.ndarray:
    """Fibers (rows of x, y: (fibers, n) float64, y the exact prox) where the derivative of the
    prox is not defined, or not the same in the kernel's precision. lam: the weight per fiber as
    the kernel sees it; lam_given: as given (float32 rounds 1e-300 to 0: the forward is then the
    identity while the VJP, which sees lam > 0, differentiates at lam = 0+)."""
    n = x.shape[1]
    margin = KINK_ULPS * np.finfo(dtype).eps * (np.max(np.abs(x), axis=1, initial=0.0) + lam)
    step = np.diff(y, axis=1)
    u = np.cumsum(y - x, axis=1)[:, :-1]
    touch = (step == 0) & (np.abs(u) >= (lam - max(n, 1) * margin)[:, None])
    closing = (step != 0) & (np.abs(step) <= margin[:, None])
    at_kink = (touch | closing).any(axis=1) & (lam > 0)
    return at_kink | ((lam == 0) & (lam_given != 0))


@fuzz(ci_examples=400)
@given(problem=problems_1d(), method=st.sampled_from(METHODS_1D), seed=seeds)
def test_prox_tv1d_vjp_matches_reference_away_from_kinks(problem, method, seed):
    dtype = problem.dtype
    g = np.random.default_rng(seed).standard_normal(problem.x.shape).astype(dtype)
    y = cupytv.prox_tv1d(problem.x, problem.lam, axis=problem.axis, method=method)
    gx, gl = cupytv.prox_tv1d_vjp(None, problem.lam, g, y=y, axis=problem.axis)
    assert gx.shape == g.shape
    assert gx.dtype == dtype
    assert isinstance(gl, np.ndarray)
    assert gl.shape == np.shape(problem.lam)
    assert gl.dtype == dtype

    x_in, lam_in = problem.kernel_inputs()
    lam_f = problem.per_fiber(lam_in)
    g_in = g.astype(np.float64)
    # One weight per fiber, so the reference's grad_lam is per fiber (summed below by weight).
    lam_full = np.broadcast_to(lam_in, problem.reduced)
    want_x, want_l = reference.prox_tv1d_vjp(x_in, lam_full, g_in, axis=problem.axis)
    xf, gf = problem.fibers(x_in), problem.fibers(g_in)
    yf = problem.fibers(reference.prox_tv1d(x_in, lam_full, axis=problem.axis))
    kink = kink_fibers(xf, yf, lam_f, problem.per_fiber(problem.lam), dtype)
    note(f"{kink.sum()} of {kink.size} fibers at a kink")
    event("fibers at a kink: " + ("none" if not kink.any() else "all" if kink.all() else "some"))

    smooth = ~kink
    tol_x = GRADIENT_TOL[dtype] * (1.0 + np.max(np.abs(gf), axis=1, initial=0.0))[:, None]
    assert_fibers_close(
        problem.fibers(gx).astype(np.float64)[smooth],
        problem.fibers(want_x)[smooth],
        tol_x[smooth],
        f"grad_x ({method})",
    )
    # grad_lam: per weight, the sum over the fibers sharing it; weights shared with a fiber at a
    # kink are left out. Rounding grows with the terms summed.
    lam_shape = np.shape(problem.lam)
    fiber_grad = np.asarray(want_l, np.float64)  # the reduced shape
    want_gl = unbroadcast(fiber_grad, lam_shape)
    size_gl = unbroadcast(np.abs(fiber_grad), lam_shape)
    kink_w = unbroadcast(problem.to_reduced(kink).astype(np.float64), lam_shape) > 0
    err = np.abs(np.asarray(gl, np.float64) - want_gl)
    tol_l = GRADIENT_TOL[dtype] * (1.0 + size_gl)
    bad = ~kink_w & ~(err <= tol_l)
    assert not bad.any(), (
        f"grad_lam off at {np.argwhere(bad)[:3].tolist()}: got {np.asarray(gl)[bad][:3]}, "
        f"expected {want_gl[bad][:3]} (tol {tol_l[bad][:3]})"
    )


# ---------------------------------------------------------------------------------------------
# 2D: the problems


class Problem2d:
    """A drawn 2D problem: x, the two axes, lam (one weight or a pair) and per-slice views."""

    def __init__(self, x, axes, lam):
        self.x, self.axes, self.lam = x, axes, lam
        self.dtype = x.dtype.type
        self.ax = tuple(a % x.ndim for a in axes)
        self.reduced = tuple(1 if d in self.ax else s for d, s in enumerate(x.shape))
        self.h, self.w = (x.shape[a] for a in self.ax)

    def __repr__(self):
        parts = self.lam if isinstance(self.lam, tuple) else (self.lam,)
        lam = tuple(p if np.ndim(p) == 0 else f"array{np.shape(p)}" for p in parts)
        return f"Problem2d(shape={self.x.shape}, {self.dtype.__name__}, axes={self.axes}, {lam=})"

    def slices(self, a) -> np.ndarray:
        """``a`` (x's shape) as (slices, h, w), axes[0] along the rows."""
        moved = np.moveaxis(np.asarray(a), self.ax, (-2, -1))
        return moved.reshape(math.prod(moved.shape[:-2]), self.h, self.w)

    def per_slice(self, lam) -> np.ndarray:
        """One weight, rounded as the kernel rounds it, as one value per slice (float64)."""
        lam = np.asarray(lam, dtype=self.dtype).astype(np.float64)
        full = np.broadcast_to(lam, self.reduced)
        return np.moveaxis(full, self.ax, (-2, -1)).reshape(-1)

    def lam_pair(self):
        """(lam0, lam1) per slice, as the kernel sees them."""
        parts = self.lam if isinstance(self.lam, tuple) else (self.lam, self.lam)
        return self.per_slice(parts[0]), self.per_slice(parts[1])

    def solved_slices(self, y, info):
        """(s, x_s, y_s, gap_s, lam0, lam1) per slice of a solve's output, in float64."""
        xs = self.slices(self.x.astype(np.float64))
        ys = self.slices(y).astype(np.float64)
        gaps = np.asarray(info.gap, np.float64).reshape(-1)
        for s, (lam0, lam1) in enumerate(zip(*self.lam_pair(), strict=True)):
            yield s, xs[s], ys[s], gaps[s], lam0, lam1


@st.composite
def problems_2d(draw, max_slices=MAX_REFERENCE_SLICES, sides=sides):
    ndim = draw(st.integers(2, 4))
    axes = tuple(
        draw(
            st.lists(
                st.integers(-ndim, ndim - 1), min_size=2, max_size=2, unique_by=lambda a: a % ndim
            )
        )
    )
    h, w, *batch = draw(
        with_empty_axis(
            [
                draw(sides),
                draw(sides),
                *draw(st.lists(st.integers(1, 3), min_size=ndim - 2, max_size=ndim - 2)),
            ]
        )
    )
    batch = fit(batch, (), max_slices)
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(seeds))
    spec = draw(data_spec(FAMILIES_2D))
    slices = make_slices(h, w, math.prod(batch), spec, rng).reshape(*batch, h, w)
    x = np.moveaxis(slices, (-2, -1), tuple(a % ndim for a in axes)).astype(dtype)
    x = with_layout(x, draw(st.sampled_from(LAYOUTS)))
    reduced = tuple(1 if d in {a % ndim for a in axes} else s for d, s in enumerate(x.shape))
    if draw(st.booleans()):
        lam = (draw(weights(reduced, rng)), draw(weights(reduced, rng)))
    else:
        lam = draw(weights(reduced, rng))
    note(f"families {spec}")
    return Problem2d(x, axes, lam)


def objective(y, x, lam0, lam1) -> float:
    """F(y) of one slice (float64): 0.5 ||y - x||^2 + lam0 TV_rows(y) + lam1 TV_cols(y)."""
    y, x = np.asarray(y, np.float64), np.asarray(x, np.float64)
    return float(
        0.5 * np.sum((y - x) ** 2)
        + lam0 * np.abs(np.diff(y, axis=0)).sum()
        + lam1 * np.abs(np.diff(y, axis=1)).sum()
    )


# The certificate's own slack: info.gap may fall short of the true relative gap by rounding.
GAP_SLACK = 1e-12


def assert_certificate_sign(gap) -> None:
    """A duality gap bounds F(y) - F* >= 0 from above: it is never negative (beyond rounding)."""
    assert gap >= -GAP_SLACK, f"info.gap = {gap:.3e} < 0: not an upper bound of F(y) - F* >= 0"


# The reference is exact up to the rounding of its sums: per sample, this times 1 + max|x|.
REFERENCE_ERR = 1e-12


def gap_bound(gap, f, x) -> float:
    """||y - y*||_2 allowed by a relative gap: F is 1-strongly convex, so ||y - y*||^2 / 2 <=
    F(y) - F* <= (gap + GAP_SLACK) F(y); plus the reference's rounding."""
    assert_certificate_sign(gap)
    return math.sqrt(2.0 * (gap + GAP_SLACK) * f) + REFERENCE_ERR * (1.0 + np.abs(x).max()) * (
        math.sqrt(x.size)
    )


# Stopping rules of the 2D and N-D forwards compared here: float64 to a 1e-12 gap (the
# reference's accuracy); float32 cannot certify much below 1e-6 (tv2d.prox_tv2d's docstring), so
# it asks for 1e-5 and the comparisons use the gap it reached.
TIGHT = {np.float64: {"tol": 1e-12, "max_iter": 5000}, np.float32: {"tol": 1e-5, "max_iter": 2000}}
# The certificates cannot always reach these tolerances: rounding gives them a floor (the duals
# are differences of iterates of size max|x|, so a tiny lam or a large offset of the data puts it
# above 1e-12; measured 6e-12 for 1e3 + a ramp on 2 x 2). Such a slice runs to max_iter and
# correctly reports converged=False while y is already exact to rounding, so the float64 checks
# are on the distance to the exact prox (check.ITERATIVE_TOL), not on `converged`.


def assert_iterative_accuracy(y, want, x, n_iter, gap) -> None:
    """A float64 slice within check.ITERATIVE_TOL (relative to 1 + max|x|) of the exact prox."""
    max_err = float(np.abs(y - want).max())
    tol = ITERATIVE_TOL[np.float64] * (1.0 + np.abs(x).max())
    assert max_err <= tol, (
        f"max|y - y*| = {max_err:.3e} > {tol:.3e} after {n_iter} iterations (gap {gap:.2e})"
    )


# ---------------------------------------------------------------------------------------------
# (c) 2D forward against the reference


@fuzz(ci_examples=200)
@given(problem=problems_2d(), method=st.sampled_from(METHODS_2D))
def test_prox_tv2d_matches_reference(problem, method):
    dtype = problem.dtype
    y, info = cupytv.prox_tv2d(
        problem.x, problem.lam, axes=problem.axes, method=method, return_info=True, **TIGHT[dtype]
    )
    assert y.shape == problem.x.shape
    assert y.dtype == dtype
    batch = tuple(s for d, s in enumerate(problem.x.shape) if d not in problem.ax)
    assert info.gap.shape == info.n_iter.shape == info.converged.shape == batch
    if y.size == 0:
        return
    for s, x_s, y_s, gap, lam0, lam1 in problem.solved_slices(y, info):
        want = reference.prox_tv2d(x_s, (lam0, lam1))
        f = objective(y_s, x_s, lam0, lam1)
        err = float(np.linalg.norm(y_s - want))
        bound = gap_bound(gap, f, x_s)
        assert err <= bound, f"slice {s}: ||y - y*|| = {err:.3e} > {bound:.3e} (gap {gap:.2e})"
        if dtype == np.float64:
            assert_iterative_accuracy(y_s, want, x_s, info.n_iter.flat[s], gap)


# ---------------------------------------------------------------------------------------------
# (d) The certificate bounds the true gap after any number of iterations


@fuzz(ci_examples=150)
@given(
    problem=problems_2d(),
    method=st.sampled_from(METHODS_2D),
    max_iter=st.one_of(st.sampled_from((0, 1, 2, 3)), st.integers(0, 60)),
)
def test_certified_gap_bounds_the_true_gap(problem, method, max_iter):
    y, info = cupytv.prox_tv2d(
        problem.x,
        problem.lam,
        axes=problem.axes,
        method=method,
        tol=0.0,
        max_iter=max_iter,
        return_info=True,
    )
    if y.size == 0:
        return
    for s, x_s, y_s, gap, lam0, lam1 in problem.solved_slices(y, info):
        f = objective(y_s, x_s, lam0, lam1)
        f_star = objective(reference.prox_tv2d(x_s, (lam0, lam1)), x_s, lam0, lam1)
        true_gap = (f - f_star) / f if f > 0 else 0.0  # F = 0: y = x with no TV, exact
        assert_certificate_sign(gap)
        assert gap >= true_gap - GAP_SLACK, (
            f"slice {s}: info.gap {gap:.3e} < true relative gap {true_gap:.3e} "
            f"(F {f:.6e}, F* {f_star:.6e}, n_iter {info.n_iter.flat[s]})"
        )


# ---------------------------------------------------------------------------------------------
# (e) Three axes, one of length 1: the 2D prox of the other two

# Parallel proximal Dykstra (tvnd.py) converges more slowly than the 2D solvers and runs one
# launch per 1D pass (~0.4 ms an iteration here): 1e-9 takes up to ~700 iterations on these
# slices (measured).
N_AXES_TIGHT = {
    np.float64: {"tol": 1e-9, "max_iter": 1500},
    np.float32: {"tol": 1e-5, "max_iter": 500},
}


@fuzz(ci_examples=40)
@given(
    problem=problems_2d(
        max_slices=2, sides=st.one_of(st.sampled_from((1, 2, 3)), st.integers(1, 12))
    ),
    lam_singleton=scalar_lams,
    where=st.integers(0, 2),
)
def test_three_axes_with_a_singleton_is_2d(problem, lam_singleton, where):
    # Insert a length-1 axis among the problem's: its TV term is empty, so prox_tv over the three
    # axes (in an order that puts the singleton at position `where`) is the 2D prox, and its
    # certificate bounds the true gap as prox_tv2d's does.
    x = np.expand_dims(problem.x, 0)
    tv_axes = [a % problem.x.ndim + 1 for a in problem.axes]
    tv_axes.insert(where, 0)
    lam = problem.lam if isinstance(problem.lam, tuple) else (problem.lam, problem.lam)
    lams = [np.expand_dims(p, 0) if np.ndim(p) == problem.x.ndim else p for p in lam]
    lams.insert(where, lam_singleton)
    dtype = problem.dtype
    y, info = cupytv.prox_tv(
        x, tuple(lams), axes=tuple(tv_axes), return_info=True, **N_AXES_TIGHT[dtype]
    )
    assert y.shape == x.shape
    assert y.dtype == dtype
    if y.size == 0:
        return
    xs = problem.slices(problem.x.astype(np.float64))
    ys = problem.slices(y[0]).astype(np.float64)
    gaps = np.asarray(info.gap, np.float64).reshape(-1)
    for s, (lam0, lam1) in enumerate(zip(*problem.lam_pair(), strict=True)):
        want = reference.prox_tv2d(xs[s], (lam0, lam1))
        f = objective(ys[s], xs[s], lam0, lam1)
        f_star = objective(want, xs[s], lam0, lam1)
        true_gap = (f - f_star) / f if f > 0 else 0.0
        assert gaps[s] >= true_gap - GAP_SLACK, (
            f"slice {s}: info.gap {gaps[s]:.3e} < true relative gap {true_gap:.3e} "
            f"(F {f:.9e}, F* {f_star:.9e}, n_iter {info.n_iter.flat[s]})"
        )
        err = float(np.linalg.norm(ys[s] - want))
        bound = gap_bound(gaps[s], f, xs[s])
        assert err <= bound, f"slice {s}: ||y - y*|| = {err:.3e} > {bound:.3e} (gap {gaps[s]:.2e})"
        if dtype == np.float64:
            assert_iterative_accuracy(ys[s], want, xs[s], info.n_iter.flat[s], gaps[s])


# ---------------------------------------------------------------------------------------------
# (f) Invariances, on inputs too large for the reference

shifts = st.one_of(st.sampled_from((-1e3, 1e3)), st.floats(-1e3, 1e3))
# Powers of two: s x and s lam are exact, so any difference is the solver's own.
power_of_two_scales = st.integers(-20, 20).map(lambda k: math.ldexp(1.0, k))


def relative_tolerance(x_fibers: np.ndarray, dtype, extra: float = 0.0) -> np.ndarray:
    """Twice check.EXACT_TOL relative to max|x| of each fiber (plus ``extra``), not 1 + max|x|:
    the exact solvers' rounding is relative to the data, at every scale. The smallest subnormal
    covers an input that rounding flushed to zero (x + c with |c| below dtype's range)."""
    scale = np.max(np.abs(x_fibers), axis=1, initial=0.0) + extra
    return 2 * EXACT_TOL[dtype] * scale[:, None] + np.finfo(dtype).smallest_subnormal


@fuzz(ci_examples=200)
@given(
    problem=problems_1d(max_samples=MAX_KERNEL_SAMPLES),
    method=st.sampled_from(METHODS_1D),
    shift=shifts,
    scale=power_of_two_scales,
)
def test_prox_tv1d_invariances(problem, method, shift, scale):
    x, lam, axis, dtype = problem.x, problem.lam, problem.axis, problem.dtype

    def prox(a, weight=lam):
        return problem.fibers(cupytv.prox_tv1d(a, weight, axis=axis, method=method))

    y = prox(x).astype(np.float64)
    xf = problem.fibers(x).astype(np.float64)
    tol = relative_tolerance(xf, dtype)
    # Shifting x by c shifts y by c (x + c is rounded to dtype: at most half an ulp of |x| + |c|,
    # and the prox is non-expansive in the max norm).
    shifted = prox((x + shift).astype(dtype)).astype(np.float64) - shift
    assert_fibers_close(shifted, y, relative_tolerance(xf, dtype, abs(shift)), f"shift {shift}")
    # Scaling x and lam by s scales y by s.
    lam_s = scale * np.asarray(lam, np.float64) if np.ndim(lam) else scale * lam
    scaled = prox(x * dtype(scale), lam_s).astype(np.float64) / scale
    assert_fibers_close(scaled, y, tol, f"scale {scale}")
    # Reversing every fiber reverses y; negating x negates y.
    flipped = prox(np.flip(x, axis=axis))[:, ::-1].astype(np.float64)
    assert_fibers_close(flipped, y, tol, "reversed fibers")
    assert_fibers_close(-prox(-x).astype(np.float64), y, tol, "negated x")


def bound_2d(y, x, lam0, lam1, gap) -> float:
    """||y - y*||_2 allowed by the certified gap of one slice (no reference needed)."""
    assert_certificate_sign(gap)
    return math.sqrt(2.0 * (gap + GAP_SLACK) * objective(y, x, lam0, lam1))


# Large slices (at most 4 x 90 x 90 samples): both sides of the fused (one launch) limit at 64
# and the multi-launch path (two launches an iteration). The bounds use the gaps reached, so the
# iteration cap only trades sharpness for time: moderate weights certify 1e-10 in 80-270
# iterations (measured), the others stop at the cap.
large_sides = st.one_of(st.sampled_from((1, 2, 31, 32, 33, 63, 64, 65, 66)), st.integers(1, 90))
INVARIANCE_2D = {
    np.float64: {"tol": 1e-10, "max_iter": 300},
    np.float32: {"tol": 1e-5, "max_iter": 300},
}


@fuzz(ci_examples=50)
@given(
    problem=problems_2d(max_slices=4, sides=large_sides),
    method=st.sampled_from(METHODS_2D),
    shift=shifts,
)
def test_prox_tv2d_invariances(problem, method, shift):
    # Shifting x, flipping a slice along axes[0], or negating x moves the exact prox the same
    # way; each solve is within its certified distance of it, so the two results are within the
    # sum of both distances (plus the rounding of x + c, half an ulp per pixel).
    x, lam, axes, dtype = problem.x, problem.lam, problem.axes, problem.dtype
    if x.size == 0:
        return

    def prox(a):
        y, info = cupytv.prox_tv2d(
            a, lam, axes=axes, method=method, return_info=True, **INVARIANCE_2D[dtype]
        )
        return problem.slices(y).astype(np.float64), np.asarray(info.gap, np.float64).reshape(-1)

    xs = problem.slices(x).astype(np.float64)
    y, gap = prox(x)
    x_shift = (x + shift).astype(dtype)
    variants = {
        "shift": (x_shift, lambda v: v - shift),
        "flip": (np.flip(x, axis=axes[0]), lambda v: v[:, ::-1, :]),
        "negate": (-x, lambda v: -v),
    }
    for name, (x_v, undo) in variants.items():
        y_v, gap_v = prox(x_v)
        xs_v = problem.slices(x_v).astype(np.float64)
        for s, (lam0, lam1) in enumerate(zip(*problem.lam_pair(), strict=True)):
            err = float(np.linalg.norm(undo(y_v)[s] - y[s]))
            rounding = (
                np.finfo(dtype).eps * (np.abs(xs[s]).max() + abs(shift)) * math.sqrt(xs[s].size)
            )
            bound = (
                bound_2d(y[s], xs[s], lam0, lam1, gap[s])
                + bound_2d(y_v[s], xs_v[s], lam0, lam1, gap_v[s])
                + (rounding if name == "shift" else 0.0)
                + REFERENCE_ERR * (1.0 + np.abs(xs[s]).max()) * math.sqrt(xs[s].size)
            )
            assert err <= bound, f"{name}, slice {s}: {err:.3e} > {bound:.3e}"


# ---------------------------------------------------------------------------------------------
# What the properties above found, as minimal deterministic cases (docs/RELIABILITY.md F1-F4,
# all fixed): regression tests that do not wait for a search to hit the input again.


def test_reference_2d_tiny_lam_is_the_identity():
    # F1. lam = 1e-300: the prox is x to rounding. The reference's interior-point method stopped
    # on a complementarity tolerance relative to lam, which underflowed ("did not converge").
    x = np.array([[1.0, -1.0]])
    np.testing.assert_allclose(reference.prox_tv2d(x, 1e-300), x, rtol=0, atol=1e-15)


def test_reference_2d_keeps_small_steps_far_from_zero():
    # F2. Two pixels 4e-7 apart at 1e3, lam = 1e-12: each moves by lam toward the other. The
    # reference's tolerances were relative to max|x|, so it merged them (2e-7 off); the 1D
    # reference solves the same problem exactly.
    x = np.array([[1e3, 1e3 + 4e-7]])
    want = reference.prox_tv1d(x, 1e-12)
    np.testing.assert_allclose(reference.prox_tv2d(x, (0.0, 1e-12)), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(reference.prox_tv2d(x, 1e-12), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("x", "lam"),
    [
        # float32, data near 1e3: certified 2.99e-5 while the true relative gap is 3.05e-5.
        (np.array([[[1001.0, 999.0, 1001.0]]], np.float32), (0.0, 1.0, 1.0)),
        # float64, lam = 1e-7 near 1e3: certified 0 after one iteration, y 7e-8 off, true gap 8e-9.
        (np.array([[[1e3, 1e3], [1e3, 1e3 + 10.0]]]), (0.0, 1e-7, 1e-7)),
    ],
)
def test_nd_certificate_bounds_the_true_gap_far_from_zero(x, lam):
    y, info = cupytv.prox_tv(x, lam, axes=(0, 1, 2), tol=1e-9, max_iter=500, return_info=True)
    xs, ys = x[0].astype(np.float64), y[0].astype(np.float64)
    f = objective(ys, xs, lam[1], lam[2])
    f_star = objective(reference.prox_tv2d(xs, lam[1:]), xs, lam[1], lam[2])
    assert float(info.gap) >= (f - f_star) / f - GAP_SLACK


@pytest.mark.parametrize(
    ("shape", "height", "lam"),
    [
        # F4, found by the shift invariance: -1000 plus one 1e-5 spike, lam 0.024: the float64
        # certificate came out -1.9e-9 and the solve stopped after 3 iterations as converged
        # (R = X - Z summed to 2e-9, not 0).
        ((63, 63), 1e-5, 0.024),
        # Then, found by the same property: a 1e4 spike at -1000, lam 1e-7: -7.5e-7 (Condat's
        # float64 segment sums round by a few ulps per sample, more than the slack allowed).
        ((31, 32), 1e4, 1e-7),
    ],
)
def test_2d_certificate_bounds_the_true_gap_far_from_zero(shape, height, lam):
    x = -1000.0 + height / 10 * images_2d(*shape, np.random.default_rng(0))["spike"]
    f_star = objective(reference.prox_tv2d(x, lam), x, lam, lam)
    for method in METHODS_2D:
        for max_iter in (1, 3, 10, 300):
            y, info = cupytv.prox_tv2d(x, lam, method=method, tol=1e-10, max_iter=max_iter,
                                       return_info=True)  # fmt: skip
            assert_certificate_sign(float(info.gap))
            f = objective(y, x, lam, lam)
            assert float(info.gap) >= (f - f_star) / f - GAP_SLACK, (method, max_iter)
