r"""2D TV prox as a differentiable PyTorch op and ``nn.Module`` (TV-Smooth / TV-Sharp).

Forward: :func:`cupytv.prox_tv2d`; it also returns each slice's iteration count, which the
backward (:func:`cupytv.prox_tv2d_vjp`) replays, so autograd keeps only x, lam and the counts.
Both are ``torch.library`` custom ops with fake implementations (``torch.compile`` traces them)
and vmap rules; so is the forward mode (:func:`cupytv.prox_tv2d_jvp`), which the eager
``autograd.Function`` twins (``_bridge.apply``) use for JVPs and double backward.
Host synchronisation: lam is read on the host to validate it (a few bytes per call), and the
backward reads the largest iteration count to size its record.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

import cupytv
from cupytv import tv2d
from cupytv._validation import check_max_iter, check_tol, normalize_axes
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
from cupytv.tv2d import DEFAULT_MAX_ITER, DEFAULT_TOL, momentum_flag, prox_tv2d_jvp


def _batch_shape(x: Tensor, axes: list[int]) -> list[int]:
    tv = {a % x.dim() for a in axes}
    return [n for d, n in enumerate(x.shape) if d not in tv]


@custom_op("cupytv::prox_tv2d")
def _prox_tv2d(
    x: Tensor, lam0: Tensor, lam1: Tensor, axes: list[int], max_iter: int, tol: float, method: str
) -> tuple[Tensor, Tensor]:
    # One weight for both axes arrives as one tensor twice: passed as one, so that messages
    # about it say "lam", as the caller wrote it, not "lam[0]".
    lam = to_array(lam0) if lam0 is lam1 else (to_array(lam0), to_array(lam1))
    with on_stream(x):
        y, problem = tv2d._solve(to_array(x), lam, tuple(axes), max_iter, tol, method)
        return from_array(y), from_array(problem.batch(problem.n_iter))


@_prox_tv2d.register_fake
def _(x, lam0, lam1, axes, max_iter, tol, method):
    return x.new_empty(x.shape), x.new_empty(_batch_shape(x, axes), dtype=torch.int32)


@_prox_tv2d.register_vmap
def _(info, in_dims, x, lam0, lam1, axes, max_iter, tol, method):
    # Every slice is independent: the vmapped dimension becomes one more batch dimension.
    ndim = len(unbatched_shape(x, in_dims[0]))
    x, lam0, lam1 = (batch_first(t, d, info.batch_size, ndim)
                     for t, d in zip((x, lam0, lam1), in_dims[:3], strict=True))  # fmt: skip
    axes = [a % ndim + 1 for a in axes]
    return _prox_tv2d(x, lam0, lam1, axes, max_iter, tol, method), (0, 0)


@custom_op("cupytv::prox_tv2d_vjp")
def _prox_tv2d_vjp(
    g: Tensor, x: Tensor, lam0: Tensor, lam1: Tensor, axes: list[int], n_iter: Tensor, method: str
) -> tuple[Tensor, Tensor, Tensor]:
    with on_stream(x):
        gx, (g0, g1) = cupytv.prox_tv2d_vjp(
            to_array(x),
            (to_array(lam0), to_array(lam1)),
            to_array(g.contiguous()),
            tuple(axes),
            n_iter=to_array(n_iter),
            method=method,
        )
    return from_array(gx), from_array(g0).to(lam0.dtype), from_array(g1).to(lam1.dtype)


@_prox_tv2d_vjp.register_fake
def _(g, x, lam0, lam1, axes, n_iter, method):
    return x.new_empty(x.shape), lam0.new_empty(lam0.shape), lam1.new_empty(lam1.shape)


@_prox_tv2d_vjp.register_vmap
def _(info, in_dims, g, x, lam0, lam1, axes, n_iter, method):
    # Everything is expanded to the batch: each batch element's grad_lam is its own.
    size, ndim = info.batch_size, len(unbatched_shape(x, in_dims[1]))
    lam_shapes = [unbatched_shape(t, d) for t, d in zip((lam0, lam1), in_dims[2:4], strict=True)]
    g, x, lam0, lam1 = (batch_first(t, d, size, ndim)
                        for t, d in zip((g, x, lam0, lam1), in_dims[:4], strict=True))  # fmt: skip
    n_iter = batch_first(n_iter, in_dims[5], size, ndim - 2)
    gx, g0, g1 = _prox_tv2d_vjp(g, x, lam0, lam1, [a % ndim + 1 for a in axes], n_iter, method)
    g0, g1 = (gl.reshape(size, *shape) for gl, shape in zip((g0, g1), lam_shapes, strict=True))
    return (gx, g0, g1), (0, 0, 0)


@custom_op("cupytv::prox_tv2d_jvp")
def _prox_tv2d_jvp(
    x: Tensor,
    lam0: Tensor,
    lam1: Tensor,
    x_dot: Tensor,
    lam0_dot: Tensor,
    lam1_dot: Tensor,
    axes: list[int],
    n_iter: Tensor,
    method: str,
) -> Tensor:
    with on_stream(x):
        y_dot = prox_tv2d_jvp(
            to_array(x), (to_array(lam0), to_array(lam1)), to_array(x_dot.contiguous()),
            (to_array(lam0_dot), to_array(lam1_dot)), tuple(axes), n_iter=to_array(n_iter),
            method=method,
        )  # fmt: skip
    return from_array(y_dot)


@_prox_tv2d_jvp.register_fake
def _(x, lam0, lam1, x_dot, lam0_dot, lam1_dot, axes, n_iter, method):
    return x.new_empty(x.shape)


@_prox_tv2d_jvp.register_vmap
def _(info, in_dims, x, lam0, lam1, x_dot, lam0_dot, lam1_dot, axes, n_iter, method):
    size, ndim = info.batch_size, len(unbatched_shape(x, in_dims[0]))
    tensors = (x, lam0, lam1, x_dot, lam0_dot, lam1_dot)
    batched = [batch_first(t, d, size, ndim) for t, d in zip(tensors, in_dims[:6], strict=True)]
    n_iter = batch_first(n_iter, in_dims[7], size, ndim - 2)
    axes = [a % ndim + 1 for a in axes]
    return _prox_tv2d_jvp(*batched, axes, n_iter, method), 0


def _vjp(g, x, lam0, lam1, axes, n_iter, method):
    op = torch.ops.cupytv.prox_tv2d_vjp.default
    return apply(_ProxTV2dVJP, op, g, x, lam0, lam1, axes, n_iter, method)


def _jvp(x, lam0, lam1, x_dot, lam0_dot, lam1_dot, axes, n_iter, method):
    """The Jacobian (of the iterations run) applied to a tangent; None tangents are zero."""
    x_dot = torch.zeros_like(x) if x_dot is None else x_dot
    lam0_dot = torch.zeros_like(lam0) if lam0_dot is None else lam0_dot
    lam1_dot = torch.zeros_like(lam1) if lam1_dot is None else lam1_dot
    op = torch.ops.cupytv.prox_tv2d_jvp.default
    return apply(_ProxTV2dJVP, op, x, lam0, lam1, x_dot, lam0_dot, lam1_dot, axes, n_iter, method)


def _setup_context(ctx, inputs, output):
    x, lam0, lam1, axes, _, _, method = inputs
    ctx.save_for_backward(x, lam0, lam1, output[1])
    ctx.save_for_forward(x, lam0, lam1, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.axes, ctx.method = axes, method


def _backward(ctx, grad_y, _grad_n_iter):
    x, lam0, lam1, n_iter = ctx.saved_tensors
    gx, g0, g1 = _vjp(grad_y, x, lam0, lam1, ctx.axes, n_iter, ctx.method)
    need = ctx.needs_input_grad
    return gx, (g0 if need[1] else None), (g1 if need[2] else None), None, None, None, None


def _forward_mode(ctx, x_dot, lam0_dot, lam1_dot, *_):
    x, lam0, lam1, n_iter = ctx.saved_tensors
    return _jvp(x, lam0, lam1, x_dot, lam0_dot, lam1_dot, ctx.axes, n_iter, ctx.method), None


def _vjp_setup_context(ctx, inputs, output):
    _, x, lam0, lam1, axes, n_iter, method = inputs
    ctx.save_for_backward(x, lam0, lam1, n_iter)
    ctx.save_for_forward(x, lam0, lam1, n_iter)
    ctx.axes, ctx.method = axes, method


def _vjp_backward(ctx, grad_gx, grad_g0, grad_g1):
    # For the iterations run the map is affine: the VJP is linear in g and constant in x and lam
    # (zero derivative almost everywhere), and its own VJP is the JVP.
    x, lam0, lam1, n_iter = ctx.saved_tensors
    grad_g = _jvp(x, lam0, lam1, grad_gx, grad_g0, grad_g1, ctx.axes, n_iter, ctx.method)
    return grad_g, None, None, None, None, None, None


def _vjp_forward_mode(ctx, g_dot, *_):
    x, lam0, lam1, n_iter = ctx.saved_tensors
    if g_dot is None:
        return torch.zeros_like(x), torch.zeros_like(lam0), torch.zeros_like(lam1)
    return _vjp(g_dot, x, lam0, lam1, ctx.axes, n_iter, ctx.method)


def _jvp_setup_context(ctx, inputs, output):
    x, lam0, lam1, _, _, _, axes, n_iter, method = inputs
    ctx.save_for_backward(x, lam0, lam1, n_iter)
    ctx.save_for_forward(x, lam0, lam1, n_iter)
    ctx.axes, ctx.method = axes, method


def _jvp_backward(ctx, grad):
    # Linear in the tangents, constant in x and lam: the VJP, for the tangents only.
    x, lam0, lam1, n_iter = ctx.saved_tensors
    gx, g0, g1 = _vjp(grad, x, lam0, lam1, ctx.axes, n_iter, ctx.method)
    return None, None, None, gx, g0, g1, None, None, None


def _jvp_forward_mode(ctx, _x, _lam0, _lam1, x_dot, lam0_dot, lam1_dot, *_):
    x, lam0, lam1, n_iter = ctx.saved_tensors
    return _jvp(x, lam0, lam1, x_dot, lam0_dot, lam1_dot, ctx.axes, n_iter, ctx.method)


_prox_tv2d.register_autograd(_backward, setup_context=_setup_context)
_prox_tv2d_vjp.register_autograd(_vjp_backward, setup_context=_vjp_setup_context)
_prox_tv2d_jvp.register_autograd(_jvp_backward, setup_context=_jvp_setup_context)


class _ProxTV2d(torch.autograd.Function):
    """``cupytv::prox_tv2d`` with forward mode and torch.func support (see ``_bridge.apply``)."""

    generate_vmap_rule = True  # the ops' registered vmap rules do the batching

    @staticmethod
    def forward(x, lam0, lam1, axes, max_iter, tol, method):
        op = torch.ops.cupytv.prox_tv2d.default
        return call(op, x, lam0, lam1, list(axes), max_iter, tol, method)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)
    jvp = staticmethod(_forward_mode)


class _ProxTV2dVJP(torch.autograd.Function):
    """``cupytv::prox_tv2d_vjp``, differentiable (double backward, forward over reverse)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(g, x, lam0, lam1, axes, n_iter, method):
        op = torch.ops.cupytv.prox_tv2d_vjp.default
        return call(op, g, x, lam0, lam1, list(axes), n_iter, method)

    setup_context = staticmethod(_vjp_setup_context)
    backward = staticmethod(_vjp_backward)
    jvp = staticmethod(_vjp_forward_mode)


