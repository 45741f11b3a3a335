"""The classical baseline: the 2D TV prox of the noisy image, λ tuned on noisy training patches.

For each noise level, λ maximises the mean PSNR of ``cupytv.prox_tv2d(noisy, λ)`` over
``tune_patches`` patches of the *training* images (the test images are never looked at): a
log-spaced coarse grid, then a finer one around its best point.
"""

from __future__ import annotations

import numpy as np

import cupytv

from .data import random_patches, sigma_unit
from .metrics import psnr

#: Coarse grid of λ for images in [0, 1]: wide enough for sigma from 5 to 100 on the 0-255 scale
#: (the best λ is about 0.6 sigma / 255 on natural images).
COARSE_GRID = np.geomspace(0.005, 0.5, 13)
#: The fine grid spans one coarse step either side of the coarse optimum, in this many points.
FINE_POINTS = 9
#: Tighter than cupytv's default 1e-3: the baseline is cheap, and a tuned λ should not move with
#: the solver's stopping point.
BASELINE_TOL = 1e-4


def tv_denoise(noisy: np.ndarray, lam: float) -> np.ndarray:
    """The TV-Smooth estimate ``prox_tv2d(noisy, lam)`` of every image over the last two axes."""
    return cupytv.prox_tv2d(noisy, lam, tol=BASELINE_TOL)


def _best_on_grid(grid: np.ndarray, noisy: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
    scores = [float(psnr(tv_denoise(noisy, float(lam)), clean).mean()) for lam in grid]
    best = int(np.argmax(scores))
    return float(grid[best]), scores[best]


def tune_lambda(
    train_images: list[np.ndarray], sigma: float, n_patches: int, side: int, seed: int
) -> dict[str, float]:
    """The λ of the TV baseline for noise level ``sigma`` (0-255 scale), tuned on training data.

    Returns:
        ``{"lam": best λ, "train_psnr": its mean PSNR on the tuning patches, "noisy_psnr": theirs
        before denoising}``.
    """
    rng = np.random.default_rng([seed, int(sigma)])
    clean = random_patches(train_images, n_patches, side, rng)
    noisy = clean + np.float32(sigma_unit(sigma)) * rng.standard_normal(clean.shape, np.float32)
    lam, _ = _best_on_grid(COARSE_GRID, noisy, clean)
    step = COARSE_GRID[1] / COARSE_GRID[0]
    lam, score = _best_on_grid(np.geomspace(lam / step, lam * step, FINE_POINTS), noisy, clean)
    return {"lam": lam, "train_psnr": score, "noisy_psnr": float(psnr(noisy, clean).mean())}
