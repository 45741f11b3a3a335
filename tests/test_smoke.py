"""The smoke kernels (cuda_src/smoke.cu) give the same answers on every executor.

One test body runs on the host executor (NumPy arrays, always) and on CuPy (``gpu`` marker). Sizes
sweep densely across tile boundaries for several block sizes, including partial last tiles.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from cupytv import _loader
from cupytv._validation import host_array

STEM = "smoke"
CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
BLOCKS = (1, 32, 100, 256, 1024)  # 1 and 100: no power-of-two assumption; 1024: CUDA's maximum
# Integer values this small keep every partial sum (at most 8 * 1024) exact in float32, so the
# scan is compared exactly whatever order the additions happen in.
MAX_ABS_VALUE = 8


def sizes_around_tiles(block: int) -> list[int]:
    """1, 2, 3, and every size within 2 of one, two and three tiles, plus a ragged larger size."""
    near = {k * block + d for k in (1, 2, 3) for d in range(-2, 3)}
    return sorted(n for n in {1, 2, 3, *near, 5 * block + 7} if n >= 1)


def run_smoke(xp, kind: str, x, block: int):
    """Launch smoke_tile_<kind> over x; unwritten outputs stay NaN so they cannot pass."""
    n = x.size
    y = xp.full_like(x, np.nan)
    grid = (n + block - 1) // block
    shared = block * x.itemsize if kind == "reverse" else 0
    _loader.launch(
        STEM,
        f"smoke_tile_{kind}<{CTYPES[np.dtype(x.dtype)]}>",
        (grid,),
        (block,),
        (x, y, np.int64(n)),
        shared_mem=shared,
    )
    return y


def reference(kind: str, x: np.ndarray, block: int) -> np.ndarray:
    out = np.empty_like(x)
    for start in range(0, x.size, block):
        tile = x[start : start + block]
        out[start : start + block] = tile[::-1] if kind == "reverse" else np.cumsum(tile)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("kind", ["reverse", "scan"])
def test_smoke_matches_reference_exactly(xp, rng, kind, block, dtype):
    for n in sizes_around_tiles(block):
        x_host = rng.integers(-MAX_ABS_VALUE, MAX_ABS_VALUE + 1, n).astype(dtype)
        y = run_smoke(xp, kind, xp.asarray(x_host), block)
        np.testing.assert_array_equal(
            host_array(y), reference(kind, x_host, block), err_msg=f"n={n}"
        )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_smoke_scan_random_values(xp, rng, dtype):
    # With arbitrary reals the scan's tree order rounds differently from a sequential cumsum; each
    # output is a sum of at most 1024 terms added in ceil(log2 1024) = 10 rounds, so its error is
    # below 10 * eps * (sum of |terms|), the bound used here.
    block, n = 1024, 3 * 1024 + 17
    x_host = rng.standard_normal(n).astype(dtype)
    y = host_array(run_smoke(xp, "scan", xp.asarray(x_host), block))
    bound = 10 * np.finfo(dtype).eps * reference("scan", np.abs(x_host), block)
    assert np.all(np.abs(y - reference("scan", x_host, block)) <= bound)


@pytest.mark.slow
def test_smoke_beyond_int32_indices(xp):
    # 2^31 + a few tiles: every index past 2^31 - 1 overflows 32-bit arithmetic. Needs ~17 GB of
    # memory and, on the host, minutes of CPU; the GPU run in scripts/gpu_check.sh covers it
    # (tests/test_host_executor.py covers the host executor's own 64-bit grid arithmetic).
    if xp is np and os.environ.get("CUPYTV_TEST_HUGE") != "1":
        pytest.skip("host run of a 2^31-element launch is opt-in: set CUPYTV_TEST_HUGE=1")
    block = 1024
    n = 2**31 + 3 * block + 5
    x = xp.empty(n, dtype=np.float32)
    chunk = 2**26  # filled piecewise: an int64 index array of n elements would need 17 GB more
    for start in range(0, n, chunk):
        x[start : start + chunk] = tile_pattern(xp, start, min(n, start + chunk))
    y = run_smoke(xp, "reverse", x, block)
    del x
    tail_start = (2**31 // block - 1) * block  # the last tile before 2^31, and all after it
    expected = reference("reverse", tile_pattern(np, tail_start, n), block)
    np.testing.assert_array_equal(host_array(y[tail_start:]), expected)


def tile_pattern(xp, start: int, stop: int):
    """Exact small floats that differ between tiles: index mod a prime."""
    prime = 4093
    return (xp.arange(start, stop, dtype=np.int64) % prime).astype(np.float32)