class _ProxTV2dJVP(torch.autograd.Function):
    """``cupytv::prox_tv2d_jvp``, differentiable (reverse over forward, forward over forward)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, lam0, lam1, x_dot, lam0_dot, lam1_dot, axes, n_iter, method):
        op = torch.ops.cupytv.prox_tv2d_jvp.default
        return call(op, x, lam0, lam1, x_dot, lam0_dot, lam1_dot, list(axes), n_iter, method)

    setup_context = staticmethod(_jvp_setup_context)
    backward = staticmethod(_jvp_backward)
    jvp = staticmethod(_jvp_forward_mode)


def prox_tv2d(
    x: Tensor,
    lam,
    axes=(-2, -1),
    *,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    method: str = "auto",
    return_n_iter: bool = False,
):
    r"""Differentiable anisotropic 2D TV prox of every slice of ``x`` over ``axes``.

    .. math::
        Y = \arg\min_Y \tfrac12\lVert Y - X\rVert^2 + \lambda_0 \sum |Y_{i+1,j} - Y_{i,j}|
            + \lambda_1 \sum |Y_{i,j+1} - Y_{i,j}|

    solved as :func:`cupytv.prox_tv2d` does (certified duality-gap stopping at ``tol``); the
    gradient is exact for the iterations each slice ran.

    Args:
        x: tensor ``(*, H, W)`` (any two axes) on the CPU or a CUDA device; float16/bfloat16
            are computed in float32.
        lam: a number or a tensor on x's device broadcastable to x with both axes reduced to 1
            (per channel ``(1, C, 1, 1)``, per sample ``(N, 1, 1, 1)``, both ``(N, C, 1, 1)``),
            or a tuple ``(lam0, lam1)`` of such (along ``axes[0]``, ``axes[1]``);
            differentiable.
        axes, max_iter, tol, method: as for :func:`cupytv.prox_tv2d` (``tol=0``: exactly
            ``max_iter`` iterations, the seed's fixed-iteration layer).
        return_n_iter: also return the per-slice iteration counts (int32, batch shape).

    Returns:
        ``Y`` (x's shape and dtype), or ``(Y, n_iter)``.

    Example:
        >>> import torch
        >>> from cupytv.torch import prox_tv2d
        >>> x = torch.tensor([[0.0, 4.0], [0.0, 4.0]])
        >>> prox_tv2d(x, 1.0, tol=1e-9)
        tensor([[1., 3.],
                [1., 3.]])
    """
    check_input(x)
    # Checked before the int()/float() conversions below, which truncated axes=(1.5, 2) and
    # max_iter=2.5 and accepted tol="1e-3" or True silently.
    axes_list = list(normalize_axes(axes, x.dim()))
    momentum_flag(method)
    max_iter, tol = check_max_iter(max_iter, 0), check_tol(tol)
    if isinstance(lam, (tuple, list)):
        if len(lam) != 2:
            raise ValueError(f"lam: expected a number, a tensor or a pair, got {len(lam)} items")
        lam0, lam1 = lam_tensor(lam[0], x, "lam[0]"), lam_tensor(lam[1], x, "lam[1]")
    else:
        lam0 = lam1 = lam_tensor(lam, x)
    cd = compute_dtype(x.dtype)
    layout = Layout(x, (lam0, lam1), axes_list)
    lam0, lam1 = ((layout.tensor(as_dtype(lam0, cd)), layout.tensor(as_dtype(lam1, cd)))
                  if lam1 is not lam0 else (layout.tensor(as_dtype(lam0, cd)),) * 2)  # fmt: skip
    y, n_iter = apply(_ProxTV2d, torch.ops.cupytv.prox_tv2d.default,
                      layout.tensor(as_dtype(x, cd)), lam0, lam1,
                      [layout.axis(a) for a in axes_list], max_iter, tol, method)  # fmt: skip
    y = as_dtype(layout.restore(y), x.dtype)
    return (y, layout.restore_batch(n_iter, axes_list)) if return_n_iter else y


class TV2d(TVLayer):
    """A 2D TV layer: TV-Smooth (``mode="smooth"``: Y = prox(X)) or TV-Sharp (``"sharp"``:
    Y = 2X - prox(X)), as in Yeh et al., *Total Variation Optimization Layers for Computer
    Vision*, CVPR 2022.

    Args:
        lam: the initial weight (> 0 when learnable), or a pair ``(lam0, lam1)``: one weight
            per axis (along ``axes[0]``, ``axes[1]``), as :func:`prox_tv2d` takes; each
            learned separately (``layer.lam[..., k]``).
        num_channels: one weight (or pair) per channel (along ``channel_axis``), or None for
            one weight.
        learnable: a ``softplus``-parametrised ``nn.Parameter`` (True), or a fixed buffer.
        mode: ``"smooth"`` or ``"sharp"``.
        axes, max_iter, tol, method: as for :func:`prox_tv2d`.
        channel_axis: where the channels are (1 for NCHW).

    Example:
        >>> import torch
        >>> from cupytv.torch import TV2d
        >>> layer = TV2d(0.1, num_channels=3, mode="sharp")
        >>> layer(torch.randn(2, 3, 16, 16)).shape
        torch.Size([2, 3, 16, 16])
    """

    def __init__(
        self,
        lam: float = 0.1,
        *,
        num_channels: int | None = None,
        learnable: bool = True,
        mode: str = "smooth",
        axes=(-2, -1),
        channel_axis: int = 1,
        max_iter: int = DEFAULT_MAX_ITER,
        tol: float = DEFAULT_TOL,
        method: str = "auto",
    ):
        super().__init__(lam, num_channels, learnable, mode, channel_axis, pair_ok=True)
        if isinstance(axes, str) or not isinstance(axes, Sequence) or len(axes) != 2:
            # tuple(axes) below failed on an int with "'int' object is not iterable".
            raise ValueError(f"axes: expected a pair of distinct axes, got {axes!r}")
        self.axes = tuple(axes)
        self.max_iter, self.tol, self.method = max_iter, tol, method

    layout = "(N, C, H, W)"

    @property
    def tv_axes(self) -> tuple[int, ...]:
        return self.axes

    def prox(self, x: Tensor, lam) -> Tensor:
        return prox_tv2d(x, lam, self.axes, max_iter=self.max_iter, tol=self.tol,
                         method=self.method)  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, axes={self.axes}, max_iter={self.max_iter}, tol={self.tol}, "
            f"method={self.method!r}"
        )


__all__ = ["TV2d", "prox_tv2d"]
