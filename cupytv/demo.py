"""``python -m cupytv demo``: TV-Smooth and TV-Sharp on a 1D signal and an image, as one PNG.

The inputs are synthetic and built in (no downloads): a piecewise-constant signal and an image of
flat shapes on a smooth background, each with Gaussian noise. TV-Smooth is prox(x), TV-Sharp is
2x − prox(x), the two layers of Yeh et al. (CVPR 2022).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .reference import prox_tv1d, prox_tv2d

#: Noise level of the demo inputs (their clean values span [0, 1]).
NOISE_SIGMA = 0.1


def synthetic_signal(n: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A piecewise-constant signal of length ``n`` in [0, 1] and a noisy copy: (clean, noisy)."""
    rng = np.random.default_rng(seed)
    edges = np.sort(rng.choice(np.arange(1, n), size=9, replace=False))
    levels = rng.uniform(0.0, 1.0, edges.size + 1)
    clean = np.repeat(levels, np.diff(np.concatenate(([0], edges, [n]))))
    return clean, clean + NOISE_SIGMA * rng.standard_normal(n)


def synthetic_image(size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A ``size x size`` image of flat shapes on a ramp, in [0, 1], and a noisy copy."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:size, 0:size] / size
    img = 0.2 + 0.2 * c  # smooth background: TV turns ramps into staircases, worth seeing
    img[(r - 0.35) ** 2 + (c - 0.35) ** 2 < 0.2**2] = 0.9
    img[(abs(r - 0.7) < 0.15) & (abs(c - 0.7) < 0.2)] = 0.6
    img[(r > 0.55) & (c < 0.45) & (r - 0.55 > 0.45 - c)] = 0.05
    return img, img + NOISE_SIGMA * rng.standard_normal(img.shape)


def psnr(estimate: np.ndarray, clean: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB for signals whose peak is 1."""
    return float(10 * np.log10(1.0 / np.mean((estimate - clean) ** 2)))


def run(out_dir: Path, lam_1d: float = 0.5, lam_2d: float = 0.08, size: int = 96) -> Path:
    """Filter both inputs, print a summary, save the figure; return the PNG's path."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: the demo must work without a display
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit(
            "the demo draws its figure with matplotlib, which is not installed: "
            'pip install "cupytv[plot]"'
        ) from exc

    clean1, noisy1 = synthetic_signal()
    t0 = time.perf_counter()
    smooth1 = prox_tv1d(noisy1, lam_1d)
    t1 = time.perf_counter()
    print(f"1D: {noisy1.size} samples, lam={lam_1d}: reference solve {1e3 * (t1 - t0):.1f} ms")

    clean2, noisy2 = synthetic_image(size)
    # Announced before it starts: the exact 2D solve grows like size^3 (about 1 s at 96 x 96).
    print(f"2D: {size}x{size} image, lam={lam_2d}: exact reference solve...", flush=True)
    t0 = time.perf_counter()
    smooth2 = prox_tv2d(noisy2, lam_2d)
    t1 = time.perf_counter()
    print(f"2D: done in {t1 - t0:.2f} s")

    fig, axes = plt.subplots(2, 4, figsize=(16, 7.5), constrained_layout=True)
    ax = plt.subplot2grid((2, 4), (0, 0), colspan=4, fig=fig)
    for a in axes[0]:
        a.remove()
    ax.plot(
        2 * noisy1 - smooth1, color="tab:orange", lw=0.5, alpha=0.35, label="TV-Sharp 2x − prox(x)"
    )
    ax.plot(noisy1, color="0.55", lw=0.7, label=f"noisy ({psnr(noisy1, clean1):.1f} dB)")
    ax.plot(clean1, color="k", lw=1.2, ls="--", label="clean")
    ax.plot(
        smooth1,
        color="tab:blue",
        lw=1.6,
        label=f"TV-Smooth prox(x) ({psnr(smooth1, clean1):.1f} dB)",
    )
    ax.set_title(f"1D: a piecewise-constant signal with noise, lam = {lam_1d}")
    ax.set_xlabel("sample")
    ax.legend(loc="upper right", fontsize=8, ncols=2)

    panels = [
        (clean2, "clean"),
        (noisy2, f"noisy, {psnr(noisy2, clean2):.1f} dB"),
        (smooth2, f"TV-Smooth, {psnr(smooth2, clean2):.1f} dB"),
        (2 * noisy2 - smooth2, "TV-Sharp"),
    ]
    for a, (img, title) in zip(axes[1], panels, strict=True):
        a.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        a.set_title(title)
        a.axis("off")
    axes[1][0].set_title(f"clean {size}x{size} image; 2D TV lam = {lam_2d}")
    fig.suptitle(
        "cupytv demo: TV-Smooth y = prox(x) and TV-Sharp y = 2x − prox(x) (exact reference solver)"
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "cupytv_demo.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    return path
