"""Reliability of every operator: non-finite data, extreme magnitudes, bounded loops, scale,
determinism and resource hygiene (cupytv issue #9, items 2, 5, 6 and 7).

Every operator of the array API runs through one registry (:data:`OPS`), each entry a function of
``(x, lam, g)`` for a batch of units (fibers, slices or volumes) stacked on the first axis, with one
weight per unit, returning named outputs that all have the batch first. The properties:

- **Non-finite data.** NaN or ±Inf at the start, middle or end of one unit makes that unit's
  outputs and gradients all NaN (``info``: n_iter 0, gap NaN) and leaves every other unit
  bit-identical to the same call without it.
- **Extreme magnitudes.** The prox is positively homogeneous, prox(c x, c lam) = c prox(x, lam),
  and its gradients are invariant (d/dlam of c y(x, lam'/c) at lam' = c lam is dy/dlam). With c a
  power of two (2^±100 ≈ 1e±30) the scaling is exact in both dtypes, so the scaled run must be c
  times the unit run, unit by unit, also when the units of one batch mix 1e30 and 1e-30; and
  forwards at decimal scales (1e±30) must match the float64 reference relative to the scale.
  At the edges of the ranges (float32 values whose difference overflows, float64 values whose
  squares underflow) a result is either right or flagged (``info.converged`` False).
- **Bounded loops.** Adversarial inputs run in a subprocess under a watchdog (a spinning kernel
  cannot be interrupted from Python), and their outputs are then checked for optimality.
- **Scale.** Fibers beyond 2^31 elements through memory-mapped views (no 8.6 GB allocation) and
  one fiber of 10^7 samples, checked by the exact optimality conditions.
- **Determinism.** Bit-identical outputs, info and gradients on repeated calls and across fresh
  processes with different thread counts.
- **Resource hygiene.** Repeated calls neither grow the memory nor rebuild kernels; concurrent
  first compiles leave one valid library in the disk cache, which a later process loads without
  compiling.

Everything runs on the host executor (NumPy arrays), the one CI has.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import cupytv
from cupytv import _loader, reference
from cupytv._host.build import find_compiler
from cupytv.testing import images_2d, tv1d_lam_max

DTYPES = (np.float32, np.float64)
F64 = np.dtype(np.float64)
NON_FINITE = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf}
BAD_UNIT = 1  # the unit of the batch that receives the non-finite value
LAM = 0.4  # the unit-scale weight; each unit gets LAM times a factor of its own
# Exact scales: 2^100 ≈ 1.27e30 and 2^-100 ≈ 7.9e-31, products of float32/float64 values by them
# are exact (no overflow, no subnormals).
BIG, SMALL = 2.0**100, 2.0**-100
SCALE_PATTERNS = {"1e30": (BIG,), "1e-30": (SMALL,), "mixed": (BIG, SMALL, 1.0, SMALL, BIG)}
# The scaled runs agree with the unit runs to the last bit in nearly every case measured (float32
# 3-axis iterates at 2^-100 have subnormal differences); a few ulps leave room for that without
# letting a scale-dependent constant through (it moves results by far more than an ulp at 2^±100).
SCALE_ULPS = 4
# Watchdog for the subprocess runs: tens of times what each takes on a 2-core machine (0.5-6 s),
# and below what a quadratic or unbounded loop takes (Condat's unguarded scan on the 10^6 ramp
# below: ~6 minutes, extrapolated from the README's 14 s at 2·10^5).
WATCHDOG_S = 120


# --------------------------------------------------------------------------------------------
# The operators, as functions of (x, lam, g) on a batch stacked on axis 0.


@dataclass(frozen=True)
class Op:
    """One operator of the array API, run on ``batch`` units of shape ``unit``.

    ``run(x, lam, g)``: x and g of shape ``(batch, *unit)``, lam of shape ``(batch, 1, ...)`` (one
    weight per unit); returns named outputs, each with the batch on axis 0. Output names: ``y``
    (scales with the data), ``grad_x`` and ``grad_lam`` (scale-invariant), ``n_iter``, ``gap``.
    """

    name: str
    unit: tuple[int, ...]
    batch: int
    run: Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, np.ndarray]]


def _tv1d(method):
    def run(x, lam, g):
        return {"y": cupytv.prox_tv1d(x, lam, method=method)}

    return run


def _tv1d_strided(x, lam, g):
    # Fibers along axis 0 of an (n, batch) array: the kernels' strided path (inner > 1).
    return {"y": cupytv.prox_tv1d(x.T, lam.T, axis=0).T}


def _tv1d_vjp(x, lam, g):
    y = cupytv.prox_tv1d(x, lam)
    gx, gl = cupytv.prox_tv1d_vjp(None, lam, g, y=y)
    return {"y": y, "grad_x": gx, "grad_lam": gl}


def _tv1d_vjp_given_y(x, lam, g):
    # The backward on its own: its data input is y, here any array (every run of equal values a
    # segment), so a non-finite value reaches it directly rather than through the forward.
    gx, gl = cupytv.prox_tv1d_vjp(None, lam, g, y=x)
    return {"grad_x": gx, "grad_lam": gl}


def _tv2d(method, layout="batch_first"):
    def run(x, lam, g):
        if layout == "batch_last":  # the slices on axes (0, 1), the batch last
            y, info = cupytv.prox_tv2d(
                np.moveaxis(x, 0, -1), np.moveaxis(lam, 0, -1), axes=(0, 1), method=method,
                return_info=True,
            )  # fmt: skip
            y = np.moveaxis(y, -1, 0)
        else:
            y, info = cupytv.prox_tv2d(x, lam, method=method, return_info=True)
        return {"y": y, "n_iter": info.n_iter, "gap": info.gap}

    return run


def _tv2d_vjp(method):
    def run(x, lam, g):
        _, info = cupytv.prox_tv2d(x, lam, method=method, return_info=True)
        gx, gl = cupytv.prox_tv2d_vjp(x, lam, g, method=method, n_iter=info.n_iter)
        return {"grad_x": gx, "grad_lam": gl}

    return run


ND_AXES = (1, 2, 3)


def _tvnd(x, lam, g):
    y, info = cupytv.prox_tv(x, lam, axes=ND_AXES, return_info=True)
    return {"y": y, "n_iter": info.n_iter, "gap": info.gap}


def _tvnd_vjp(x, lam, g):
    _, info = cupytv.prox_tv(x, lam, axes=ND_AXES, return_info=True)
    gx, gl = cupytv.prox_tv_vjp(x, lam, g, axes=ND_AXES, n_iter=info.n_iter)
    return {"grad_x": gx, "grad_lam": gl}


FIBER = (100,)  # longer than the guard threshold (64): Condat's guarded path, with scratch
SLICE = (9, 10)  # the fused 2D kernel
BIG_SLICE = (66, 65)  # over 64 on both sides: the multi-launch 2D path
VOLUME = (4, 5, 6)
OPS = (
    Op("tv1d_condat", FIBER, 5, _tv1d("condat")),
    Op("tv1d_taut_string", FIBER, 5, _tv1d("taut_string")),
    Op("tv1d_pn", FIBER, 5, _tv1d("pn")),
    Op("tv1d_condat_strided", FIBER, 5, _tv1d_strided),
    Op("tv1d_vjp", FIBER, 5, _tv1d_vjp),
    Op("tv1d_vjp_given_y", FIBER, 5, _tv1d_vjp_given_y),
    Op("tv2d_dykstra", SLICE, 4, _tv2d("dykstra")),
    Op("tv2d_accelerated", SLICE, 4, _tv2d("accelerated")),
    Op("tv2d_accelerated_batch_last", SLICE, 4, _tv2d("accelerated", "batch_last")),
    Op("tv2d_accelerated_multi_launch", BIG_SLICE, 3, _tv2d("accelerated")),
    Op("tv2d_vjp_dykstra", SLICE, 4, _tv2d_vjp("dykstra")),
    Op("tv2d_vjp_accelerated", SLICE, 4, _tv2d_vjp("accelerated")),
    Op("tv2d_vjp_multi_launch", BIG_SLICE, 3, _tv2d_vjp("accelerated")),
    Op("tv3axes", VOLUME, 4, _tvnd),
    Op("tv3axes_vjp", VOLUME, 4, _tvnd_vjp),
)
op_param = pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
dtype_param = pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])


def make_batch(op: Op, dtype, rng: np.random.Generator):
    """x (steps plus noise, with exact ties), per-unit lam (float64) and g for ``op``."""
    shape = (op.batch, *op.unit)
    steps = np.round(rng.standard_normal(shape) * 2) / 2  # values on a grid: ties and flat runs
    x = (steps + 0.3 * rng.standard_normal(shape) * (rng.random(shape) < 0.5)).astype(dtype)
    lam = LAM * np.linspace(0.5, 1.5, op.batch).reshape((-1,) + (1,) * len(op.unit))
    g = rng.standard_normal(shape).astype(dtype)
    return x, lam, g


def unit_positions(unit: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    return {
        "start": (0,) * len(unit),
        "middle": tuple(s // 2 for s in unit),
        "end": tuple(s - 1 for s in unit),
    }


def same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


# --------------------------------------------------------------------------------------------
# 1. Non-finite data.


@pytest.mark.parametrize("value", NON_FINITE.values(), ids=NON_FINITE.keys())
@dtype_param
@op_param
def test_non_finite_value_poisons_only_its_own_unit(op, dtype, value, rng):
    """NaN / ±Inf at the start, middle or end of unit BAD_UNIT: all its outputs and gradients NaN
    (n_iter 0), every other unit bit-identical to the clean call (README: "A fiber or slice
    containing NaN or ±Inf comes back all NaN; the others are unaffected")."""
    x, lam, g = make_batch(op, dtype, rng)
    clean = op.run(x, lam, g)
    others = [b for b in range(op.batch) if b != BAD_UNIT]
    failures = []
    for where, index in unit_positions(op.unit).items():
        bad = x.copy()
        bad[(BAD_UNIT, *index)] = value
        out = op.run(bad, lam, g)
        assert out.keys() == clean.keys()
        for name, a in out.items():
            if not same_bits(a[others], clean[name][others]):
                failures.append(f"{where}: {name} of the other units changed")
            mine = np.asarray(a[BAD_UNIT])
            if name == "n_iter":
                if np.any(mine != 0):
                    failures.append(f"{where}: n_iter of the bad unit is {mine}, expected 0")
            elif not np.all(np.isnan(mine)):
                failures.append(
                    f"{where}: {name} of the bad unit has {np.count_nonzero(~np.isnan(mine))} "
                    f"of {mine.size} values that are not NaN"
                )
    assert not failures, f"{op.name} with {value} in unit {BAD_UNIT}: " + "; ".join(failures)


@pytest.mark.parametrize("value", NON_FINITE.values(), ids=NON_FINITE.keys())
@dtype_param
def test_torch_layers_confine_non_finite_values(dtype, value, rng):
    """TV1d, TV2d (per-channel learnable lam) and prox_tv over 3 axes (per-sample lam), forward
    and backward: the bad fiber/slice/volume is NaN in y and x.grad; the weight that touches it
    gets a NaN gradient; everything else is bit-identical to the run without it."""
    torch = pytest.importorskip("torch")
    from cupytv.torch import TV1d, TV2d, prox_tv

    tdtype = {np.float32: torch.float32, np.float64: torch.float64}[dtype]
    n_batch, channels = 3, 4
    bad_sample, bad_channel = 1, 2
    cases = {
        "TV1d": ((n_batch, channels, 50), TV1d(0.3, num_channels=channels)),
        "TV2d": ((n_batch, channels, 9, 8), TV2d(0.3, num_channels=channels)),
        "prox_tv": ((n_batch, channels, 4, 5, 3), None),
    }
    for name, (shape, layer) in cases.items():
        x0 = torch.from_numpy(rng.standard_normal(shape).astype(dtype))
        weights = torch.from_numpy(rng.standard_normal(shape).astype(dtype))
        if layer is not None:
            layer = layer.to(tdtype)

        def run(x_in, layer=layer, weights=weights, shape=shape):
            x = x_in.clone().requires_grad_(True)
            if layer is None:  # one learnable weight per sample, 3 TV axes
                lam = torch.full((shape[0], 1, 1, 1, 1), 0.2, dtype=tdtype, requires_grad=True)
                y = prox_tv(x, lam, axes=(2, 3, 4))
                params = lam
            else:
                layer.zero_grad()
                y = layer(x)
                params = layer.lam_raw
            (y * weights).sum().backward()
            return y.detach().numpy(), x.grad.numpy(), params.grad.detach().numpy().ravel()

        y0, gx0, gl0 = run(x0)
        position = tuple(s // 2 for s in shape[2:])
        bad_x = x0.clone()
        bad_x[(bad_sample, bad_channel, *position)] = value
        y1, gx1, gl1 = run(bad_x)
        unit = np.zeros(shape[:2], dtype=bool)
        unit[bad_sample, bad_channel] = True
        # The weight that sees the bad unit: its channel (layers) or its sample (prox_tv).
        touched = np.zeros(gl0.shape, dtype=bool)
        touched[bad_channel if layer is not None else bad_sample] = True
        assert np.all(np.isnan(y1[unit])), name
        assert np.all(np.isnan(gx1[unit])), name
        assert np.all(np.isnan(gl1[touched])), name
        assert same_bits(y1[~unit], y0[~unit]), name
        assert same_bits(gx1[~unit], gx0[~unit]), name
        assert same_bits(gl1[~touched], gl0[~touched]), name


# --------------------------------------------------------------------------------------------
# 2. Extreme finite magnitudes.


def unit_scales(pattern: tuple[float, ...], batch: int) -> np.ndarray:
    return np.resize(np.asarray(pattern), batch)


def assert_matches_scaled(actual, expected, scale, name, dtype):
    """``actual`` is ``scale`` times ``expected`` (per unit, batch first) to SCALE_ULPS ulps of
    each unit's largest value."""
    # The relative gap is formed in float64, but from iterates rounded to dtype (at 2^-100 in
    # float32 some of their differences are subnormal, so not exactly scaled): dtype's eps.
    eps = np.finfo(dtype).eps
    for b, (a, e) in enumerate(zip(actual, expected, strict=True)):
        a64, e64 = np.asarray(a, F64), np.asarray(e, F64) * scale[b]
        assert np.all(np.isfinite(a64)), f"{name} of unit {b} is not finite"
        bound = SCALE_ULPS * eps * float(np.max(np.abs(e64), initial=0.0))
        err = float(np.max(np.abs(a64 - e64), initial=0.0))
        assert err <= bound, f"{name} of unit {b} (scale {scale[b]:.3g}): error {err:.3g} > {bound}"


@pytest.mark.parametrize("pattern", SCALE_PATTERNS.values(), ids=SCALE_PATTERNS.keys())
@dtype_param
@op_param
def test_scaled_data_gives_scaled_results(op, dtype, pattern, rng):
    """prox(c x, c lam) = c prox(x, lam) and the gradients are unchanged, unit by unit, for
    c = 2^±100 (≈ 1e±30) on all units or alternating within one batch: outputs stay finite and no
    unit's scale leaks into another's result."""
    x, lam, g = make_batch(op, dtype, rng)
    scale = unit_scales(pattern, op.batch)
    per_unit = scale.reshape(lam.shape)
    unit_run = op.run(x, lam, g)
    scaled_run = op.run((x * per_unit).astype(dtype), lam * per_unit, g)
    for name, a in scaled_run.items():
        expected = unit_run[name]
        if name == "n_iter":
            np.testing.assert_array_equal(a, expected, err_msg="iterations depend on the scale")
        else:
            factor = scale if name == "y" else np.ones_like(scale)
            assert_matches_scaled(a, expected, factor, name, dtype)


def objective_2d(y: np.ndarray, x: np.ndarray, lam: float) -> float:
    """F(y) of one slice, in float64 (both axes weighted by lam)."""
    y, x = y.astype(F64), x.astype(F64)
    tv = np.abs(np.diff(y, axis=0)).sum() + np.abs(np.diff(y, axis=1)).sum()
    return 0.5 * float(np.sum((y - x) ** 2)) + lam * float(tv)


# float64 outputs of the exact 1D methods are within a few ulps of max|x| of the reference; float32
# ones add the final rounding to float32 (half an ulp). 16 ulps is far inside any real error.
REFERENCE_ULPS = 16
DECIMAL_SCALES = {"1e30": (1e30,), "1e-30": (1e-30,), "mixed": (1e30, 1e-30, 1.0, 1e-30, 1e30)}


@pytest.mark.parametrize("pattern", DECIMAL_SCALES.values(), ids=DECIMAL_SCALES.keys())
@dtype_param
def test_extreme_magnitudes_match_the_reference(dtype, pattern, rng):
    """1D methods and their VJP to REFERENCE_ULPS ulps of each fiber's scale; 2D slices within
    the radius their certificate guarantees (F is 1-strongly convex, so ‖y - y*‖² ≤ 2 (F(y) - F*)
    ≤ 2 gap F(y)), plus the rounding of y to the dtype."""
    eps = np.finfo(dtype).eps
    scale = unit_scales(pattern, 5)
    x = (rng.standard_normal((5, 60)) * scale[:, None]).astype(dtype)
    lam = LAM * scale[:, None]
    x64, lam_in = x.astype(F64), lam.astype(dtype).astype(F64)  # the data the kernels see
    exact = reference.prox_tv1d(x64, lam_in)
    bound = REFERENCE_ULPS * eps * np.abs(x64).max(axis=1, keepdims=True)
    for method in ("condat", "taut_string", "pn"):
        y = cupytv.prox_tv1d(x, lam, method=method)
        assert np.all(np.abs(y - exact) <= bound), method
    g = rng.standard_normal(x.shape).astype(dtype)
    gx, gl = cupytv.prox_tv1d_vjp(None, lam, g, y=cupytv.prox_tv1d(x, lam))
    rgx, rgl = reference.prox_tv1d_vjp(x64, lam_in, g.astype(F64))
    np.testing.assert_allclose(gx, rgx, rtol=0, atol=REFERENCE_ULPS * eps * np.abs(g).max())
    # grad_lam is a sum of +-segment means of g: bounded by sum|g| per fiber.
    np.testing.assert_allclose(
        gl, rgl, rtol=0, atol=REFERENCE_ULPS * eps * float(np.abs(g).sum(axis=1).max())
    )

    slices = (rng.standard_normal((5, 12, 11)) * scale[:, None, None]).astype(dtype)
    lam2 = LAM * scale[:, None, None]
    exact2 = reference.prox_tv2d(slices.astype(F64), lam2.astype(dtype).astype(F64))
    tol = 1e-6 if dtype == np.float64 else 1e-5  # float32 cannot certify much below 1e-6
    for method in ("dykstra", "accelerated"):
        y2, info = cupytv.prox_tv2d(
            slices, lam2, tol=tol, max_iter=5000, method=method, return_info=True
        )
        assert np.all(info.converged), method
        for s in range(5):
            f_y = objective_2d(y2[s], slices[s], float(lam2[s, 0, 0]))
            radius = np.sqrt(2 * info.gap[s] * f_y)
            rounding = REFERENCE_ULPS * eps * np.abs(slices[s]).max() * np.sqrt(y2[s].size)
            dist = np.linalg.norm((y2[s] - exact2[s]).astype(F64))
            assert dist <= radius + rounding, f"{method}, slice {s}: {dist:.3g} > {radius:.3g}"


F32_HUGE = 3e38  # x = [3e38, -3e38]: the difference, 6e38, overflows float32 (max 3.4e38)


def test_float32_values_whose_difference_overflows():
    """Documented outcome at the top of float32's range.

    1D (every method): exact, because every sum is taken in float64 and each segment's value is
    rounded to float32 once: y = x -+ lam until lam reaches lam_max = 3e38, then the mean, 0. The
    VJP: two segments (grad_x = g, grad_lam = g1 - g0), then one (the mean of g, 0).
    2D (a ±3e38 checkerboard, each pixel with one neighbour per axis: y = x -+ 2 lam, 0 from
    lam = 1.5e38): terminates with finite output; where the certificate cannot be formed (lam = 1:
    its rounding slack, eps * 3e38 * 3e38, dwarfs F) the slice runs max_iter iterations and says
    converged False, with y == x, which is the exact answer rounded to float32.
    """
    x = np.array([F32_HUGE, -F32_HUGE], dtype=np.float32)
    g = np.array([1.0, 2.0], dtype=np.float32)
    for lam in (1.0, 1e37, 1e38, 2.9e38, 3e38, float(np.finfo(np.float32).max)):
        lam32 = float(np.float32(lam))
        shrink = min(lam32, float(np.float32(F32_HUGE)))
        expected = (x.astype(F64) - np.array([shrink, -shrink])).astype(np.float32)
        for method in ("condat", "taut_string", "pn"):
            y = cupytv.prox_tv1d(x, lam, method=method)
            np.testing.assert_array_equal(y, expected, err_msg=f"lam={lam}, {method}")
        gx, gl = cupytv.prox_tv1d_vjp(None, lam, g, y=expected)
        one_segment = expected[0] == expected[1]
        np.testing.assert_array_equal(gx, [1.5, 1.5] if one_segment else g)
        assert gl == (0.0 if one_segment else 1.0)

    board = np.array([[F32_HUGE, -F32_HUGE], [-F32_HUGE, F32_HUGE]], dtype=np.float32)
    max_iter = 50
    for lam in (1.0, 1e37, 1e38, 3e38):
        exact = np.sign(board) * np.maximum(np.abs(board.astype(F64)) - 2 * lam, 0.0)
        for method in ("dykstra", "accelerated"):
            y, info = cupytv.prox_tv2d(board, lam, method=method, max_iter=max_iter,
                                       return_info=True)  # fmt: skip
            assert np.all(np.isfinite(y)), (lam, method)
            if info.converged:
                radius = np.sqrt(2 * info.gap * objective_2d(y, board, lam))
                assert np.linalg.norm(y - exact) <= radius + 4 * F32_HUGE * 2**-23, (lam, method)
            else:
                assert info.n_iter == max_iter, (lam, method)


TINY64, HUGE64 = 2.0**-1000, 2.0**1000  # ≈ 9.3e-302 and 1.1e301: squares under/overflow


# Below ~1e-162 the squares in the 2D / N-D certificate used to underflow (F = 0: y = x reported
# converged, true gap 0.2-0.98) and projected Newton came out 1.7x the scale off; above ~1e154
# they overflowed. Certificates and PN now scale by a power of two (docs/RELIABILITY.md).
@pytest.mark.parametrize("scale", [TINY64, HUGE64], ids=["1e-301", "1e301"])
def test_float64_near_its_range_is_solved_or_flagged(scale, rng):
    """float64 data so small (or large) that squares underflow (overflow).

    1D methods are exact operators: they must still match the reference. 2D and 3-axis solves
    must not claim a certificate they do not have: a slice reported converged must be within its
    relative gap tol / (1 - tol) of the optimum, measured at unit scale (the problem scaled back
    by 1/scale, exactly, where F is well conditioned) against a tightly converged solve there.
    """
    x = rng.standard_normal((4, 60)) * scale
    lam = LAM * scale
    exact = reference.prox_tv1d(x, lam)
    bound = REFERENCE_ULPS * np.finfo(F64).eps * np.abs(x).max()
    failures = []
    for method in ("condat", "taut_string", "pn"):
        y = cupytv.prox_tv1d(x, lam, method=method)
        err = float(np.abs(y - exact).max())
        if not err <= bound:
            failures.append(f"{method}: error {err / scale:.3g} of the scale")

    tol = 1e-3
    slices = rng.standard_normal((3, 10, 12))
    volumes = rng.standard_normal((3, 4, 5, 6))
    cases = {
        "tv2d_dykstra": (slices, lambda a, t, **k: cupytv.prox_tv2d(a, t, method="dykstra", **k)),
        "tv2d_accelerated": (slices, lambda a, t, **k: cupytv.prox_tv2d(a, t, **k)),
        "tv3axes": (volumes, lambda a, t, **k: cupytv.prox_tv(a, t, axes=ND_AXES, **k)),
    }
    for name, (unit_x, solve) in cases.items():
        y, info = solve(unit_x * scale, LAM * scale, tol=tol, return_info=True)
        assert np.all(np.isfinite(y)), name
        best = solve(unit_x, LAM, tol=1e-12, max_iter=20000)
        for b in np.flatnonzero(info.converged):
            f_y = objective_nd(y[b] / scale, unit_x[b], LAM)
            f_best = objective_nd(best[b], unit_x[b], LAM)
            rel = (f_y - f_best) / f_best
            if not rel <= tol / (1 - tol):
                failures.append(
                    f"{name}, unit {b}: reported converged (n_iter {info.n_iter[b]}, gap "
                    f"{info.gap[b]:.3g}) but its relative objective gap is {rel:.3g}"
                )
    assert not failures, "\n".join(failures)


def objective_nd(y: np.ndarray, x: np.ndarray, lam: float) -> float:
    """F(y) over every axis of the unit, in float64."""
    tv = sum(np.abs(np.diff(y, axis=a)).sum() for a in range(y.ndim))
    return 0.5 * float(np.sum((y - x) ** 2)) + lam * float(tv)


# --------------------------------------------------------------------------------------------
# Exact optimality of a 1D solution, O(n): used for the bounded-loop outputs and the 10^7 fiber.


def assert_tv1d_optimal(x: np.ndarray, y: np.ndarray, lam: float, what: str = "") -> None:
    """y = prox_{lam TV}(x) for one fiber, through the optimality (KKT) conditions.

    With u_k = sum_{j<=k} (x_j - y_j), y is optimal iff |u_k| <= lam everywhere, u_{n-1} = 0 and
    u_k = -lam sign(y_{k+1} - y_k) at every jump. Per constant segment S (s_in, s_out the signs
    of the jumps into and out of it, 0 at the fiber's ends) that is: y_S = (sum_S x + lam (s_out -
    s_in)) / |S| (which also puts u at ±lam with the right sign at every jump and u_{n-1} at 0),
    and inside S the running dual -lam s_in + sum_{a<=j<=k} (x_j - y_S) stays in [-lam, lam].
    Checking per segment keeps the rounding of y (one rounding per segment) from accumulating
    along the fiber. ``lam`` must be the weight as the kernel saw it (rounded to y's dtype).

    Tolerances: a segment value carries its rounding to y's dtype (eps_T |y_S|) and the error of
    a float64 sum of |S| terms divided by |S| (at most eps64 sum_S |x|, recursive summation); the
    dual inside S accumulates |S| times the value's error, plus the float64 running sum's error
    (eps64 n (lam + max|x - y|), its partial sums being duals bounded by lam).
    """
    n = x.size
    eps_t, eps64 = np.finfo(y.dtype).eps, np.finfo(F64).eps
    x64, y64 = x.astype(F64), y.astype(F64)
    assert np.all(np.isfinite(y64)), f"{what}: non-finite output"
    assert y64.min() >= x64.min(), f"{what}: y below min x"
    assert y64.max() <= x64.max(), f"{what}: y above max x"
    starts = np.concatenate([[0], np.flatnonzero(y64[1:] != y64[:-1]) + 1])
    lengths = np.diff(np.append(starts, n))
    values = y64[starts]
    jump = np.sign(np.diff(values))
    s_in, s_out = np.append(0.0, jump), np.append(jump, 0.0)
    sums = np.add.reduceat(x64, starts)
    abs_sums = np.add.reduceat(np.abs(x64), starts)
    closed = (sums + lam * (s_out - s_in)) / lengths
    # (+ a few subnormal steps: with subnormal data the relative bounds above round to 0)
    tiny = 4 * np.finfo(F64).smallest_subnormal
    value_tol = 4 * eps_t * np.abs(closed) + 2 * eps64 * (abs_sums + 2 * lam / lengths) + tiny
    bad = np.abs(values - closed) > value_tol
    assert not bad.any(), (
        f"{what}: {bad.sum()} of {values.size} segments off their closed-form value, e.g. "
        f"y_S = {values[bad][0]!r} vs {closed[bad][0]!r} on a segment of {lengths[bad][0]}"
    )
    u = x64 - y64
    del x64
    step = float(np.abs(u).max())
    np.cumsum(u, out=u)
    before = np.append(0.0, u[starts[1:] - 1])  # the running sum just before each segment
    u -= np.repeat(before + lam * s_in, lengths)  # now -lam s_in + the sum within the segment
    slack = np.repeat(lengths * value_tol, lengths) + 2 * eps64 * n * (lam + step)
    over = np.abs(u) - lam - slack
    assert over.max() <= 0, f"{what}: dual exceeds lam by {over.max():.3g} at {over.argmax()}"


def tv1d_vjp_by_segments(y: np.ndarray, g: np.ndarray):
    """The 1D VJP from its closed form, O(n) in NumPy: g averaged over the runs of y, and
    grad_lam = sum over runs of (s_out - s_in) times that average."""
    starts = np.concatenate([[0], np.flatnonzero(y[1:] != y[:-1]) + 1])
    lengths = np.diff(np.append(starts, y.size))
    sums = np.add.reduceat(g.astype(F64), starts)
    abs_sums = np.add.reduceat(np.abs(g.astype(F64)), starts)
    means = sums / lengths
    jump = np.sign(np.diff(y[starts].astype(F64)))
    turn = np.append(jump, 0.0) - np.append(0.0, jump)
    return np.repeat(means, lengths), float(turn @ means), means, abs_sums / lengths


# --------------------------------------------------------------------------------------------
# 3. Bounded loops: adversarial inputs under a watchdog.


def run_python(code: str, *args: str, timeout: float = WATCHDOG_S, env=None) -> str:
    """Run ``code`` in a fresh interpreter; fail (not hang) if it takes over ``timeout`` s."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code), *args],
            capture_output=True, text=True, timeout=timeout, env=env,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"did not finish within {timeout} s: a loop that should be bounded is not")
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stderr[-4000:]}"
    return done.stdout


RAMP_N = 10**6  # Condat's worst case, as in the README (x = 10 i / N, lam 1000)
PN_RAMP_N = 10**5  # projected Newton's slow case, a long ramp, at a size it solves in ~0.1 s
DIRECT = ("condat", "taut_string")
ALL_METHODS = ("condat", "taut_string", "pn")


def adversarial_fibers() -> dict[str, tuple[np.ndarray, float, tuple[str, ...]]]:
    """(x, lam, methods): inputs aimed at each 1D solver's slow or degenerate cases."""
    ramp = np.arange(RAMP_N) * (10.0 / RAMP_N)
    short = np.arange(PN_RAMP_N) * (10.0 / PN_RAMP_N)
    ties = np.repeat(np.random.default_rng(0).integers(0, 3, 2000).astype(F64), 50)
    alternating = np.where(np.arange(10**5) % 2 == 0, 1.0, -1.0)
    return {
        "ramp, lam 1e3": (ramp, 1e3, DIRECT),
        "ramp, huge lam": (ramp, 1e12, DIRECT),
        "ramp, lam = lam_max (a tie)": (ramp, tv1d_lam_max(ramp), DIRECT),
        "ramp, lam = lam_max / 2": (ramp, tv1d_lam_max(ramp) / 2, DIRECT),
        "short ramp, lam 1e3": (short, 1e3, ALL_METHODS),
        "short ramp, huge lam": (short, 1e12, ALL_METHODS),
        "short ramp, lam = lam_max (a tie)": (short, tv1d_lam_max(short), ALL_METHODS),
        "two short ramps, lam 1e3": (np.tile(short, 2), 1e3, ALL_METHODS),
        "ties, huge lam": (ties, 1e15, ALL_METHODS),
        "ties, lam = lam_max": (ties, tv1d_lam_max(ties), ALL_METHODS),
        "ties, lam 1": (ties, 1.0, ALL_METHODS),
        "alternating, lam 1 (every dual on its bound)": (alternating, 1.0, ALL_METHODS),
        "alternating, lam 0.5": (alternating, 0.5, ALL_METHODS),
        "two samples at the threshold": (np.array([0.0, 1.0]), 0.5, ALL_METHODS),
        "subnormal data": (np.arange(1000) % 7 * 5e-324, 1e-323, ALL_METHODS),
        "huge data, tiny lam": (ramp[:1000] * 1e300, 1e-300, ALL_METHODS),
    }


BOUNDED_1D = """
    import sys
    import numpy as np
    import cupytv
    cases = np.load(sys.argv[1])
    out = {}
    for key in cases.files:
        if key.startswith("x"):
            i = key[1:]
            for method in str(cases["methods" + i]).split():
                for dtype in (np.float64, np.float32):
                    x = cases[key].astype(dtype)
                    y = cupytv.prox_tv1d(x, float(cases["lam" + i]), method=method)
                    out[f"{method}-{np.dtype(dtype).name}-{i}"] = y
    np.savez(sys.argv[2], **out)
"""


def test_1d_solvers_terminate_and_are_exact_on_worst_cases(tmp_path):
    """Condat on the 10^6 ramp with a large lam (quadratic without its guard: minutes) and the
    taut string; projected Newton on long ramps (its slow case, capped at 100 iterations); all
    three on huge lam, lam exactly at lam_max (a tie between "one segment" and "two"), ties and
    alternating signs (dual variables exactly on their bounds), subnormal and huge data: every
    solve finishes under the watchdog, in both dtypes, with the exact solution (KKT, per
    segment: see assert_tv1d_optimal)."""
    cases = adversarial_fibers()
    arrays = {}
    for i, (x, lam, methods) in enumerate(cases.values()):
        arrays[f"x{i}"], arrays[f"lam{i}"] = x, np.float64(lam)
        arrays[f"methods{i}"] = np.array(" ".join(methods))
    np.savez(tmp_path / "cases.npz", **arrays)
    run_python(BOUNDED_1D, str(tmp_path / "cases.npz"), str(tmp_path / "out.npz"))
    out = np.load(tmp_path / "out.npz")
    assert len(out.files) == 2 * sum(len(methods) for _, _, methods in cases.values())
    failures = []
    for key in out.files:
        method, dtype, i = key.split("-")
        label = list(cases)[int(i)]
        x, lam, _ = cases[label]
        with np.errstate(over="ignore"):  # 1e300 data overflows float32: skipped just below
            x_in = x.astype(dtype)
        if dtype == "float32" and not (np.all(np.isfinite(x_in)) and np.any(x_in != 0)):
            continue  # float32 cannot hold the case (1e300 or subnormal float64 data)
        lam_in = float(np.asarray(lam, dtype=dtype))
        try:
            assert_tv1d_optimal(x_in, out[key], lam_in, f"{label}, {method}, {dtype}")
        except AssertionError as error:
            failures.append(str(error).splitlines()[0])
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_a_zero_mean_tie_is_one_segment(method):
    """lam = lam_max of a ramp centred on 0: the prox is the constant mean, one segment, and
    grad_lam (the derivative from above at the tie) is 0. Around 0 a value's own ulps are far
    below the rounding of the sums behind it, which is what a tie test must allow for: the taut
    string's merge tolerance took the magnitude of its hull vertices S -+ lam, which cancel
    there, and left two segments 1.4e-15 apart (grad_lam -0.042 for this g; docs/RELIABILITY.md)."""
    n = 1000
    x = np.arange(n) * (10.0 / n) - 5.0 + 5.0 / n
    lam = tv1d_lam_max(x)
    y = cupytv.prox_tv1d(x, lam, method=method)
    assert np.unique(y).size == 1, f"{np.unique(y).size} segments: {np.unique(y)[:3]}"
    g = np.random.default_rng(0).standard_normal(n)
    _, grad_lam = cupytv.prox_tv1d_vjp(None, lam, g, y=y)
    assert float(grad_lam) == 0.0


BOUNDED_2D = """
    import sys
    import numpy as np
    import cupytv
    data = np.load(sys.argv[1])
    out = {}
    for path in ("fused", "multi"):
        x, lam, max_iter = data["x_" + path], data["lam_" + path], int(data["iter_" + path])
        for method in ("dykstra", "accelerated"):
            y, info = cupytv.prox_tv2d(x, lam, tol=0, max_iter=max_iter, method=method,
                                       return_info=True)
            gx, gl = cupytv.prox_tv2d_vjp(np.ones_like(x), x, lam, method=method,
                                          n_iter=info.n_iter)
            out.update({f"{path}-{method}-y": y, f"{path}-{method}-n_iter": info.n_iter,
                        f"{path}-{method}-gap": info.gap, f"{path}-{method}-gx": gx})
    v, lam_v = data["x_nd"], data["lam_nd"]
    y, info = cupytv.prox_tv(v, lam_v, axes=(1, 2, 3), tol=0, max_iter=int(data["iter_nd"]),
                             return_info=True)
    gx, gl = cupytv.prox_tv_vjp(np.ones_like(v), v, lam_v, axes=(1, 2, 3), n_iter=info.n_iter)
    out.update({"nd-y": y, "nd-n_iter": info.n_iter, "nd-gap": info.gap, "nd-gx": gx})
    np.savez(sys.argv[2], **out)
"""
# Iterations per path: "large" for the fused 2D kernel (one launch for all of them); fewer where
# each iteration is launches or array code. About 3 s in all on 2 cores.
MAX_ITER = {"fused": 1000, "multi": 40, "nd": 300}


def nasty_slices(h: int, w: int, rng: np.random.Generator, subnormal: bool):
    """The adversarial images (less the constant one) plus extreme ones, and per-slice weights.
    Subnormal data is optional: x86 runs subnormal arithmetic ~100x slower, a cost, not a hang."""
    images = {k: v for k, v in images_2d(h, w, rng).items() if k != "constant"}
    lam = dict.fromkeys(images, 0.5)
    images["checkerboard, huge lam"], lam["checkerboard, huge lam"] = images["checkerboard"], 1e300
    images["random, tiny lam"], lam["random, tiny lam"] = images["random"], 1e-300
    rows = np.where(np.arange(h)[:, None] % 2 == 0, 1e30, 1e-30)
    images["rows alternating 1e30 / 1e-30"] = images["random"] * rows
    lam["rows alternating 1e30 / 1e-30"] = 1.0
    if subnormal:
        images["subnormal"], lam["subnormal"] = images["square"] * 1e-310, 1e-310
    return np.stack(list(images.values())), np.array(list(lam.values())).reshape(-1, 1, 1)


def test_iterative_solvers_run_max_iter_and_terminate(tmp_path, rng):
    """tol=0 on nasty inputs (checkerboards, ramps, spikes, huge and tiny lam, rows alternating
    1e30 and 1e-30, subnormal data): every 2D slice runs exactly max_iter iterations (README:
    "tol=0 runs exactly max_iter"), so the time is max_iter times an iteration's, and the
    replayed backward finishes too; 3-axis volumes run max_iter iterations unless their gap is
    exactly 0 (certified optimal). Outputs and grad_x stay finite. Fused and multi-launch 2D
    paths, both methods, and 3 axes, under the watchdog."""
    x_fused, lam_fused = nasty_slices(24, 24, rng, subnormal=True)
    x_multi, lam_multi = nasty_slices(66, 65, rng, subnormal=False)
    checkerboard = np.indices((5, 6, 7)).sum(axis=0) % 2 * 1e30
    x_nd = np.stack([rng.standard_normal((5, 6, 7)), checkerboard])
    lam_nd = np.array([0.3, 1e300]).reshape(-1, 1, 1, 1)
    np.savez(
        tmp_path / "in.npz", x_fused=x_fused, lam_fused=lam_fused, x_multi=x_multi,
        lam_multi=lam_multi, x_nd=x_nd, lam_nd=lam_nd,
        **{f"iter_{path}": count for path, count in MAX_ITER.items()},
    )  # fmt: skip
    run_python(BOUNDED_2D, str(tmp_path / "in.npz"), str(tmp_path / "out.npz"))
    out = np.load(tmp_path / "out.npz")
    for key in out.files:
        path, _, name = key.rpartition("-")
        path = path.split("-")[0]
        if name == "n_iter":
            n_iter, gap = out[key], out[key.replace("n_iter", "gap")]
            if path == "nd":
                stopped = n_iter != MAX_ITER[path]
                assert np.all(gap[stopped] == 0), f"{key}: {n_iter} iterations, gap {gap}"
            else:
                np.testing.assert_array_equal(n_iter, MAX_ITER[path], err_msg=key)
        elif name in ("y", "gx"):
            assert np.all(np.isfinite(out[key])), key


# --------------------------------------------------------------------------------------------
# 4. Scale.

# A periodic array of over 2^31 float32 elements costs no memory: its address range is covered
# by repeated shared mappings of one small memfd "tile". The period is a multiple of the page
# size and of the fiber length, and not a divisor of 2^32 (a factor 3), so an index that wrapped
# around 32 bits would land at another phase of the tile and read or write the wrong values.
HUGE_FIBER = 64  # <= the guard threshold: Condat needs no scratch (none could be allocated)
HUGE_PERIOD = 3 * 2**18  # elements per tile: 3 MiB of float32, 2731 mappings per array
HUGE_CHILD = """
    import ctypes, json, mmap, os, sys
    import numpy as np
    import cupytv
    from cupytv import _loader

    FIBER, PERIOD, WITH_VJP = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
    ITEM = 4
    # Private memory capped at 2 GiB: if a wrapper ever copied the 8.6 GB view, this run fails
    # with a MemoryError instead of exhausting the machine (shared mappings are not counted).
    import resource
    resource.setrlimit(resource.RLIMIT_DATA, (2**31, 2**31))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    MAP_FIXED, MAP_NORESERVE = 0x10, 0x4000
    RW = mmap.PROT_READ | mmap.PROT_WRITE
    ANON = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS

    class View:
        def __init__(self, address, n):
            self.__array_interface__ = {"data": (address, False), "shape": (n,),
                                        "typestr": "<f4", "version": 3}

    def tiled(n, unique_tail=0):
        # n float32 elements: a guard period (no access) on each side, the body repeating one
        # PERIOD-element tile, the last unique_tail elements private (written results to check).
        size, guard = n * ITEM, PERIOD * ITEM
        base = libc.mmap(None, size + 2 * guard, 0, ANON | MAP_NORESERVE, -1, 0)
        assert base not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
        start = base + guard
        fd = os.memfd_create("cupytv-tile")
        os.ftruncate(fd, guard)
        tail = size - unique_tail * ITEM
        for off in range(0, tail, guard):
            got = libc.mmap(start + off, min(guard, tail - off), RW,
                            mmap.MAP_SHARED | MAP_FIXED, fd, 0)
            assert got == start + off, ctypes.get_errno()
        if unique_tail:
            got = libc.mmap(start + tail, unique_tail * ITEM, RW, ANON | MAP_FIXED, -1, 0)
            assert got == start + tail, ctypes.get_errno()
        os.close(fd)
        return np.asarray(View(start, n))

    periods = -(-(2**31 + 1) // PERIOD)
    n = periods * PERIOD
    tail = 2 * PERIOD  # the last two periods: from 2^31 - 1310720 to the end, past 2^31
    rng = np.random.default_rng(0)
    tile = rng.standard_normal(PERIOD).astype(np.float32)
    x, y = tiled(n), tiled(n, tail)
    x[:PERIOD] = tile  # every period of x now reads as the tile
    lam = np.zeros((periods, 1, 1))
    lam[-2], lam[-1] = 0.7, 0.3
    # lam 0 (an exact copy) in the repeated part keeps the shared writes identical and cheap; the
    # private tail is really solved. One call over all 2^31 + 262144 elements:
    cupytv.prox_tv1d(x.reshape(periods, -1, FIBER), lam, out=y.reshape(periods, -1, FIBER))
    fibers = tile.reshape(-1, FIBER)
    result = {
        "n": n,
        "copy": bool(np.array_equal(y[:PERIOD], tile)),
        "tail_0.7": bool(np.array_equal(y[-tail:-PERIOD], cupytv.prox_tv1d(fibers, 0.7).ravel())),
        "tail_0.3": bool(np.array_equal(y[-PERIOD:], cupytv.prox_tv1d(fibers, 0.3).ravel())),
    }
    if WITH_VJP:  # the backward kernel, launched directly (its wrapper would allocate grad_x)
        y_tile = cupytv.prox_tv1d(fibers, 0.5).ravel()
        g_tile = rng.standard_normal(PERIOD).astype(np.float32)
        y_in, g_in, gx = tiled(n), tiled(n), tiled(n, tail)
        y_in[:PERIOD], g_in[:PERIOD] = y_tile, g_tile
        count = n // FIBER
        grad_fiber = np.empty(count, dtype=np.float32)
        _loader.launch("tv1d", "tv1d_vjp<float, false>", (-(-count // 128),), (128,),
                       (y_in, g_in, gx, grad_fiber, np.int64(count), np.int64(FIBER),
                        np.int64(1), np.float64(0.0)))
        rgx, rgl = cupytv.prox_tv1d_vjp(g_tile.reshape(-1, FIBER), y_tile.reshape(-1, FIBER),
                                        np.full((PERIOD // FIBER, 1), 0.5))
        result["vjp_grad_x"] = bool(np.array_equal(gx[-tail:], np.tile(rgx.ravel(), 2)))
        result["vjp_grad_lam"] = bool(np.array_equal(grad_fiber[-tail // FIBER:],
                                                     np.tile(rgl.ravel(), 2)))
    print(json.dumps(result))
"""


def _run_huge(with_vjp: bool) -> dict:
    if not (sys.platform.startswith("linux") and hasattr(os, "memfd_create")):
        pytest.skip("needs Linux (memfd_create and MAP_FIXED) to map 8.6 GB of views cheaply")
    args = (str(HUGE_FIBER), str(HUGE_PERIOD), "1" if with_vjp else "0")
    result = json.loads(run_python(HUGE_CHILD, *args, timeout=2 * WATCHDOG_S).splitlines()[-1])
    assert result.pop("n") > 2**31
    return result


@pytest.mark.slow
def test_fibers_beyond_2_31_elements_index_correctly():
    """prox_tv1d on a (2731, 12288, 64) float32 view of 2^31 + 262144 elements backed by 3 MiB
    (see HUGE_CHILD): the repeated part is copied exactly (lam 0) and the fibers around and past
    element 2^31 (in private memory) equal the same fibers solved in a compact array. The
    wrappers pass contiguous arrays through untouched and write into ``out``, so the kernel
    itself indexes past 2^31. Runs in a subprocess: a wrapped index may crash it. ~5 s, ~150 MB
    (the per-fiber weights)."""
    result = _run_huge(with_vjp=False)
    assert all(result.values()), result


@pytest.mark.slow
def test_vjp_beyond_2_31_elements_indexes_correctly():
    """As above for tv1d_vjp, whose every fiber does real work (no lam to skip it): ~30 s."""
    result = _run_huge(with_vjp=True)
    assert all(result.values()), result


LONG_N = 10**7


@pytest.mark.slow
@dtype_param
def test_one_fiber_of_ten_million_samples(dtype, rng):
    """Condat and the taut string on one 10^7-sample fiber (noisy steps): both exactly optimal by
    the KKT conditions (O(n), no reference solver needed), and the VJP equals its closed form."""
    levels = np.repeat(rng.standard_normal(LONG_N // 1000), 1000)
    x = (levels + 0.2 * rng.standard_normal(LONG_N)).astype(dtype)
    lam = 0.5
    lam_in = float(np.asarray(lam, dtype=dtype))
    y = cupytv.prox_tv1d(x, lam, method="condat")
    assert_tv1d_optimal(x, y, lam_in, "condat")
    assert_tv1d_optimal(x, cupytv.prox_tv1d(x, lam, method="taut_string"), lam_in, "taut string")
    g = rng.standard_normal(LONG_N).astype(dtype)
    gx, gl = cupytv.prox_tv1d_vjp(None, lam, g, y=y)
    want_gx, want_gl, means, mean_abs = tv1d_vjp_by_segments(y, g)
    eps = np.finfo(dtype).eps
    # A segment mean carries one rounding to dtype and at most eps64 * mean|g| * |S| of sum error.
    lengths = np.diff(np.append(np.flatnonzero(np.append(True, y[1:] != y[:-1])), LONG_N))
    gx_tol = np.repeat(4 * eps * np.abs(means) + 2 * np.finfo(F64).eps * mean_abs * lengths,
                       lengths)  # fmt: skip
    assert np.all(np.abs(gx.astype(F64) - want_gx) <= gx_tol)
    gl_tol = 4 * eps * float(np.abs(means).sum() * 2)
    assert abs(float(gl) - want_gl) <= gl_tol


# --------------------------------------------------------------------------------------------
# 5. Determinism.


@dtype_param
@op_param
def test_repeated_calls_are_bit_identical(op, dtype, rng):
    x, lam, g = make_batch(op, dtype, rng)
    first, second = op.run(x, lam, g), op.run(x, lam, g)
    for name, a in first.items():
        assert same_bits(a, second[name]), name


def representative_outputs(d) -> dict[str, np.ndarray]:
    """Strided 1D (Condat and PN), 2D with its info and VJP, 3 axes with its info."""
    x1, x2, x3, g2 = d["x1"], d["x2"], d["x3"], d["g2"]
    y2, info2 = cupytv.prox_tv2d(x2, 0.2, tol=1e-5, return_info=True)
    gx2, gl2 = cupytv.prox_tv2d_vjp(x2, 0.2, g2, n_iter=info2.n_iter, tol=1e-5)
    y3, info3 = cupytv.prox_tv(x3, 0.2, axes=ND_AXES, return_info=True)
    return {
        "tv1d": cupytv.prox_tv1d(x1, 0.3, axis=0),
        "tv1d_pn": cupytv.prox_tv1d(x1, 0.3, axis=0, method="pn"),
        "tv2d": y2, "n_iter2": info2.n_iter, "gap2": info2.gap, "grad_x2": gx2, "grad_lam2": gl2,
        "tv3": y3, "n_iter3": info3.n_iter, "gap3": info3.gap,
    }  # fmt: skip


DETERMINISM_CHILD = """
    import sys
    import numpy as np
    sys.path.insert(0, sys.argv[3])
    from test_reliability import representative_outputs
    np.savez(sys.argv[2], **representative_outputs(np.load(sys.argv[1])))
"""


def test_fresh_processes_with_different_thread_counts_agree_bit_for_bit(tmp_path, rng):
    """representative_outputs in two fresh interpreters, with 1 and 2 OpenMP threads, and in
    this process: bit-identical outputs, info and gradients."""
    inputs = {
        "x1": rng.standard_normal((300, 257)),  # 257 fibers along axis 0: three blocks
        "x2": rng.standard_normal((6, 40, 33)).astype(np.float32),
        "g2": rng.standard_normal((6, 40, 33)).astype(np.float32),
        "x3": rng.standard_normal((3, 5, 6, 7)),
    }
    np.savez(tmp_path / "in.npz", **inputs)
    runs = {"this process": representative_outputs(inputs)}
    for threads in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=threads)
        out = tmp_path / f"out{threads}.npz"
        tests_dir = str(Path(__file__).resolve().parent)
        run_python(DETERMINISM_CHILD, str(tmp_path / "in.npz"), str(out), tests_dir, env=env)
        runs[f"a fresh process with {threads} thread(s)"] = dict(np.load(out))
    first_name, first = runs.popitem()
    for name, run in runs.items():
        assert run.keys() == first.keys()
        for key in first:
            assert same_bits(run[key], first[key]), f"{key}: {name} vs {first_name}"


# --------------------------------------------------------------------------------------------
# 6. Resource hygiene.

REPEATS = 200
WARM_UP = 20
# Growth allowed over REPEATS rounds after warm-up: allocator noise measured at < 1 MiB. A leak of
# one 64 KiB input array per 1D call alone would add 4 x 200 x 64 KiB = 50 MiB.
RSS_GROWTH_BYTES = 8 * 2**20


def rss_bytes() -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024


def mapped_kernel_libraries() -> int:
    maps = Path("/proc/self/maps").read_text()
    return len(set(re.findall(r"\S*/kernels-[0-9a-f]+\.so", maps)))


def test_repeated_calls_do_not_grow_memory_or_rebuild_kernels(rng):
    """REPEATS rounds of every operator of the array API after WARM_UP rounds: RSS grows by less
    than RSS_GROWTH_BYTES, the loader builds no host module and reads no kernel source again, and
    no kernel library is loaded again. (The torch layers call the same functions.)"""
    if not Path("/proc/self/status").exists():
        pytest.skip("reads VmRSS from /proc (Linux)")
    x1 = rng.standard_normal((64, 128))  # 64 KiB
    g1 = rng.standard_normal(x1.shape)
    y1 = cupytv.prox_tv1d(x1, 0.3)
    x2 = rng.standard_normal((2, 8, 8))
    x3 = rng.standard_normal((2, 3, 4, 5))
    calls = [
        lambda: cupytv.prox_tv1d(x1, 0.3),
        lambda: cupytv.prox_tv1d(x1, 0.3, method="taut_string"),
        lambda: cupytv.prox_tv1d(x1, 0.3, method="pn"),
        lambda: cupytv.prox_tv1d_vjp(None, 0.3, g1, y=y1),
        lambda: cupytv.prox_tv2d(x2, 0.3, method="dykstra", max_iter=5, return_info=True),
        lambda: cupytv.prox_tv2d(x2, 0.3, max_iter=5, return_info=True),
        lambda: cupytv.prox_tv2d_vjp(x2, 0.3, x2, n_iter=3),
        lambda: cupytv.prox_tv(x3, 0.3, axes=ND_AXES, max_iter=2, tol=0, return_info=True),
        lambda: cupytv.prox_tv_vjp(x3, 0.3, x3, axes=ND_AXES, n_iter=2),
    ]

    def rounds(count):
        for _ in range(count):
            for call in calls:
                call()

    rounds(WARM_UP)
    caches = (_loader._host_module, _loader.source, _loader.instantiations)
    misses = [c.cache_info().misses for c in caches]
    libraries = mapped_kernel_libraries()
    before = rss_bytes()
    rounds(REPEATS)
    growth = rss_bytes() - before
    assert [c.cache_info().misses for c in caches] == misses, "the loader rebuilt something"
    assert mapped_kernel_libraries() == libraries, "a kernel library was loaded again"
    assert libraries >= 2  # tv1d and tv2d really were loaded (the check above is not vacuous)
    assert growth < RSS_GROWTH_BYTES, f"RSS grew by {growth / 2**20:.1f} MiB over {REPEATS} rounds"


CACHE_CHILD = """
    import sys, time
    from pathlib import Path
    import numpy as np
    import cupytv
    ready, go, out = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    ready.touch()
    while not go.exists():  # all processes start compiling together
        time.sleep(0.005)
    np.save(out, cupytv.prox_tv1d(np.linspace(-1.0, 1.0, 50) ** 3, 0.1))
"""
CONCURRENT_PROCESSES = 3


@pytest.mark.slow
def test_concurrent_first_compiles_leave_one_valid_library(tmp_path):
    """CONCURRENT_PROCESSES processes compile the tv1d kernels into an empty cache at once: all
    succeed with identical results, the cache then holds exactly one library and nothing else (no
    partial file, no leftover build directory), and a later process uses it as is: the compiler
    is not asked to compile (a logging wrapper as $CXX sees only the --version probe that keys
    the cache) and the file keeps its inode and mtime. (A missing $CXX cannot show this: the
    compiler's identity is part of the cache key, so the loader needs the compiler even when the
    library is cached.)"""
    compiler = find_compiler()
    log = tmp_path / "cxx.log"
    wrapper = tmp_path / "cxx"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\nexec {shlex.join(compiler)} "$@"\n')
    wrapper.chmod(0o755)
    cache = tmp_path / "cache"
    env = dict(os.environ, CUPYTV_CACHE_DIR=str(cache), CXX=str(wrapper))
    env.pop("CUPYTV_HOST_SANITIZE", None)
    go = tmp_path / "go"
    procs, ready = [], []
    for i in range(CONCURRENT_PROCESSES):
        ready.append(tmp_path / f"ready{i}")
        args = [str(ready[i]), str(go), str(tmp_path / f"y{i}.npy")]
        procs.append(
            subprocess.Popen([sys.executable, "-c", textwrap.dedent(CACHE_CHILD), *args], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )  # fmt: skip
    deadline = time.monotonic() + WATCHDOG_S
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"concurrent compiles did not finish within {WATCHDOG_S} s")
        assert p.returncode == 0, err[-4000:]
    results = [np.load(tmp_path / f"y{i}.npy") for i in range(CONCURRENT_PROCESSES)]
    assert all(same_bits(r, results[0]) for r in results)

    def compiles() -> int:
        # Builds only: the cache key's probes (--version, and the -### dry run that spells out
        # what -march=native means here) compile nothing.
        lines = log.read_text().splitlines()
        return sum(" -o " in line and "-###" not in line for line in lines)

    assert 1 <= compiles() <= CONCURRENT_PROCESSES
    entries = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*"))
    assert len(entries) == 2, entries
    assert entries[0] == "host", entries
    library = cache / entries[1]
    assert re.fullmatch(r"host/kernels-[0-9a-f]{32}\.so", entries[1]), entries
    assert library.read_bytes()[:4] == b"\x7fELF"
    stat = library.stat()
    done_compiles = compiles()

    later = tmp_path / "later.npy"
    run_python(CACHE_CHILD, str(tmp_path / "ready-later"), str(go), str(later), env=env)
    assert compiles() == done_compiles, "a later process compiled again"
    probes = log.read_text().splitlines()[-2:]  # it did consult the compiler's id and target
    assert any("--version" in line for line in probes), probes
    assert any("-###" in line for line in probes), probes
    again = library.stat()
    assert (again.st_ino, again.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert same_bits(np.load(later), results[0])
