"""Tensors to cupytv's arrays and back, without copies, on the caller's device and stream.

CPU tensors become NumPy views (the host executor); CUDA tensors become CuPy arrays through
DLPack, and kernels launch on PyTorch's *current* stream of the tensor's device, so a model that
runs on a side stream, or on several GPUs, orders our kernels with its own work.
"""

from __future__ import annotations

import contextlib
import numbers

import numpy as np
import torch

from cupytv._host.launch import default_threads_for_caller
from cupytv._validation import is_cupy_array

#: Dtypes computed in float32 and returned in their own dtype (the kernels have no half types).
HALF_DTYPES = (torch.float16, torch.bfloat16)


def to_array(t: torch.Tensor):
    """A zero-copy NumPy (CPU) or CuPy (CUDA) view of ``t``'s data (detached)."""
    t = t.detach()
    if t.device.type == "cpu":
        return t.numpy()
    if t.device.type == "cuda":
        import cupy

        return cupy.from_dlpack(t)
    raise ValueError(f"expected a CPU or CUDA tensor, got one on {t.device}")


def from_array(a) -> torch.Tensor:
    """The tensor viewing a NumPy or CuPy array (zero copy)."""
    if isinstance(a, (np.ndarray, np.generic)):  # a reduction may hand back a NumPy scalar
        return torch.from_numpy(np.asarray(a))
    return torch.from_dlpack(a)


@contextlib.contextmanager
def on_stream(t: torch.Tensor):
    """Make CuPy launch on ``t``'s device and PyTorch's current stream there; on the CPU, run
    host launches on ``torch.get_num_threads()`` threads (unless ``cupytv.set_num_threads`` was
    called), so that a model's thread setting covers our ops as it covers torch's own."""
    if t.device.type == "cpu":
        with default_threads_for_caller(torch.get_num_threads()):
            yield
        return
    if t.device.type != "cuda":
        yield
        return
    import cupy

    stream = torch.cuda.current_stream(t.device)
    with cupy.cuda.Device(t.device.index), cupy.cuda.ExternalStream(stream.cuda_stream):
        yield


def check_input(x, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__module__}."
                        f"{type(x).__name__}")  # fmt: skip
    if not x.is_floating_point() or x.is_complex():
        raise TypeError(
            f"{name}: expected a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got {x.dtype}"
        )


def lam_tensor(lam, x: torch.Tensor, name: str = "lam") -> torch.Tensor:
    """``lam`` as a tensor on x's device in x's compute dtype (a Python number becomes 0-d)."""
    if isinstance(lam, torch.Tensor):
        if lam.device != x.device:
            raise ValueError(
                f"{name}: expected a tensor on x's device {x.device}, got one on {lam.device}"
            )
        if lam.dtype == torch.bool or lam.is_complex():
            # .to() below used to turn these silently into 1.0 / 0.0 or the real part.
            raise TypeError(f"{name}: expected a real-valued tensor, got {lam.dtype}")
        if not lam.is_floating_point():
            lam = lam.to(compute_dtype(x.dtype))
        return lam
    _check_real(lam, name)
    return torch.as_tensor(lam, dtype=compute_dtype(x.dtype), device=x.device)


def _check_real(lam, name: str) -> None:
    """Refuse a non-tensor weight that is not real: ``torch.as_tensor(..., dtype=float)`` turns
    bools into 1.0 silently and fails on complex, strings or None without naming ``lam``."""
    if isinstance(lam, numbers.Real) and not isinstance(lam, bool):
        return  # the common case, kept free of NumPy so torch.compile traces it as is
    try:
        dtype = lam.dtype if is_cupy_array(lam) else np.asarray(lam).dtype
    except (TypeError, ValueError):  # ragged lists and the like
        dtype = np.dtype(object)
    if dtype.kind not in "iuf":
        raise TypeError(
            f"{name}: expected a real number, a real array or a tensor, got "
            f"{type(lam).__name__} of dtype {dtype}"
        )


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in HALF_DTYPES else dtype
