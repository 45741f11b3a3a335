r"""TV prox over any number of axes as a differentiable PyTorch op (see :func:`cupytv.prox_tv`).

One axis is :func:`cupytv.torch.prox_tv1d`, two :func:`cupytv.torch.prox_tv2d`; three or more
(volumes, video) run parallel proximal Dykstra through the ``cupytv::prox_tvnd`` custom op, whose
backward replays the iterations each volume ran (:func:`cupytv.prox_tv_vjp`) and whose forward
mode (:func:`cupytv.prox_tv_jvp`) serves JVPs and double backward, as in 2D.
"""

from __future__ import annotations

import torch
from torch import Tensor

import cupytv
from cupytv._validation import check_max_iter, check_tol, normalize_tv_axes
from cupytv.torch._bridge import (
    Layout,
    Leaf,
    as_dtype,
    batch_first,
    call,
    check_input,
    compute_dtype,
    custom_op,
    from_array,
    lam_tensor,
    on_stream,
    to_array,
    unbatched_shape,
)
from cupytv.torch.tv1d import prox_tv1d
from cupytv.torch.tv2d import _batch_shape, prox_tv2d
from cupytv.tv2d import DEFAULT_MAX_ITER, DEFAULT_TOL
from cupytv.tvnd import prox_tv_jvp


@custom_op("cupytv::prox_tvnd")
def _prox_tvnd(
    x: Tensor, lams: list[Tensor], axes: list[int], max_iter: int, tol: float
) -> tuple[Tensor, Tensor]:
    # One weight for every axis arrives as one tensor repeated: passed as one, so that messages
    # about it say "lam", as the caller wrote it.
    lam = (to_array(lams[0]) if all(v is lams[0] for v in lams)
           else tuple(to_array(v) for v in lams))  # fmt: skip
    with on_stream(x):
        y, info = cupytv.prox_tv(
            to_array(x), lam, tuple(axes), max_iter=max_iter, tol=tol, return_info=True
        )
        return from_array(y), from_array(info.n_iter)


@_prox_tvnd.register_fake
def _(x, lams, axes, max_iter, tol):
    return x.new_empty(x.shape), x.new_empty(_batch_shape(x, axes), dtype=torch.int32)


@_prox_tvnd.register_vmap
def _(info, in_dims, x, lams, axes, max_iter, tol):
    # Every volume is independent: the vmapped dimension becomes one more batch dimension.
    size, ndim = info.batch_size, len(unbatched_shape(x, in_dims[0]))
    x = batch_first(x, in_dims[0], size, ndim)
    lams = [batch_first(t, d, size, ndim) for t, d in zip(lams, in_dims[1], strict=True)]
    return _prox_tvnd(x, lams, [a % ndim + 1 for a in axes], max_iter, tol), (0, 0)


@custom_op("cupytv::prox_tvnd_vjp")
def _prox_tvnd_vjp(
    g: Tensor, x: Tensor, lams: list[Tensor], axes: list[int], n_iter: Tensor
) -> list[Tensor]:
    with on_stream(x):
        gx, gl = cupytv.prox_tv_vjp(
            to_array(x),
            tuple(to_array(lam) for lam in lams),
            to_array(g.contiguous()),
            tuple(axes),
            n_iter=to_array(n_iter),
        )
    return [from_array(gx)] + [from_array(a).to(lam.dtype) for a, lam in zip(gl, lams, strict=True)]


@_prox_tvnd_vjp.register_fake
def _(g, x, lams, axes, n_iter):
    return [x.new_empty(x.shape)] + [lam.new_empty(lam.shape) for lam in lams]


