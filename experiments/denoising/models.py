r"""DnCNN (Zhang et al., IEEE TIP 2017) and DnCNN with a cupytv TV-Smooth layer (Yeh et al. 2022).

DnCNN predicts the noise and subtracts it: :math:`\hat x = y - R(y)` with
:math:`R` = conv+ReLU, (depth - 2) x (conv+BN+ReLU), conv. The TV variant adds one
:class:`cupytv.torch.TV2d` in smooth mode (:math:`\mathrm{prox}_{\lambda TV}`), with a learnable
λ > 0 (softplus), either on the denoised image, :math:`\hat x = \mathrm{prox}(y - R(y))`
(``"output"``, one λ), or on the C feature maps of the first block (``"inside"``, one λ per
channel); README.md says which the table uses and why.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cupytv.torch import TV2d

from .configs import Config

#: The two models of the comparison, by the names the results use.
MODELS = ("dncnn", "dncnn_tv")
#: How the results and figures label them.
LABELS = {"dncnn": "DnCNN", "dncnn_tv": "DnCNN+TV"}
KERNEL = 3
#: Gray images: one channel in, one out.
IMAGE_CHANNELS = 1


def _conv(c_in: int, c_out: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, KERNEL, padding=KERNEL // 2, bias=bias)


class DnCNN(nn.Module):
    """Residual denoiser: returns ``noisy - R(noisy)``, R the conv stack of Zhang et al. 2017.

    R's last conv is initialised to zero (below), so the untrained network is the identity.

    Args:
        depth: conv layers (>= 2).
        channels: feature maps of the hidden layers.
        feature_tv: a module applied to the first block's feature maps (``"inside"``
            placement), or None.
    """

    def __init__(self, depth: int, channels: int, feature_tv: nn.Module | None = None):
        super().__init__()
        # Biases as in Zhang et al.'s code: the first conv has one; the middle convs none (the
        # BatchNorm shift plays that role); the last none (the noise it predicts has zero mean).
        self.head = nn.Sequential(_conv(IMAGE_CHANNELS, channels, bias=True), nn.ReLU())
        self.feature_tv = feature_tv if feature_tv is not None else nn.Identity()
        blocks = []
        for _ in range(depth - 2):
            blocks += [_conv(channels, channels, bias=False), nn.BatchNorm2d(channels), nn.ReLU()]
        self.body = nn.Sequential(*blocks, _conv(channels, IMAGE_CHANNELS, bias=False))
        # A departure from Zhang et al., for short training: the last conv starts at zero, so
        # the network starts as the identity (it returns the noisy input) instead of subtracting
        # a random residual. At the cpu config's scale this gained ~2 dB on the test set
        # (README.md); the two models share it, so the comparison is unaffected.
        nn.init.zeros_(self.body[-1].weight)

    def forward(self, noisy: Tensor) -> Tensor:
        return noisy - self.body(self.feature_tv(self.head(noisy)))


class OutputTV(nn.Module):
    """``tv(denoiser(noisy))``: a TV layer on a denoiser's output image."""

    def __init__(self, denoiser: nn.Module, tv: nn.Module):
        super().__init__()
        self.denoiser, self.tv = denoiser, tv

    def forward(self, noisy: Tensor) -> Tensor:
        return self.tv(self.denoiser(noisy))


def build_model(kind: str, config: Config) -> nn.Module:
    """A fresh ``"dncnn"`` or ``"dncnn_tv"`` shaped by ``config``.

    The conv weights are drawn first and in the same order for both kinds (TV2d draws no random
    numbers), so after the same ``torch.manual_seed`` both start from identical conv weights.
    """
    if kind not in MODELS:
        raise ValueError(f"kind: expected one of {list(MODELS)}, got {kind!r}")
    if kind == "dncnn":
        return DnCNN(config.depth, config.channels)
    inside = config.tv_placement == "inside"
    tv = TV2d(
        config.tv_lam_init,
        num_channels=config.channels if inside else None,
        mode="smooth",
        max_iter=config.tv_max_iter,
    )
    if inside:
        return DnCNN(config.depth, config.channels, feature_tv=tv)
    return OutputTV(DnCNN(config.depth, config.channels), tv)


def tv_layer(model: nn.Module) -> TV2d | None:
    """The model's TV layer, or None for plain DnCNN."""
    return next((m for m in model.modules() if isinstance(m, TV2d)), None)


def lam_stats(model: nn.Module) -> dict[str, float] | None:
    """Mean, min and max of the model's learned λ (one value for the ``"output"`` placement)."""
    layer = tv_layer(model)
    if layer is None:
        return None
    with torch.no_grad():
        lam = layer.lam.detach().flatten().cpu()
    return {"mean": lam.mean().item(), "min": lam.min().item(), "max": lam.max().item()}
