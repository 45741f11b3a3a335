#!/usr/bin/env bash
# Validate and time everything on a GPU machine, in one command, in under 9 minutes.
#
# For a machine with no internet access whose python3 already has torch, CuPy (cupy-cuda13x) and
# NVRTC: nothing is installed, the checkout runs from PYTHONPATH=. Steps, each under `timeout`,
# in order of value (a lease that runs out loses the last ones):
#   1. the GPU, driver and tool versions;
#   2. the `gpu` tests (slow ones included; the host tests run in CI) bar torch.compile's
#      inductor case (a minute of Triton code generation that tests nothing of ours), then
#      `python -m cupytv check --backend cuda --quick` (its table goes to pytest.log);
#   3. the GPU benchmarks in --quick mode: bench_torch, bench_tv2d, bench_tv1d (each takes
#      --quick and --json PATH; bench_host_executor measures the CPU only and is left out), then
#      the seed's timing table's GPU rows at full size (timing_table.py --hardware gpu);
#   4. compute-sanitizer memcheck and racecheck over the GPU cases of every kernel's test module
#      (tests/test_<stem>.py for each cuda_src/<stem>.cu, without the slow ones).
# Results go to $OUT when set, else benchmarks/results/ (9 files, no subfolders):
#   summary.json   versions, GPU, and each step's status and duration
#   pytest.log, pytest.xml, memcheck.log, racecheck.log, benchmarks.log
#   benchmarks.json  every benchmark's JSON report, keyed by benchmark name
#   timing_table-gpu-<gpu>.json and .md  the seed's table, GPU rows (README reads them)
# Exit status: 0 when every step passed, 1 otherwise (every step runs regardless).
set -uo pipefail
cd "$(dirname "$0")/.."

out="${OUT:-benchmarks/results}"
mkdir -p "$out"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export CUPYTV_CACHE_DIR="${CUPYTV_CACHE_DIR:-$(mktemp -d)}"
python=python3
steps="$(mktemp)"

# Per-step limits in seconds: pytest 150 + check 30 + benchmarks 40 + 100 + 60 + timing table 60
# + sanitizers 2 x 60 = 560 s
# at the very most, inside the device tool's 600 s per command with room for start-up. First H100
# run (2026-11-26): pytest 128 s, bench_torch 12 s; bench_tv2d (80 s then) and bench_tv1d (50 s)
# and the sanitizers (50 s) were cut short.
PYTEST_LIMIT=150
CHECK_LIMIT=30
SANITIZER_LIMIT=60
declare -A BENCH_LIMIT=([bench_torch]=40 [bench_tv2d]=100 [bench_tv1d]=60)
TIMING_TABLE_LIMIT=60
GPU_BENCHMARKS=(bench_torch bench_tv2d bench_tv1d)

run_step() {  # run_step NAME LOGFILE LIMIT COMMAND... : records "name status seconds"
  local name=$1 log=$2 limit=$3
  shift 3
  local start=$SECONDS status
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  status=$?
  echo "$name $status $((SECONDS - start))" >>"$steps"
  echo "   exit $status after $((SECONDS - start))s; log: $log"
  tail -n 5 "$log" | sed 's/^/   | /'
}

echo "== GPU and versions"
nvidia-smi || echo "nvidia-smi failed"
sanitizer="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"

# 2. The GPU tests.
: >"$out/pytest.log"
run_step pytest "$out/pytest.log" "$PYTEST_LIMIT" \
  "$python" -m pytest -ra -p no:cacheprovider -m gpu -k "not inductor" \
  --junitxml="$out/pytest.xml"

# The user-facing validation table, every operator on CUDA against the exact reference.
run_step check "$out/pytest.log" "$CHECK_LIMIT" "$python" -m cupytv check --backend cuda --quick

# 3. Benchmarks, quick mode; their JSON reports are merged into one file.
bench_dir="$(mktemp -d)"
: >"$out/benchmarks.log"
for name in "${GPU_BENCHMARKS[@]}"; do
  run_step "$name" "$out/benchmarks.log" "${BENCH_LIMIT[$name]}" \
    "$python" "benchmarks/$name.py" --quick --json "$bench_dir/$name.json"
done

# The seed's timing table, GPU rows only (the CPU rows and the peers are committed from CI's
# machine), written next to the CPU table for the README.
run_step timing_table "$out/benchmarks.log" "$TIMING_TABLE_LIMIT" \
  "$python" benchmarks/timing_table.py --hardware gpu --out-dir "$out"

# 4. compute-sanitizer over every kernel's GPU test cases.
mapfile -t kernel_tests < <(for f in cuda_src/*.cu; do
  stem="$(basename "$f" .cu)"
  echo "tests/test_${stem}.py"
done)
for tool in memcheck racecheck; do
  : >"$out/$tool.log"
  if [[ -x "$sanitizer" ]]; then
    run_step "$tool" "$out/$tool.log" "$SANITIZER_LIMIT" \
      "$sanitizer" --tool "$tool" --error-exitcode 1 \
      "$python" -m pytest -q -x -p no:cacheprovider -m "gpu and not slow" "${kernel_tests[@]}"
  else
    echo "compute-sanitizer not found" >"$out/$tool.log"
    echo "$tool 127 0" >>"$steps"
  fi
done


"$python" - "$out" "$steps" "$bench_dir" "$sanitizer" <<'EOF'
import glob
import json
import os
import platform
import subprocess
import sys

out, steps_file, bench_dir, sanitizer = sys.argv[1:]


def version(module):
    try:
        return __import__(module).__version__
    except Exception as exc:  # a missing package is a finding, not a crash
        return f"unavailable: {type(exc).__name__}: {exc}"


def command(*args):
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception as exc:
        return f"unavailable: {exc}"


steps = []
with open(steps_file) as f:
    for line in f:
        name, status, seconds = line.split()
        steps.append({"step": name, "exit": int(status), "seconds": int(seconds)})
benchmarks = {}
for path in sorted(glob.glob(os.path.join(bench_dir, "*.json"))):
    with open(path) as f:
        benchmarks[os.path.basename(path)[: -len(".json")]] = json.load(f)
with open(os.path.join(out, "benchmarks.json"), "w") as f:
    json.dump(benchmarks, f, indent=2)
summary = {
    "passed": all(s["exit"] == 0 for s in steps),
    "steps": steps,
    "gpu": command("nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                   "--format=csv,noheader"),
    "python": platform.python_version(),
    "numpy": version("numpy"),
    "cupy": version("cupy"),
    "torch": version("torch"),
    "cuda_runtime": command(sys.executable, "-c",
                            "import cupy; print(cupy.cuda.runtime.runtimeGetVersion())"),
    "compute_sanitizer": command(sanitizer, "--version").splitlines()[-1:],
    "cxx": command("g++", "--version").splitlines()[:1],
}
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
print(json.dumps(summary, indent=2))
sys.exit(0 if summary["passed"] else 1)
EOF
