r"""The weighted TV value as a differentiable torch function (a loss or regulariser term)."""

from __future__ import annotations

import torch
from torch import Tensor

from cupytv._validation import normalize_tv_axes
from cupytv.torch._bridge import check_input, compute_dtype, lam_tensor


def tv_norm(x: Tensor, lam=1.0, axes=-1) -> Tensor:
    r"""Weighted anisotropic TV of every fiber / slice / volume of ``x`` over ``axes``.

    .. math::
        \mathrm{TV}_\lambda(x) = \sum_k \lambda_k \sum_i |x_{i + e_k} - x_i|

    Plain torch operations, so every autograd feature works (forward mode, ``torch.func``,
    ``torch.compile``); the subgradient of ``|0|`` is 0. ``tv_norm(x, lam, (-2, -1)).mean()`` is
    the TV loss of kornia's ``total_variation`` with weights.

    Args:
        x: tensor, float16/bfloat16 summed in float32.
        lam: a number or a tensor broadcastable to x with the TV axes reduced to 1, or a tuple
            of one such per axis; differentiable.
        axes: an int or a sequence of distinct ints (default: the last axis).

    Returns:
        x's shape without the TV axes, x's dtype; NaN for a slice holding NaN or ±Inf.

    Example:
        >>> import torch
        >>> from cupytv.torch import tv_norm
        >>> x = torch.tensor([[0.0, 1.0, 4.0], [2.0, 2.0, 0.0]], requires_grad=True)
        >>> tv_norm(x).sum().backward()
        >>> x.grad
        tensor([[-1.,  0.,  1.],
                [ 0.,  1., -1.]])
    """
    check_input(x)
    tv_axes = normalize_tv_axes(axes, x.dim())
    if isinstance(lam, (tuple, list)):
        if len(lam) != len(tv_axes):
            raise ValueError(
                f"lam: expected a number, a tensor, or one weight per axis ({len(tv_axes)} for "
                f"axes {tv_axes}), got a {type(lam).__name__} of length {len(lam)}"
            )
        lams = [lam_tensor(w, x, f"lam[{k}]") for k, w in enumerate(lam)]
    else:
        lams = [lam_tensor(lam, x)] * len(tv_axes)
    reduced = [1 if d in tv_axes else s for d, s in enumerate(x.shape)]
    for k, w in enumerate(lams):
        _check_weight(w, reduced, f"lam[{k}]" if isinstance(lam, (tuple, list)) else "lam")
    xc = x.to(compute_dtype(x.dtype))
    total = sum(
        w * torch.diff(xc, dim=a).abs().sum(dim=tv_axes, keepdim=True)
        for a, w in zip(tv_axes, lams, strict=True)
    )
    # As cupytv.tv_norm: one answer, NaN, for a slice holding any non-finite value.
    finite = torch.isfinite(xc).all(dim=tv_axes, keepdim=True)
    total = torch.where(finite, total, torch.nan)
    return total.squeeze(tv_axes).to(x.dtype)


def _check_weight(w: Tensor, reduced: list[int], name: str) -> None:
    try:
        fits = list(torch.broadcast_shapes(w.shape, reduced)) == reduced
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"{name}: expected a number or a tensor broadcastable to {tuple(reduced)} (x's shape "
            f"with the TV axes reduced to 1), got shape {tuple(w.shape)}"
        )
    # A value check reads the tensor (a device sync on CUDA): eager only, a compiled graph
    # would break on it.
    ok = torch.isfinite(w.detach()) & (w.detach() >= 0)
    if not torch.compiler.is_compiling() and not bool(ok.all()):
        bad = w.detach()[~ok].flatten()[0]
        raise ValueError(f"{name}: expected finite values >= 0, got {bad.item():.6g}")
