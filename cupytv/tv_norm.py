r"""The weighted TV value of every fiber / slice / volume: for losses and objectives.

:func:`tv_norm` is the regulariser itself (kornia's ``total_variation``, with cupytv's weights
and axes), on NumPy or CuPy arrays; :func:`cupytv.torch.tv_norm` is its differentiable torch
form and :func:`cupytv.reference.tv_norm` the exact float64 value both are tested against.
"""

from __future__ import annotations

import numpy as np

from cupytv._validation import check_float_dtype, lam_per_axis, normalize_tv_axes, reduced_shape
from cupytv.tv1d import _array_module


def tv_norm(x, lam=1.0, axes=-1):
    r"""Weighted anisotropic TV of every fiber / slice / volume of ``x`` over ``axes``.

    .. math::
        \mathrm{TV}_\lambda(x) = \sum_k \lambda_k \sum_i |x_{i + e_k} - x_i|

    (k over ``axes``): the term the proxes of this package add to ½‖y − x‖², so
    ``0.5 * ((y - x) ** 2).sum(axes) + tv_norm(y, lam, axes)`` is their objective.

    Args:
        x: NumPy or CuPy array, float16/32/64 (summed in float64).
        lam: a number or an array broadcastable to x with the TV axes reduced to 1 (one weight
            per fiber/slice), or a tuple of one such per axis, as for :func:`cupytv.prox_tv`.
        axes: an int or a sequence of distinct ints (default: the last axis).

    Returns:
        An array of x's kind and dtype, x's shape without the TV axes. A fiber / slice holding
        NaN or ±Inf gives NaN.

    Raises:
        TypeError, ValueError: as :func:`cupytv.prox_tv` (dtype, axes, lam).

    Example:
        >>> import numpy as np
        >>> from cupytv import tv_norm
        >>> x = np.array([[0.0, 1.0, 4.0], [2.0, 2.0, 0.0]])
        >>> tv_norm(x)  # per row: |1 - 0| + |4 - 1|, |2 - 2| + |0 - 2|
        array([4., 2.])
        >>> tv_norm(x, (1.0, 0.5), axes=(0, 1))  # one image, a weight per axis
        array(10.)
    """
    xp = _array_module(x, "x")
    dtype = check_float_dtype(x.dtype)
    tv_axes = normalize_tv_axes(axes, x.ndim)
    lams, _ = lam_per_axis(lam, x.shape, tv_axes, None)
    total = xp.zeros(reduced_shape(x.shape, tv_axes))
    for axis, lam_k in zip(tv_axes, lams, strict=True):
        steps = xp.abs(xp.diff(x, axis=axis))
        total += xp.asarray(lam_k) * steps.sum(axis=tv_axes, keepdims=True, dtype=np.float64)
    # ±Inf alone gives Inf or NaN depending on its neighbours: one answer for every non-finite.
    finite = xp.isfinite(x).all(axis=tv_axes, keepdims=True)
    total = xp.where(finite, total, np.nan)
    return xp.squeeze(total, axis=tv_axes).astype(dtype)
