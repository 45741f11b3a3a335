#!/usr/bin/env bash
# GPU performance check (#17 item 7): the first thing to run when a device is lent, <= 8 minutes.
#
# For a machine with no internet access whose python3 has CuPy (cupy-cuda13x) and NVRTC; the
# checkout runs from PYTHONPATH=. Steps, each under its own `timeout`, in order of value; a failed
# step is recorded in summary.json and the next one runs:
#   facts     nvidia-smi's facts about the GPU (name, clocks, memory, driver)        -> gpu.txt
#   pytest    the `gpu` tests that are not `slow` (torch.compile's inductor case left out)
#   timings   scripts/gpu_timings.py: each of #17's cases, raw kernels and full wrapper (CUDA
#             events, medians of 20), the device-to-device copy floor, the proxy's prediction
#   ulp       max ulp difference between the GPU and the host executor on a subset
#   ncu       where Nsight Compute exists: the main kernels' instruction counts, useful lanes,
#             shared-memory wavefronts and bank conflicts, occupancy, warp stall reasons
#   report    one table (report.md): measured beside predicted
# Without a usable GPU it records that ("gpu": null) and exits 0 after the facts step: CI runs it
# that way (tests/test_gpu_perf_check.py). With one, results are in $OUT (default: a temporary
# folder) and copied to benchmarks/results/gpu_<device>/perf_check/ (gpu_check.sh's files sit in
# gpu_<device>/ itself).
# Usage: OUT=/some/dir scripts/gpu_perf_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."

out="${OUT:-$(mktemp -d)}"
mkdir -p "$out"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
python=python3
steps="$out/steps.tsv"
: >"$steps"

# Per-step limits in seconds: 10 + 120 + 170 + 60 + 90 + 10 = 460 s, under 8 minutes with
# room for the first NVRTC compilations (inside the timings step).
FACTS_LIMIT=10
PYTEST_LIMIT=120
TIMINGS_LIMIT=170
ULP_LIMIT=60
NCU_LIMIT=90
REPORT_LIMIT=10
# Nsight Compute: the kernels the issue's cases spend their time in, and what to collect.
NCU_KERNELS='regex:tv1d_condat|tv1d_vjp|tv2d_solve|tv2d_rows_prox|tv2d_cols_prox'
NCU_LAUNCHES=24
NCU_METRICS=smsp__inst_executed.sum,smsp__thread_inst_executed_per_inst_executed.ratio,\
l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,\
l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum,\
l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,\
l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum,\
sm__warps_active.avg.pct_of_peak_sustained_active,sm__maximum_warps_per_active_cycle_pct,\
smsp__issue_active.avg.per_cycle_active,gpu__time_duration.sum,launch__registers_per_thread

run_step() {  # run_step NAME LIMIT COMMAND... : output to $out/NAME.log, "name status seconds"
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS status
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
  status=$?
  printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" >>"$steps"
  echo "   exit $status after $((SECONDS - start))s"
  tail -n 5 "$out/$name.log" | sed 's/^/   | /'
}

skip_step() {  # skip_step NAME REASON
  printf '%s\tskipped\t0\t%s\n' "$1" "$2" >>"$steps"
  echo "== $1 skipped: $2"
}

FACTS="nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,\
power.limit,compute_cap --format=csv && nvidia-smi"

gpu_usable() {
  command -v nvidia-smi >/dev/null &&
    "$python" -c 'import cupy, sys; sys.exit(cupy.cuda.runtime.getDeviceCount() < 1)' \
      >/dev/null 2>&1
}

run_step facts "$FACTS_LIMIT" bash -c "$FACTS"
cp "$out/facts.log" "$out/gpu.txt"
if gpu_usable; then
  gpu=yes
  run_step pytest "$PYTEST_LIMIT" "$python" -m pytest -q -ra -p no:cacheprovider \
    -m "gpu and not slow" -k "not inductor" --junitxml="$out/pytest.xml"
  run_step timings "$TIMINGS_LIMIT" "$python" scripts/gpu_timings.py --timings "$out/timings.json"
  run_step ulp "$ULP_LIMIT" "$python" scripts/gpu_timings.py --ulp "$out/ulp.json"
  ncu="$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || true)"
  if [[ -n "$ncu" ]]; then
    run_step ncu "$NCU_LIMIT" "$ncu" --csv --page raw -k "$NCU_KERNELS" -c "$NCU_LAUNCHES" \
      --metrics "$NCU_METRICS" --section WarpStateStats --section Occupancy \
      --log-file "$out/ncu.csv" "$python" scripts/gpu_timings.py --profile
  else
    skip_step ncu "ncu not found"
  fi
else
  gpu=""
  for s in pytest timings ulp ncu; do skip_step "$s" "no GPU"; done
fi

run_step report "$REPORT_LIMIT" "$python" - "$out" "$gpu" <<'EOF'
import json
import os
import re
import subprocess
import sys

out, gpu = sys.argv[1], sys.argv[2]
steps = []
with open(os.path.join(out, "steps.tsv")) as f:
    for line in f:
        name, status, seconds, *why = line.rstrip("\n").split("\t")
        steps.append({"step": name, "status": status, "seconds": int(seconds),
                      **({"why": why[0]} if why else {})})
name = None
if gpu:
    q = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                       capture_output=True, text=True).stdout.strip().splitlines()
    name = q[0] if q else "unknown"
# gpu_<device>: the model number (H100, A100, L40S...) or the whole name made file-safe.
model = re.search(r"\b([A-Z]{1,2}\d{2,3}[A-Z]?)\b", name or "")
device = (model.group(1) if model else re.sub(r"\W+", "_", name or "none")).lower()
summary = {"gpu": name, "device": device, "steps": steps,
           "passed": bool(gpu) and all(s["status"] == "0" for s in steps if s["step"] != "report")}
if not gpu:
    summary["note"] = "no GPU: nothing measured (dry run)"
rows = []
try:
    with open(os.path.join(out, "timings.json")) as f:
        rows = json.load(f)["rows"]
except (OSError, ValueError, KeyError):
    pass
lines = ["| case | raw ms | wrapper ms | floor ms | raw / floor | proxy ms | raw / proxy |",
         "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
for r in rows:
    p = r.get("proxy_ms")
    proxy = "- | -" if not p else f"{p:.3f} | {r['raw_ms'] / p:.2f}"
    lines.append(f"| {r['case']} | {r['raw_ms']:.3f} | {r['wrapper_ms']:.3f} | "
                 f"{r['floor_ms']:.3f} | {r['raw_ms'] / r['floor_ms']:.1f} | {proxy} |")
with open(os.path.join(out, "report.md"), "w") as f:
    f.write(f"# GPU performance check: {name or 'no GPU'}\n\n" + "\n".join(lines) + "\n")
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
print(json.dumps(summary, indent=2))
EOF

if [[ -n "$gpu" ]]; then
  device="$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["device"])' \
    "$out/summary.json" 2>/dev/null || echo unknown)"
  dest="benchmarks/results/gpu_${device}/perf_check"
  mkdir -p "$dest" && cp "$out"/* "$dest"/ && echo "copied to $dest"
fi
exit 0
