"""How many independent items (fibers, slices, volumes) one launch sequence should take at a time.

The wrappers give the kernels their workspace (Condat's fallback hulls, the 2D solver's state,
the backward's replay record) as arrays sized for the items they solve. Solved all at once, that
workspace was up to 12 times the input (issue 16); solved in chunks whose workspace is at most
WORKSPACE_FRACTION of the input, an op holds its input, its output and that fraction. A chunk
still gets at least MIN_CHUNK_ELEMENTS samples (GPU_MIN_CHUNK_ELEMENTS on a GPU): every chunk
costs a launch per kernel (per iteration, for the iterative solvers), which must stay small
next to the chunk's work, and a GPU needs hundreds of thousands of threads to fill its SMs. So
inputs below about MIN_CHUNK_ELEMENTS / WORKSPACE_FRACTION samples keep part of the old
workspace (see the README's Memory table). The items' results do not depend on how they are
grouped (every item is solved by its own threads from its own data), so chunking changes no bit
of any result.
"""

from __future__ import annotations

import numpy as np

#: The workspace a chunk may hold, as a fraction of the whole input's bytes: with the output,
#: the forward's peak stays within the issue's target of input + output + 25%.
WORKSPACE_FRACTION = 1 / 8
#: Samples a chunk holds at least on the host executor: a launch there costs tens of
#: microseconds (the workers' start and join, more on a busy machine), about 1% of 2**20
#: samples' work.
MIN_CHUNK_ELEMENTS = 2**20
#: On a GPU: 2**25 samples are 2**17 fibers of 256 (about half of the threads an H100's 132 SMs
#: hold at once) and a 128 MiB float32 input; the 2D multi-launch path then keeps 2**17 rows.
GPU_MIN_CHUNK_ELEMENTS = 2**25


def chunk_items(
    count: int, workspace_per_item: int, input_bytes: int, elements_per_item: int, xp
) -> int:
    """Items per chunk: as many as WORKSPACE_FRACTION of ``input_bytes`` holds (each needing
    ``workspace_per_item`` bytes), but at least the minimum chunk's samples, and at least 1."""
    by_memory = int(WORKSPACE_FRACTION * input_bytes) // max(1, workspace_per_item)
    least = GPU_MIN_CHUNK_ELEMENTS if xp is not np else MIN_CHUNK_ELEMENTS
    by_work = -(-least // max(1, elements_per_item))
    return max(1, min(count, max(by_memory, by_work)))


def ranges(count: int, per_chunk: int):
    """``(start, stop)`` of each chunk of ``per_chunk`` items out of ``count``."""
    return [(lo, min(count, lo + per_chunk)) for lo in range(0, count, per_chunk)]
