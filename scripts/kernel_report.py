"""Static report of every instantiated kernel: resources, occupancy, hot-loop instruction mix.

No GPU needed. Each kernel file goes through the loader (the text CuPy compiles) and NVRTC (the
compiler CuPy runs, cupytv/_nvrtc.py) with the loader's options plus what CuPy adds, for real
architectures (sm_90 and sm_80 by default), asking ptxas for its resource report
(``--ptxas-options=-v``). Per kernel and architecture:

- registers per thread, spill stores/loads and stack frame (bytes), static shared memory;
- the launch configuration the wrappers use (threads per block, dynamic shared memory), taken
  from the wrappers themselves: their launches are recorded (``_loader.launch`` replaced by a
  recorder) for the fiber lengths and slice shapes of issue #17's cases, never retyped here;
- resident warps per SM at that configuration, by the CUDA occupancy calculator's rules
  (``cuda_occupancy.h``: registers per warp rounded up to the allocation unit and allocated per
  sub-partition; shared memory per block rounded up to its unit plus the per-block reserve; the
  warp and block caps), with the limiting resource;
- when ``cuobjdump`` is found (PATH, a CUDA toolkit, or the ``nvidia-cuda-cuobjdump`` wheel), the
  SASS instruction mix of the whole kernel and of its loops (every instruction between a backward
  branch and its target, callees excluded): FP64 operations, conversions, divisions (MUFU.RCP /
  RCP64H: the divisions and reciprocals compile to one each), branches.

Prints one table and writes JSON (default benchmarks/results/kernel_report.json).
Usage: PYTHONPATH=. python scripts/kernel_report.py [--stems tv1d,tv2d] [--archs 90,80] [--json P]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cupytv import _loader, tv1d, tv2d  # noqa: E402
from cupytv._nvrtc import nvrtc_by_major  # noqa: E402

DEFAULT_JSON = ROOT / "benchmarks" / "results" / "kernel_report.json"
DEFAULT_ARCHS = (90, 80)
WARP = 32


@dataclass(frozen=True)
class SmLimits:
    """Per-SM limits of one architecture, as the CUDA occupancy calculator uses them (CUDA C++
    Programming Guide, "Compute Capabilities" table; cuda_occupancy.h for the allocation rules).
    """

    registers: int = 65536  # 32-bit registers per SM
    register_unit: int = 256  # registers are allocated per warp in units of this many
    sub_partitions: int = 4  # each holds a quarter of the registers; warps do not straddle them
    max_registers_per_thread: int = 255
    max_warps: int = 64  # resident warps per SM (2048 threads)
    max_blocks: int = 32  # resident blocks per SM
    shared_bytes: int = 228 * 1024  # largest shared-memory carve-out per SM
    shared_unit: int = 128  # shared memory is allocated per block in units of this many bytes
    shared_reserved: int = 1024  # reserved per block by the system (sm_80 and later)


LIMITS = {90: SmLimits(), 80: SmLimits(shared_bytes=164 * 1024)}

# SASS opcode classes (the first word, before any "." modifier).
FP64 = {"DADD", "DMUL", "DFMA", "DSETP", "DMNMX", "DSET", "DMMA"}
CONVERSIONS = {"F2F", "F2I", "I2F", "F2IP", "I2FP", "F2FP", "FRND"}
BRANCHES = {"BRA", "BRX", "JMP", "JMX", "CALL", "RET"}
DIVISIONS = {"MUFU.RCP", "MUFU.RCP64H"}  # full opcodes: each division or reciprocal issues one


@dataclass(frozen=True)
class Launch:
    name: str  # name expression
    case: str  # which wrapper call recorded it
    threads: int
    dynamic_shared: int


def _cases_1d():
    """Issue #17's 1D cases, reduced to what fixes the launch: the fiber length and dtype (and
    enough fibers for the VJP to sum a scalar weight's gradient in its kernel)."""
    for n in (32, 1024):
        for dtype in (np.float32, np.float64):
            yield f"n={n} {np.dtype(dtype).name}", (tv1d.WEIGHT_GRAD_MIN_FIBERS, n), dtype


