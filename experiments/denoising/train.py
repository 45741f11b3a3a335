"""Training one denoiser for one noise level and seed, with progress lines, and applying it.

The batches (patch positions, flips, rotations, noise) come from one NumPy generator seeded by
``(seed, sigma)``, so DnCNN and DnCNN+TV trained with the same seed see identical data: their
difference is a paired comparison, not two independent draws.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .configs import Config
from .data import random_patches, sigma_unit
from .models import tv_layer

#: Separates the training data's random stream from the baseline's (which uses [seed, sigma]).
TRAIN_STREAM = 1
SECONDS_PER_MINUTE = 60


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), SECONDS_PER_MINUTE)
    return f"{minutes}m{secs:02d}s"


@dataclass
class Progress:
    """Counts training steps across the whole run, for the elapsed time and the ETA it prints."""

    total_steps: int
    done: int = 0
    start: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def status(self) -> str:
        """``elapsed 1m02s, ETA 3m10s``: the ETA extrapolates the mean time per step so far."""
        elapsed = self.elapsed()
        left = self.total_steps - self.done
        eta = elapsed / self.done * left if self.done else math.nan
        eta_text = _clock(eta) if math.isfinite(eta) else "?"
        return f"elapsed {_clock(elapsed)}, ETA {eta_text}"


def make_optimizer(model: nn.Module, config: Config) -> torch.optim.Optimizer:
    """Adam, with the TV layer's raw λ at ``lam_lr_factor`` times the learning rate."""
    layer = tv_layer(model)
    lam_params = [] if layer is None else [layer.lam_raw]
    lam_ids = {id(p) for p in lam_params}
    rest = [p for p in model.parameters() if id(p) not in lam_ids]
    groups = [{"params": rest, "lr": config.lr}]
    if lam_params:
        groups.append({"params": lam_params, "lr": config.lr * config.lam_lr_factor})
    return torch.optim.Adam(groups)


def _batch(
    images: list[np.ndarray], sigma: float, config: Config, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    clean = random_patches(images, config.batch_size, config.patch, rng)
    noise = rng.standard_normal(clean.shape, dtype=np.float32)
    return clean + np.float32(sigma_unit(sigma)) * noise, clean


def _as_batch(patches: np.ndarray, device: torch.device) -> torch.Tensor:
    """``(N, H, W)`` patches as an ``(N, 1, H, W)`` tensor on ``device``."""
    return torch.from_numpy(patches).unsqueeze(1).to(device)


def _lam_text(model: nn.Module) -> str:
    layer = tv_layer(model)
    if layer is None:
        return ""
    return f"  λ mean {layer.lam.detach().mean().item():.4f}"


def train_model(
    model: nn.Module,
    images: list[np.ndarray],
    sigma: float,
    seed: int,
    config: Config,
    device: torch.device,
    progress: Progress,
    label: str,
) -> dict[str, float]:
    """Train ``model`` in place on noisy patches of ``images`` (MSE to the clean patches).

    Prints a line every ``config.log_every`` steps and at the last one: the mean loss since the
    previous line (and its PSNR), λ for a TV model, and the run's elapsed time and ETA.

    Returns:
        ``{"seconds": training time, "seconds_per_step", "final_loss": mean loss of the last
        logging block}``.
    """
    rng = np.random.default_rng([seed, int(sigma), TRAIN_STREAM])
    optimizer = make_optimizer(model, config)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.steps, eta_min=config.lr * config.lr_final_fraction
    )
    model.to(device).train()
    start, block = time.perf_counter(), []
    final_loss = math.nan
    for step in range(1, config.steps + 1):
        noisy, clean = (_as_batch(a, device) for a in _batch(images, sigma, config, rng))
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(noisy), clean)
        loss.backward()
        optimizer.step()
        schedule.step()
        block.append(loss.item())
        progress.done += 1
        if step % config.log_every == 0 or step == config.steps:
            final_loss = float(np.mean(block))
            print(
                f"  [{label}] step {step}/{config.steps}  loss {final_loss:.3e} "
                f"({10 * math.log10(1 / final_loss):.2f} dB){_lam_text(model)}  "
                f"{progress.status()}",
                flush=True,
            )
            block = []
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "seconds_per_step": seconds / config.steps,
        "final_loss": final_loss,
    }


def denoise(model: nn.Module, noisy: np.ndarray, device: torch.device) -> np.ndarray:
    """The trained model's estimate of one noisy gray image ``(H, W)``, as NumPy float32."""
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(noisy))[None, None].to(device)
        return model(x)[0, 0].cpu().numpy()
