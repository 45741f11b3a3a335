r"""1D TV prox as a differentiable PyTorch op and ``nn.Module`` (TV-Smooth / TV-Sharp).

The op is registered with ``torch.library.custom_op`` (forward and backward both, each with a
fake implementation and a vmap rule), so ``torch.compile(fullgraph=True)`` traces through it; the
backward is cupytv's O(n) VJP from the forward's output. In eager mode the op runs through an
``autograd.Function`` twin that adds forward mode and torch.func support (``_bridge.apply``): the
JVP and the VJP's own derivative are the same VJP kernel applied to another vector.
"""

from __future__ import annotations

import torch
from torch import Tensor

import cupytv
from cupytv._validation import normalize_axis
from cupytv.torch._bridge import (
    Layout,
    apply,
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
from cupytv.torch._modules import TVLayer
from cupytv.tv1d import _kernel_name


@custom_op("cupytv::prox_tv1d")
def _prox_tv1d(x: Tensor, lam: Tensor, axis: int, method: str) -> Tensor:
    with on_stream(x):
        return from_array(cupytv.prox_tv1d(to_array(x), to_array(lam), axis, method=method))


@_prox_tv1d.register_fake
def _(x, lam, axis, method):
    return x.new_empty(x.shape)


@_prox_tv1d.register_vmap
def _(info, in_dims, x, lam, axis, method):
    # Every fiber is independent: the vmapped dimension becomes one more batch dimension.
    ndim = len(unbatched_shape(x, in_dims[0]))
    x, lam = (
        batch_first(t, d, info.batch_size, ndim) for t, d in zip((x, lam), in_dims[:2], strict=True)
    )
    return _prox_tv1d(x, lam, axis % ndim + 1, method), 0


@custom_op("cupytv::prox_tv1d_vjp")
def _prox_tv1d_vjp(g: Tensor, y: Tensor, lam: Tensor, axis: int) -> tuple[Tensor, Tensor]:
    with on_stream(y):
        gx, gl = cupytv.prox_tv1d_vjp(
            None, to_array(lam), to_array(g.contiguous()), axis, y=to_array(y)
        )
    return from_array(gx), from_array(gl).to(lam.dtype)


@_prox_tv1d_vjp.register_fake
def _(g, y, lam, axis):
    return y.new_empty(y.shape), lam.new_empty(lam.shape)


@_prox_tv1d_vjp.register_vmap
def _(info, in_dims, g, y, lam, axis):
    # lam is expanded to the batch even when not vmapped: each batch element's grad_lam is its own.
    ndim = len(unbatched_shape(y, in_dims[1]))
    lam_shape = unbatched_shape(lam, in_dims[2])
    g, y, lam = (
        batch_first(t, d, info.batch_size, ndim)
        for t, d in zip((g, y, lam), in_dims[:3], strict=True)
    )
    gx, gl = _prox_tv1d_vjp(g, y, lam, axis % ndim + 1)
    return (gx, gl.reshape(info.batch_size, *lam_shape)), (0, 0)


def _jump_turns(y: Tensor, axis: int) -> Tensor:
    """:func:`cupytv.tv1d.jump_turns` on a tensor (differentiable code, y's device): per sample,
    the sign of the step out of it minus that of the step into it; its mean over a segment is
    ``dy/dlam`` there."""
    steps = torch.sign(torch.diff(y, dim=axis))
    edge = torch.zeros_like(steps.narrow(axis, 0, 1))
    return torch.cat([steps, edge], axis) - torch.cat([edge, steps], axis)


def _jacobian_apply(y, lam, axis, tx, tlam):
    r"""``J (tx, tlam) = P (tx + tlam * turns)``, the prox's Jacobian applied to a tangent of
    (x, lam): y is affine in (x, lam) on each segment S (``y_S = mean_S(x) + lam (s_out - s_in)
    / |S|``), and P, the average over each segment, is the VJP's grad_x. P is symmetric, so this
    is also the VJP's own VJP (cotangents of grad_x and grad_lam in, cotangent of g out). One
    VJP kernel call; fibers with lam == 0 are the identity there, which is the same formula."""
    g = torch.zeros_like(y) if tx is None else tx
    if tlam is not None:
        g = g + tlam * _jump_turns(y, axis)
    return _vjp(g, y, lam, axis)[0]


def _vjp(g, y, lam, axis):
    return apply(_ProxTV1dVJP, torch.ops.cupytv.prox_tv1d_vjp.default, g, y, lam, axis)


def _setup_context(ctx, inputs, output):
    _, lam, axis, _ = inputs
    ctx.save_for_backward(output, lam)
    ctx.save_for_forward(output, lam)
    ctx.axis = axis


def _backward(ctx, grad):
    y, lam = ctx.saved_tensors
    gx, gl = _vjp(grad, y, lam, ctx.axis)
    return gx, (gl if ctx.needs_input_grad[1] else None), None, None


def _forward_mode(ctx, tx, tlam, _axis, _method):
    y, lam = ctx.saved_tensors
    return _jacobian_apply(y, lam, ctx.axis, tx, tlam)


def _vjp_setup_context(ctx, inputs, output):
    _, y, lam, axis = inputs
    ctx.save_for_backward(y, lam)
    ctx.save_for_forward(y, lam)
    ctx.axis = axis


def _vjp_backward(ctx, grad_gx, grad_gl):
    # The VJP is linear in g and, for a fixed segment structure, constant in y and lam (their
    # derivative is zero almost everywhere): only g gets a gradient.
    y, lam = ctx.saved_tensors
    return _jacobian_apply(y, lam, ctx.axis, grad_gx, grad_gl), None, None, None


def _vjp_forward_mode(ctx, tg, _ty, _tlam, _axis):
    y, lam = ctx.saved_tensors
    if tg is None:
        return torch.zeros_like(y), torch.zeros_like(lam)
    return _vjp(tg, y, lam, ctx.axis)


_prox_tv1d.register_autograd(_backward, setup_context=_setup_context)
_prox_tv1d_vjp.register_autograd(_vjp_backward, setup_context=_vjp_setup_context)


class _ProxTV1d(torch.autograd.Function):
    """``cupytv::prox_tv1d`` with forward mode and torch.func support (see ``_bridge.apply``)."""

    generate_vmap_rule = True  # the ops' registered vmap rules do the batching

    @staticmethod
    def forward(x, lam, axis, method):
        return call(torch.ops.cupytv.prox_tv1d.default, x, lam, axis, method)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)
    jvp = staticmethod(_forward_mode)