@_prox_tvnd_vjp.register_vmap
def _(info, in_dims, g, x, lams, axes, n_iter):
    # Everything is expanded to the batch: each batch element's grad_lam is its own.
    size, ndim = info.batch_size, len(unbatched_shape(x, in_dims[1]))
    lam_shapes = [unbatched_shape(t, d) for t, d in zip(lams, in_dims[2], strict=True)]
    g, x = (batch_first(t, d, size, ndim) for t, d in zip((g, x), in_dims[:2], strict=True))
    lams = [batch_first(t, d, size, ndim) for t, d in zip(lams, in_dims[2], strict=True)]
    n_iter = batch_first(n_iter, in_dims[4], size, ndim - len(axes))
    gx, *gl = _prox_tvnd_vjp(g, x, lams, [a % ndim + 1 for a in axes], n_iter)
    gl = [a.reshape(size, *shape) for a, shape in zip(gl, lam_shapes, strict=True)]
    return [gx, *gl], [0] * (1 + len(gl))


@custom_op("cupytv::prox_tvnd_jvp")
def _prox_tvnd_jvp(
    x: Tensor, lams: list[Tensor], x_dot: Tensor, lam_dots: list[Tensor], axes: list[int],
    n_iter: Tensor,
) -> Tensor:  # fmt: skip
    with on_stream(x):
        y_dot = prox_tv_jvp(
            to_array(x), tuple(to_array(lam) for lam in lams), to_array(x_dot.contiguous()),
            tuple(to_array(d) for d in lam_dots), tuple(axes), n_iter=to_array(n_iter),
        )  # fmt: skip
    return from_array(y_dot)


@_prox_tvnd_jvp.register_fake
def _(x, lams, x_dot, lam_dots, axes, n_iter):
    return x.new_empty(x.shape)


@_prox_tvnd_jvp.register_vmap
def _(info, in_dims, x, lams, x_dot, lam_dots, axes, n_iter):
    size, ndim = info.batch_size, len(unbatched_shape(x, in_dims[0]))
    x, x_dot = batch_first(x, in_dims[0], size, ndim), batch_first(x_dot, in_dims[2], size, ndim)
    lams, lam_dots = (
        [batch_first(t, d, size, ndim) for t, d in zip(ts, ds, strict=True)]
        for ts, ds in ((lams, in_dims[1]), (lam_dots, in_dims[3]))
    )
    n_iter = batch_first(n_iter, in_dims[5], size, ndim - len(axes))
    return _prox_tvnd_jvp(x, lams, x_dot, lam_dots, [a % ndim + 1 for a in axes], n_iter), 0


# An autograd.Function sees only top-level tensors: the weights (and their tangents) come last,
# unpacked, in the Functions below (the ops take them as lists).


def _vjp(g, x, lams, axes, n_iter):
    if torch.compiler.is_compiling():  # see _bridge.apply
        return torch.ops.cupytv.prox_tvnd_vjp.default(g, x, lams, axes, n_iter)
    return _ProxTVndVJP.apply(g, x, Leaf(axes), n_iter, *lams)


def _jvp(x, lams, x_dot, lam_dots, axes, n_iter):
    """The Jacobian (of the iterations run) applied to a tangent; None tangents are zero."""
    x_dot = torch.zeros_like(x) if x_dot is None else x_dot
    lam_dots = [
        torch.zeros_like(v) if d is None else d for v, d in zip(lams, lam_dots, strict=True)
    ]
    if torch.compiler.is_compiling():
        return torch.ops.cupytv.prox_tvnd_jvp.default(x, lams, x_dot, lam_dots, list(axes), n_iter)
    return _ProxTVndJVP.apply(x, x_dot, Leaf(axes), n_iter, len(lams), *lams, *lam_dots)


def _setup_context(ctx, inputs, output):
    x, lams, axes, _, _ = inputs
    ctx.save_for_backward(x, output[1], *lams)
    ctx.save_for_forward(x, output[1], *lams)
    ctx.mark_non_differentiable(output[1])
    ctx.axes = axes


def _backward(ctx, grad_y, _grad_n_iter):
    x, n_iter, *lams = ctx.saved_tensors
    gx, *gl = _vjp(grad_y, x, lams, ctx.axes, n_iter)
    return gx, gl, None, None, None


