r"""Anisotropic total-variation proximal operator over any number of axes, and its VJP.

One axis is the exact 1D prox (:func:`cupytv.prox_tv1d`), two axes are the 2D operator
(:mod:`cupytv.tv2d`), and three or more axes run the parallel proximal Dykstra algorithm
(Combettes & Pesquet 2011, "Proximal splitting methods in signal processing", the
"parallel Dykstra-like" algorithm) around the exact 1D prox along each axis. The iteration is
written with array operations of x's own module (NumPy or CuPy), so NumPy arrays run on the CPU
through the host executor and CuPy arrays on the GPU, through the same code.

The iteration works on a canonical layout: the TV axes moved last (in the order given) and the
other axes flattened into one batch of B volumes, shape ``(B, n_0, ..., n_{m-1})``. Volumes stop
independently (each on its own duality gap) and are then dropped from the working set, so a
volume's result never depends on the others.
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np

from cupytv._chunks import chunk_items
from cupytv._chunks import ranges as chunk_ranges
from cupytv._validation import (
    MAX_ITERATIONS,
    check_float_dtype,
    check_like,
    check_max_iter,
    check_tol,
    host_array,
    lam_per_axis,
    normalize_tv_axes,
    unbroadcast,
    vjp_arguments,
)
from cupytv.tv1d import (
    _array_module,
    _check_out,
    _compute_dtype,
    jump_turns,
    prox_tv1d,
    prox_tv1d_vjp,
)
from cupytv.tv2d import (
    DEFAULT_MAX_ITER,
    DEFAULT_TOL,
    ProxInfo,
    prox_tv2d,
    prox_tv2d_jvp,
    prox_tv2d_vjp,
)

_F64 = np.dtype(np.float64)
#: The certificate scales each volume by 2^-e, e = its max|x|'s exponent clamped to this, so that
#: the factor stays finite for subnormal data (as gap_unit in cuda_src/tv2d.cu).
_UNIT_EXP_MAX = 1000
#: Factor on eps in the certificate's rounding slack, per compute dtype: Limits<T>::gap_slack in
#: cuda_src/common.cuh, where the measurements behind it are.
_GAP_SLACK = {np.dtype(np.float32): 1.0, np.dtype(np.float64): 8.0}
# float64 volumes the iteration holds at once besides its compute-dtype arrays (measured with
# benchmarks/bench_memory.py: the float64 average and the certificate's temporaries).
_VOLUME_F64_ARRAYS = 9
#: Per compute dtype: values of an iterate's 1D solution within this fraction of max|x| of a
#: segment's first value belong to that segment in the backward (as jump_rtol in tv2d.cu).
FUSE_RTOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-9}


def prox_tv(
    x,
    lam,
    axes,
    *,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    out=None,
    return_info: bool = False,
):
    r"""Anisotropic TV proximal operator of every volume of ``x`` spanned by ``axes``.

    For each volume :math:`X` (x restricted to the TV axes :math:`a_0, \dots, a_{m-1}`, every
    other index fixed; the other axes are a batch) it returns

    .. math::
        Y = \arg\min_Y F(Y), \qquad
        F(Y) = \tfrac12 \lVert Y - X\rVert_2^2
            + \sum_{i=0}^{m-1} \lambda_i \sum_{k} |Y_{k + e_i} - Y_k|,

    where :math:`e_i` is the unit step along axis :math:`a_i` and the inner sum runs over every
    pair of neighbours along that axis.

    * One axis: the exact 1D prox, :func:`cupytv.prox_tv1d` (no iterations).
    * Two axes: :func:`cupytv.tv2d.prox_tv2d` (its Dykstra iteration and stopping rule).
    * Three or more axes: parallel proximal Dykstra with weights :math:`1/m`. With
      :math:`z_i = X` for all i, repeat
      :math:`p_i = \operatorname{prox}_{m \lambda_i TV_{a_i}}(z_i)` (the exact 1D prox along
      axis :math:`a_i` with weight :math:`m\lambda_i`), :math:`Y = \frac1m \sum_i p_i`,
      :math:`z_i \leftarrow Y + z_i - p_i`. Then :math:`u_i = (z_i - p_i)/m` is a subgradient
      of the i-th TV term at :math:`p_i`, hence dual feasible, and with
      :math:`S = \sum_i u_i` the certified duality gap
      :math:`\mathrm{gap}(Y) = \sum_i \lambda_i TV_{a_i}(Y) - \langle Y - \bar Y, S\rangle
      + \tfrac12\lVert X - Y - S\rVert^2 = F(Y) - D(S) \ge F(Y) - F^\star` holds for the
      returned (rounded) Y, whether or not rounding has let :math:`X - Y` drift from S
      (:math:`\bar Y` the volume's mean changes nothing since every :math:`u_i` sums to zero
      along its fibers, which is enforced, and keeps an offset of the data out of the rounding).
      It is accumulated in float64 on the volume scaled by a power of two near its max|x| (no
      squares underflow or overflow), plus a slack for the rounding of the 1D solutions. A
      volume stops when :math:`\mathrm{gap} \le \mathrm{tol}\cdot F` with
      :math:`F = \tfrac12\lVert X - Y\rVert^2 + \sum_i \lambda_i TV_{a_i}(Y)`, or after
      ``max_iter`` iterations; its result is then frozen.

    Args:
        x: NumPy or CuPy array of float16, float32 or float64. float16 is computed in float32
            and returned as float16; float32 and float64 are computed in their own precision.
        lam: the weights :math:`\lambda_i \ge 0`: a scalar; an array broadcastable to x's shape
            with every TV axis reduced to 1 (one weight per volume), used for every axis; or a
            tuple/list with one such weight per axis, in the order of ``axes``. Arrays may be
            NumPy or of x's kind.
        axes: an int or a sequence of distinct ints, the TV axes; any order, any position.
        max_iter: iteration limit per volume (>= 1; unused for one axis). Default 200.
        tol: relative duality-gap tolerance (>= 0; unused for one axis). Default 1e-3.
        out: optional C-contiguous array of x's shape, dtype and kind to write the result into.
        return_info: also return a :class:`ProxInfo`.

    Returns:
        ``y`` with x's shape and dtype (``out`` when given), or ``(y, info)`` when
        ``return_info``. Volumes whose weights are all zero return x exactly; a volume holding NaN
        or ±Inf comes back all NaN (n_iter 0, gap NaN) and no other volume is affected.

    Raises:
        TypeError: x is not a NumPy/CuPy floating array, or a bad type of axes/max_iter/tol.
        ValueError: bad axes (empty, repeated, out of range), lam (negative, bad shape, wrong
            number of per-axis weights), max_iter, tol or ``out``.

    Example:
        >>> import numpy as np
        >>> from cupytv.tvnd import prox_tv
        >>> x = np.zeros((2, 2, 2))
        >>> x[1] = 4.0
        >>> y, info = prox_tv(x, 0.5, axes=(0, 1, 2), tol=1e-9, max_iter=1000, return_info=True)
        >>> np.round(y[:, 0, 0], 6)
        array([0.5, 3.5])
        >>> bool(info.converged)
        True
    """
    xp = _array_module(x, "x")
    dtype = check_float_dtype(x.dtype)
    tv_axes = normalize_tv_axes(axes, x.ndim)
    lams, _ = lam_per_axis(lam, x.shape, tv_axes, _compute_dtype(dtype))
    _check_iteration_limits(max_iter, tol)
    if out is not None:
        _check_out(out, x, xp)
    m = len(tv_axes)
    if m == 1:
        y = prox_tv1d(x, lams[0], tv_axes[0], out=out)
        return (y, _exact_info(x, tv_axes[0], xp)) if return_info else y
    if m == 2:
        result = prox_tv2d(
            x, lam, axes=tv_axes, max_iter=max_iter, tol=tol, out=out, return_info=return_info
        )
        if not return_info:
            return result
        y, info = result
        return y, info
    batch_shape = _batch_shape(x.shape, tv_axes)
    if x.size == 0:
        y = xp.empty_like(x) if out is None else out
        # Empty volumes are solved exactly by doing nothing.
        info = ProxInfo(
            xp.zeros(batch_shape, dtype=np.int32),
            xp.zeros(batch_shape, dtype=_F64),
            xp.ones(batch_shape, dtype=bool),
        )
        return (y, info) if return_info else y
    compute = _compute_dtype(dtype)
    xv = _to_volumes(x, tv_axes, compute, xp)
    lam_v = [_lam_to_volumes(lam_i, tv_axes) for lam_i in lams]
    run = _DykstraRun(xp.empty_like(xv), np.zeros(xv.shape[0], dtype=np.int32),
                      np.full(xv.shape[0], np.nan), [])  # fmt: skip
    for lo, hi in _volume_chunks(xv, m, history_iters=0):
        part = _dykstra(xv[lo:hi], [w[lo:hi] for w in lam_v], max_iter=max_iter, tol=tol,
                        n_target=None, keep_history=False, y_out=run.y[lo:hi])  # fmt: skip
        run.n_iter[lo:hi], run.gap[lo:hi] = part.n_iter, part.gap
    y = _from_volumes(run.y, x.shape, tv_axes, xp).astype(dtype, copy=False)
    if out is not None:
        out[...] = y
        y = out
    else:
        y = xp.ascontiguousarray(y)
    if not return_info:
        return y
    info = ProxInfo(
        xp.asarray(run.n_iter.reshape(batch_shape)),
        xp.asarray(run.gap.reshape(batch_shape)),
        xp.asarray((run.gap <= tol).reshape(batch_shape)),
    )
    return y, info


def prox_tv_vjp(
    x,
    lam,
    g,
    axes,
    *,
    n_iter=None,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
):
    r"""Gradients of :math:`\langle g, \mathrm{prox\_tv}(x, \lambda)\rangle` w.r.t. x and lam.

    Exact gradients of the map :func:`prox_tv` computes, iterations included (not of the exact
    prox, which the iteration only approximates).

    * One axis: :func:`cupytv.prox_tv1d_vjp` on the output of the exact 1D prox.
    * Two axes: :func:`cupytv.tv2d.prox_tv2d_vjp`.
    * Three or more axes: the forward is run again from x (replaying ``n_iter`` when given,
      else applying ``max_iter``/``tol``, which is deterministic and gives the same counts),
      keeping every iteration's 1D prox outputs :math:`p_i^k`, then differentiated backwards
      through the iterations each volume actually ran. Temporary memory:
      ``m * n_iter`` volumes of the compute dtype per volume (m the number of axes), for one
      chunk of volumes at a time (about 1/8 of x when there are enough volumes, README
      "Memory").

    Adjoint recursion (m axes, N iterations of a volume, output :math:`Y = Y^{N-1}`). Forward:
    :math:`z_i^0 = X`; for :math:`k = 0..N-1`:
    :math:`p_i^k = P_i(z_i^k)` with :math:`P_i = \operatorname{prox}_{m\lambda_i TV_{a_i}}`,
    :math:`Y^k = \frac1m\sum_i p_i^k`, :math:`z_i^{k+1} = Y^k + z_i^k - p_i^k`. Backward, with
    :math:`a_i^N = 0` the adjoints of :math:`z_i^N` (unused by the output), for
    :math:`k = N-1` down to 0:

    .. math::
        \bar Y^k &= [k = N-1]\, g + \textstyle\sum_i a_i^{k+1}, \\
        \bar p_i^k &= \bar Y^k / m - a_i^{k+1}, \\
        a_i^k &= a_i^{k+1} + J_{P_i}(z_i^k)^\top \bar p_i^k, \\
        \bar\lambda_i &\mathrel{+}= m\, \partial_w P_i(z_i^k)^\top \bar p_i^k,

    and :math:`\bar X = \sum_i a_i^0`. :math:`J^\top` and :math:`\partial_w^\top` (w = the
    1D weight :math:`m\lambda_i`, hence the factor m) come from
    ``prox_tv1d_vjp(None, m λ_i, p̄, a_i, y=p_i^k)``, which needs only the 1D prox's output. A volume
    that stopped after N iterations is frozen afterwards (identity), so its backward starts at
    its own k = N-1 while the batch goes on.

    Args:
        x: the forward's input.
        lam, axes, max_iter, tol: as given to the forward.
        g: upstream gradient, x's shape, dtype and kind.
        n_iter: optional, the forward's ``info.n_iter`` (NumPy or x's kind, x's shape without
            the TV axes, or broadcastable to it): replays exactly those iteration counts.

    Returns:
        ``(grad_x, grad_lam)``: grad_x with x's shape and dtype; grad_lam shaped like lam (0-d
        for a scalar; a tuple for per-axis weights), summed over the volumes that shared a
        weight, in x's dtype. Volumes with non-finite input (or a replayed count of 0) get NaN
        gradients.

    Raises:
        TypeError, ValueError: as :func:`prox_tv`, plus mismatched ``g`` or a bad ``n_iter``.
            The order before 0.2, ``(g, x, lam)``, still works for this release with a
            DeprecationWarning.

    Example:
        >>> import numpy as np
        >>> from cupytv.tvnd import prox_tv, prox_tv_vjp
        >>> x = np.arange(8.0).reshape(2, 2, 2)
        >>> gx, glam = prox_tv_vjp(x, 0.1, np.ones_like(x), axes=(0, 1, 2))
        >>> bool(np.allclose(gx, 1.0)), bool(abs(glam) < 1e-9)
        (True, True)
    """
    x, lam, g, _ = vjp_arguments("prox_tv_vjp", x, lam, g)
    xp = _array_module(x, "x")
    dtype = check_float_dtype(x.dtype)
    check_like(g, x, "g")
    tv_axes = normalize_tv_axes(axes, x.ndim)
    lams, per_axis = lam_per_axis(lam, x.shape, tv_axes, _compute_dtype(dtype))
    _check_iteration_limits(max_iter, tol)
    m = len(tv_axes)
    if m == 1:
        lam_user = lam[0] if per_axis else lam
        y = prox_tv1d(x, lams[0], tv_axes[0])
        grad_x, grad_lam = prox_tv1d_vjp(None, lam_user, g, tv_axes[0], y=y)
        return grad_x, ((grad_lam,) if per_axis else grad_lam)
    if m == 2:
        return prox_tv2d_vjp(x, lam, g, axes=tv_axes, n_iter=n_iter, max_iter=max_iter, tol=tol)
    batch_shape = _batch_shape(x.shape, tv_axes)
    n_target = None if n_iter is None else _check_n_iter(n_iter, batch_shape)
    lam_shapes = [np.shape(lam_i) for lam_i in lam] if per_axis else [np.shape(lam)]
    if x.size == 0:
        zeros = tuple(xp.zeros(s, dtype=dtype) for s in lam_shapes)
        return xp.zeros_like(x), (zeros if per_axis else zeros[0])
    compute = _compute_dtype(dtype)
    xv = _to_volumes(x, tv_axes, compute, xp)
    gv = _to_volumes(g, tv_axes, compute, xp)
    lam_v = [_lam_to_volumes(lam_i, tv_axes) for lam_i in lams]
    grad_xv = xp.empty_like(xv)
    grad_w = [xp.empty(xv.shape[0], dtype=_F64) for _ in range(m)]
    iters = max_iter if n_target is None else int(n_target.max(initial=0))
    # Volume chunks in turn: the record of every iteration's 1D solutions is a chunk's.
    for lo, hi in _volume_chunks(xv, m, history_iters=iters):
        xc, lam_c = xv[lo:hi], [w[lo:hi] for w in lam_v]
        target = None if n_target is None else n_target[lo:hi]
        run = _dykstra(xc, lam_c, max_iter=max_iter, tol=tol, n_target=target, keep_history=True)
        # Each volume's own max|x| (non-finite volumes: NaN anyway; all-zero ones: 1), never the
        # batch's: with a batch-wide scale one volume's magnitude changed another's gradient.
        scale = xp.where(xp.isfinite(xc), xp.abs(xc), 0).max(axis=tuple(range(1, m + 1)))
        scale = xp.where(scale > 0, scale, 1).reshape((-1,) + (1,) * m)
        adj, gw_c = _dykstra_backward(gv[lo:hi], lam_c, run, scale)
        # Volumes without an output (non-finite input, or a replayed count of 0) get NaN.
        no_output = xp.asarray(run.n_iter == 0)
        grad_xv[lo:hi] = xp.where(no_output.reshape((-1,) + (1,) * m), xp.nan, adj)
        for i, gw in enumerate(gw_c):
            grad_w[i][lo:hi] = xp.where(no_output, xp.nan, gw)
    grad_x = xp.ascontiguousarray(
        _from_volumes(grad_xv, x.shape, tv_axes, xp).astype(dtype, copy=False)
    )
    # grad_w[i]: (B,) per volume -> x's shape with the TV axes reduced to 1 -> lam's shape.
    reduced = [
        _from_volumes(gw.reshape((-1,) + (1,) * m), lams[0].shape, tv_axes, xp) for gw in grad_w
    ]
    if per_axis:
        return grad_x, tuple(
            xp.asarray(unbroadcast(r, s)).astype(dtype)
            for r, s in zip(reduced, lam_shapes, strict=True)
        )
    return grad_x, xp.asarray(unbroadcast(sum(reduced), lam_shapes[0])).astype(dtype)


def prox_tv_jvp(
    x,
    lam,
    x_dot,
    lam_dot,
    axes,
    *,
    n_iter=None,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
):
    r"""Forward mode: the derivative of :func:`prox_tv` at ``(x, lam)`` along ``(x_dot, lam_dot)``.

    The transpose of :func:`prox_tv_vjp`, for the same map (the iterations each volume ran).

    * One axis: the exact 1D prox's derivative, the mean over each constant segment of
      ``x_dot + lam_dot * t`` (t: :func:`cupytv.tv1d.jump_turns` of the output), one
      :func:`cupytv.prox_tv1d_vjp` call (its grad_x is that mean).
    * Two axes: :func:`cupytv.tv2d.prox_tv2d_jvp`.
    * Three or more: the forward is re-run keeping every iteration's 1D solutions
      :math:`p_i^k` (as :func:`prox_tv_vjp` does), then the tangent goes forward through the
      iterations: :math:`\dot z_i^0 = \dot X`,
      :math:`\dot p_i^k = J_{P_i}(z_i^k)\,\dot z_i^k + m \dot\lambda_i\, \partial_w P_i`,
      :math:`\dot Y^k = \frac1m \sum_i \dot p_i^k`,
      :math:`\dot z_i^{k+1} = \dot Y^k + \dot z_i^k - \dot p_i^k`, each volume's output
      tangent taken at its last iteration.

    Args:
        x, lam, axes, max_iter, tol: as given to :func:`prox_tv`.
        x_dot: the tangent of x (x's shape, dtype and kind).
        lam_dot: the tangent of lam, shaped like lam (a tuple for per-axis weights; any sign).
        n_iter: optional, the forward's ``info.n_iter``, as for :func:`prox_tv_vjp`.

    Returns:
        The output's tangent, x's shape and dtype (NaN on volumes without an output).
    """
    xp = _array_module(x, "x")
    dtype = check_float_dtype(x.dtype)
    check_like(x_dot, x, "x_dot")
    tv_axes = normalize_tv_axes(axes, x.ndim)
    compute = _compute_dtype(dtype)
    lams, per_axis = lam_per_axis(lam, x.shape, tv_axes, compute)
    _check_iteration_limits(max_iter, tol)
    m = len(tv_axes)
    if isinstance(lam_dot, (tuple, list)) != per_axis or (per_axis and len(lam_dot) != m):
        raise ValueError(
            f"lam_dot: expected {'one tangent per axis' if per_axis else 'one tangent'}, like lam"
        )
    lam_dots = list(lam_dot) if per_axis else [lam_dot] * m
    if m == 1:
        y = prox_tv1d(x, lams[0], tv_axes[0])
        tangent_in = x_dot + xp.asarray(host_array(lam_dots[0]), dtype=dtype) * jump_turns(
            y, tv_axes[0], xp
        )
        return prox_tv1d_vjp(None, lams[0], tangent_in.astype(dtype), tv_axes[0], y=y)[0]
    if m == 2:
        pair = tuple(lam) if per_axis else lam
        pair_dot = tuple(lam_dots) if per_axis else lam_dot
        return prox_tv2d_jvp(x, pair, x_dot, pair_dot, tv_axes, n_iter=n_iter,
                             max_iter=max_iter, tol=tol)  # fmt: skip
    batch_shape = _batch_shape(x.shape, tv_axes)
    n_target = None if n_iter is None else _check_n_iter(n_iter, batch_shape)
    if x.size == 0:
        return xp.zeros_like(x)
    reduced = lams[0].shape
    try:
        lam_dot_v = [
            _lam_to_volumes(np.broadcast_to(host_array(ld).astype(_F64), reduced), tv_axes)
            for ld in lam_dots
        ]
    except ValueError:
        raise ValueError(
            f"lam_dot: expected tangents broadcastable to {reduced} (lam's), got shapes "
            f"{[np.shape(ld) for ld in lam_dots]}"
        ) from None
    xv = _to_volumes(x, tv_axes, compute, xp)
    xdv = _to_volumes(x_dot, tv_axes, compute, xp)
    lam_v = [_lam_to_volumes(lam_i, tv_axes) for lam_i in lams]
    run = _dykstra(xv, lam_v, max_iter=max_iter, tol=tol, n_target=n_target, keep_history=True)
    scale = xp.where(xp.isfinite(xv), xp.abs(xv), 0).max(axis=tuple(range(1, m + 1)))
    scale = xp.where(scale > 0, scale, 1).reshape((-1,) + (1,) * m)
    out = _dykstra_tangent(xdv, lam_v, lam_dot_v, run, scale)
    no_output = xp.asarray(run.n_iter == 0).reshape((-1,) + (1,) * m)
    out = xp.where(no_output, xp.nan, out)
    return xp.ascontiguousarray(_from_volumes(out, x.shape, tv_axes, xp).astype(dtype))


def _dykstra_tangent(xdv, lam_v, lam_dot_v, run: _DykstraRun, scale):
    """The tangent recursion of :func:`prox_tv_jvp`: the output's tangent (B, *vol).

    The 1D derivative is ``prox_tv1d_vjp``'s grad_x (the segment mean, symmetric) applied to
    ``z_dot + w_dot * jump_turns(p)``, with the segments found as :func:`_dykstra_backward` finds
    them (p divided by the volume's scale, FUSE_RTOL), so the JVP is the VJP's transpose.
    """
    xp = _array_module(xdv, "x_dot")
    fuse_atol = FUSE_RTOL[np.dtype(xdv.dtype)]
    m = len(lam_v)
    n_vol = xdv.shape[0]
    z_dot = [xdv.copy() for _ in range(m)]
    out = xp.zeros_like(xdv)
    for k, (active, p) in enumerate(run.history):
        full = active.size == n_vol
        idx = None if full else xp.asarray(active)
        zk = z_dot if full else [z_i[idx] for z_i in z_dot]
        p_dot = []
        for i in range(m):
            unit = p[i] / (scale if full else scale[idx])
            w_dot = xp.asarray(m * lam_dot_v[i][active], dtype=xdv.dtype)
            tangent_in = (zk[i] + w_dot * jump_turns(unit, 1 + i, xp)).astype(xdv.dtype)
            p_dot.append(
                prox_tv1d_vjp(
                    None, m * lam_v[i][active], tangent_in, axis=1 + i, y=unit, fuse_atol=fuse_atol
                )[0]
            )
        # As the forward: the average in float64, the iterates in the compute dtype.
        y_dot = sum(pd.astype(_F64) for pd in p_dot) / m
        ends = np.flatnonzero(run.n_iter[active] == k + 1)
        if ends.size:
            out[xp.asarray(active[ends])] = y_dot[xp.asarray(ends)].astype(xdv.dtype)
        for i in range(m):
            z_next = (y_dot + zk[i] - p_dot[i]).astype(xdv.dtype)
            if full:
                z_dot[i] = z_next
            else:
                z_dot[i][idx] = z_next
    return out


@dataclasses.dataclass
class _DykstraRun:
    """What one batched run returns (host arrays are NumPy, per volume of the batch)."""

    y: object  # (B, *vol) output, x's kind, compute dtype; NaN where there is no output
    n_iter: np.ndarray  # (B,) int32
    gap: np.ndarray  # (B,) float64 relative gap; NaN where not computed
    history: list  # per iteration k: (active volume indices, [p_0^k, ..., p_{m-1}^k])


def _dykstra(xv, lam_v, *, max_iter, tol, n_target, keep_history, y_out=None) -> _DykstraRun:
    """Parallel proximal Dykstra on the volumes ``xv`` (B, *vol), weights ``lam_v[i]`` (B, 1..).

    With ``n_target`` (B,) volume b runs exactly ``n_target[b]`` iterations; else each runs until
    its relative gap is <= tol or ``max_iter``. Non-finite volumes do not run. Volumes whose
    weights are all zero get x exactly (the iteration leaves them at mean_i x, which can differ
    from x in the last bit). ``y_out``: where to write y (allocated when None).
    """
    xp = _array_module(xv, "x")
    m = len(lam_v)
    n_vol = xv.shape[0]
    compute = xv.dtype
    finite = host_array(xp.isfinite(xv).reshape(n_vol, -1).all(axis=1))
    if y_out is None:
        y_out = xp.empty(xv.shape, dtype=compute)
    y_out[...] = xp.nan
    n_iter = np.zeros(n_vol, dtype=np.int32)
    gap = np.full(n_vol, np.nan)
    history = []
    if n_target is None:
        runs = finite
        limit = max_iter
    else:
        runs = finite & (n_target > 0)
        limit = int(n_target.max(initial=0))
    active = np.flatnonzero(runs)
    x_act = _take(xv, active, n_vol, xp)
    z = [x_act] * m  # never written in place: one array serves all
    weights = [m * w[active] for w in lam_v]
    for k in range(limit):
        if active.size == 0:
            break
        p = [prox_tv1d(z[i], weights[i], axis=1 + i) for i in range(m)]
        # Averages and the certificate in float64; float64 temporaries are whole sums, not one
        # per axis, to keep the working memory at a few volumes.
        p_sum = sum(p_i.astype(_F64) for p_i in p)
        y64 = p_sum / m
        y = y64.astype(compute, copy=False)
        if keep_history:
            history.append((active, p))
        if n_target is None:
            rel = _relative_gap(x_act, y, z, p, [w / m for w in weights], xp)
            gap[active] = rel
            done = rel <= tol
        else:
            done = n_target[active] == k + 1
        if k + 1 == limit:
            done[:] = True
        z = [(y64 + z_i - p_i).astype(compute, copy=False) for z_i, p_i in zip(z, p, strict=True)]
        if done.any():
            stop, keep = np.flatnonzero(done), np.flatnonzero(~done)
            y_out[xp.asarray(active[stop])] = y[xp.asarray(stop)]
            n_iter[active[stop]] = k + 1
            active = active[keep]
            x_act = _take(x_act, keep, done.size, xp)
            z = [_take(z_i, keep, done.size, xp) for z_i in z]
            weights = [w[keep] for w in weights]
    zero_lam = finite & np.all([w.reshape(n_vol) == 0 for w in lam_v], axis=0)
    if zero_lam.any():
        idx = xp.asarray(np.flatnonzero(zero_lam))
        y_out[idx] = xv[idx]
    return _DykstraRun(y_out, n_iter, gap, history)


def _dykstra_backward(gv, lam_v, run: _DykstraRun, scale):
    """The adjoint recursion of :func:`prox_tv_vjp`: (sum_i a_i^0 (B, *vol), [grad lam_i (B,)]).

    Adjoints live on the full batch; iteration k reads and writes only its active volumes.
    ``scale`` (B, 1, ...) = each volume's max|x|: the iterates' 1D solutions are segments up to
    rounding noise, so values within FUSE_RTOL * scale of a segment's first value belong to it
    (cuda_src/tv2d.cu's jump_rtol, for the same reason: around zero-mean solutions exact equality
    saw every sample as its own segment, and the gradient was several times off). The 1D VJP
    takes one tolerance for all fibers, so each volume's solutions are divided by its scale
    first: the VJP depends only on segments and jump signs, which a positive factor keeps.
    """
    xp = _array_module(gv, "g")
    fuse_atol = FUSE_RTOL[np.dtype(gv.dtype)]
    m = len(lam_v)
    n_vol = gv.shape[0]
    per_volume = (-1,) + (1,) * m
    adj = [xp.zeros_like(gv) for _ in range(m)]
    grad_w = [xp.zeros(n_vol, dtype=_F64) for _ in range(m)]
    for k in range(len(run.history) - 1, -1, -1):
        active, p = run.history[k]
        full = active.size == n_vol
        idx = None if full else xp.asarray(active)
        a = adj if full else [a_i[idx] for a_i in adj]
        # Volumes whose last iteration is k receive g here; their a_i are still zero.
        ends = xp.asarray((run.n_iter[active] == k + 1).reshape(per_volume))
        y_bar = sum(a) + xp.where(ends, gv if full else gv[idx], 0)
        for i in range(m):
            p_bar = y_bar / m - a[i]
            unit = p[i] / (scale if full else scale[idx])
            gz, gw = prox_tv1d_vjp(
                None, m * lam_v[i][active], p_bar, axis=1 + i, y=unit, fuse_atol=fuse_atol
            )
            a[i] = a[i] + gz
            contribution = m * gw.reshape(-1).astype(_F64)
            if full:
                grad_w[i] += contribution
            else:
                grad_w[i][idx] += contribution
        if full:
            adj = a
        else:
            for i in range(m):
                adj[i][idx] = a[i]
    return sum(adj), grad_w


def _relative_gap(x, y, z, p, lam_a, xp) -> np.ndarray:
    """Certified relative gap gap/F per volume (see :func:`prox_tv`), float64, on the host.

    ``x``, ``y``: (b, *vol) data and iterate; ``z``, ``p``: the iteration's 1D inputs and
    solutions per axis (compute dtype); ``lam_a[i]``: (b, 1..) NumPy weights of F.
    """
    m = len(lam_a)
    vol_axes = tuple(range(1, m + 1))
    per_volume = (-1,) + (1,) * m
    # Scale each volume by the power of two nearest its max|x| (exact): float64 data below ~1e-162
    # made every square underflow (F = 0, y = x reported converged); above ~1e154 they overflow.
    _, exponent = np.frexp(host_array(xp.abs(x).reshape(x.shape[0], -1).max(axis=1)))
    unit = xp.asarray(np.ldexp(1.0, -np.clip(exponent, -_UNIT_EXP_MAX, _UNIT_EXP_MAX)))
    unit = unit.reshape(per_volume)
    x64 = x.astype(_F64) * unit
    y64 = y.astype(_F64) * unit
    # S = sum_i u_i with each (z_i - p_i) centred along its own fibers: exact 1D proxes leave
    # residuals summing to 0 per fiber (the constraint that makes them D_i^T of a dual point);
    # rounded ones do not, by ulps of |x|, which far from zero outweighed the whole gap.
    s_sum = 0.0
    for i, (z_i, p_i) in enumerate(zip(z, p, strict=True)):
        u_i = (z_i.astype(_F64) - p_i) * unit  # a power of two: same as scaling each first
        s_sum = s_sum + (u_i - u_i.mean(axis=1 + i, keepdims=True))
    del u_i
    s_sum = s_sum / m
    tv = sum(
        xp.asarray(lam_i.reshape(-1)) * xp.abs(xp.diff(y64, axis=1 + i)).sum(axis=vol_axes)
        for i, lam_i in enumerate(lam_a)
    ) * unit.reshape(-1)
    # Temporaries are dropped as soon as used: this runs on whole batches, a float64 volume each.
    r = x64 - y64
    fit = 0.5 * (r * r).sum(axis=vol_axes)
    # F(Y) - D(S), exact for any feasible S: its last term measures how far rounding has let
    # X - Y drift from S (float32 iterates near 1e3 drift by ulps of 1e3 per iteration).
    r -= s_sum
    drift = 0.5 * (r * r).sum(axis=vol_axes)
    del r
    # The 1D solutions are rounded to y's dtype, so S is dual feasible only up to about eps * |x|
    # per element: the slack keeps the gap an upper bound (as in tv2d.cu). Elements with S == 0
    # (y == x: lam = 0, constant volumes) are exact and add none.
    magnitude = xp.abs(x64) + xp.abs(y64)
    del x64
    centered = y64 - y64.mean(axis=vol_axes, keepdims=True)
    del y64
    inner = (centered * s_sum).sum(axis=vol_axes)
    eps = float(np.finfo(y.dtype).eps) * _GAP_SLACK[np.dtype(y.dtype)]
    slack = eps * (xp.abs(centered) * xp.where(s_sum != 0, magnitude, 0.0)).sum(axis=vol_axes)
    gap = xp.maximum(tv - inner + drift + slack, 0.0)
    objective = fit + tv
    positive = objective > 0
    # F == 0 means y == x with no TV: solved exactly (gap 0 then, by the clamp above or not).
    rel = xp.where(
        positive, gap / xp.where(positive, objective, 1.0), xp.where(gap > 0, xp.inf, 0.0)
    )
    return host_array(rel)


def _volume_chunks(xv, m: int, history_iters: int):
    """Volume ranges for cupytv._chunks: per volume, the iteration's 2m + 1 arrays of the compute
    dtype (z_i, p_i, y), _VOLUME_F64_ARRAYS float64 ones (the average and the certificate), and
    for a backward its adjoints (m + 2) and the record of m solutions per iteration."""
    xp = _array_module(xv, "x")
    n_vol, elems = xv.shape[0], xv[:1].size
    arrays = 2 * m + 1 + (m + 2 + m * history_iters if history_iters else 0)
    workspace = (arrays * xv.dtype.itemsize + _VOLUME_F64_ARRAYS * _F64.itemsize) * elems
    per_chunk = chunk_items(n_vol, workspace, xv.nbytes, elems, xp)
    return chunk_ranges(n_vol, per_chunk)


def _take(a, rows: np.ndarray, n_rows: int, xp):
    """``a[rows]`` along the batch axis, without a copy when rows are all of them in order."""
    return a if rows.size == n_rows else a[xp.asarray(rows)]


def _check_iteration_limits(max_iter, tol) -> None:
    if isinstance(max_iter, numbers.Integral) and not isinstance(max_iter, bool) and max_iter < 1:
        raise ValueError(f"max_iter: expected an int >= 1, got {max_iter}")  # the usual slip: 0
    check_max_iter(max_iter, 1)
    check_tol(tol)


def _check_n_iter(n_iter, batch_shape) -> np.ndarray:
    """n_iter as a (B,) int64 NumPy array of counts >= 0."""
    counts = host_array(n_iter)
    if counts.dtype.kind not in "iu":
        raise TypeError(f"n_iter: expected an integer array, got dtype {counts.dtype}")
    try:
        counts = np.broadcast_to(counts, batch_shape)
    except ValueError:
        raise ValueError(
            f"n_iter: expected an array broadcastable to {batch_shape} (x's shape without the "
            f"TV axes), got shape {counts.shape}"
        ) from None
    if np.any(counts < 0):
        raise ValueError(f"n_iter: expected counts >= 0, got {int(counts.min())}")
    if np.any(counts > MAX_ITERATIONS):  # info.n_iter is int32, as in 2D
        raise ValueError(f"n_iter: expected counts <= 2**31 - 2 (int32), got {int(counts.max())}")
    return counts.reshape(-1).astype(np.int64)


def _exact_info(x, axis: int, xp) -> ProxInfo:
    """Info of the exact 1D prox: no iterations, gap 0 (NaN for fibers with non-finite input)."""
    finite = xp.isfinite(x).all(axis=axis)
    return ProxInfo(
        xp.zeros(finite.shape, dtype=np.int32),
        xp.where(finite, 0.0, xp.nan).astype(_F64),
        finite,
    )


def _batch_shape(shape, tv_axes) -> tuple[int, ...]:
    return tuple(s for d, s in enumerate(shape) if d not in tv_axes)


def _to_volumes(a, tv_axes, compute, xp):
    """``a`` as a C-contiguous (B, *vol) array of the compute dtype (TV axes last, in order)."""
    m = len(tv_axes)
    moved = xp.moveaxis(a, tv_axes, tuple(range(a.ndim - m, a.ndim)))
    vol_shape = moved.shape[a.ndim - m :]
    return xp.ascontiguousarray(moved.reshape((-1, *vol_shape)), dtype=compute)


def _from_volumes(v, shape, tv_axes, xp):
    """Inverse of :func:`_to_volumes` (a view where possible) for an array of ``shape``."""
    m = len(tv_axes)
    ndim = len(shape)
    moved_shape = _batch_shape(shape, tv_axes) + tuple(shape[a] for a in tv_axes)
    return xp.moveaxis(v.reshape(moved_shape), tuple(range(ndim - m, ndim)), tv_axes)


def _lam_to_volumes(lam_b: np.ndarray, tv_axes) -> np.ndarray:
    """A weight of x's shape with the TV axes reduced to 1, as (B, 1, ..., 1) float64 NumPy."""
    return _to_volumes(lam_b, tv_axes, _F64, np)
