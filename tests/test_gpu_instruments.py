"""The GPU instruments that run without a GPU (#17): the static kernel report and the GPU script.

scripts/kernel_report.py compiles with NVRTC (the test extra's wheels) and must list every
instantiated kernel with integer resources; its occupancy arithmetic is checked against the CUDA
occupancy calculator's results for known configurations. scripts/gpu_perf_check.sh must exit
cleanly on a machine without a GPU, recording that, and scripts/gpu_timings.py must run its
measurements end to end on NumPy arrays (the numbers mean nothing there; the code paths do).
No thresholds: these keep the instruments from rotting between GPU loans.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cupytv import _loader, tv1d, tv2d

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def kernel_report():
    return _script("kernel_report")


@pytest.fixture(scope="module")
def gpu_timings():
    return _script("gpu_timings")


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_kernel_report_lists_every_kernel_of_a_file(tmp_path):
    out = tmp_path / "report.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPTS / "kernel_report.py"), "--stems", "smoke", "--archs", "90",
         "--json", str(out)],
        capture_output=True, text=True, env=_env(), check=False, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    kernels = json.loads(out.read_text())["kernels"]
    assert [k["kernel"] for k in kernels] == list(_loader.instantiations("smoke"))
    for k in kernels:
        assert k["kernel"] in run.stdout
        for field in ("registers", "spill_stores", "spill_loads", "stack", "static_shared"):
            assert isinstance(k[field], int), (k["kernel"], field, k[field])
            assert k[field] >= 0, (k["kernel"], field, k[field])
        assert k["registers"] > 0


def test_occupancy_follows_the_calculator(kernel_report):
    sm90, sm80 = kernel_report.LIMITS[90], kernel_report.LIMITS[80]
    # 96 registers: 3072 per warp, 5 warps per sub-partition, 20 per SM (5 blocks of 4 warps).
    assert kernel_report.occupancy(sm90, 96, 0, 128, 0) == (20, "registers")
    # 142 registers: 4608 per warp (rounded up to 256), 3 per sub-partition: 12, not 65536 / 4608.
    assert kernel_report.occupancy(sm90, 142, 0, 32, 0) == (12, "registers")
    # Shared memory: 60 KB + the 1 KB reserve per block; 3 blocks fit 228 KB, 2 fit 164 KB.
    assert kernel_report.occupancy(sm90, 32, 0, 32, 60 * 1024) == (3, "shared memory")
    assert kernel_report.occupancy(sm80, 32, 0, 32, 60 * 1024) == (2, "shared memory")
    # Few registers, small blocks: the 32-block cap.
    assert kernel_report.occupancy(sm90, 16, 0, 32, 0) == (32, "blocks")
    assert kernel_report.occupancy(sm90, 300, 0, 32, 0) == (0, "registers")


def test_launch_configurations_come_from_the_wrappers(kernel_report):
    launches = kernel_report.wrapper_launches()
    seen = {(la.name, la.threads, la.dynamic_shared) for la in launches}
    # The staged tile at n = 32 and the unstaged n = 1024 (its tile is over the limit).
    tile = tv1d.BLOCK * (32 | 1) * np.dtype(np.float32).itemsize
    assert ("tv1d_condat_short<float>", tv1d.BLOCK, tile) in seen  # n = 32: the short kernel
    assert ("tv1d_condat<float>", tv1d.BLOCK, 0) in seen
    assert ("tv1d_vjp<double>", tv1d.BLOCK, 0) in seen
    assert any(n == "tv2d_solve<float>" and t == tv2d.WARP and s > 0 for n, t, s in seen)
    assert ("tv2d_rows_prox<float>", tv2d.BLOCK, 0) in seen
    names = {la.name for la in launches}
    wrapped = set(_loader.instantiations("tv1d") + _loader.instantiations("tv2d"))
    # The host executor's unstaged kernels are the only ones no GPU launch uses.
    assert {n for n in wrapped - names if ", false>" not in n} == set()


def test_sass_mix_counts_loops_and_classes(kernel_report):
    sass = """
        Function : k
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   DADD R2, R2, R4 ;
        /*0020*/                   F2F.F64.F32 R6, R0 ;
        /*0030*/                   MUFU.RCP64H R7, R3 ;
        /*0040*/              @P0 BRA 0x10 ;
        /*0050*/                   EXIT ;
    """
    mix = kernel_report.sass_mix(sass)["k"]
    assert mix["loop_count"] == 1
    assert mix["loops"] == {"instructions": 4, "fp64": 1, "conversions": 1, "divisions": 1,
                            "branches": 1}  # fmt: skip
    assert mix["all"]["instructions"] == 6


def _gpu_usable() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


@pytest.mark.skipif(_gpu_usable(), reason="a GPU is usable: the script would run for minutes")
def test_gpu_perf_check_dry_run_records_no_gpu(tmp_path):
    run = subprocess.run(
        ["bash", str(SCRIPTS / "gpu_perf_check.sh")],
        capture_output=True, text=True, env={**_env(), "OUT": str(tmp_path)}, check=False,
        timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["gpu"] is None
    assert "no GPU" in summary["note"]
    status = {s["step"]: s["status"] for s in summary["steps"]}
    assert {status[s] for s in ("pytest", "timings", "ulp", "ncu")} == {"skipped"}
    assert not (ROOT / "benchmarks" / "results" / "gpu_none").exists()


def test_gpu_timings_run_on_the_host(tmp_path, gpu_timings):
    out = tmp_path / "timings.json"
    only = "float32 normal lam=0.1"  # 1D forward and VJP at both shapes, and every 2D case
    assert gpu_timings.main(["--cpu", "--timings", str(out), "--only", only]) == 0
    rows = json.loads(out.read_text())["rows"]
    expected = [c.key for c in gpu_timings.cases(cpu=True) if only in c.key]
    assert [r["case"] for r in rows] == expected
    for r in rows:
        assert "error" not in r, r
        assert min(r["raw_ms"], r["wrapper_ms"], r["floor_ms"]) > 0, r
        assert r["launches"] >= 1
    # The ulp comparison, host against host: every difference must be zero.
    ulp = tmp_path / "ulp.json"
    assert gpu_timings.main(["--cpu", "--ulp", str(ulp)]) == 0
    assert {r["max_ulp"] for r in json.loads(ulp.read_text())} == {0}


def test_ulp_and_proxy_matching(gpu_timings):
    a = np.array([1.0, -1.0, 0.0], dtype=np.float32)
    b = np.nextafter(a, np.float32(np.inf))
    assert gpu_timings.ulp_diff(a, b) == 1
    assert gpu_timings.ulp_diff(np.array([-0.0]), np.array([0.0])) == 0
    # Every case the script times finds the committed proxy's prediction, bar the 2D VJPs (the
    # proxy predicts forwards only in 2D).
    records = gpu_timings.load_proxy()
    assert records, "benchmarks/results/gpu_proxy.json is missing or empty"
    for case in gpu_timings.cases():
        found = gpu_timings.proxy_prediction(records, case)
        assert (found is None) == (case.op == "2d vjp"), case.key
    case = gpu_timings.Case("1d forward", (262144, 32), np.float32, "normal", 0.3)
    record = {"case": "forward 262144x32 N(0,1) lam 0.3", "shape": [262144, 32],
              "dtype": "float32", "predicted_us": 250.0}  # fmt: skip
    assert gpu_timings.proxy_prediction([record], case) == pytest.approx(0.25)
    assert gpu_timings.proxy_prediction([], case) is None
