"""Regenerate cupytv/data/gpu_proxy_costs.json: sm_90 SASS instructions per probe region.

The warp-lockstep proxy (cupytv/gpu_proxy.py) counts how often each TV_PROBE region of
cuda_src/ runs per warp; this script prices one execution of each region from the machine code
nvcc makes for sm_90. Each kernel file goes through the loader (the exact text NVRTC compiles,
every declared instantiation taken by address, as scripts/nvcc_report.sh does), is compiled with
``nvcc -arch=sm_90 -cubin -lineinfo`` (line info only: the code is the release code), and
disassembled with ``nvdisasm -gi`` (the source line of every instruction, and the line it was
inlined at; the PyPI wheels nvidia-cuda-nvdisasm / nvidia-cuda-cuobjdump carry the tools).

Regions are spans of source lines: a cost-bearing hook (TV_PROBE, TV_PROBE_N, TV_PROBE_TRIP)
owns the lines of the brace block that encloses it, from the loop header when the hook opens a
loop body, less the blocks of hooks nested inside. An instruction belongs to the span of its own
line; when that line's span is a whole function and the line it was inlined at lies in a deeper
span of the same file (a lambda such as Condat's `settle`, called from a jump), to that one.
A function inlined at several call sites leaves several copies in a kernel; nvdisasm prints
every instruction's whole inlining chain, so a copy is the chain of call sites outside the
region's span, and a region costs the mean over its copies. An unrolled loop holds several trips'
code in one copy: a trip region's count is divided by how many times its memory instructions
cover the TV_PROBE_ACCESS hooks of one trip. Instructions outside every span (kernel setup) are
reported as ``unattributed`` per kernel and charged once per thread.

Per kernel the table also keeps registers, stack and static shared memory
(``cuobjdump --dump-resource-usage``): the proxy's occupancy model needs them.

Usage: python scripts/gpu_proxy_costs.py [--check]   (--check: exit 1 when the table is stale:
the stored hash of cuda_src/ differs; needs no nvcc)
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cupytv import _loader  # noqa: E402
from cupytv.gpu_proxy import COSTS_PATH, source_hash  # noqa: E402

ARCH = "sm_90"
_HOOK = re.compile(r"\bTV_PROBE(_N|_TRIP|_LOOP|_ACCESS)?\(\s*(\w+)")
_FILE_LINE = re.compile(r'//## File "([^"]+)", line (\d+)(?: inlined at "([^"]+)", line (\d+))?')
_INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")
_FUNC = re.compile(r"^\.text\.(\S+):")
FP64 = re.compile(
    r"^(?:@!?U?P\w+\s+)?(DADD|DMUL|DFMA|DSETP|DMNMX|DSET|F2F\.F64|F2F\.F32\.F64|"
    r"I2F\.F64|F2I\.F64|MUFU\.RCP64H|MUFU\.RSQ64H|DMMA)\b"
)
DIV = re.compile(r"^(?:@!?U?P\w+\s+)?MUFU\.RCP64H\b")
MEMORY = re.compile(r"^(?:@!?U?P\w+\s+)?(LDG|STG|LDS|STS|LD|ST|LDL|STL)(\.|\s)")
BRANCH = re.compile(r"^(?:@!?U?P\w+\s+)?(BRA|BRX|CALL|RET|EXIT|WARPSYNC|BSSY|BSYNC)\b")


def tool(name: str) -> str | None:
    """A CUDA tool from PATH or from the nvidia-cuda-* wheels."""
    found = shutil.which(name)
    if found:
        return found
    try:
        import nvidia

        for base in nvidia.__path__:
            for candidate in Path(base).glob(f"*/bin/{name}"):
                return str(candidate)
    except ImportError:
        pass
    return None


def spans(text: str) -> list[tuple[int, int, str]]:
    """(first line, last line, region) of every cost-bearing hook in one file's text."""
    lines = text.split("\n")
    # Brace depth per position: the block enclosing a hook is found by scanning for the
    # unmatched braces around it (comments are stripped first; macros' braces count too).
    clean = re.sub(r"//[^\n]*", lambda m: " " * len(m.group(0)), text)
    opens: list[int] = []
    block_of: dict[int, tuple[int, int]] = {}  # open offset -> (open, close)
    for i, c in enumerate(clean):
        if c == "{":
            opens.append(i)
        elif c == "}" and opens:
            o = opens.pop()
            block_of[o] = (o, i)
    blocks = sorted(block_of.values())
    result = []
    for m in _HOOK.finditer(clean):
        kind, name = m.group(1), m.group(2)
        if kind in ("_LOOP", "_ACCESS"):
            continue
        at = m.start()
        inner = [b for b in blocks if b[0] < at < b[1]]
        if not inner:
            continue
        o, c = max(inner)
        first = clean.count("\n", 0, o) + 1
        last = clean.count("\n", 0, c) + 1
        header = lines[first - 1]
        if kind == "_TRIP" and not re.search(r"\b(for|while)\s*\(", header):
            # The hook opens a loop body whose header starts on an earlier line.
            j = first - 1
            while j > 0 and not re.search(r"\b(for|while)\s*\(", lines[j - 1]):
                j -= 1
            first = j if j > 0 else first
        result.append((first, last, name))
    return result