def _cases_2d():
    """Issue #17's 2D cases, one slice each: (128, 64, 32, 32) and (3, 512, 512)."""
    for shape in ((1, 32, 32), (1, 512, 512)):
        for dtype in (np.float32, np.float64):
            yield f"{shape[1]}x{shape[2]} {np.dtype(dtype).name}", shape, dtype


@contextlib.contextmanager
def _recording(calls: list[Launch], case: str):
    def record(stem, name_expression, grid, block, args, shared_mem=0):
        calls.append(Launch(name_expression, case, int(np.prod(block)), int(shared_mem)))

    with mock.patch.object(_loader, "launch", record):
        yield


def wrapper_launches() -> list[Launch]:
    """Every launch the wrappers make for the cases above, as they would make it on a GPU.

    The kernels do not run (the recorder replaces them), so results are garbage and the host-side
    logic after a launch may fail: a failure ends that case, its launches so far are kept.
    """
    calls: list[Launch] = []
    rng = np.random.default_rng(0)
    for label, shape, dtype in _cases_1d():
        x = rng.standard_normal(shape).astype(dtype)
        weight = tv1d.Weight.of(0.1, x.shape, x.ndim - 1, x.dtype)
        for method, kernel in tv1d.METHODS.items():
            with _recording(calls, f"1D forward {method} {label}"), contextlib.suppress(Exception):
                # staged=True: the GPU's choice (prox_tv1d stages whenever x is not NumPy).
                tv1d._launch_forward(kernel, x, np.empty_like(x), weight, (shape[0], shape[1], 1),
                                     staged=True)  # fmt: skip
        if shape[1] > tv1d.GUARD_MIN_N:
            with _recording(calls, f"1D fallback {label}"), contextlib.suppress(Exception):
                # What a GPU launches after every guarded Condat launch (the count stays on the
                # device there; the host skips an empty list, so one deferred fiber stands in).
                fallback = np.zeros(1 + shape[0], np.int64)
                fallback[0] = 1
                tv1d._launch_fallback(x, np.empty_like(x), weight, (shape[0], shape[1], 1),
                                      fallback)  # fmt: skip
        with _recording(calls, f"1D vjp {label}"), contextlib.suppress(Exception):
            # The staged VJP as a GPU runs it, then the wrapper's other launch (the weight's
            # gradient).
            grad_fiber = np.empty(shape[0], dtype)
            tv1d._launch_vjp(x, x, np.empty_like(x), grad_fiber, (shape[0], shape[1], 1), 0.0,
                             staged=True)  # fmt: skip
            tv1d.prox_tv1d_vjp(None, 0.1, x, -1, y=x)
    for label, shape, dtype in _cases_2d():
        x = rng.standard_normal(shape).astype(dtype)
        for path in ("fused", "multi"):
            pb = tv2d._Problem(x, 0.1, (-2, -1), 1, 0.0, "auto")
            with _recording(calls, f"2D forward {path} {label}"), contextlib.suppress(Exception):
                tv2d._forward(pb, path)
            counts = np.ones(pb.slices, dtype=np.int32)
            with _recording(calls, f"2D vjp {path} {label}"), contextlib.suppress(Exception):
                tv2d._backward(pb, pb.xc, counts, path)
        with _recording(calls, f"2D jvp {label}"), contextlib.suppress(Exception):
            tv2d.prox_tv2d_jvp(x, 0.1, x, 0.0, n_iter=1)
    return calls