class _ProxTV1dVJP(torch.autograd.Function):
    """``cupytv::prox_tv1d_vjp``, differentiable (double backward, forward over reverse)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(g, y, lam, axis):
        return call(torch.ops.cupytv.prox_tv1d_vjp.default, g, y, lam, axis)

    setup_context = staticmethod(_vjp_setup_context)
    backward = staticmethod(_vjp_backward)
    jvp = staticmethod(_vjp_forward_mode)


def prox_tv1d(x: Tensor, lam, axis: int = -1, *, method: str = "auto") -> Tensor:
    r"""Differentiable 1D TV prox of every fiber of ``x`` along ``axis``.

    .. math::
        y = \arg\min_y \tfrac12 \lVert y - x\rVert^2 + \lambda \sum_k |y_{k+1} - y_k|

    Args:
        x: tensor of shape ``(*, n, *)`` on the CPU or a CUDA device; float16/bfloat16 are
            computed in float32 and returned in their dtype.
        lam: a number or a tensor on x's device broadcastable to x with ``axis`` reduced to 1
            (per channel ``(1, C, 1)``, per sample ``(N, 1, 1)``, ...); differentiable.
        axis: the axis the fibers run along.
        method: as for :func:`cupytv.prox_tv1d`.

    Returns:
        ``y``, x's shape and dtype. Gradients flow to x and to a tensor lam (reduced to its
        shape).

    Example:
        >>> import torch
        >>> from cupytv.torch import prox_tv1d
        >>> x = torch.tensor([0.0, 0.0, 3.0, 3.0])
        >>> prox_tv1d(x, 1.0)
        tensor([0.5000, 0.5000, 2.5000, 2.5000])
    """
    check_input(x)
    # Checked here, not only in the array API: the op's schema refuses a float axis or a None
    # method with a RuntimeError, and fake (meta) tensors never reach the array API.
    if x.dim() == 0:
        raise ValueError("x: expected an array with at least 1 dimension, got a 0-d array")
    axis = normalize_axis(axis, x.dim())
    _kernel_name(method)
    cd = compute_dtype(x.dtype)
    lam = lam_tensor(lam, x)
    layout = Layout(x, (lam,), (axis,))
    op = torch.ops.cupytv.prox_tv1d.default
    y = apply(_ProxTV1d, op, layout.tensor(as_dtype(x, cd)),
              layout.tensor(as_dtype(lam, cd)), layout.axis(axis), method)  # fmt: skip
    return as_dtype(layout.restore(y), x.dtype)


class TV1d(TVLayer):
    """TV-Smooth (``mode="smooth"``: y = prox(x)) or TV-Sharp (``"sharp"``: y = 2x - prox(x))
    along one axis, with a fixed or learnable weight (see :class:`cupytv.torch.TV2d`).

    Example:
        >>> import torch
        >>> from cupytv.torch import TV1d
        >>> layer = TV1d(0.1, num_channels=3)  # input (N, 3, L), one learnable lam per channel
        >>> layer(torch.randn(2, 3, 50)).shape
        torch.Size([2, 3, 50])
    """

    def __init__(
        self,
        lam: float = 0.1,
        *,
        num_channels: int | None = None,
        learnable: bool = True,
        mode: str = "smooth",
        axis: int = -1,
        channel_axis: int = 1,
        method: str = "auto",
    ):
        super().__init__(lam, num_channels, learnable, mode, channel_axis)
        self.axis = axis
        self.method = method

    layout = "(N, C, L)"

    @property
    def tv_axes(self) -> tuple[int, ...]:
        return (self.axis,)

    def prox(self, x: Tensor, lam: Tensor) -> Tensor:
        return prox_tv1d(x, lam, self.axis, method=self.method)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, axis={self.axis}, method={self.method!r}"


__all__ = ["TV1d", "prox_tv1d"]
