r"""1D TV prox as a differentiable PyTorch op and ``nn.Module`` (TV-Smooth / TV-Sharp).

The op is registered with ``torch.library.custom_op`` (forward and backward both, each with a
fake implementation), so ``torch.compile(fullgraph=True)`` traces through it; the backward is
cupytv's O(n) VJP from the forward's output.
"""

from __future__ import annotations

import torch
from torch import Tensor

import cupytv
from cupytv._validation import normalize_axis
from cupytv.torch._bridge import (
    check_input,
    compute_dtype,
    from_array,
    lam_tensor,
    on_stream,
    to_array,
)
from cupytv.torch._modules import TVLayer
from cupytv.tv1d import _kernel_name


@torch.library.custom_op("cupytv::prox_tv1d", mutates_args=())
def _prox_tv1d(x: Tensor, lam: Tensor, axis: int, method: str) -> Tensor:
    with on_stream(x):
        return from_array(cupytv.prox_tv1d(to_array(x), to_array(lam), axis, method=method))


@_prox_tv1d.register_fake
def _(x, lam, axis, method):
    return torch.empty_like(x)


@torch.library.custom_op("cupytv::prox_tv1d_vjp", mutates_args=())
def _prox_tv1d_vjp(g: Tensor, y: Tensor, lam: Tensor, axis: int) -> tuple[Tensor, Tensor]:
    with on_stream(y):
        gx, gl = cupytv.prox_tv1d_vjp(
            None, to_array(lam), to_array(g.contiguous()), axis, y=to_array(y)
        )
    return from_array(gx), from_array(gl).to(lam.dtype)


@_prox_tv1d_vjp.register_fake
def _(g, y, lam, axis):
    return torch.empty_like(y), torch.empty_like(lam)


def _setup_context(ctx, inputs, output):
    _, lam, axis, _ = inputs
    ctx.save_for_backward(output, lam)
    ctx.axis = axis


def _backward(ctx, grad):
    y, lam = ctx.saved_tensors
    gx, gl = torch.ops.cupytv.prox_tv1d_vjp(grad, y, lam, ctx.axis)
    return gx, (gl if ctx.needs_input_grad[1] else None), None, None


_prox_tv1d.register_autograd(_backward, setup_context=_setup_context)


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
    cd = compute_dtype(x.dtype)  # .to() of a tensor already in cd is the tensor itself
    return _prox_tv1d(x.to(cd), lam_tensor(lam, x).to(cd), axis, method).to(x.dtype)


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