def occupancy(limits: SmLimits, registers: int, static_shared: int, threads: int, dynamic: int):
    """(resident warps per SM, limiting resource) by the occupancy calculator's rules."""
    warps_per_block = -(-threads // WARP)
    per_warp = -(-registers * WARP // limits.register_unit) * limits.register_unit
    if registers > limits.max_registers_per_thread:
        return 0, "registers"
    per_sub = limits.registers // limits.sub_partitions
    by_regs = per_sub // per_warp * limits.sub_partitions // warps_per_block
    shared = static_shared + dynamic + limits.shared_reserved
    shared = -(-shared // limits.shared_unit) * limits.shared_unit
    by_shared = limits.shared_bytes // shared
    by_warps = limits.max_warps // warps_per_block
    limits_by = {
        "registers": by_regs,
        "shared memory": by_shared,
        "warps": by_warps,
        "blocks": limits.max_blocks,
    }
    blocks = min(limits_by.values())
    return blocks * warps_per_block, min(limits_by, key=limits_by.get)


_PTXAS_ENTRY = re.compile(r"Compiling entry function '([^']+)' for 'sm_(\d+)'")
_PTXAS_FRAME = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
)
_PTXAS_USED = re.compile(r"Used (\d+) registers")
_PTXAS_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(log: str) -> dict[str, dict]:
    """{mangled name: registers, spill bytes, stack frame, static shared} from ptxas -v."""
    out: dict[str, dict] = {}
    current = None
    for line in log.splitlines():
        if m := _PTXAS_ENTRY.search(line):
            current = out.setdefault(m.group(1), {})
        elif current is not None and (m := _PTXAS_FRAME.search(line)):
            current.update(stack=int(m[1]), spill_stores=int(m[2]), spill_loads=int(m[3]))
        elif current is not None and (m := _PTXAS_USED.search(line)):
            current["registers"] = int(m[1])
            s = _PTXAS_SMEM.search(line)
            current["static_shared"] = int(s[1]) if s else 0
    return out


def find_cuobjdump() -> str | None:
    found = shutil.which("cuobjdump")
    if found:
        return found
    candidates = [Path("/usr/local/cuda/bin/cuobjdump")]
    try:
        import nvidia

        for root in nvidia.__path__:
            candidates += sorted(Path(root).glob("*/bin/cuobjdump"))
    except ImportError:
        pass
    return next((str(p) for p in candidates if p.is_file()), None)


_SASS_FUNCTION = re.compile(r"^\s*Function : (\S+)", re.MULTILINE)
_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_TARGET = re.compile(r"0x([0-9a-f]+)")


def sass_mix(sass: str) -> dict[str, dict]:
    """{mangled name: {"all": counts, "loops": counts}} from ``cuobjdump -sass`` text."""
    result = {}
    parts = _SASS_FUNCTION.split(sass)
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        code = [(int(a, 16), op, rest) for a, op, rest in _SASS_LINE.findall(body)]
        loops = []
        for address, op, rest in code:
            t = _TARGET.search(rest)
            if op.split(".")[0] == "BRA" and t and int(t.group(1), 16) <= address:
                loops.append((int(t.group(1), 16), address))
        in_loop = [(a, op) for a, op, _ in code if any(lo <= a <= hi for lo, hi in loops)]
        result[name] = {
            "all": _classify(op for _, op, _ in code),
            "loops": _classify(op for _, op in in_loop),
            "loop_count": len(loops),
        }
    return result


def _classify(opcodes) -> dict[str, int]:
    counts = {"instructions": 0, "fp64": 0, "conversions": 0, "divisions": 0, "branches": 0}
    for op in opcodes:
        if op == "NOP":
            continue
        base = op.split(".")[0]
        counts["instructions"] += 1
        counts["fp64"] += base in FP64
        counts["conversions"] += base in CONVERSIONS
        counts["branches"] += base in BRANCHES
        counts["divisions"] += ".".join(op.split(".")[:2]) in DIVISIONS
    return counts


def compile_stem(stem: str, arch: int, cuobjdump: str | None):
    """(per-name-expression facts, NVRTC version) for one kernel file and architecture."""
    majors = nvrtc_by_major()
    if not majors:
        raise RuntimeError("no libnvrtc found: install the test extra (nvidia-cuda-nvrtc)")
    major = max(majors)
    nvrtc = majors[major]
    names = _loader.instantiations(stem)
    options = (
        *_loader.NVRTC_OPTIONS,
        *_loader.CUPY_ADDED_NVRTC_OPTIONS,
        f"--gpu-architecture=sm_{arch}",
        "--ptxas-options=-v",
    )
    ok, log, lowered, cubin = nvrtc.compile_cubin(_loader.source(stem), names, options)
    if not ok:
        raise RuntimeError(f"NVRTC {nvrtc.version} rejected {stem}.cu for sm_{arch}:\n{log}")
    resources = parse_ptxas(log)
    mix = {}
    if cuobjdump is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{stem}.cubin"
            path.write_bytes(cubin)
            run = subprocess.run([cuobjdump, "-sass", str(path)], capture_output=True,
                                 text=True, check=False)  # fmt: skip
        # A cuobjdump too old for this CUBIN is a missing column, not a failed report.
        mix = sass_mix(run.stdout) if run.returncode == 0 else {}
    facts = {}
    for name in names:
        mangled = lowered[name]
        facts[name] = {"mangled": mangled, **resources[mangled], "sass": mix.get(mangled)}
    return facts, ".".join(map(str, nvrtc.version))


def report(stems, archs) -> dict:
    launches = wrapper_launches()
    cuobjdump = find_cuobjdump()
    kernels = []
    nvrtc_version = None
    for stem in stems:
        for arch in archs:
            facts, nvrtc_version = compile_stem(stem, arch, cuobjdump)
            for name, f in facts.items():
                configs = sorted({(la.threads, la.dynamic_shared) for la in launches
                                  if la.name == name})  # fmt: skip
                cases = sorted({la.case for la in launches if la.name == name})
                resident = []
                for threads, dynamic in configs:
                    warps, limit = occupancy(LIMITS[arch], f["registers"], f["static_shared"],
                                             threads, dynamic)  # fmt: skip
                    resident.append({"threads": threads, "dynamic_shared": dynamic,
                                     "warps_per_sm": warps, "limited_by": limit})  # fmt: skip
                kernels.append({"stem": stem, "kernel": name, "arch": arch, **f,
                                "launches": resident, "cases": cases})  # fmt: skip
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nvrtc": nvrtc_version,
        "options": list(_loader.NVRTC_OPTIONS + _loader.CUPY_ADDED_NVRTC_OPTIONS),
        "cuobjdump": cuobjdump is not None,
        "limits": {f"sm_{a}": asdict(LIMITS[a]) for a in archs},
        "kernels": kernels,
    }


def table(rep: dict) -> str:
    head = ("kernel", "sm", "regs", "spill st/ld", "stack", "smem", "threads:dyn smem -> warps/SM",
            "loop instr", "fp64", "cvt", "div", "br")  # fmt: skip
    rows = [head]
    for k in rep["kernels"]:
        launches = (
            ", ".join(
                f"{la['threads']}:{la['dynamic_shared']}->{la['warps_per_sm']} ({la['limited_by']})"
                for la in k["launches"]
            )
            or "not launched by a wrapper"
        )
        loop = (k["sass"] or {}).get("loops") or {}
        rows.append((k["kernel"], str(k["arch"]), str(k["registers"]),
                     f"{k['spill_stores']}/{k['spill_loads']}", str(k["stack"]),
                     str(k["static_shared"]), launches,
                     *(str(loop.get(c, "-")) for c in ("instructions", "fp64", "conversions",
                                                       "divisions", "branches"))))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stems", default=",".join(_loader.stems()),
                        help="kernel files (default: all of cuda_src/)")  # fmt: skip
    parser.add_argument("--archs", default=",".join(map(str, DEFAULT_ARCHS)),
                        help=f"SM architectures among {sorted(LIMITS)}")  # fmt: skip
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write JSON")
    args = parser.parse_args(argv)
    archs = [int(a) for a in args.archs.split(",")]
    unknown = sorted(set(archs) - set(LIMITS))
    if unknown:
        parser.error(f"--archs: expected some of {sorted(LIMITS)}, got {unknown}")
    rep = report(args.stems.split(","), archs)
    print(table(rep))
    if not rep["cuobjdump"]:
        print("cuobjdump not found (pip install nvidia-cuda-cuobjdump): no instruction mix")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rep, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
