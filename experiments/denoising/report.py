"""The experiment's outputs: ``results.json`` (everything), ``results.md`` (the tables) and
``samples.png`` (crops of one test image), all derived from one results dictionary.

Spread: each DnCNN / DnCNN+TV cell is the mean ± sample standard deviation over training seeds
(the test noise is fixed, so the spread is that of training); the difference column is the
*paired* difference DnCNN+TV − DnCNN, computed per seed (same initial conv weights, same
batches) and then averaged, so a difference can be judged against its own spread.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .metrics import psnr
from .models import LABELS, MODELS

#: Decimal places of PSNR values in the markdown tables (dB).
DECIMALS = 2
#: samples.png: inches per panel, and the resolution that keeps the file small.
PANEL_INCHES = 2.2
TITLE_INCHES = 0.45  # two lines of panel title
DPI = 90
#: Where the TV layer sits, in the words of results.md.
PLACEMENT_TEXT = {
    "output": "the denoised output image (one λ)",
    "inside": "the first block's feature maps (one λ per channel)",
}
#: Columns of samples.png, left to right.
SAMPLE_COLUMNS = ("clean", "noisy", "tv_prox", *MODELS)


def _mean_std(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    std = float(values.std(ddof=1)) if values.size > 1 else float("nan")
    return float(values.mean()), std


def _pm(values, sign: bool = False) -> str:
    """``mean ± std`` over seeds (just the mean for one seed)."""
    mean, std = _mean_std(values)
    text = f"{mean:+.{DECIMALS}f}" if sign else f"{mean:.{DECIMALS}f}"
    return text if np.isnan(std) else f"{text} ± {std:.{DECIMALS}f}"


def seed_psnrs(block: dict, model: str, image: str) -> list[float]:
    """One model's PSNR on ``image`` for every seed, in seed order."""
    return [run["psnr"][image] for run in block["models"][model].values()]


def seed_means(block: dict, model: str) -> list[float]:
    """One model's mean PSNR over the test images, for every seed."""
    return [float(np.mean(list(run["psnr"].values()))) for run in block["models"][model].values()]


def paired_differences(block: dict, image: str | None = None) -> list[float]:
    """DnCNN+TV − DnCNN for every seed, on ``image`` or (None) on the mean over the test set."""
    if image is None:
        plain, tv = seed_means(block, "dncnn"), seed_means(block, "dncnn_tv")
    else:
        plain, tv = seed_psnrs(block, "dncnn", image), seed_psnrs(block, "dncnn_tv", image)
    return [b - a for a, b in zip(plain, tv, strict=True)]


def summarize(block: dict) -> dict:
    """Mean PSNR over the test set for each method, with the spread and paired difference."""
    summary = {
        "noisy": float(np.mean(list(block["psnr"]["noisy"].values()))),
        "tv_prox": float(np.mean(list(block["psnr"]["tv_prox"].values()))),
    }
    for model in MODELS:
        mean, std = _mean_std(seed_means(block, model))
        summary[model] = {"mean": mean, "std": std, "per_seed": seed_means(block, model)}
    diffs = paired_differences(block)
    mean, std = _mean_std(diffs)
    summary["difference"] = {
        "mean": mean,
        "std": std,
        "per_seed": diffs,
        "seeds_positive": int(sum(d > 0 for d in diffs)),
    }
    return summary


