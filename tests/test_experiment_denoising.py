"""The denoising experiment (experiments/denoising, issue 10) end to end, on its tiny config.

The command a user runs, ``python -m experiments.denoising``, runs in a subprocess from the
repository root (``experiments`` is not part of the installed package) into ``tmp_path``, and its
outputs are checked in substance: every model, noise level and test image in results.json with
finite PSNRs that agree with results.md, a decodable samples.png, a TV baseline that denoises,
a tuned λ that grows with the noise and a learned λ that moved. The tiny config trains for a
handful of steps, so nothing here judges DnCNN's quality: the committed cpu results do that.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("skimage")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
TEST_IMAGES = ["camera", "coins", "moon", "clock", "text"]
MODELS = ["dncnn", "dncnn_tv"]
SIGMAS = ["25", "50"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: A generous bound on one tiny run (about 5 s on an idle 2-core CPU): a hang fails, a busy
#: machine does not.
RUN_TIMEOUT_S = 300
#: The least the TV baseline must gain over the noisy input on every test image, in dB: even on
#: 40 x 40 crops it gains 7 or more at both noise levels.
MIN_BASELINE_GAIN_DB = 3.0
#: PSNRs in results.md are rounded to this many decimals.
MD_DECIMALS = 2


def _run(out: Path, *args: str) -> str:
    command = [sys.executable, "-m", "experiments.denoising", "--out", str(out), *args]
    proc = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, f"{' '.join(command)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One run of ``--config tiny``: (stdout, results.json, results.md text, output folder)."""
    out = tmp_path_factory.mktemp("denoising") / "tiny"
    stdout = _run(out, "--config", "tiny")
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    return stdout, results, (out / "results.md").read_text(encoding="utf-8"), out


def _finite(value) -> bool:
    return isinstance(value, float) and math.isfinite(value)


def test_results_json_has_every_model_sigma_and_image(tiny):
    _, results, _, _ = tiny
    assert results["config"]["name"] == "tiny"
    assert list(results["data"]["test_images"]) == TEST_IMAGES
    assert not set(results["data"]["test_images"]) & set(results["data"]["train_images"])
    assert list(results["sigmas"]) == SIGMAS
    seeds = [str(s) for s in results["config"]["seeds"]]
    for block in results["sigmas"].values():
        for method in ("noisy", "tv_prox"):
            assert list(block["psnr"][method]) == TEST_IMAGES
            assert all(_finite(v) for v in block["psnr"][method].values())
        assert list(block["models"]) == MODELS
        for model in MODELS:
            assert list(block["models"][model]) == seeds
            for run in block["models"][model].values():
                assert list(run["psnr"]) == TEST_IMAGES
                assert all(_finite(v) for v in run["psnr"].values()), run["psnr"]
                assert run["train"]["seconds"] > 0
    for key in ("torch", "cupytv", "skimage", "machine", "torch_threads"):
        assert results["environment"][key]
    assert results["timings"]["total_seconds"] > 0


def test_summary_is_the_mean_of_the_per_image_psnrs(tiny):
    _, results, _, _ = tiny
    for block in results["sigmas"].values():
        summary = block["summary"]
        for model in MODELS:
            (run,) = block["models"][model].values()
            assert summary[model]["mean"] == pytest.approx(
                sum(run["psnr"].values()) / len(TEST_IMAGES)
            )
        difference = summary["dncnn_tv"]["mean"] - summary["dncnn"]["mean"]
        assert summary["difference"]["mean"] == pytest.approx(difference)
        assert summary["difference"]["std"] is None  # one seed: no spread, written as null


def test_the_tv_baseline_denoises_and_its_lambda_grows_with_sigma(tiny):
    _, results, _, _ = tiny
    for block in results["sigmas"].values():
        for image in TEST_IMAGES:
            gain = block["psnr"]["tv_prox"][image] - block["psnr"]["noisy"][image]
            assert gain > MIN_BASELINE_GAIN_DB, (image, gain)
    lams = [results["sigmas"][s]["tv_prox"]["lam"] for s in SIGMAS]
    assert 0 < lams[0] < lams[1], lams


def test_the_tv_layer_learns_its_lambda(tiny):
    _, results, _, _ = tiny
    init = results["config"]["tv_lam_init"]
    for block in results["sigmas"].values():
        for run in block["models"]["dncnn_tv"].values():
            lam = run["learned_lam"]
            assert lam["min"] > 0
            assert lam["mean"] != pytest.approx(init, rel=1e-4, abs=0)  # training moved it
        for run in block["models"]["dncnn"].values():
            assert run["learned_lam"] is None


def _table_rows(markdown: str, sigma: str) -> list[list[str]]:
    """The body rows of the table under ``### σ = {sigma}``, as lists of cell texts."""
    section = markdown.split(f"### σ = {sigma}\n", 1)[1].lstrip("\n")
    table = section.split("\n\n", 1)[0].splitlines()
    assert all(line.startswith("|") for line in table), table
    return [[cell.strip().strip("*") for cell in row.strip("|").split("|")] for row in table[2:]]


def test_markdown_has_a_row_per_test_image_plus_the_mean(tiny):
    _, results, markdown, _ = tiny
    for sigma in SIGMAS:
        block = results["sigmas"][sigma]
        rows = _table_rows(markdown, sigma)
        assert [row[0] for row in rows] == [*TEST_IMAGES, "mean"]
        for row, image in zip(rows, TEST_IMAGES, strict=False):
            (run,) = block["models"]["dncnn_tv"].values()
            assert row[1] == f"{block['psnr']['noisy'][image]:.{MD_DECIMALS}f}"
            assert row[4] == f"{run['psnr'][image]:.{MD_DECIMALS}f}"
        assert rows[-1][2] == f"{block['summary']['tv_prox']:.{MD_DECIMALS}f}"
        assert re.search(rf"λ = {block['tv_prox']['lam']:.4f}", markdown)


def test_samples_png_is_a_real_image(tiny):
    import matplotlib.image

    _, _, _, out = tiny
    png = out / "samples.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    pixels = matplotlib.image.imread(png)
    height, width = pixels.shape[:2]
    assert width > 2 * height  # five columns, two rows
    assert pixels[..., :3].std() > 0.05  # images and text, not a blank canvas


def test_progress_lines_show_loss_and_eta(tiny):
    stdout, results, _, _ = tiny
    steps = results["config"]["steps"]
    lines = [line for line in stdout.splitlines() if f"step {steps}/{steps}" in line]
    assert len(lines) == len(SIGMAS) * len(MODELS)
    assert all("loss" in line and "ETA" in line for line in lines)
    assert any("λ mean" in line for line in lines)


def test_the_gpu_config_starts_and_trains_on_the_cpu(tmp_path):
    """The full-scale networks (depth 17, 64 channels) build and take a step on the CPU."""
    out = tmp_path / "gpu"
    _run(
        out,
        *("--config", "gpu", "--device", "cpu", "--threads", "1", "--seeds", "0"),
        *("--steps", "1", "--batch-size", "1", "--eval-crop", "24", "--tune-patches", "2"),
    )
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    config = results["config"]
    assert (config["name"], config["depth"], config["channels"]) == ("gpu", 17, 64)
    for block in results["sigmas"].values():
        for model in MODELS:
            assert all(_finite(v) for v in block["models"][model]["0"]["psnr"].values())
