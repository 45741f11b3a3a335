"""``python -m cupytv bench``: finds the suites (checkout or wheel), runs them, reports failures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cupytv import bench


def test_every_benchmark_script_is_a_suite():
    names = list(bench.suites())
    assert names[:3] == ["tv1d", "tv2d", "torch"]  # the documented order
    assert names[-4:] == ["host_executor", "host_cost", "threads", "timing_table"]


def test_the_installed_cli_runs_a_suite_and_writes_its_json(tmp_path):
    # From a neutral folder, so the cupytv that `pip install` put in site-packages runs (in CI a
    # regular install: the wheel's cupytv/benchmarks), not this checkout's.
    proc = subprocess.run(
        [sys.executable, "-m", "cupytv", "bench", "--quick", "--suite", "host_executor",
         "--out", str(tmp_path / "out")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[1/1] bench host_executor" in proc.stdout
    assert "host_executor   ok" in proc.stdout
    result = json.loads((tmp_path / "out" / "bench_host_executor.json").read_text())
    assert result["results"]


def test_a_failing_suite_fails_the_command(tmp_path, monkeypatch, capsys):
    (tmp_path / "bench_broken.py").write_text("raise SystemExit(3)\n")
    monkeypatch.setattr(bench, "suite_dir", lambda: tmp_path)
    assert bench.run(None, quick=True, out_dir=tmp_path / "out") == 1
    assert "exit 3" in capsys.readouterr().out


def test_an_unknown_suite_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match=r"expected suites among .* got \['nope'\]"):
        bench.run(["nope"], quick=True, out_dir=tmp_path)
