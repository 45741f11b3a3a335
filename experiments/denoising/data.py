"""Images for the denoising experiment: photographs bundled with scikit-image, no download.

Training and test images are disjoint photographs (README.md, "Data"); all are converted to
grayscale in [0, 1] (float32), the setting of DnCNN-S (Zhang et al. 2017). Training draws random
patches with random flips and rotations; every draw comes from a generator seeded by the caller,
so a run is reproducible and the two models compared with one seed see the same batches.
"""

from __future__ import annotations

import numpy as np

#: Training photographs and textures. ``cat`` is the same photo as ``chelsea``: never use both.
TRAIN_IMAGES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "motorcycle",
    "brick",
    "grass",
    "gravel",
)
#: Held-out test photographs (``camera`` is the cameraman of the Set12 denoising benchmark).
TEST_IMAGES = ("camera", "coins", "moon", "clock", "text")
#: The 0-255 scale of the noise levels.
PIXEL_MAX = 255.0
#: Seeds the fixed test noise: one draw per (sigma, image), shared by every model and seed, so
#: the models are compared on identical inputs.
TEST_NOISE_SEED = 2022
#: rot90 turns available to the augmentation (0, 90, 180, 270 degrees).
ROTATIONS = 4


def load_gray(name: str) -> np.ndarray:
    """The bundled image ``name`` as grayscale float32 in [0, 1], shape ``(H, W)``.

    Args:
        name: a ``skimage.data`` image; ``"motorcycle"`` is the left view of
            ``skimage.data.stereo_motorcycle()``.
    """
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.util import img_as_float

    if name == "motorcycle":
        image = skimage.data.stereo_motorcycle()[0]
    else:
        image = getattr(skimage.data, name)()
    image = img_as_float(image)
    if image.ndim == 3:
        image = rgb2gray(image)
    return np.ascontiguousarray(image, dtype=np.float32)


def center_crop(image: np.ndarray, side: int | None) -> np.ndarray:
    """The central ``side`` x ``side`` part of ``image`` (each axis capped at its length)."""
    if side is None:
        return image
    h, w = min(side, image.shape[0]), min(side, image.shape[1])
    top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    return image[top : top + h, left : left + w]


def sigma_unit(sigma: float) -> float:
    """A noise level on the 0-255 scale as a standard deviation for images in [0, 1]."""
    return sigma / PIXEL_MAX


def noisy_test_image(clean: np.ndarray, sigma: float, index: int) -> np.ndarray:
    """``clean`` plus the fixed Gaussian noise of test image ``index`` at level ``sigma``.

    Not clipped to [0, 1]: additive white Gaussian noise, as in the DnCNN benchmarks.
    """
    rng = np.random.default_rng([TEST_NOISE_SEED, int(sigma), index])
    noise = rng.standard_normal(clean.shape, dtype=np.float32)
    return clean + np.float32(sigma_unit(sigma)) * noise


def random_patches(
    images: list[np.ndarray], n: int, side: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` random ``side`` x ``side`` patches, shape ``(n, side, side)``, float32.

    Each patch's image is drawn with probability proportional to its area (so every pixel of
    the training set is equally likely), then a position, a flip and a rotation.
    """
    areas = np.array([im.shape[0] * im.shape[1] for im in images], dtype=np.float64)
    which = rng.choice(len(images), size=n, p=areas / areas.sum())
    out = np.empty((n, side, side), dtype=np.float32)
    for k, i in enumerate(which):
        image = images[i]
        top = rng.integers(0, image.shape[0] - side + 1)
        left = rng.integers(0, image.shape[1] - side + 1)
        patch = image[top : top + side, left : left + side]
        if rng.integers(2):
            patch = patch[:, ::-1]
        out[k] = np.rot90(patch, k=rng.integers(ROTATIONS))
    return out
