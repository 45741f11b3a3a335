"""What the TV layers share: the weight (fixed, or learnable through softplus, one per channel or
one for all) and the smooth / sharp modes of Yeh et al. (CVPR 2022)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

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
        lam = float(lam)
        if not math.isfinite(lam) or lam < 0 or (learnable and lam == 0):
            need = "> 0 (softplus never reaches 0)" if learnable else ">= 0"
            raise ValueError(f"lam: expected a finite value {need}, got {lam}")
        if num_channels is not None and (not isinstance(num_channels, int) or num_channels < 1):
            raise ValueError(f"num_channels: expected a positive int or None, got {num_channels!r}")
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
        axis = self.channel_axis % x.dim()
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
