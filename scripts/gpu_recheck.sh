#!/usr/bin/env bash
# A short follow-up to gpu_check.sh for a nearly spent lease: the GPU tests that failed there,
# then compute-sanitizer memcheck and racecheck over the 2D kernels' GPU tests (what the first
# run's 50 s limits cut short). Logs to $OUT (else /tmp); exit 0 only if every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp}"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
sanitizer="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
status=0
timeout 70 python3 -m pytest -q -p no:cacheprovider -m gpu -k "converges or array_api" \
  tests/test_tv2d.py tests/test_torch.py >"$out/recheck_pytest.log" 2>&1 || status=1
tail -n 3 "$out/recheck_pytest.log"
for tool in memcheck racecheck; do
  timeout 60 "$sanitizer" --tool "$tool" --error-exitcode 1 python3 -m pytest -q -x \
    -p no:cacheprovider -m "gpu and not slow" tests/test_tv2d.py >"$out/recheck_$tool.log" 2>&1
  rc=$?
  [[ $rc -eq 0 ]] || status=1
  echo "$tool: exit $rc"
  tail -n 2 "$out/recheck_$tool.log"
done
exit $status
