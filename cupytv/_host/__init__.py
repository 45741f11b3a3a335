"""The host executor: CUDA kernels from ``cuda_src/`` compiled for and run on the CPU.

Only :mod:`cupytv._loader` uses this package; see ``docs/ARCHITECTURE.md`` ("Kernel runtime") for
the execution model and the subset of CUDA that kernels may use.
"""

from cupytv._host.build import HostCompilerNotFoundError
from cupytv._host.launch import HostKernel, HostModule

__all__ = ["HostCompilerNotFoundError", "HostKernel", "HostModule"]
