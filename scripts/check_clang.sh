#!/usr/bin/env bash
# The host executor built with clang++ instead of g++: the kernel and executor tests that exercise
# it (not `slow`), with CXX=clang++ and an empty kernel cache, so every library is compiled by clang.
#
# clang comes from Debian's packages (the executor's own thread pool needs no OpenMP runtime). A
# machine where it cannot be installed says so and passes (nothing tested); once clang++ is there, a failing
# test fails the script. Run by .ci/run (~10 s of apt where the packages are missing, ~25 s of tests
# on 2 cores); usable by hand from anywhere: scripts/check_clang.sh
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(clang)

installed() { command -v clang++ >/dev/null && dpkg -s "${packages[@]}" >/dev/null 2>&1; }
if ! installed && command -v apt-get >/dev/null; then
  # The package lists may be missing or stale on a fresh machine: refresh once if a plain install
  # fails.
  timeout 300 apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null 2>&1 \
    || { timeout 120 apt-get update -qq >/dev/null 2>&1 \
         && timeout 300 apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null 2>&1; } \
    || true
fi
if ! installed; then
  echo "note: could not install ${packages[*]} from Debian's packages; clang build not tested"
  exit 0
fi

cache="$(mktemp -d)"
trap 'rm -rf "$cache"' EXIT
echo "host executor with $(clang++ --version | head -n 1), empty kernel cache $cache"
start=$SECONDS
CXX=clang++ CUPYTV_CACHE_DIR="$cache" python -m pytest -q -m "not slow" \
  tests/test_host_executor.py tests/test_tv1d.py tests/test_tv2d.py
# A run that compiled nothing (every test skipped, or CXX ignored) tested nothing of clang: each
# library must exist and carry clang's mark in its .comment section.
built=0
for library in "$cache"/host/kernels-*.so; do
  [ -e "$library" ] || break
  readelf -p .comment "$library" | grep -q "clang version" \
    || { echo "FAILED: $library was not built by clang++" >&2; exit 1; }
  built=$((built + 1))
done
if [ "$built" -eq 0 ]; then
  echo "FAILED: no kernel library was built with clang++ in $cache/host" >&2
  exit 1
fi
echo "clang++: $built kernel libraries built, tests passed in $((SECONDS - start)) s"