def access_hooks() -> tuple[dict[str, int], set[str]]:
    """Per loop region, the TV_PROBE_ACCESS hooks inside its trip span; and the loop regions."""
    accesses: dict[str, int] = defaultdict(int)
    trips: set[str] = set()
    for p in _loader.source_dir().glob("*.cu*"):
        text = p.read_text()
        lines = text.split("\n")
        table = spans(text)
        for first, last, name in table:
            if any(f"TV_PROBE_TRIP({name})" in ln for ln in lines[first - 1 : last]):
                trips.add(name)
        for i, ln in enumerate(lines, 1):
            if "TV_PROBE_ACCESS(" in ln:
                span = innermost(table, i)
                if span:
                    accesses[span[2]] += 1
    return accesses, trips


def innermost(table: list[tuple[int, int, str]], line: int) -> tuple[int, int, str] | None:
    hits = [s for s in table if s[0] <= line <= s[1]]
    return min(hits, key=lambda s: s[1] - s[0]) if hits else None


def disassemble(stem: str, work: Path) -> str:
    names = _loader.instantiations(stem)
    refs = ",\n  ".join(f"reinterpret_cast<const void*>(&{n})" for n in names)
    src = work / f"{stem}.cu"
    src.write_text(
        _loader.source(stem) + f"\nconst void* cupytv_cost_instances[] = {{\n  {refs}\n}};\n"
    )
    cubin = work / f"{stem}.cubin"
    subprocess.run(
        [tool("nvcc"), *_loader.NVRTC_OPTIONS, f"-arch={ARCH}", "-cubin", "-lineinfo",
         "-o", str(cubin), str(src)],
        check=True, cwd=work,
    )  # fmt: skip
    out = subprocess.run(
        [tool("nvdisasm"), "-gi", "-c", str(cubin)], check=True, capture_output=True, text=True
    )
    usage = subprocess.run(
        [tool("cuobjdump"), "--dump-resource-usage", str(cubin)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return out.stdout, usage.stdout


def resources(usage: str) -> dict[str, dict]:
    """Registers, static shared memory and stack per kernel (cuobjdump --dump-resource-usage)."""
    found, func = {}, None
    for line in usage.split("\n"):
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            func = m.group(1)
            continue
        m = re.match(r"\s*REG:(\d+) STACK:(\d+) SHARED:(\d+)", line)
        if m and func:
            regs, stack, shared = map(int, m.groups())
            found[func] = {"registers": regs, "stack": stack, "shared_static": shared}
    names = demangle(list(found))
    return {names[f].split("(")[0].removeprefix("void "): v for f, v in found.items()}


def demangle(names: list[str]) -> dict[str, str]:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt:
        return {n: n for n in names}
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True)
    return dict(zip(names, out.stdout.split("\n"), strict=False))


def kernel_costs(stem: str, sass: str) -> dict[str, dict]:
    files = {p.name: spans(p.read_text()) for p in _loader.source_dir().glob("*.cu*")}
    accesses, trips = access_hooks()
    # kernel -> region -> copy key -> counts
    raw: dict[str, dict] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(lambda: [0, 0, 0, 0, 0]))
    )
    func, chain, fresh = None, [], True
    for line in sass.split("\n"):
        m = _FUNC.match(line.strip())
        if m:
            func, chain, fresh = m.group(1), [], True
            continue
        m = _FILE_LINE.search(line)
        if m:
            # An instruction's location is printed innermost first, then each location it was
            # inlined at on lines of their own, out to the kernel.
            if fresh:
                chain, fresh = [], False
            chain.append((Path(m.group(1)).name, int(m.group(2))))
            continue
        m = _INSN.search(line)
        if not (m and func and chain) or func.startswith("$"):
            continue
        fresh = True
        text = m.group(2).strip()
        span, at = None, len(chain)
        for i, (file, ln) in enumerate(chain):
            span = innermost(files.get(file, []), ln)
            if span:
                at = i + 1
                if at < len(chain) and chain[at][0] == file:
                    # A lambda: prefer the deeper span of its call site in the same function.
                    outer = innermost(files.get(file, []), chain[at][1])
                    if outer and outer != span and span[0] <= outer[0] and outer[1] <= span[1]:
                        span, at = outer, at + 1
                break
        caller = tuple(chain[at:])
        region = span[2] if span else "unattributed"
        counts = raw[func][region][caller]
        counts[0] += 1
        counts[1] += bool(FP64.match(text))
        counts[2] += bool(DIV.match(text))
        counts[3] += bool(BRANCH.match(text))
        counts[4] += bool(MEMORY.match(text))
    names = demangle(list(raw))
    result = {}
    for func, regions in raw.items():
        entry = {}
        for region, by_copy in regions.items():
            total = [sum(c[i] for c in by_copy.values()) for i in range(5)]
            copies = len(by_copy)
            # An unrolled loop holds several trips' code: a trip's share is the region's code
            # divided by how many times its memory accesses (one set per trip) appear.
            per_trip = accesses.get(region, 0)
            unroll = max(1.0, total[4] / copies / per_trip) if per_trip and region in trips else 1.0
            total = [t / unroll for t in total]
            entry[region] = {
                "instructions": round(total[0] / copies, 2),
                "fp64": round(total[1] / copies, 2),
                "fp64_div": round(total[2] / copies, 2),
                "branches": round(total[3] / copies, 2),
                "copies": copies,
                "unroll": round(unroll, 2),
            }
        result[names[func].split("(")[0].removeprefix("void ")] = entry
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only check the table is current")
    args = parser.parse_args()
    current = source_hash()
    if args.check:
        stored = json.loads(COSTS_PATH.read_text()).get("source_sha256")
        if stored != current:
            print(f"{COSTS_PATH} is stale: cuda_src/ hash {current}, table has {stored}; "
                  "run python scripts/gpu_proxy_costs.py")  # fmt: skip
            return 1
        print(f"{COSTS_PATH.name} matches cuda_src/ ({current[:12]})")
        return 0
    missing = [t for t in ("nvcc", "nvdisasm", "cuobjdump") if tool(t) is None]
    if missing:
        print(f"gpu_proxy_costs: needs {missing} (pip install nvidia-cuda-nvdisasm)")
        return 1
    kernels, usage = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for stem in ("tv1d", "tv2d"):
            sass, res = disassemble(stem, Path(tmp))
            kernels.update(kernel_costs(stem, sass))
            usage.update(resources(res))
    nvcc_version = subprocess.run([tool("nvcc"), "--version"], capture_output=True, text=True)
    table = {
        "arch": ARCH,
        "source_sha256": current,
        "nvcc": nvcc_version.stdout.strip().split("\n")[-1],
        "generator": "scripts/gpu_proxy_costs.py",
        "kernels": kernels,
        "resources": usage,
    }
    COSTS_PATH.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote {COSTS_PATH} ({len(kernels)} kernels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
