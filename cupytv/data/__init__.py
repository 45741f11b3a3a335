"""A real photograph bundled with cupytv, so demos, notebooks and tests need no download.

``astronaut.npz``: Eileen Collins, NASA portrait (public domain, as shipped by scikit-image's
``skimage.data.astronaut``), 2 x 2 mean-pooled from 512 x 512 to 256 x 256, RGB, uint8. Stored
as compressed NumPy rather than PNG so loading it needs nothing beyond NumPy.
"""

from __future__ import annotations

from importlib import resources

import numpy as np


def astronaut(gray: bool = False) -> np.ndarray:
    """The bundled photo in [0, 1], float64: (256, 256, 3) RGB, or (256, 256) with ``gray``.

    Gray is the ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B), as most image libraries use.
    """
    with resources.files(__name__).joinpath("astronaut.npz").open("rb") as f:
        rgb = np.load(f)["image"].astype(np.float64) / 255.0
    if gray:
        return rgb @ np.array([0.299, 0.587, 0.114])
    return rgb
