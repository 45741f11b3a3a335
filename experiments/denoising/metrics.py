"""Peak signal-to-noise ratio, the measure of every table in this experiment."""

from __future__ import annotations

import numpy as np


def psnr(estimate: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """PSNR in dB of each image over the last two axes, for images whose peak is 1.

    The estimate is clipped to [0, 1] first, as an image would be when saved; the clean image
    already lies there.
    """
    error = np.clip(estimate, 0.0, 1.0).astype(np.float64) - clean
    mse = np.mean(error**2, axis=(-2, -1))
    return 10.0 * np.log10(1.0 / mse)
