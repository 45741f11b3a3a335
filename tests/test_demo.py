"""The quick start's main job: ``python -m cupytv demo`` writes a figure and denoises for real."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import cupytv
from cupytv.__main__ import main
from cupytv.data import astronaut
from cupytv.demo import load_image, psnr, synthetic_signal

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_demo_writes_a_png_and_says_where_it_ran(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--max-side", "64", "--lam", "0.05", "0.1"]) == 0
    png = tmp_path / "cupytv_demo.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert png.stat().st_size > 100_000  # a real figure, not an empty canvas
    out = capsys.readouterr().out
    assert "backend: CPU: host executor" in out or "backend: GPU" in out
    assert "lam=0.05" in out
    assert "lam=0.1" in out
    assert "wrote" in out


def test_demo_out_may_name_the_figure_file(tmp_path):
    # `--out file.png` used to create a folder named file.png with the figure inside.
    target = tmp_path / "figures" / "mine.png"
    assert main(["demo", "--out", str(target), "--max-side", "32", "--lam", "0.1"]) == 0
    assert target.is_file()
    assert target.read_bytes()[:8] == PNG_MAGIC
    assert not (target / "cupytv_demo.png").exists()


def test_demo_filters_a_user_image(tmp_path, capsys):
    plt = pytest.importorskip("matplotlib.pyplot")
    rgba = np.random.default_rng(0).uniform(size=(90, 70, 4))
    plt.imsave(tmp_path / "mine.png", rgba)
    img, label = load_image(tmp_path / "mine.png", max_side=40)
    assert img.shape == (30, 23, 3)  # 3x3 block means: the smallest factor that fits 40
    assert "averaged 3x3" in label
    assert img.min() >= 0
    assert img.max() <= 1
    assert main(["demo", "--image", str(tmp_path / "mine.png"), "--out", str(tmp_path)]) == 0
    assert "mine.png" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--image", "no/such/file.png"], "expects an image file"),
        (["--lam", "-0.1"], "expected finite weights >= 0"),
        (["--sigma", "-1"], "expected --sigma >= 0"),
    ],
)
def test_demo_rejects_bad_arguments_clearly(tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        main(["demo", "--out", str(tmp_path), *argv])


def test_an_unreadable_image_is_a_clear_error(tmp_path):
    pytest.importorskip("matplotlib")
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(SystemExit, match="could not read"):
        load_image(tmp_path / "bad.png")


def test_tv_smooth_beats_the_noise_on_the_demo_inputs():
    clean, noisy = synthetic_signal()
    assert psnr(cupytv.prox_tv1d(noisy, 0.5), clean) > psnr(noisy, clean) + 8
    photo = astronaut(gray=True)[64:160, 64:160]
    noisy2 = photo + 0.1 * np.random.default_rng(0).standard_normal(photo.shape)
    assert psnr(cupytv.prox_tv2d(noisy2, 0.08), photo) > psnr(noisy2, photo) + 4


def test_the_bundled_photo():
    rgb, gray = astronaut(), astronaut(gray=True)
    assert rgb.shape == (256, 256, 3)
    assert gray.shape == (256, 256)
    assert 0 <= rgb.min() < 0.05
    assert 0.95 < rgb.max() <= 1  # the full range: a real photo, not a blank array
    assert rgb.std() > 0.2


def test_cli_help_lists_every_command():
    out = subprocess.run(
        [sys.executable, "-m", "cupytv", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("demo", "check", "bench"):
        assert command in out


def test_synthetic_signal_is_deterministic():
    np.testing.assert_array_equal(synthetic_signal(seed=3)[1], synthetic_signal(seed=3)[1])
