"""Train and evaluate DnCNN and DnCNN+TV, and the TV prox baseline, on bundled photographs.

One command per configuration (README.md)::

    python -m experiments.denoising --config cpu     # a few minutes on 2 CPU cores
    python -m experiments.denoising --config gpu --device cuda

For each noise level: tune the TV baseline's λ on training patches, then for each seed train
DnCNN and DnCNN+TV on the same batches and evaluate all on the held-out test images; finally
write ``results.json``, ``results.md`` and ``samples.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

import cupytv

from . import baseline
from .configs import CONFIGS, TV_PLACEMENTS, Config
from .data import TEST_IMAGES, TRAIN_IMAGES, center_crop, load_gray, noisy_test_image
from .metrics import psnr
from .models import LABELS, MODELS, build_model, lam_stats
from .report import render_markdown, summarize, write_json, write_samples
from .train import Progress, denoise, train_model

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: The baseline's tuning patches are drawn with this seed, whatever the training seeds.
TUNE_SEED = 0
#: samples.png shows the first test image's square crop whose top-left corner sits at these
#: fractions of its height and width: the cameraman's face and camera, with sharp edges, flat
#: areas and fine texture side by side.
SAMPLE_ANCHOR = (0.04, 0.25)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.denoising",
        description="DnCNN vs DnCNN with a cupytv TV layer, on photographs bundled with "
        "scikit-image; writes results.md, results.json and samples.png.",
    )
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    out_help = (
        "output folder (default: experiments/denoising/results/CONFIG, or CONFIG-custom when "
        "an option below changes the configuration)"
    )
    parser.add_argument("--out", type=Path, help=out_help)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads of torch and of cupytv's host executor (default: the config's, "
        "else one per core; 1 on a machine that other work keeps busy)",
    )
    changes = parser.add_argument_group("changes to the configuration")
    changes.add_argument("--seeds", type=int, nargs="+", help="training seeds")
    changes.add_argument("--steps", type=int, help="training steps per model, sigma and seed")
    changes.add_argument("--batch-size", type=int, help="patches per training step")
    changes.add_argument("--eval-crop", type=int, help="centre-crop test images to this side")
    changes.add_argument("--tune-patches", type=int, help="patches that tune the TV baseline")
    changes.add_argument("--tv-placement", choices=TV_PLACEMENTS)
    return parser.parse_args(argv)


def _config(args: argparse.Namespace) -> tuple[Config, bool]:
    changes = {
        "seeds": None if args.seeds is None else tuple(args.seeds),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "eval_crop": args.eval_crop,
        "tune_patches": args.tune_patches,
        "tv_placement": args.tv_placement,
    }
    changed = any(v is not None for v in changes.values())
    return CONFIGS[args.config].replace(**changes), changed


def select_device(name: str) -> torch.device:
    """``auto``: the GPU when PyTorch sees one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: PyTorch sees no CUDA device")
    return device


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, object]:
    """Versions and machine, recorded with the results."""
    import skimage

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "skimage": skimage.__version__,
        "cupytv": cupytv.__version__,
        "platform": platform.platform(),
        "machine": gpu or f"{os.cpu_count()}-core {_cpu_name()}",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }


def _train_and_evaluate(
    kind: str, seed: int, sigma: int, ctx: dict, progress: Progress
) -> tuple[dict, dict[str, np.ndarray]]:
    """One model for one seed and sigma: its run record and its test estimates."""
    config, device = ctx["config"], ctx["device"]
    torch.manual_seed(seed)  # the same initial conv weights for both kinds (build_model)
    model = build_model(kind, config)
    label = f"σ={sigma} {LABELS[kind]} seed {seed}"
    train = train_model(model, ctx["train"], sigma, seed, config, device, progress, label)
    start = time.perf_counter()
    estimates = {name: denoise(model, ctx["noisy"][sigma][name], device) for name in ctx["test"]}
    train["eval_seconds"] = time.perf_counter() - start
    scores = {name: float(psnr(estimates[name], ctx["test"][name])) for name in ctx["test"]}
    return {"psnr": scores, "train": train, "learned_lam": lam_stats(model)}, estimates


def _sample_crop(image: np.ndarray, side: int) -> np.ndarray:
    """The ``side`` x ``side`` crop of ``image`` at :data:`SAMPLE_ANCHOR` (kept inside it)."""
    h, w = min(side, image.shape[0]), min(side, image.shape[1])
    top = min(round(SAMPLE_ANCHOR[0] * image.shape[0]), image.shape[0] - h)
    left = min(round(SAMPLE_ANCHOR[1] * image.shape[1]), image.shape[1] - w)
    return image[top : top + h, left : left + w]


