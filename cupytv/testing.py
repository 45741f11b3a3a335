"""Inputs that break TV solvers, for our tests and for anyone validating a solver of their own.

Each generator returns float64 arrays; cast them to the dtype under test. The 1D set covers the
classic failure modes of direct and Newton-type solvers: long flat runs (degenerate free sets),
ramps (Condat's quadratic worst case), isolated spikes, sign alternation (every sample a segment)
and huge dynamic range.
"""

from __future__ import annotations

import numpy as np


def signals_1d(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Named adversarial 1D signals of length ``n``."""
    i = np.arange(n, dtype=np.float64)
    spikes = np.zeros(n)
    spikes[:: max(n // 5, 1)] = 10.0
    return {
        "random": rng.standard_normal(n),
        "step": np.where(i < n // 2, 0.0, 1.0) + 0.05 * rng.standard_normal(n),
        "ramp": i / max(n, 1),
        "spikes": spikes,
        "constant": np.full(n, 3.25),
        "alternating": np.where(i % 2 == 0, 1.0, -1.0),
        "staircase": np.floor(i / 3.0),
        "wide_range": rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, n),
    }


def images_2d(h: int, w: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Named adversarial 2D images of shape ``(h, w)``."""
    r, c = np.mgrid[0:h, 0:w].astype(np.float64)
    spike = np.zeros((h, w))
    if spike.size:  # an empty image has no middle pixel
        spike[h // 2, w // 2] = 10.0
    return {
        "random": rng.standard_normal((h, w)),
        "square": ((abs(r - h / 2) < h / 4) & (abs(c - w / 2) < w / 4)).astype(np.float64)
        + 0.1 * rng.standard_normal((h, w)),
        "ramp": (r + 2 * c) / (h + 2 * w),
        "spike": spike,
        "constant": np.full((h, w), -1.5),
        "checkerboard": np.where((r + c) % 2 == 0, 1.0, -1.0),
    }


def tv1d_lam_max(x: np.ndarray) -> float:
    """The smallest lam for which the 1D prox of ``x`` is constant (equal to its mean).

    The constant solution is optimal exactly when its dual u = cumsum(mean - x) stays in
    [-lam, lam], so this is max|u|.
    """
    x = np.asarray(x, dtype=np.float64)
    return float(np.max(np.abs(np.cumsum(x.mean() - x)), initial=0.0))
