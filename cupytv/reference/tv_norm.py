"""The TV value and the prox objective, exactly, in float64 on the CPU.

What :func:`cupytv.tv_norm` is tested against, and the objective the reference solvers minimise:
each sum is rounded once (``math.fsum``), so these are exact to the last bit of float64.
"""

from __future__ import annotations

import math

import numpy as np

from .._validation import check_float_dtype, host_array, lam_per_axis, normalize_tv_axes


def tv_norm(x, lam=1.0, axes=-1) -> np.ndarray:
    r"""Weighted anisotropic TV of every fiber / slice / volume of ``x`` over ``axes``:

    .. math::
        \mathrm{TV}(x) = \sum_k \lambda_k \sum_i |x_{i + e_k} - x_i|  \quad (k \text{ over axes})

    Args:
        x: array (NumPy, CuPy or torch; copied to the host in float64).
        lam: a number or an array broadcastable to x with the TV axes reduced to 1 (one weight
            per fiber/slice), or a tuple of one such per axis.
        axes: an int or a sequence of distinct ints.

    Returns:
        float64 NumPy array of x's shape without the TV axes. Non-finite input gives NaN.
    """
    x = host_array(x)
    check_float_dtype(x.dtype)
    tv_axes = normalize_tv_axes(axes, x.ndim)
    lams, _ = lam_per_axis(lam, x.shape, tv_axes, None)
    x = x.astype(np.float64)
    batch = tuple(s for d, s in enumerate(x.shape) if d not in tv_axes)
    out = np.zeros(batch)
    finite = np.isfinite(x).all(axis=tv_axes)
    for k, axis in enumerate(tv_axes):
        steps = np.abs(np.diff(x, axis=axis))
        per_slice = _fsum_over(steps, tv_axes)
        out += np.squeeze(lams[k], axis=tv_axes) * per_slice
    return np.where(finite, out, np.nan)


def objective(y, x, lam=1.0, axes=-1) -> np.ndarray:
    r""":math:`F(y) = \tfrac12 \lVert y - x\rVert^2 + \mathrm{TV}(y)` per fiber / slice, exactly:
    the function :func:`cupytv.reference.prox_tv1d` / ``prox_tv2d`` minimise (float64, x's
    shape without the TV axes)."""
    y64, x64 = host_array(y).astype(np.float64), host_array(x).astype(np.float64)
    if y64.shape != x64.shape:
        raise ValueError(f"y: expected x's shape {x64.shape}, got {y64.shape}")
    tv_axes = normalize_tv_axes(axes, x64.ndim)
    return 0.5 * _fsum_over((y64 - x64) ** 2, tv_axes) + tv_norm(y64, lam, axes)


def _fsum_over(a: np.ndarray, tv_axes) -> np.ndarray:
    """Exactly rounded sums of ``a`` over ``tv_axes`` (the batch shape stays)."""
    m = len(tv_axes)
    moved = np.moveaxis(a, tv_axes, tuple(range(a.ndim - m, a.ndim)))
    batch = moved.shape[: a.ndim - m]
    rows = moved.reshape(int(np.prod(batch, dtype=np.int64)), -1)
    return np.array([math.fsum(r) for r in rows], dtype=np.float64).reshape(batch)
