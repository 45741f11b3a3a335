"""PyTorch layers: differentiable TV proxes (functional) and ``nn.Module`` wrappers.

``prox_tv1d``, ``prox_tv2d`` and ``prox_tv`` (any number of axes) are differentiable w.r.t. x and
lam and registered as ``torch.library`` custom ops, so ``torch.compile(fullgraph=True)`` traces
them; the layers ``TV1d`` / ``TV2d`` are TV-Smooth and TV-Sharp with a fixed or learnable weight.
CPU tensors run on the host executor, CUDA tensors on their device and PyTorch's current stream,
zero-copy through DLPack. ``tv_norm`` is the weighted TV value itself (a loss term). See
docs/torch_layers.md.
"""

from cupytv.torch.tv1d import TV1d, prox_tv1d
from cupytv.torch.tv2d import TV2d, prox_tv2d
from cupytv.torch.tv_norm import tv_norm
from cupytv.torch.tvnd import prox_tv

__all__ = ["TV1d", "TV2d", "prox_tv", "prox_tv1d", "prox_tv2d", "tv_norm"]
