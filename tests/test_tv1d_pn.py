"""The projected-Newton kernel (cuda_src/tv1d_pn.cuh) on the host executor, against the reference.

The header is built on its own here (common.cuh + the header, instantiated by name) so that it is
tested independently of cuda_src/tv1d.cu and the public wrapper (tests/test_tv1d.py runs PN
through the wrapper; tests/test_nvrtc.py compiles it inside tv1d.cu). This file adds what only
the kernel shows: both scratch layouts, extreme magnitudes, the iteration cap, offsets, scaling.
Launches follow the header's contract: block 128, one thread per fiber, 16 bytes of scratch per
element.

Tolerances. The kernel's output on each segment is the closed form y_S = (sum_S x + lam (s_out -
s_in)) / |S| from a double sum, rounded to T once; the reference (float64, the float32 input cast
up) computes the same closed form with its own double sums. So, once the segment structure is
right, the only differences are those sums' rounding and, in float32, the final rounding:
- float64: |y - ref| <= n * eps64 * (max|x| + lam_eff) (the worst-case error of an n-term double
  sum; the errors we observe are about 1000x smaller),
- float32: |y - ref| <= eps32 * |ref| + n * eps64 * (max|x| + lam_eff) (one rounding to float32 is
  half an ulp at most, we allow twice that, plus the same double-sum term),
with lam_eff = min(lam, lam_max).
A wrong segment structure shows up as errors of the size of the signal's features, far above both.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest

from cupytv import _loader
from cupytv._host import HostModule
from cupytv.reference import prox_tv1d
from cupytv.testing import signals_1d, tv1d_lam_max

NAMES = ("tv1d_pn<float>", "tv1d_pn<double>")
CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
DTYPES = [np.float32, np.float64]
BLOCK = 128  # TV1D_PN_BLOCK in the header
SCRATCH_BYTES_PER_ELEMENT = 16  # the header's scratch contract: 16 / sizeof(T) elements of T
LENGTHS = [1, 2, 3, 4, 5, 17, 64, 100, 257]
# Defining this compiles the GPU's interleaved scratch layout into the host build.
INTERLEAVED = "-DTV1D_PN_INTERLEAVED_SCRATCH"


def kernel_source() -> str:
    """common.cuh and tv1d_pn.cuh, inlined as the loader would (instantiated by name)."""
    text = (_loader.source_dir() / "common.cuh").read_text()
    header = (_loader.source_dir() / "tv1d_pn.cuh").read_text()
    header = re.sub(r'^\s*#\s*include\s+"common.cuh"\s*$', "", header, flags=re.MULTILINE)
    text = re.sub(r"^\s*#\s*pragma\s+once\s*$", "", text + "\n" + header, flags=re.MULTILINE)
    return text


@functools.cache
def module(defines: tuple[str, ...] = ()) -> HostModule:
    return HostModule(kernel_source(), NAMES, defines=defines)


def run_pn(x, lam, defines: tuple[str, ...] = (), flags: list | None = None) -> np.ndarray:
    """tv1d_pn over x of shape (outer, n, inner); lam a scalar or an array of shape (outer, inner).

    Outputs start as a sentinel value and the scratch as NaN, so unwritten outputs and reads of
    scratch before writing cannot pass. ``flags``, when given, receives the kernel's per-fiber
    ``uncertified`` array (1: stopped without a certificate), shape (outer, inner).
    """
    x = np.ascontiguousarray(x)
    outer, n, inner = x.shape
    fibers = outer * inner
    # The kernel's weight (cupytv::FiberWeight): a scalar by value, else one entry per fiber.
    if np.ndim(lam) == 0:
        lam_args = (np.zeros(1, x.dtype), x.dtype.type(lam), np.int64(0), np.int64(1), np.int64(0))
    else:
        lam_arr = np.ascontiguousarray(np.broadcast_to(lam, (outer, inner)), dtype=x.dtype)
        lam_args = (lam_arr, x.dtype.type(0), np.int64(0), np.int64(1), np.int64(max(1, fibers)))
    y = np.full_like(x, 12345.0)
    per_element = SCRATCH_BYTES_PER_ELEMENT // x.itemsize
    scratch = np.full(max(1, per_element * n * fibers), np.nan, dtype=x.dtype)
    kernel = module(defines).get_function(f"tv1d_pn<{CTYPES[x.dtype]}>")
    args = (x, y, *lam_args, np.int64(outer))
    uncertified = np.zeros(max(1, fibers), dtype=np.int32)
    args += (np.int64(n), np.int64(inner), scratch, uncertified)
    kernel(((fibers + BLOCK - 1) // BLOCK,), (BLOCK,), args)
    if flags is not None:
        flags.append(uncertified[:fibers].reshape(outer, inner))
    return y


def tolerance(x: np.ndarray, lam: float, ref: np.ndarray, dtype) -> np.ndarray:
    """The bound of the module docstring, per element of one fiber."""
    x64 = x.astype(np.float64)
    lam_eff = min(float(lam), tv1d_lam_max(x64)) if x.size else 0.0
    sums = x.size * np.finfo(np.float64).eps * (np.max(np.abs(x64), initial=0.0) + lam_eff)
    if np.dtype(dtype) == np.float32:
        return np.finfo(np.float32).eps * np.abs(ref) + sums
    return np.full(ref.shape, sums)


def assert_matches_reference(x: np.ndarray, lam: float, y: np.ndarray, what: str) -> None:
    ref = prox_tv1d(x.astype(np.float64), float(lam))
    err = np.abs(y.astype(np.float64) - ref)
    bound = tolerance(x, lam, ref, x.dtype)
    worst = int(np.argmax(err - bound))
    assert np.all(err <= bound), (
        f"{what}: |y - ref| = {err[worst]:.3g} > {bound[worst]:.3g} at {worst} (n={x.size})"
    )


def assert_polished(x: np.ndarray, lam: float, y: np.ndarray, what: str) -> None:
    """Runs of equal y are the segments: each holds exactly the closed form of its run.

    The value is recomputed as the kernel does (a sequential double sum, then one rounding), so
    the comparison is bitwise; it also checks that every jump has the sign its value uses.
    """
    n = y.size
    breaks = np.flatnonzero(y[1:] != y[:-1]) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [n]))
    signs = np.sign(y[breaks].astype(np.float64) - y[breaks - 1].astype(np.float64))
    s_in = np.concatenate(([0.0], signs))
    s_out = np.concatenate((signs, [0.0]))
    for a, b, si, so in zip(starts, ends, s_in, s_out, strict=True):
        total = np.cumsum(x[a:b].astype(np.float64))[-1]
        if so != si:
            total += float(lam) * (so - si)
        expected = x.dtype.type(total / (b - a))
        assert y[a] == expected, f"{what}: segment [{a}, {b}) holds {y[a]!r}, not {expected!r}"


def lams_for(x: np.ndarray) -> list[float]:
    """0, tiny, moderate, near and beyond lam_max (where the prox is the mean), huge."""
    lam_max = tv1d_lam_max(x)
    scale = float(np.max(np.abs(x), initial=0.0)) or 1.0
    return [0.0, 1e-9 * scale, 0.1, 1.0, 0.5 * lam_max, 0.999 * lam_max, 1.5 * lam_max, 1e6]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", LENGTHS)
def test_matches_reference_on_adversarial_signals(rng, n, dtype):
    # Every (signal, lam) pair is one fiber of a single launch with a per-fiber lam (strides
    # (inner, 1)), laid out strided: outer = signals, inner = lams.
    signals = {name: s.astype(dtype) for name, s in signals_1d(n, rng).items()}
    names = list(signals)
    lam_grid = np.array([lams_for(signals[name]) for name in names], dtype=dtype)
    x = np.stack([np.repeat(signals[name][:, None], lam_grid.shape[1], 1) for name in names])
    y = run_pn(x, lam_grid)
    for o, name in enumerate(names):
        for i, lam in enumerate(lam_grid[o]):
            what = f"{name}, lam={lam:.4g}, {np.dtype(dtype).name}"
            assert_matches_reference(signals[name], lam, y[o, :, i], what)
            assert_polished(signals[name], lam, y[o, :, i], what)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lam_zero_is_the_identity_bit_for_bit(rng, dtype):
    x = rng.standard_normal((3, 50, 5)).astype(dtype)
    np.testing.assert_array_equal(run_pn(x, dtype(0.0)), x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_huge_lam_gives_the_mean(rng, dtype):
    x = rng.standard_normal((4, 300, 1)).astype(dtype)
    y = run_pn(x, dtype(1e30))
    mean = x.astype(np.float64).mean(axis=1, keepdims=True)
    assert np.all(y == y[:, :1, :]), "the prox beyond lam_max is constant"
    # One rounding to T, plus the double sums' worst case (n eps64 max|x|, as for the reference).
    atol = 300 * np.finfo(np.float64).eps * np.max(np.abs(x))
    np.testing.assert_allclose(
        y, np.broadcast_to(mean, y.shape), rtol=np.finfo(dtype).eps, atol=atol
    )


@pytest.mark.parametrize("inner", [1, 3, 128])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fiber_counts_across_block_boundaries(rng, dtype, inner):
    # Fiber counts around multiples of the block, in contiguous (inner = 1) and strided layouts.
    n = 9
    for fibers in (BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK - 1, 2 * BLOCK + 1):
        outer = -(-fibers // inner)
        x = rng.standard_normal((outer, n, inner)).astype(dtype)
        lam = (0.05 + rng.random((outer, inner))).astype(dtype)
        y = run_pn(x, lam)
        for o in range(outer):
            for i in range(inner):
                what = f"fibers={outer * inner}, fiber ({o}, {i})"
                assert_matches_reference(x[o, :, i], lam[o, i], y[o, :, i], what)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lengths_sweep(rng, dtype):
    # Every length from 1 to 70 and a few around powers of two, one launch each.
    for n in [*range(1, 71), 127, 128, 129, 511, 512, 513]:
        x = rng.standard_normal((2, n, 1)).astype(dtype)
        y = run_pn(x, dtype(0.3))
        for o in range(2):
            assert_matches_reference(x[o, :, 0], dtype(0.3), y[o, :, 0], f"n={n}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_scalar_and_per_fiber_lam_agree(rng, dtype):
    x = rng.standard_normal((3, 40, 4)).astype(dtype)
    scalar = run_pn(x, dtype(0.7))
    per_fiber = run_pn(x, np.full((3, 4), 0.7, dtype=dtype))
    np.testing.assert_array_equal(scalar, per_fiber)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layouts_agree_bit_for_bit(rng, dtype):
    # The same fibers solved contiguously, strided, and with the GPU's interleaved scratch layout.
    x = rng.standard_normal((6, 80, 1)).astype(dtype)
    lam = (0.1 + rng.random((6, 1))).astype(dtype)
    contiguous = run_pn(x, lam)
    strided = run_pn(x.transpose(2, 1, 0), lam.T)
    np.testing.assert_array_equal(strided.transpose(2, 1, 0), contiguous)
    np.testing.assert_array_equal(run_pn(x, lam, defines=(INTERLEAVED,)), contiguous)
    np.testing.assert_array_equal(run_pn(x.transpose(2, 1, 0), lam.T, (INTERLEAVED,)), strided)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nonfinite_fiber_is_all_nan_and_confined(rng, dtype):
    x = rng.standard_normal((2, 30, 6)).astype(dtype)
    lam = np.full((2, 6), 0.4, dtype=dtype)
    clean = run_pn(x, lam)
    bad = x.copy()
    bad[0, 3, 1] = np.nan
    bad[0, 0, 2] = np.inf
    bad[1, 29, 4] = -np.inf
    lam_bad = lam.copy()
    lam_bad[1, 0] = np.nan  # a NaN weight poisons its own fiber only
    y = run_pn(bad, lam_bad)
    poisoned = np.zeros((2, 6), dtype=bool)
    poisoned[0, 1] = poisoned[0, 2] = poisoned[1, 4] = poisoned[1, 0] = True
    for o in range(2):
        for i in range(6):
            if poisoned[o, i]:
                assert np.all(np.isnan(y[o, :, i])), f"fiber ({o}, {i}) should be all NaN"
            else:
                np.testing.assert_array_equal(y[o, :, i], clean[o, :, i])


def test_extreme_magnitudes_terminate():
    # Tiny and huge values and an infinite weight: every fiber finishes, the representable ones
    # exactly. (In float32, |x| near FLT_MAX with lam as large overflows the dual arithmetic; the
    # header documents it. Such fibers must still terminate, which this launch checks too.)
    tiny = np.array([1e-300, 2e-300, -1e-300] * 5)
    huge = np.array([1e300, -1e300, 1e300, 5e299, -1e300] * 3)
    x = np.stack([tiny, huge, huge])[:, :, None]
    lam = np.array([[1e-300], [1e299], [np.inf]])
    y = run_pn(x, lam)
    assert_matches_reference(tiny, 1e-300, y[0, :, 0], "tiny")
    assert_matches_reference(huge, 1e299, y[1, :, 0], "huge")
    np.testing.assert_allclose(y[2, :, 0], np.full(15, 1e299), rtol=1e-15)
    near_max = np.array([3e38, -3e38, 3e38, 1e38, -3e38] * 3, dtype=np.float32)
    run_pn(near_max[None, :, None], np.float32(3e38))


@pytest.mark.parametrize("dtype", DTYPES)
def test_ramp_beyond_the_iteration_cap(dtype):
    # PN frees one variable per flat end per iteration on a ramp, PN's slow case; the polish's
    # merges must recover the exact structure.
    n = 3000
    x = (10.0 * np.arange(n) / n).astype(dtype)
    lam = dtype(4.0)
    y = run_pn(x[None, :, None], lam)[0, :, 0]
    assert_matches_reference(x, lam, y, "ramp")
    assert_polished(x, lam, y, "ramp")


@pytest.mark.parametrize("dtype", DTYPES)
def test_uncertified_fibers_are_flagged_and_only_they(rng, dtype):
    # Two concatenated ramps with lam = 1e3 (docs/RELIABILITY.md): PN stops at its cap 4.4 off
    # the exact prox. The kernel flags it so that the wrapper re-solves it (tests/test_tv1d.py);
    # fibers it certifies (noise, a step, a constant, lam = 0) must stay unflagged.
    ramps = np.tile(np.arange(2000) * (10.0 / 2000), 2)
    fibers = [ramps, rng.standard_normal(ramps.size), np.repeat([0.0, 1.0], ramps.size // 2),
              np.full(ramps.size, 2.5)]  # fmt: skip
    x = np.stack(fibers).astype(dtype)[:, :, None]
    lam = np.array([[1e3], [0.5], [0.3], [1.0]], dtype=dtype)
    flags = []
    run_pn(x, lam, flags=flags)
    assert flags[0][:, 0].tolist() == [1, 0, 0, 0]
    flags = []
    run_pn(x, dtype(0.0), flags=flags)
    assert not flags[0].any(), "lam = 0 returns x: nothing to certify"


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_offset(rng, dtype):
    # 1e4 + N(0, 1): in float32 the offset leaves ~1e-3 of resolution, so a solver that works on
    # x itself rather than x - mean misplaces jumps by far more than the tolerance.
    fibers = 48
    x = (1e4 + rng.standard_normal((fibers, 60, 1))).astype(dtype)
    lam = np.linspace(0.2, 3.0, fibers, dtype=dtype)[:, None]
    y = run_pn(x, lam)
    for o in range(fibers):
        what = f"offset, lam={lam[o, 0]:.3g}"
        assert_matches_reference(x[o, :, 0], lam[o, 0], y[o, :, 0], what)
        assert_polished(x[o, :, 0], lam[o, 0], y[o, :, 0], what)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scale_invariance(rng, dtype):
    # prox(c x, c lam) = c prox(x, lam): powers of two keep it exact in floating point.
    x = rng.standard_normal((2, 64, 3)).astype(dtype)
    base = run_pn(x, dtype(0.5))
    for c in (2.0**-40, 2.0**40):
        np.testing.assert_array_equal(run_pn(x * dtype(c), dtype(0.5 * c)), base * dtype(c))
