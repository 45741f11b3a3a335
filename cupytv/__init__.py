"""cupytv: fast, differentiable total-variation proximal operators as deep-net layers.

``cupytv.prox_tv1d`` / ``cupytv.prox_tv1d_vjp``: the 1D TV prox and its gradient on NumPy arrays
(CPU, through the host executor) or CuPy arrays (GPU); ``cupytv.prox_tv2d`` /
``cupytv.prox_tv2d_vjp`` the same for 2D slices (proximal Dykstra); ``cupytv.prox_tv`` /
``cupytv.prox_tv_vjp`` for any number of axes; ``cupytv.prox_tv2d_jvp`` / ``cupytv.prox_tv_jvp``
are their forward modes; ``cupytv.tv_norm`` is the weighted TV value itself.
``cupytv.reference`` holds the exact CPU solvers
every kernel is validated against. ``cupytv.usable_cupy()`` returns CuPy when it can run
kernels here (else None, and ``cupytv.gpu_unavailable_reason()`` says why).
``cupytv.set_num_threads(n)`` sets the CPU threads of the host executor (NumPy arrays).
"""

from cupytv import data
from cupytv._device import gpu_unavailable_reason, usable_cupy
from cupytv._host.launch import get_num_threads, set_num_threads
from cupytv.tv1d import prox_tv1d, prox_tv1d_vjp
from cupytv.tv2d import ProxInfo, prox_tv2d, prox_tv2d_jvp, prox_tv2d_vjp
from cupytv.tv_norm import tv_norm
from cupytv.tvnd import prox_tv, prox_tv_jvp, prox_tv_vjp

__all__ = [
    "ProxInfo",
    "data",
    "get_num_threads",
    "gpu_unavailable_reason",
    "prox_tv",
    "prox_tv1d",
    "prox_tv1d_vjp",
    "prox_tv2d",
    "prox_tv2d_jvp",
    "prox_tv2d_vjp",
    "prox_tv_jvp",
    "prox_tv_vjp",
    "set_num_threads",
    "tv_norm",
    "usable_cupy",
]

__version__ = "0.1.0"
