"""What the TV layers share: the weight (fixed, or learnable through softplus, one per channel or
one for all) and the smooth / sharp modes of Yeh et al. (CVPR 2022)."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor, nn

from cupytv._validation import normalize_axis

MODES = ("smooth", "sharp")


def inverse_softplus(value: float) -> float:
    """The raw parameter whose softplus is ``value`` (> 0)."""
    # softplus(r) = log(1 + e^r)  =>  r = log(e^v - 1) = v + log(1 - e^-v), stable for large v.
    return value + math.log(-math.expm1(-value))


class TVLayer(nn.Module):
    """Base of TV1d / TV2d: subclasses define ``prox(x, lam)``."""

    def __init__(self, lam, num_channels, learnable, mode, channel_axis):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {list(MODES)}, got {mode!r}")
        # float() alone accepted True and "0.1" and failed on None or a list without naming lam.
        if isinstance(lam, (bool, str)):
            raise TypeError(f"lam: expected a real number, got {type(lam).__name__} {lam!r}")
        try:
            lam = float(lam)
        except (TypeError, ValueError):
            raise TypeError(f"lam: expected a real number, got {type(lam).__name__}") from None
        if not math.isfinite(lam) or lam < 0 or (learnable and lam == 0):
            need = "> 0 (softplus never reaches 0)" if learnable else ">= 0"
            raise ValueError(f"lam: expected a finite value {need}, got {lam}")
        if num_channels is not None and (
            isinstance(num_channels, bool)  # True is not one channel: torch.full fails on it
            or not isinstance(num_channels, numbers.Integral)
            or num_channels < 1
        ):
            raise ValueError(f"num_channels: expected a positive int or None, got {num_channels!r}")
        if isinstance(channel_axis, bool) or not isinstance(channel_axis, numbers.Integral):
            raise TypeError(f"channel_axis: expected an int, got {type(channel_axis).__name__}")
        num_channels = None if num_channels is None else int(num_channels)
        self.mode = mode
        self.learnable = learnable
        self.num_channels = num_channels
        self.channel_axis = channel_axis
        shape = () if num_channels is None else (num_channels,)
        if learnable:
            self.lam_raw = nn.Parameter(torch.full(shape, inverse_softplus(lam)))
        else:
            self.register_buffer("lam_fixed", torch.full(shape, lam))

    @property
    def lam(self) -> Tensor:
        """The weight(s) in use: softplus of the parameter, or the fixed buffer."""
        return nn.functional.softplus(self.lam_raw) if self.learnable else self.lam_fixed

    def lam_for(self, x: Tensor) -> Tensor:
        lam = self.lam
        if self.num_channels is None:
            return lam
        # normalize_axis, not `% x.dim()`: an out-of-range channel_axis wrapped around silently
        # (and a 0-d x divided by zero).
        if x.dim() == 0:
            raise ValueError("x: expected a tensor with a channel axis, got a 0-d tensor")
        axis = normalize_axis(self.channel_axis, x.dim(), "channel_axis")
        if x.shape[axis] != self.num_channels:
            raise ValueError(
                f"x: expected {self.num_channels} channels along axis {self.channel_axis}, got "
                f"shape {tuple(x.shape)}"
            )
        shape = [1] * x.dim()
        shape[axis] = self.num_channels
        return lam.view(shape)

    def forward(self, x: Tensor) -> Tensor:
        lam = self.lam_for(x).to(device=x.device)
        y = self.prox(x, lam)
        return y if self.mode == "smooth" else 2 * x - y

    def prox(self, x: Tensor, lam: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        channels = "one lam" if self.num_channels is None else f"num_channels={self.num_channels}"
        kind = "learnable (softplus)" if self.learnable else "fixed"
        return f"mode={self.mode!r}, {channels}, {kind}"