def _vjp_setup_context(ctx, inputs, output):
    _, x, lams, axes, n_iter = inputs
    ctx.save_for_backward(x, n_iter, *lams)
    ctx.save_for_forward(x, n_iter, *lams)
    ctx.axes = axes


def _vjp_backward(ctx, grad_gx, *grad_gl):
    # Affine for the iterations run: the VJP's own VJP (w.r.t. g) is the JVP.
    x, n_iter, *lams = ctx.saved_tensors
    return _jvp(x, lams, grad_gx, list(grad_gl), ctx.axes, n_iter)


def _jvp_setup_context(ctx, inputs, output):
    x, lams, _, _, axes, n_iter = inputs
    ctx.save_for_backward(x, n_iter, *lams)
    ctx.save_for_forward(x, n_iter, *lams)
    ctx.axes = axes


def _jvp_backward(ctx, grad):
    # Linear in the tangents, constant in x and lam: the VJP, for the tangents only.
    x, n_iter, *lams = ctx.saved_tensors
    gx, *gl = _vjp(grad, x, lams, ctx.axes, n_iter)
    return gx, gl


_prox_tvnd.register_autograd(_backward, setup_context=_setup_context)
_prox_tvnd_vjp.register_autograd(
    lambda ctx, grads: (_vjp_backward(ctx, *grads), None, None, None, None),
    setup_context=_vjp_setup_context,
)
_prox_tvnd_jvp.register_autograd(
    lambda ctx, grad: (None, None, *_jvp_backward(ctx, grad), None, None),
    setup_context=_jvp_setup_context,
)


class _ProxTVnd(torch.autograd.Function):
    """``cupytv::prox_tvnd`` with forward mode and torch.func support (see ``_bridge.apply``)."""

    generate_vmap_rule = True  # the ops' registered vmap rules do the batching

    @staticmethod
    def forward(x, axes, max_iter, tol, *lams):
        return call(torch.ops.cupytv.prox_tvnd.default, x, list(lams), list(axes), max_iter, tol)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, axes, max_iter, tol, *lams = inputs
        _setup_context(ctx, (x, lams, axes, max_iter, tol), output)

    @staticmethod
    def backward(ctx, grad_y, grad_n_iter):
        gx, gl, *_ = _backward(ctx, grad_y, grad_n_iter)
        return gx, None, None, None, *gl

    @staticmethod
    def jvp(ctx, x_dot, _axes, _max_iter, _tol, *lam_dots):
        x, n_iter, *lams = ctx.saved_tensors
        return _jvp(x, lams, x_dot, list(lam_dots), ctx.axes, n_iter), None


