"""How many independent items (fibers, slices, volumes) one launch sequence should take at a time.

The wrappers give the kernels their workspace (Condat's fallback hulls, the 2D solver's state,
the backward's replay record) as arrays sized for the items they solve. Solved all at once, that
workspace was up to 12 times the input (issue 16); solved in chunks whose workspace is at most
WORKSPACE_FRACTION of the input, an op holds its input, its output and that fraction. A chunk
still gets enough items to keep the executor busy: a block of threads per host worker, or
GPU_MIN_CHUNK_THREADS on a GPU, where fewer threads would leave SMs idle. The items' results do
not depend on how they are grouped (every item is solved by its own threads from its own data),
so chunking changes no bit of any result.
"""

from __future__ import annotations

import os

import numpy as np

from cupytv._host.launch import get_num_threads

#: The workspace a chunk may hold, as a fraction of the whole input's bytes: with the output,
#: the forward's peak stays within the issue's target of input + output + 25%.
WORKSPACE_FRACTION = 1 / 8
#: Threads a chunk keeps running on a GPU: about what an H100's 132 SMs hold at once (2048
#: each), so a chunk still fills the device.
GPU_MIN_CHUNK_THREADS = 2**18
#: Threads per block of the kernels (every kernel file launches 128-thread blocks).
_BLOCK = 128


def chunk_items(
    count: int, workspace_per_item: int, input_bytes: int, threads_per_item: int, xp
) -> int:
    """Items per chunk: as many as WORKSPACE_FRACTION of ``input_bytes`` holds (each needing
    ``workspace_per_item`` bytes), but at least enough to keep the executor busy, and at least 1.
    """
    by_memory = int(WORKSPACE_FRACTION * input_bytes) // max(1, workspace_per_item)
    busy = GPU_MIN_CHUNK_THREADS if xp is not np else _BLOCK * _host_workers()
    by_threads = -(-busy // max(1, threads_per_item))
    return max(1, min(count, max(by_memory, by_threads)))


def ranges(count: int, per_chunk: int):
    """``(start, stop)`` of each chunk of ``per_chunk`` items out of ``count``."""
    return [(lo, min(count, lo + per_chunk)) for lo in range(0, count, per_chunk)]


def _host_workers() -> int:
    return get_num_threads() or os.cpu_count() or 1