def _sigma_table(sigma: str, block: dict) -> list[str]:
    lam = block["tv_prox"]["lam"]
    lines = [
        f"### σ = {sigma}",
        "",
        f"| test image | noisy | TV prox (λ = {lam:.4f}) | DnCNN | DnCNN+TV | DnCNN+TV − DnCNN |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for image in block["psnr"]["noisy"]:
        cells = [
            f"{block['psnr']['noisy'][image]:.{DECIMALS}f}",
            f"{block['psnr']['tv_prox'][image]:.{DECIMALS}f}",
            _pm(seed_psnrs(block, "dncnn", image)),
            _pm(seed_psnrs(block, "dncnn_tv", image)),
            _pm(paired_differences(block, image), sign=True),
        ]
        lines.append(f"| {image} | {' | '.join(cells)} |")
    summary = block["summary"]
    cells = [
        f"{summary['noisy']:.{DECIMALS}f}",
        f"{summary['tv_prox']:.{DECIMALS}f}",
        _pm(summary["dncnn"]["per_seed"]),
        _pm(summary["dncnn_tv"]["per_seed"]),
        _pm(summary["difference"]["per_seed"], sign=True),
    ]
    lines.append(f"| **mean** | {' | '.join(f'**{c}**' for c in cells)} |")
    diff = summary["difference"]
    per_seed = ", ".join(f"{d:+.{DECIMALS}f}" for d in diff["per_seed"])
    lams = [run["learned_lam"]["mean"] for run in block["models"]["dncnn_tv"].values()]
    lines += [
        "",
        f"Paired difference of the mean, per seed: {per_seed} dB "
        f"({diff['seeds_positive']} of {len(diff['per_seed'])} seeds in favour of DnCNN+TV). "
        f"Learned λ of the TV layer (mean over channels), per seed: "
        f"{', '.join(f'{v:.4f}' for v in lams)}.",
        "",
    ]
    return lines


def render_markdown(results: dict) -> str:
    """``results.md``: a header saying what ran where, then one PSNR table per noise level."""
    config, env = results["config"], results["environment"]
    n_seeds = len(config["seeds"])
    lines = [
        f"# Denoising: DnCNN vs DnCNN+TV, config `{config['name']}`",
        "",
        f"PSNR in dB on {len(results['data']['test_images'])} held-out grayscale test images "
        f"(each centre-cropped to at most {config['eval_crop'] or 'full'} px), one fixed noise "
        f"draw per image and σ. DnCNN columns: mean ± standard deviation over {n_seeds} "
        "training seed(s); the last column is the paired difference per seed (same "
        "initialisation and batches), mean ± standard deviation. TV prox: the classical "
        "baseline, `cupytv.prox_tv2d` with λ tuned on noisy training patches.",
        "",
        f"Networks: depth {config['depth']}, {config['channels']} channels, "
        f"{config['steps']} steps of {config['batch_size']} patches of "
        f"{config['patch']}×{config['patch']}; TV layer: TV-Smooth on "
        f"{PLACEMENT_TEXT[config['tv_placement']]}, λ initialised to {config['tv_lam_init']}.",
        "",
    ]
    for sigma, block in results["sigmas"].items():
        lines += _sigma_table(sigma, block)
    lines += [
        f"Ran on {env['machine']} ({env['device']}, {env['torch_threads']} torch threads), "
        f"torch {env['torch']}, cupytv {env['cupytv']}, scikit-image {env['skimage']}; "
        f"total {results['timings']['total_seconds']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def write_json(results: dict, path: Path) -> None:
    """``results.json``: the whole results dictionary, NaN written as null."""
    text = json.dumps(_nan_to_none(results), indent=1, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")


def _nan_to_none(value):
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


def _title(column: str, crop: dict[str, np.ndarray], lam: float) -> str:
    if column == "clean":
        return "clean"
    name = {"noisy": "noisy", "tv_prox": f"TV prox (λ={lam:.3f})", **LABELS}[column]
    return f"{name}\n{psnr(crop[column], crop['clean']):.2f} dB"


def write_samples(samples: dict, results: dict, path: Path) -> None:
    """``samples.png``: one row per noise level, columns :data:`SAMPLE_COLUMNS`.

    Args:
        samples: ``{sigma: {"image": name, column: crop (H, W)}}`` from the first seed.
        results: the results dictionary (for the tuned λ).
        path: where to write the PNG.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display is needed or wanted
    import matplotlib.pyplot as plt

    rows, cols = len(samples), len(SAMPLE_COLUMNS)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(PANEL_INCHES * cols, (PANEL_INCHES + TITLE_INCHES) * rows),
        squeeze=False,
        layout="constrained",
    )
    for r, (sigma, crop) in enumerate(samples.items()):
        lam = results["sigmas"][sigma]["tv_prox"]["lam"]
        for c, column in enumerate(SAMPLE_COLUMNS):
            ax = axes[r, c]
            ax.imshow(crop[column], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(_title(column, crop, lam), fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(f"σ = {sigma}", fontsize=11)
    image = next(iter(samples.values()))["image"]
    fig.suptitle(
        f"{image}, crop; PSNR of the crop (config {results['config']['name']}, seed "
        f"{results['config']['seeds'][0]})",
        fontsize=10,
    )
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
