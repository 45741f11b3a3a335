"""Each CUDA extra brings what CuPy needs to compile our kernels; no GPU needed (run by .ci/run).

For each extra (``cuda12``, ``cuda13``): ``pip install ".[<extra>]"`` and nothing else into a
fresh virtual environment (shared between the extras, see :func:`check`), then, inside it, CuPy
loads NVRTC as it would for a first kernel (CuPy 14 finds the NVRTC wheel through
cuda-pathfinder) and compiles one instantiation of one of our kernel files to a cubin. The compile
goes through CuPy's own NVRTC binding (``cupy.cuda.nvrtc``) with the options ``cupy.RawModule``
would pass: ``RawModule`` itself first asks the device for its architecture, which needs a GPU.
tests/test_nvrtc.py compiles every instantiation for both NVRTC majors with whatever NVRTC it
finds; this script checks that each extra, alone, lets CuPy find one.

    python scripts/check_cuda_extras.py            # both extras
    python scripts/check_cuda_extras.py cuda13     # one
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXTRAS = ("cuda12", "cuda13")
# The CUDA major each extra's CuPy is built for, so the NVRTC it loads must be of that major.
CUDA_MAJOR = {"cuda12": 12, "cuda13": 13}
# One instantiation of one file: about a second of NVRTC instead of ~10 s for the whole file.
STEM = "tv1d"
# H100. CuPy compiles straight to a cubin for any architecture its NVRTC knows.
ARCH = 90
ELF_MAGIC = b"\x7fELF"
# What an extra brings beyond cupytv's own requirements, uninstalled before the next extra.
CUDA_PACKAGES = ("cupy-", "nvidia-")
REPORTED = (*CUDA_PACKAGES, "cuda-")


def compile_inside(extra: str) -> None:
    """Runs in the extra's environment: load NVRTC through CuPy, compile, report."""
    import cupy
    from cuda import pathfinder  # CuPy 14's own library finder, a dependency of cupy-cuda1Xx
    from cupy.cuda import nvrtc

    import cupytv
    from cupytv import _loader

    if REPO in Path(cupytv.__file__).resolve().parents:
        sys.exit(f"imported cupytv from the checkout ({cupytv.__file__}), not the installed wheel")
    # The first NVRTC call is where CuPy loads the library.
    try:
        major, minor = nvrtc.getVersion()
    except Exception as error:  # CuPy 14 raises pathfinder's error, 13 a RuntimeError
        sys.exit(f"{extra}: CuPy cannot load NVRTC, so no kernel can compile: {error}")
    if major != CUDA_MAJOR[extra]:
        sys.exit(f"{extra}: CuPy loaded NVRTC {major}.{minor}, expected {CUDA_MAJOR[extra]}.x")
    library = pathfinder.load_nvidia_dynamic_lib("nvrtc").abs_path
    name = _loader.instantiations(STEM)[0]
    options = (*_loader.NVRTC_OPTIONS, *_loader.CUPY_ADDED_NVRTC_OPTIONS, f"-arch=sm_{ARCH}")
    start = time.perf_counter()
    program = nvrtc.createProgram(_loader.source(STEM), f"{STEM}.cu", (), ())
    try:
        nvrtc.addNameExpression(program, name)
        try:
            nvrtc.compileProgram(program, options)
        except nvrtc.NVRTCError as error:
            sys.exit(f"NVRTC rejected {name}: {error}\n{nvrtc.getProgramLog(program)}")
        cubin = nvrtc.getCUBIN(program)
        lowered = nvrtc.getLoweredName(program, name)
    finally:
        nvrtc.destroyProgram(program)
    seconds = time.perf_counter() - start
    if not cubin.startswith(ELF_MAGIC):
        sys.exit(f"NVRTC returned {len(cubin)} bytes that are not a cubin (ELF) for {name}")
    print(
        f"  cupy {cupy.__version__} loaded NVRTC {major}.{minor} from {library}\n"
        f"  compiled {name} ({STEM}.cu) for sm_{ARCH}: {len(cubin)}-byte cubin, "
        f"{lowered}, {seconds:.1f} s"
    )


def _installed(python: str) -> list[str]:
    freeze = [python, "-m", "pip", "list", "--format=freeze"]
    return subprocess.run(freeze, capture_output=True, text=True, check=True).stdout.split()


def check(extras: tuple[str, ...]) -> None:
    """One environment; each extra installed alone into it, then compile_inside there.

    Between extras the previous one's CUDA packages (cupy-*, nvidia-*) are uninstalled, which
    leaves what a fresh environment would hold before the next extra's own packages: cupytv, its
    NumPy and SciPy, and cuda-pathfinder (a requirement of every CuPy 14 wheel). Sharing those saves
    ~15 s per extra on a 2-core machine, and so does --no-compile (no .pyc for CuPy's ~1000
    modules, which only this check imports).
    """
    with tempfile.TemporaryDirectory(prefix="cupytv-cuda-extras-") as tmp:
        start = time.perf_counter()
        venv.create(Path(tmp) / "venv", with_pip=True)
        python = str(Path(tmp) / "venv" / "bin" / "python")
        for extra in extras:
            cuda = [p.split("==")[0] for p in _installed(python) if p.startswith(CUDA_PACKAGES)]
            if cuda:
                pip_uninstall = [python, "-m", "pip", "uninstall", "--quiet", "--yes", *cuda]
                subprocess.run(pip_uninstall, check=True)
            pip_install = [
                python,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-compile",
                f"{REPO}[{extra}]",
            ]
            subprocess.run(pip_install, check=True)
            print(f'{extra}: pip install ".[{extra}]" ({time.perf_counter() - start:.0f} s)')
            print("  " + " ".join(p for p in _installed(python) if p.startswith(REPORTED)))
            # -I: neither the checkout nor PYTHONPATH on sys.path, so the installed cupytv is used.
            inside = [python, "-I", str(Path(__file__).resolve()), "--inside", extra]
            if subprocess.run(inside, cwd=tmp, check=False).returncode != 0:
                sys.exit(f'{extra}: FAILED: pip install ".[{extra}]" does not let CuPy compile')
            start = time.perf_counter()


def main(argv: list[str]) -> None:
    if argv[:1] == ["--inside"]:
        compile_inside(argv[1])
        return
    unknown = set(argv) - set(EXTRAS)
    if unknown:
        sys.exit(f"unknown extras {sorted(unknown)}: expected some of {list(EXTRAS)}")
    check(tuple(argv) or EXTRAS)


if __name__ == "__main__":
    main(sys.argv[1:])