class _ProxTVndVJP(torch.autograd.Function):
    """``cupytv::prox_tvnd_vjp``, differentiable (double backward, forward over reverse)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(g, x, axes, n_iter, *lams):
        op = torch.ops.cupytv.prox_tvnd_vjp.default
        return tuple(call(op, g, x, list(lams), list(axes), n_iter))

    @staticmethod
    def setup_context(ctx, inputs, output):
        g, x, axes, n_iter, *lams = inputs
        _vjp_setup_context(ctx, (g, x, lams, axes, n_iter), output)

    @staticmethod
    def backward(ctx, grad_gx, *grad_gl):
        return _vjp_backward(ctx, grad_gx, *grad_gl), None, None, None, *([None] * len(grad_gl))

    @staticmethod
    def jvp(ctx, g_dot, *_):
        x, n_iter, *lams = ctx.saved_tensors
        if g_dot is None:
            return (torch.zeros_like(x), *(torch.zeros_like(v) for v in lams))
        return tuple(_vjp(g_dot, x, lams, ctx.axes, n_iter))


class _ProxTVndJVP(torch.autograd.Function):
    """``cupytv::prox_tvnd_jvp``, differentiable (its VJP is the VJP, on the tangents)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, x_dot, axes, n_iter, m, *lams_and_dots):
        lams, lam_dots = list(lams_and_dots[:m]), list(lams_and_dots[m:])
        return call(
            torch.ops.cupytv.prox_tvnd_jvp.default, x, lams, x_dot, lam_dots, list(axes), n_iter
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, x_dot, axes, n_iter, m, *lams_and_dots = inputs
        _jvp_setup_context(ctx, (x, lams_and_dots[:m], x_dot, lams_and_dots[m:], axes, n_iter),
                           output)  # fmt: skip
        ctx.m = m

    @staticmethod
    def backward(ctx, grad):
        gx, gl = _jvp_backward(ctx, grad)
        return None, gx, None, None, None, *([None] * ctx.m), *gl

    @staticmethod
    def jvp(ctx, _x, x_dot_dot, _axes, _n_iter, _m, *dots):
        x, n_iter, *lams = ctx.saved_tensors
        return _jvp(x, lams, x_dot_dot, list(dots[ctx.m :]), ctx.axes, n_iter)


def prox_tv(x: Tensor, lam, axes, *, max_iter: int = DEFAULT_MAX_ITER, tol: float = DEFAULT_TOL):
    r"""Differentiable anisotropic TV prox over ``axes`` (an int or a sequence of axes).

    .. math::
        Y = \arg\min_Y \tfrac12\lVert Y - X\rVert^2 + \sum_i \lambda_i \sum_k |Y_{k+e_i} - Y_k|

    Args:
        x: a tensor on the CPU or a CUDA device (float16/bfloat16 computed in float32).
        lam: a number or tensor for every axis, or a tuple with one per axis (each broadcastable
            to x with the TV axes reduced to 1); differentiable.
        axes: the TV axes; one goes to :func:`prox_tv1d`, two to :func:`prox_tv2d`.
        max_iter, tol: the iteration limit and certified relative duality-gap tolerance.

    Returns:
        ``Y``, x's shape and dtype.

    Example:
        >>> import torch
        >>> from cupytv.torch import prox_tv
        >>> prox_tv(torch.zeros(2, 3, 4, 5), 0.1, axes=(1, 2, 3)).shape
        torch.Size([2, 3, 4, 5])
    """
    check_input(x)
    # The array API's checks, before int()/float() (which truncated axes=(1.5, 2, 3) and
    # max_iter=2.5 silently) and whatever the axis count (max_iter >= 1, as cupytv.prox_tv).
    axes_t = normalize_tv_axes(axes, x.dim())
    check_max_iter(max_iter, 1)
    check_tol(tol)
    if isinstance(lam, (tuple, list)) and len(lam) != len(axes_t):
        raise ValueError(
            f"lam: expected a scalar, a tensor, or one weight per axis ({len(axes_t)} for axes "
            f"{axes_t}), got a {type(lam).__name__} of length {len(lam)}"
        )
    if len(axes_t) == 1:
        if isinstance(lam, (tuple, list)):
            (lam,) = lam
        return prox_tv1d(x, lam, axes_t[0])
    if len(axes_t) == 2:
        return prox_tv2d(x, lam, axes_t, max_iter=max_iter, tol=tol)
    if isinstance(lam, (tuple, list)):
        lams = [lam_tensor(v, x, f"lam[{i}]") for i, v in enumerate(lam)]
    else:
        lams = [lam_tensor(lam, x)] * len(axes_t)
    cd = compute_dtype(x.dtype)
    layout = Layout(x, lams, axes_t)
    if isinstance(lam, (tuple, list)):
        lams = [layout.tensor(as_dtype(v, cd)) for v in lams]
    else:
        lams = [layout.tensor(as_dtype(lams[0], cd))] * len(axes_t)
    xc = layout.tensor(as_dtype(x, cd))
    axes_l = [layout.axis(int(a)) for a in axes_t]
    if torch.compiler.is_compiling():  # see _bridge.apply
        y, _ = _prox_tvnd(xc, lams, axes_l, int(max_iter), float(tol))
    else:
        y, _ = _ProxTVnd.apply(xc, Leaf(axes_l), int(max_iter), float(tol), *lams)
    return as_dtype(layout.restore(y), x.dtype)


__all__ = ["prox_tv"]
