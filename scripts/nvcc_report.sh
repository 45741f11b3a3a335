#!/usr/bin/env bash
# Print nvcc's register and spill report (ptxas -v) for every kernel instantiation in cuda_src/.
#
# Not a test: a look at resource use where nvcc exists. Each kernel file goes through the loader,
# so nvcc sees exactly the text CuPy compiles (headers inlined); its declared name expressions are
# instantiated by taking their addresses in host code. Architectures: $NVCC_REPORT_ARCHS, default
# "75 90" (the oldest CUDA 13 targets, and Hopper).
# Usage: scripts/nvcc_report.sh            (from anywhere; uses python3 and nvcc from PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvcc >/dev/null || { echo "nvcc not found: nothing to report" >&2; exit 0; }
archs="${NVCC_REPORT_ARCHS:-75 90}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"

python3 - "$work" <<'PY'
import sys
from pathlib import Path

from cupytv import _loader

work = Path(sys.argv[1])
for stem in _loader.stems():
    names = _loader.instantiations(stem)
    refs = ",\n  ".join(f"reinterpret_cast<const void*>(&{n})" for n in names)
    text = _loader.source(stem) + (
        "\n// nvcc_report.sh: instantiate every declared name expression.\n"
        f"const void* cupytv_report_instances[] = {{\n  {refs}\n}};\n"
    )
    (work / f"{stem}.cu").write_text(text)
PY

nvcc --version | tail -n 1
options="$(python3 -c 'from cupytv._loader import NVRTC_OPTIONS; print(" ".join(NVRTC_OPTIONS))')"
for src in "$work"/*.cu; do
  for arch in $archs; do
    echo "== $(basename "$src") sm_$arch ($options)"
    # shellcheck disable=SC2086  # the options are meant to split into words
    if ! nvcc $options -arch="sm_$arch" -Xptxas -v -c "$src" -o "$work/out.o" >"$work/log" 2>&1
    then
      cat "$work/log"
      exit 1
    fi
    grep -E "Compiling entry|registers|spill|bytes stack frame" "$work/log" \
      | c++filt \
      | sed -e "s/^ptxas info *: //"
  done
done
