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


def _check_weight(lam, learnable: bool, name: str = "lam") -> float:
    """One initial weight as a float: finite, >= 0, and > 0 when learnable (softplus > 0)."""
    # float() alone accepted True and "0.1" and failed on None or a list without naming lam.
    if isinstance(lam, (bool, str)):
        raise TypeError(f"{name}: expected a real number, got {type(lam).__name__} {lam!r}")
    try:
        lam = float(lam)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a real number, got {type(lam).__name__}") from None
    if not math.isfinite(lam) or lam < 0 or (learnable and lam == 0):
        need = "> 0 (softplus never reaches 0)" if learnable else ">= 0"
        raise ValueError(f"{name}: expected a finite value {need}, got {lam}")
    return lam


class TVLayer(nn.Module):
    """Base of TV1d / TV2d: subclasses define ``prox(x, lam)``, ``tv_axes`` (the axes the TV
    runs over) and ``layout`` (the input's layout, for messages); a subclass whose prox takes one
    weight per TV axis passes ``pair_ok=True`` and then accepts ``lam=(lam0, lam1)``."""

    layout = "(N, C, ...)"

    def __init__(self, lam, num_channels, learnable, mode, channel_axis, pair_ok=False):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {list(MODES)}, got {mode!r}")
        self.pair = pair_ok and isinstance(lam, (tuple, list))
        if self.pair:
            if len(lam) != 2:
                raise TypeError(
                    f"lam: expected a real number or a pair (lam0, lam1), got "
                    f"{type(lam).__name__} of {len(lam)} items"
                )
            values = [_check_weight(v, learnable, f"lam[{k}]") for k, v in enumerate(lam)]
        else:
            values = [_check_weight(lam, learnable)]
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
        # A pair is the last dimension: (2,), or (C, 2) with one pair per channel.
        shape = (() if num_channels is None else (num_channels,)) + ((2,) if self.pair else ())
        if learnable:
            values = [inverse_softplus(v) for v in values]
        init = torch.tensor(values if self.pair else values[0]).expand(shape).clone()
        if learnable:
            self.lam_raw = nn.Parameter(init)
        else:
            self.register_buffer("lam_fixed", init)

    @property
    def lam(self) -> Tensor:
        """The weight(s) in use: softplus of the parameter, or the fixed buffer (a pair of
        weights is the last dimension)."""
        return nn.functional.softplus(self.lam_raw) if self.learnable else self.lam_fixed

    @property
    def tv_axes(self) -> tuple[int, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def lam_for(self, x: Tensor):
        """The weight shaped to broadcast against x (a tuple of two for a pair)."""
        lam = self.lam
        if self.num_channels is not None:
            lam = lam.view(self._channel_shape(x) + ([2] if self.pair else []))
        return (lam[..., 0], lam[..., 1]) if self.pair else lam

    def _channel_shape(self, x: Tensor) -> list[int]:
        # normalize_axis, not `% x.dim()`: an out-of-range channel_axis wrapped around silently
        # (and a 0-d x divided by zero).
        if x.dim() == 0:
            raise ValueError("x: expected a tensor with a channel axis, got a 0-d tensor")
        axis = normalize_axis(self.channel_axis, x.dim(), "channel_axis")
        tv = {normalize_axis(a, x.dim(), "axes") for a in self.tv_axes}
        if axis in tv:
            # An unbatched (C, H, W) map: channel_axis=1 then lands on H. Saying so beats a
            # complaint about the channel count.
            raise ValueError(
                f"x: expected a batch {self.layout} with channels along axis {self.channel_axis}, "
                f"got shape {tuple(x.shape)}, where that axis is a TV axis (an unbatched input? "
                f"add a batch axis: x.unsqueeze(0))"
            )
        if x.shape[axis] != self.num_channels:
            raise ValueError(
                f"x: expected {self.num_channels} channels along axis {self.channel_axis}, got "
                f"shape {tuple(x.shape)}"
            )
        shape = [1] * x.dim()
        shape[axis] = self.num_channels
        return shape

    def forward(self, x: Tensor) -> Tensor:
        lam = self.lam_for(x)
        lam = tuple(v.to(device=x.device) for v in lam) if self.pair else lam.to(device=x.device)
        y = self.prox(x, lam)
        return y if self.mode == "smooth" else 2 * x - y

    def prox(self, x: Tensor, lam: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        channels = "one lam" if self.num_channels is None else f"num_channels={self.num_channels}"
        channels += ", a pair per axis" if self.pair else ""
        kind = "learnable (softplus)" if self.learnable else "fixed"
        return f"mode={self.mode!r}, {channels}, {kind}"