def _run_sigma(sigma: int, ctx: dict, progress: Progress) -> tuple[dict, dict]:
    """Baseline, training and evaluation for one noise level: its results block and samples."""
    config, test = ctx["config"], ctx["test"]
    start = time.perf_counter()
    tuned = baseline.tune_lambda(
        ctx["train"], sigma, config.tune_patches, config.tune_patch, TUNE_SEED
    )
    tuned["seconds"] = time.perf_counter() - start
    print(
        f"σ={sigma}: TV prox λ tuned on training patches: {tuned['lam']:.4f} "
        f"({tuned['noisy_psnr']:.2f} -> {tuned['train_psnr']:.2f} dB), {tuned['seconds']:.1f} s",
        flush=True,
    )
    noisy = ctx["noisy"][sigma]
    prox = {name: baseline.tv_denoise(noisy[name], tuned["lam"]) for name in test}
    block = {
        "tv_prox": tuned,
        "psnr": {
            "noisy": {name: float(psnr(noisy[name], test[name])) for name in test},
            "tv_prox": {name: float(psnr(prox[name], test[name])) for name in test},
        },
        "models": {kind: {} for kind in MODELS},
    }
    sample_image = next(iter(test))
    samples = {"image": sample_image}
    for column, image in (("clean", test), ("noisy", noisy), ("tv_prox", prox)):
        samples[column] = _sample_crop(image[sample_image], config.sample_crop)
    for seed in config.seeds:
        for kind in MODELS:
            record, estimates = _train_and_evaluate(kind, seed, sigma, ctx, progress)
            block["models"][kind][str(seed)] = record
            if seed == config.seeds[0]:
                samples[kind] = _sample_crop(estimates[sample_image], config.sample_crop)
    block["summary"] = summarize(block)
    return block, samples


def run(config: Config, device: torch.device) -> tuple[dict, dict]:
    """The whole experiment: ``(results dictionary, sample crops per sigma)``."""
    start = time.perf_counter()
    train = [load_gray(name) for name in TRAIN_IMAGES]
    test = {name: center_crop(load_gray(name), config.eval_crop) for name in TEST_IMAGES}
    noisy = {
        sigma: {name: noisy_test_image(test[name], sigma, i) for i, name in enumerate(test)}
        for sigma in config.sigmas
    }
    ctx = {"config": config, "device": device, "train": train, "test": test, "noisy": noisy}
    total = len(config.sigmas) * len(config.seeds) * len(MODELS) * config.steps
    progress = Progress(total)
    results = {
        "config": asdict(config),
        "environment": environment(device),
        "data": {
            "color": "grayscale (skimage.color.rgb2gray), float32 in [0, 1]",
            "train_images": list(TRAIN_IMAGES),
            "test_images": {name: list(image.shape) for name, image in test.items()},
        },
        "sigmas": {},
    }
    samples = {}
    for sigma in config.sigmas:
        block, samples[str(sigma)] = _run_sigma(sigma, ctx, progress)
        results["sigmas"][str(sigma)] = block
    results["timings"] = {"total_seconds": time.perf_counter() - start}
    return results, samples


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config, changed = _config(args)
    except ValueError as exc:  # a bad value from the command line: one line, no traceback
        raise SystemExit(f"python -m experiments.denoising: {exc}") from None
    device = select_device(args.device)
    threads = args.threads or config.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    # cupytv's host executor (the TV baseline, and the TV layer on the CPU) has its own thread
    # count: without this the layer would use every core whatever --threads says.
    cupytv.set_num_threads(threads)
    out = args.out or RESULTS_DIR / (f"{config.name}-custom" if changed else config.name)
    out.mkdir(parents=True, exist_ok=True)
    print(f"config {config.name}: {config}", flush=True)
    print(f"device {device}, {torch.get_num_threads()} torch threads; writing to {out}", flush=True)
    results, samples = run(config, device)
    markdown = render_markdown(results)
    (out / "results.md").write_text(markdown, encoding="utf-8")
    write_json(results, out / "results.json")
    write_samples(samples, results, out / "samples.png")
    print(markdown)
    print(f"wrote {out / 'results.md'}, results.json and samples.png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
