"""The quick start's main job: ``python -m cupytv demo`` writes a figure and denoises for real."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from cupytv.__main__ import main
from cupytv.demo import psnr, synthetic_image, synthetic_signal
from cupytv.reference import prox_tv1d, prox_tv2d


def test_demo_writes_a_png(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--size", "16"]) == 0
    png = tmp_path / "cupytv_demo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000  # a real figure, not an empty canvas
    assert "wrote" in capsys.readouterr().out


def test_tv_smooth_beats_the_noise_on_the_demo_inputs():
    clean, noisy = synthetic_signal()
    assert psnr(prox_tv1d(noisy, 0.5), clean) > psnr(noisy, clean) + 8
    clean2, noisy2 = synthetic_image(20)
    assert psnr(prox_tv2d(noisy2, 0.08), clean2) > psnr(noisy2, clean2) + 3


def test_cli_help_lists_the_demo():
    out = subprocess.run(
        [sys.executable, "-m", "cupytv", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "demo" in out


def test_synthetic_inputs_are_deterministic():
    np.testing.assert_array_equal(synthetic_signal(seed=3)[1], synthetic_signal(seed=3)[1])
    np.testing.assert_array_equal(synthetic_image(8, seed=3)[1], synthetic_image(8, seed=3)[1])
