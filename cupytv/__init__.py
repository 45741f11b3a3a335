"""cupytv: fast, differentiable total-variation proximal operators as deep-net layers.

``cupytv.prox_tv1d`` / ``cupytv.prox_tv1d_vjp``: the 1D TV prox and its gradient on NumPy arrays
(CPU, through the host executor) or CuPy arrays (GPU). ``cupytv.reference`` holds the exact CPU
solvers every kernel is validated against.
"""

from cupytv.tv1d import prox_tv1d, prox_tv1d_vjp

__all__ = ["prox_tv1d", "prox_tv1d_vjp"]

__version__ = "0.1.0"
