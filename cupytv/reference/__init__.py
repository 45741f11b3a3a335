"""Exact CPU reference solvers for TV proximal operators and their gradients.

Independent of the kernels (different algorithms, float64 throughout), these are what every
kernel is tested against. They favour exactness over speed: use them to validate, not to train.
"""

from .tv1d import prox_tv1d, prox_tv1d_vjp
from .tv2d import prox_tv2d, prox_tv2d_vjp
from .tv_norm import objective, tv_norm

__all__ = [
    "objective",
    "prox_tv1d",
    "prox_tv1d_vjp",
    "prox_tv2d",
    "prox_tv2d_vjp",
    "tv_norm",
]
