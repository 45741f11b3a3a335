"""Compile CUDA kernel source into a host shared library, cached on disk.

The source handed in is a complete kernel file (shared headers already inlined by the loader). It
is compiled together with ``cuda_host.h``, the CUDA compatibility header beside this file, plus one
generated pair of ``extern "C"`` functions per requested template instantiation: a launcher and a
signature string used to check arguments. Libraries are cached under
``$CUPYTV_CACHE_DIR/host`` (default ``~/.cache/cupytv/host``), keyed by a hash of the full
generated source, the compiler's identity, the flags and the CPU the build targets (what
``-march=native`` expands to), so a cache shared between machines never runs another CPU's code.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

CACHE_DIR_ENV = "CUPYTV_CACHE_DIR"
SANITIZE_ENV = "CUPYTV_HOST_SANITIZE"
COMPILERS = ("g++", "c++", "clang++")

_HEADER = Path(__file__).with_name("cuda_host.h")
# The warp-lockstep probe runtime, compiled in only with this define (cupytv/gpu_proxy.py).
PROBE_DEFINE = "-DCUPYTV_PROBE"
_PROBE_HEADER = Path(__file__).with_name("probe.h")

# -O2 as a release build (-O3 measured no faster, the 2D fused kernel 4-7% slower: the kernels
# are scalar loops with data-dependent branches; benchmarks/NOTES.md); C++20 for std::atomic_ref
# (floating-point atomicAdd); -pthread for the worker pool that runs the blocks of a grid in
# parallel (cuda_host.h; no OpenMP, whose joins stall on a shared CPU); hidden visibility exports
# only the generated launchers; the local-dynamic TLS model finds all of a function's
# thread-locals (threadIdx, __shared__ arrays) with one __tls_get_addr call instead of one per
# variable. -ffp-contract=off: no fused multiply-adds the source does not write, so results are
# the same bits on every CPU, with or without FMA units (g++ contracts by default in C++, and
# -march=native turns FMA on), and the same as before -march=native. NVRTC does contract, so the
# GPU may differ from the host in the last bits anyway (scripts/gpu_timings.py --ulp measures it).
BASE_FLAGS = (
    "-std=c++20",
    "-O2",
    "-fPIC",
    "-shared",
    "-pthread",
    "-fvisibility=hidden",
    "-ftls-model=local-dynamic",
    "-ffp-contract=off",
)
# Code for the CPU that builds it (AVX2 / AVX-512 where present), when the compiler knows the flag;
# the cache key records what it expanded to (see _native_target). Measured: equal or up to a few
# percent faster than generic x86-64 (benchmarks/NOTES.md).
NATIVE_FLAGS = ("-march=native",)
# Debug mode: every out-of-bounds access or undefined behaviour aborts the process with a report.
# Sanitized frames are several times larger, hence the bigger fiber stacks.
SANITIZE_FLAGS = (
    "-O1",
    "-g",
    "-fno-omit-frame-pointer",
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    "-DCUPYTV_HOST_STACK_BYTES=(1024*1024)",
)

# A declaration on one line of its own, so that prose about "extern __shared__" in a comment
# never matches.
_EXTERN_SHARED = re.compile(
    r"^(\s*)extern\s+__shared__\s+([^;\[\]\n]+?)\s*\[\s*\]\s*;", re.MULTILINE
)
_ALIGN = re.compile(r"__align__\s*\(\s*\d+\s*\)")


class HostCompilerNotFoundError(RuntimeError):
    """No C++ compiler is available to build the host executor's kernel libraries."""


def sanitize_enabled() -> bool:
    """Whether ``CUPYTV_HOST_SANITIZE=1`` asks for AddressSanitizer + UBSan builds."""
    return os.environ.get(SANITIZE_ENV, "0") == "1"


def cache_dir() -> Path:
    """Where compiled host libraries are kept (``$CUPYTV_CACHE_DIR/host``)."""
    root = os.environ.get(CACHE_DIR_ENV)
    if root:
        return Path(root) / "host"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "cupytv" / "host"


def find_compiler() -> list[str]:
    """The C++ compiler command: ``$CXX`` if set, else the first of g++, c++, clang++ on PATH."""
    cxx = os.environ.get("CXX")
    if cxx:
        command = shlex.split(cxx)
        if command and shutil.which(command[0]):
            return command
        raise HostCompilerNotFoundError(
            f"CXX={cxx!r} does not name an executable C++ compiler. " + _NO_COMPILER_HELP
        )
    for name in COMPILERS:
        path = shutil.which(name)
        if path:
            return [path]
    raise HostCompilerNotFoundError(
        f"No C++ compiler found (looked for $CXX, {', '.join(COMPILERS)}). " + _NO_COMPILER_HELP
    )


_NO_COMPILER_HELP = (
    "cupytv's host executor compiles the CUDA kernels with a C++ compiler to run them on the CPU "
    "for NumPy arrays. Install one (e.g. `apt-get install g++`) or set CXX, or pass CuPy arrays "
    "to run on a GPU. The exact reference solvers in cupytv.reference need no compiler."
)


