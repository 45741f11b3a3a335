"""The warp-lockstep GPU proxy (issue 17): hooks that compile to nothing, exact replay counts on a
hand-built kernel, a current cost table, and the quick benchmark's JSON schema."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cupytv import _loader, gpu_proxy
from cupytv._host import HostModule
from cupytv._host import build as host_build

ROOT = Path(__file__).resolve().parent.parent
# A hook call with up to two levels of nested parentheses in its arguments.
_HOOK_CALL = re.compile(r"\bTV_PROBE\w*\((?:[^()]|\((?:[^()]|\([^()]*\))*\))*\)")
_HOOK_DEFINE = re.compile(r"^\s*#\s*define\s+TV_PROBE")


def strip_hooks(text: str) -> str:
    """The source with every hook call removed (their `;` stay: empty statements)."""
    return "\n".join(
        line if _HOOK_DEFINE.match(line) else _HOOK_CALL.sub("", line) for line in text.split("\n")
    )


def preprocess(text: str, *defines: str) -> str:
    compiler = host_build.find_compiler()
    out = subprocess.run(
        [*compiler, "-E", "-P", "-x", "c++", "-std=c++20", *defines, "-"],
        input=text,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


@pytest.mark.parametrize("stem", ["tv1d", "tv2d"])
def test_hooks_are_there_and_strip_cleanly(stem):
    text = _loader.source(stem)
    assert "TV_PROBE_TRIP(" in text
    code = [re.sub(r"//.*", "", line) for line in strip_hooks(text).split("\n")]
    assert not [line for line in code if not _HOOK_DEFINE.match(line) and _HOOK_CALL.search(line)]


@pytest.mark.parametrize("stem", ["tv1d", "tv2d"])
@pytest.mark.parametrize(
    "defines",
    [(), ("-D__CUDACC__", "-D__CUDACC_RTC__", "-DCUPYTV_PROBE")],
    ids=["plain", "nvrtc-even-with-probe-define"],
)
def test_hooks_preprocess_to_nothing_for_nvrtc(stem, defines):
    # The text NVRTC compiles, preprocessed as NVRTC would (no CUPYTV_PROBE; and __CUDACC__
    # turns the hooks off even if it were defined): identical with and without the hooks.
    text = _loader.source(stem)
    assert preprocess(text, *defines) == preprocess(strip_hooks(text), *defines)


def test_hooks_preprocess_to_nothing_in_the_normal_host_build():
    text = _loader.source("tv1d")
    names = _loader.instantiations("tv1d")
    hooked = host_build.host_source(text, names)
    stripped = host_build.host_source(strip_hooks(text), names)
    assert "cupytv_probe" not in preprocess(hooked)
    assert preprocess(hooked) == preprocess(stripped)


# Thread t of each warp runs (t % 4) + 1 trips; lane 0 alone takes a branch; each trip stores to
# shared memory at word 2 * t (two lanes per bank: 2 wavefronts per 32-lane request, 1 ideal) and
# loads global word 8 * t (one 32-byte sector per lane).
REPLAY_KERNEL = r"""
#include "common.cuh"
// instantiate: replay_probe
__global__ void replay_probe(const float* src, float* dst) {
  extern __shared__ float sh[];
  const unsigned t = threadIdx.x;
  if (t % 32 == 0) {
    TV_PROBE(lane0);
  }
  {
    TV_PROBE_LOOP(trips);
    for (unsigned k = 0; k < t % 4 + 1; ++k) {
      TV_PROBE_TRIP(trips);
      TV_PROBE_ACCESS(smem, &sh[2 * t]);
      TV_PROBE_ACCESS(gmem, &src[8 * t]);
      sh[2 * t] = src[8 * t];
    }
  }
  TV_PROBE_N(inner, t);
  dst[t] = sh[2 * t];
}
"""


def test_replay_counts_a_hand_built_warp_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv(host_build.CACHE_DIR_ENV, str(tmp_path))
    common = (_loader.source_dir() / "common.cuh").read_text()
    text = REPLAY_KERNEL.replace('#include "common.cuh"', common)
    module = HostModule(text, ("replay_probe",), defines=(host_build.PROBE_DEFINE,))
    lib = module._lib
    lib.cupytv_probe_report.restype = __import__("ctypes").c_char_p
    lib.cupytv_probe_reset()
    threads = 64  # two warps
    src = np.arange(8 * threads, dtype=np.float32)
    dst = np.zeros(threads, dtype=np.float32)
    module.get_function("replay_probe")((1,), (threads,), (src, dst), shared_mem=8 * threads)
    np.testing.assert_array_equal(dst, src[::8])
    rows = {}
    for line in lib.cupytv_probe_report().decode().splitlines():
        parts = line.split("\t")
        if parts[0] == "region":
            rows[parts[2]] = dict(zip(gpu_proxy._REPORT_FIELDS, map(float, parts[3:]), strict=True))
    # Trips: each warp issues its longest lane's 4, lanes run 8 x (1 + 2 + 3 + 4) = 80 of them.
    assert rows["trips"]["warp"] == 2 * 4
    assert rows["trips"]["lane"] == 2 * 80
    assert rows["trips"]["lane"] / (32 * rows["trips"]["warp"]) == 80 / 128
    # The branch only lane 0 takes is issued once per warp.
    assert (rows["lane0"]["warp"], rows["lane0"]["lane"]) == (2, 2)
    # TV_PROBE_N: a warp pays its longest lane (31 and 63), lanes their own counts.
    assert rows["inner"]["warp"] == 31 + 63
    assert rows["inner"]["lane"] == sum(range(threads))
    # Trip k's request holds the lanes still looping: 32, 24, 16, 8 per warp.
    smem = rows["smem"]
    assert smem["shared_requests"] == 8
    assert smem["lanes_accessing"] == 2 * 80
    # Word 2t: lanes t and t + 16 share a bank. A request of lanes with t % 4 >= k - 1...
    expected = 0
    for warp in range(2):
        for k in range(4):
            lanes = [t for t in range(32 * warp, 32 * warp + 32) if t % 4 + 1 > k]
            banks = [(2 * t) % 32 for t in lanes]
            expected += max(banks.count(b) for b in set(banks))
    assert smem["wavefronts"] == expected
    gmem = rows["gmem"]
    assert gmem["global_requests"] == 8
    assert gmem["sectors"] == 2 * 80


def test_price_and_metrics_follow_the_cost_table():
    totals = {
        "k": {
            "threads": 64.0,
            "warps": 2.0,
            "regions": {
                "scan": dict.fromkeys(gpu_proxy._REPORT_FIELDS, 0.0) | {"warp": 8.0, "lane": 160.0},
            },
        }
    }
    costs = {
        "kernels": {
            "k": {
                "scan": {"instructions": 10.0, "fp64": 2.0, "fp64_div": 0.5},
                "unattributed": {"instructions": 3.0, "fp64": 0.0, "fp64_div": 0.0},
            }
        }
    }
    counts, per_kernel = gpu_proxy.price(totals, costs)
    assert counts.issued == 8 * 10 + 2 * 3 == per_kernel["k"]
    assert counts.lane_work == 160 * 10 + 64 * 3
    m = gpu_proxy.metrics(counts, samples=100.0)
    assert m["issued_per_sample"] == pytest.approx(0.86)
    assert m["loop_trip_efficiency"] == pytest.approx(160 / 256)
    assert m["fp64_div_per_sample"] == pytest.approx(0.8)
    assert gpu_proxy.predicted_us(gpu_proxy.SMS * gpu_proxy.CLOCK_HZ, 1.0) == pytest.approx(1e6)


def test_cost_table_matches_the_kernels():
    # Regenerating needs nvcc and nvdisasm; the staleness check needs neither.
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_proxy_costs.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    table = gpu_proxy.load_costs()
    assert table["arch"] == "sm_90"
    assert {"scan", "step", "jump_down"} <= set(table["kernels"]["tv1d_condat<float, true>"])


@pytest.mark.slow
def test_quick_benchmark_writes_the_documented_schema(tmp_path):
    out = tmp_path / "gpu_proxy.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu_proxy.py"), "--quick", "--json",
         str(out)],
        check=True,
        capture_output=True,
        text=True,
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert report["meta"]["quick"] is True
    assert set(report["calibration"]["fits"]) == {"1d", "2d"}
    kernels = {row["kernel"] for row in report["cases"]}
    assert {"tv1d_condat<float>", "tv1d_vjp<float>", "tv2d_solve<float>"} <= kernels
    for row in report["cases"]:
        assert {"kernel", "case", "dtype", "metrics", "predicted_us", "floor_us"} <= set(row)
        assert row["floor_us"] > 0
        assert row["metrics"]["issued_per_sample"] > 0
        assert 0 < row["metrics"]["useful_lanes"] <= 1
