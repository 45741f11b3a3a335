"""The warp-lockstep GPU proxy (issue 17): what the kernels would cost on an H100, on the CPU.

How it works:
  1. The kernels carry cost hooks (TV_PROBE*, cuda_src/common.cuh) that compile to nothing for
     NVRTC and for normal host builds. Inside :func:`cupytv._loader.probe_mode` the host executor
     runs probe builds instead (-DCUPYTV_PROBE, cupytv/_host/probe.h): every thread records its
     region events, and after each block every 32 consecutive threads are merged as one warp in
     lockstep (loop trips aligned, each region any lane runs issued once per aligned segment, a
     data-dependent loop costing its longest lane). The probe reports, per kernel and region, warp
     executions and lane executions, and per memory access region the shared-memory wavefronts
     (32 banks x 4 bytes, at the kernel's real offsets) and global sectors per request.
  2. ``cupytv/data/gpu_proxy_costs.json`` (scripts/gpu_proxy_costs.py, from the sm_90 SASS) prices
     one execution of each region per kernel: instructions, FP64 instructions, FP64 divisions.
  3. Issued warp-instructions = sum over regions of warp executions x instructions; without
     divergence they would be lane executions x instructions / 32. A predicted time divides the
     issued instructions by an issue rate x SMS x CLOCK_HZ; benchmarks/bench_gpu_proxy.py fits
     the rate per kernel family to the H100 run in benchmarks/results/gpu_h100/.

The GPU launch of each case is replayed exactly (the staged 1D kernel with its shared tile, the
fused or multi-launch 2D path), on a sample of the batch: per-sample metrics are averages over
whole warps and blocks, so a subset of fibers or slices drawn from the same distribution gives
them up to sampling noise, and totals scale with the batch.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from cupytv import _loader

#: The SASS cost per probe region, written by scripts/gpu_proxy_costs.py.
COSTS_PATH = Path(__file__).resolve().parent / "data" / "gpu_proxy_costs.json"
#: H100 SXM (the card in benchmarks/results/gpu_h100/): SMs, boost clock, HBM3 bandwidth.
SMS = 132
CLOCK_HZ = 1.98e9
HBM_BYTES_PER_S = 3.35e12
WARP = 32
#: Loop regions whose trips are the main work of a kernel (loop-trip efficiency is theirs).
MAIN_LOOPS = ("scan", "vjp_run")

_REPORT_FIELDS = (
    "warp", "lane", "requests", "lanes_accessing", "shared_requests", "wavefronts",
    "ideal_wavefronts", "global_requests", "sectors", "ideal_sectors",
)  # fmt: skip


def source_hash() -> str:
    """sha256 of every file in cuda_src/ (name and text, sorted): the cost table's key."""
    digest = hashlib.sha256()
    for path in sorted(_loader.source_dir().iterdir()):
        if path.suffix in (".cu", ".cuh"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def load_costs() -> dict:
    """The cost table; raises when it does not match cuda_src/ (regenerate it then)."""
    table = json.loads(COSTS_PATH.read_text())
    if table["source_sha256"] != source_hash():
        raise RuntimeError(
            f"{COSTS_PATH} was made from other kernel sources (hash {table['source_sha256'][:12]},"
            f" cuda_src/ is {source_hash()[:12]}): run python scripts/gpu_proxy_costs.py"
        )
    return table


def _lib(stem: str):
    lib = _loader.probe_module(stem)._lib
    lib.cupytv_probe_report.restype = ctypes.c_char_p
    lib.cupytv_probe_report.argtypes = ()
    lib.cupytv_probe_reset.restype = None
    return lib


def reset(stem: str) -> None:
    """Clear the probe's totals for ``cuda_src/<stem>.cu``."""
    _lib(stem).cupytv_probe_reset()


def report(stem: str) -> dict[str, dict]:
    """The probe's totals since the last reset: {kernel name expression: {threads, warps,
    regions: {region: {field: value}}}}."""
    names = _loader.instantiations(stem)
    out: dict[str, dict] = {}
    for line in _lib(stem).cupytv_probe_report().decode().splitlines():
        parts = line.split("\t")
        kernel = names[int(parts[1])]
        entry = out.setdefault(
            kernel, {"threads": 0.0, "warps": 0.0, "launches": 0.0, "regions": {}}
        )
        if parts[0] == "kernel":
            entry["threads"], entry["warps"], entry["launches"] = map(float, parts[2:5])
        else:
            entry["regions"][parts[2]] = dict(
                zip(_REPORT_FIELDS, map(float, parts[3:]), strict=True)
            )
    return out


def _cost_key(expr: str) -> str:
    # Name expressions spell the defaulted template argument out in the table (demangled SASS).
    if expr.startswith(("tv1d_condat<", "tv1d_taut_string<", "tv1d_vjp<")) and "," not in expr:
        return expr[:-1] + ", true>"
    return expr


@dataclass
class Counts:
    """Totals of one case, summed over the kernels it launched."""

    issued: float = 0.0  # warp-instructions issued in lockstep
    lane_work: float = 0.0  # thread-instructions (sum over lanes)
    fp64: float = 0.0  # thread-level FP64 instructions
    fp64_div: float = 0.0
    main_warp_trips: float = 0.0
    main_lane_trips: float = 0.0
    shared_requests: float = 0.0
    wavefronts: float = 0.0
    ideal_wavefronts: float = 0.0
    global_requests: float = 0.0
    sectors: float = 0.0
    ideal_sectors: float = 0.0
    threads: float = 0.0


def price(totals: dict[str, dict], costs: dict) -> tuple[Counts, dict[str, float]]:
    """Apply the SASS cost table to the probe's totals: (case counts, issued per kernel)."""
    c = Counts()
    per_kernel: dict[str, float] = {}
    for expr, entry in totals.items():
        table = costs["kernels"][_cost_key(expr)]
        issued = 0.0
        c.threads += entry["threads"]
        for region, t in entry["regions"].items():
            cost = table.get(region)
            if cost is not None:
                issued += t["warp"] * cost["instructions"]
                c.lane_work += t["lane"] * cost["instructions"]
                c.fp64 += t["lane"] * cost["fp64"]
                c.fp64_div += t["lane"] * cost["fp64_div"]
            if region in MAIN_LOOPS:
                c.main_warp_trips += t["warp"]
                c.main_lane_trips += t["lane"]
            for field in ("shared_requests", "wavefronts", "ideal_wavefronts", "global_requests",
                          "sectors", "ideal_sectors"):  # fmt: skip
                setattr(c, field, getattr(c, field) + t[field])
        # Code outside every hooked region (kernel entry, index math): once per thread.
        rest = table.get("unattributed")
        if rest is not None:
            issued += entry["warps"] * rest["instructions"]
            c.lane_work += entry["threads"] * rest["instructions"]
            c.fp64 += entry["threads"] * rest["fp64"]
            c.fp64_div += entry["threads"] * rest["fp64_div"]
        per_kernel[expr] = issued
        c.issued += issued
    return c, per_kernel


def metrics(c: Counts, samples: float) -> dict[str, float]:
    """Per-sample (per sample-pass in 2D) metrics of one case's counts."""

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    return {
        "issued_per_sample": ratio(c.issued, samples),
        "issued_no_divergence_per_sample": ratio(c.lane_work / WARP, samples),
        "useful_lanes": ratio(c.lane_work, WARP * c.issued),
        "loop_trip_efficiency": ratio(c.main_lane_trips, WARP * c.main_warp_trips),
        "fp64_per_sample": ratio(c.fp64, samples),
        "fp64_div_per_sample": ratio(c.fp64_div, samples),
        "smem_wavefronts_per_request": ratio(c.wavefronts, c.shared_requests),
        "smem_ideal_wavefronts_per_request": ratio(c.ideal_wavefronts, c.shared_requests),
        "global_sectors_per_request": ratio(c.sectors, c.global_requests),
        "global_ideal_sectors_per_request": ratio(c.ideal_sectors, c.global_requests),
    }


def predicted_us(issued: float, rate: float) -> float:
    """Issued warp-instructions / (rate warp-instructions per cycle per SM x SMS x CLOCK_HZ), in
    microseconds."""
    return issued / (rate * SMS * CLOCK_HZ) * 1e6


def floor_us(nbytes: float) -> float:
    """The memory floor: bytes that must move / HBM bandwidth, in microseconds."""
    return nbytes / HBM_BYTES_PER_S * 1e6


# The occupancy rules of sm_90 (CUDA occupancy calculator) and the issue limit per SM.
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32
REGISTERS_PER_SM = 65536
REGISTER_ALLOC_UNIT = 256  # registers per warp are allocated in units of 256
SHARED_PER_SM = 228 * 1024
SHARED_RESERVED_PER_BLOCK = 1024
SCHEDULERS = 4  # one warp-instruction per cycle each


def resident_warps(registers: int, warps_per_block: int, shared_per_block: int) -> int:
    """Warps of one kernel resident on an SM at once: the least of the register, warp, block and
    shared-memory limits, in whole blocks."""
    regs_per_warp = math.ceil(registers * WARP / REGISTER_ALLOC_UNIT) * REGISTER_ALLOC_UNIT
    blocks = min(
        REGISTERS_PER_SM // (max(regs_per_warp, 1) * warps_per_block),
        MAX_WARPS_PER_SM // warps_per_block,
        MAX_BLOCKS_PER_SM,
        SHARED_PER_SM // (shared_per_block + SHARED_RESERVED_PER_BLOCK),
    )
    return warps_per_block * blocks


def launch_cycles(
    issued: float, warps: float, warps_per_block: int, resident: int, latency: float
) -> float:
    """Cycles of one launch under a latency-throughput model.

    The blocks spread over min(SMS, blocks) SMs; the busiest SM gets ceil(blocks / SMs) of them.
    A warp issues one instruction every ``latency`` cycles on average (its dependent chain: FP64
    and shared-memory latencies, branches), so C concurrent warps issue C / latency per cycle, at
    most SCHEDULERS; C is the SM's warps, at most ``resident``.
    """
    blocks = max(1, math.ceil(warps / warps_per_block))
    active = min(SMS, blocks)
    sm_warps = math.ceil(blocks / active) * warps_per_block
    sm_issued = issued / warps * sm_warps
    concurrent = min(resident, sm_warps)
    return sm_issued * max(1 / SCHEDULERS, latency / concurrent)