@functools.cache
def _compiler_identity(command: tuple[str, ...]) -> str:
    """The compiler's version banner: part of the cache key, so an upgrade rebuilds."""
    out = subprocess.run([*command, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip()


@functools.cache
def _native_target(command: tuple[str, ...]) -> str | None:
    """What ``-march=native`` means to this compiler on this CPU, or None when it rejects it.

    The driver's dry run (``-###``) prints the compiler proper's command line with the detected
    CPU spelled out (g++: ``-march=cooperlake -mavx2 ... --param l1-cache-size=48``; clang:
    ``-target-cpu X -target-feature +avx2 ...``). Two machines with the same expansion get the
    same code, which runs on both; any other CPU gets its own build.
    """
    probe = [*command, *NATIVE_FLAGS, "-###", "-x", "c++", "-c", os.devnull, "-o", os.devnull]
    try:
        out = subprocess.run(probe, capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    words = shlex.split(out.stderr.replace("\n", " "))
    # Target options only: file names and temporary paths differ between runs.
    keep = [
        w
        for i, w in enumerate(words)
        if (w.startswith("-m") and "/" not in w)
        or (i > 0 and words[i - 1] in ("-target-cpu", "-target-feature", "--param", "-tune-cpu"))
    ]
    return " ".join(keep) if keep else None


def compile_flags(command: tuple[str, ...], sanitize: bool = False) -> tuple[str, ...]:
    """The flags every host build with this compiler gets (before the per-build defines)."""
    native = NATIVE_FLAGS if _native_target(command) is not None else ()
    return BASE_FLAGS + native + (SANITIZE_FLAGS if sanitize else ())


def rewrite_extern_shared(source: str) -> str:
    """Turn ``extern __shared__ T name[];`` into a pointer to the block's dynamic shared memory.

    The declaration has no macro spelling on the host (``extern`` comes first), so it is rewritten
    in the text. Every such array aliases the same buffer, as on the GPU.
    """

    def replace(match: re.Match[str]) -> str:
        declaration = _ALIGN.sub(" ", match.group(2)).split()
        type_name, name = " ".join(declaration[:-1]), declaration[-1]
        return (
            f"{match.group(1)}{type_name}* const {name} = "
            f"reinterpret_cast<{type_name}*>(::cupytv_host::dynamic_shared());"
        )

    return _EXTERN_SHARED.sub(replace, source)


def host_source(source: str, name_expressions: tuple[str, ...], probe: bool = False) -> str:
    """The complete translation unit: compatibility header, kernels, generated launchers.

    ``probe``: a probe build (the -DCUPYTV_PROBE define): probe.h follows the header and each
    launcher tells the probe which kernel runs.
    """
    lines = [
        # The header is the main file here, where `#pragma once` only draws a warning.
        _HEADER.read_text().replace("#pragma once", "", 1),
        *([_PROBE_HEADER.read_text().replace("#pragma once", "", 1)] if probe else []),
        '#line 1 "kernel.cu"',
        rewrite_extern_shared(source),
        '#line 1 "cupytv_generated_launchers"',
        "// One launcher and one signature per name expression (see cupytv/_host/build.py).",
    ]
    export = 'extern "C" __attribute__((visibility("default")))'
    for i, expr in enumerate(name_expressions):
        lines.append(
            f"{export} const char* cupytv_signature_{i}() "
            f"{{ return ::cupytv_host::signature(&{expr}); }}"
        )
        lines.append(
            f"{export} void cupytv_launch_{i}(const ::cupytv_host::LaunchConfig* cfg, void** args)"
            f" {{ {f'::cupytv_probe::start_launch({i}); ' if probe else ''}"
            f"::cupytv_host::launch<&{expr}>(&{expr}, cfg, args); }}"
        )
    return "\n".join(lines) + "\n"


def cache_path(text: str, compiler: tuple[str, ...], flags: tuple[str, ...]) -> Path:
    """Where the library built from ``text`` with ``compiler`` and ``flags`` is cached: keyed by
    all three, the compiler's version and the CPU ``-march=native`` targets here."""
    target_cpu = _native_target(compiler) or ""
    key = hashlib.sha256(
        "\0".join([text, *compiler, _compiler_identity(compiler), target_cpu, *flags]).encode()
    ).hexdigest()[:32]
    return cache_dir() / f"kernels-{key}.so"


def compile_library(
    source: str, name_expressions: tuple[str, ...], defines: tuple[str, ...], sanitize: bool
) -> Path:
    """Build (or find in the cache) the shared library for these kernels; returns its path."""
    compiler = tuple(find_compiler())
    flags = compile_flags(compiler, sanitize) + defines
    text = host_source(source, name_expressions, probe=PROBE_DEFINE in defines)
    target = cache_path(text, compiler, flags)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a private directory, then rename: concurrent processes never see a partial file.
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src_path = Path(tmp) / "kernel.cpp"
        src_path.write_text(text)
        out_path = Path(tmp) / target.name
        result = subprocess.run(
            [*compiler, *flags, str(src_path), "-o", str(out_path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"host compilation of kernels {list(name_expressions)} failed "
                f"({' '.join(compiler)}, exit {result.returncode}):\n{result.stderr[-8000:]}"
            )
        os.replace(out_path, target)
    return target
