"""``python -m cupytv demo``: what TV filtering does, on a real photo and a 1D signal, as one PNG.

The photo is the bundled one (:func:`cupytv.data.astronaut`) or the user's (``--image``). Gaussian
noise (``--sigma``) is added, then TV-Smooth ``prox(x)`` is shown at several weights (``--lam``)
with PSNR against the photo; TV-Sharp ``2x − prox(x)`` is shown on the photo itself, where it
enhances edges rather than noise. The two modes are the layers of Yeh et al. (CVPR 2022). The
solves run on the GPU when CuPy can launch kernels there, otherwise on the CPU through the host
executor; the figure and the printout say which, and how long each solve took.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import data, prox_tv1d, prox_tv2d
from ._device import gpu_unavailable_reason, usable_cupy
from ._validation import host_array

#: Defaults, documented in ``python -m cupytv demo --help``: three weights from light to strong
#: smoothing for an image in [0, 1] with noise 0.1, and the 1D signal's weight.
DEFAULT_LAMS = (0.03, 0.08, 0.2)
DEFAULT_LAM_1D = 0.5
DEFAULT_SIGMA = 0.1
#: A larger user image is block-averaged down to this side first, so the CPU run stays short.
DEFAULT_MAX_SIDE = 512
#: Panels are zoomed on a crop of this fraction of the image, where staircasing and edges show.
ZOOM_FRACTION = 0.4
SEED = 0


def synthetic_signal(n: int = 1000, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """A piecewise-constant signal of length ``n`` in [0, 1] and a noisy copy: (clean, noisy)."""
    rng = np.random.default_rng(seed)
    edges = np.sort(rng.choice(np.arange(1, n), size=9, replace=False))
    levels = rng.uniform(0.0, 1.0, edges.size + 1)
    clean = np.repeat(levels, np.diff(np.concatenate(([0], edges, [n]))))
    return clean, clean + DEFAULT_SIGMA * rng.standard_normal(n)


def psnr(estimate: np.ndarray, clean: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB for signals whose peak is 1."""
    return float(10 * np.log10(1.0 / np.mean((estimate - clean) ** 2)))


def load_image(path: Path | None, max_side: int = DEFAULT_MAX_SIDE) -> tuple[np.ndarray, str]:
    """(image in [0, 1] as (H, W) or (H, W, 3) float64, a label): the bundled photo or ``path``.

    Any format Pillow reads (through matplotlib). An alpha channel is dropped; integer images
    are scaled by their type's maximum. Sides over ``max_side`` are block-averaged down by the
    smallest integer factor that fits, and the label says so.
    """
    if path is None:
        return data.astronaut(), "astronaut (NASA, public domain), 256x256"
    import matplotlib.image

    if not Path(path).is_file():
        raise SystemExit(f"demo: --image expects an image file, got {str(path)!r} (not a file)")
    try:
        raw = matplotlib.image.imread(path)
    except Exception as exc:  # Pillow's many errors for an unreadable file: one clear message
        raise SystemExit(f"demo: could not read {str(path)!r} as an image ({exc})") from exc
    img = np.asarray(raw)
    if np.issubdtype(img.dtype, np.integer):
        img = img / np.iinfo(img.dtype).max
    img = np.asarray(img, dtype=np.float64)
    if img.ndim == 3:
        img = img[..., :3] if img.shape[2] >= 3 else img[..., 0]
    if img.ndim != 2 and not (img.ndim == 3 and img.shape[2] == 3):
        raise SystemExit(f"demo: expected a gray or RGB image, got an array of shape {raw.shape}")
    label = f"{Path(path).name}, {img.shape[1]}x{img.shape[0]}"
    factor = -(-max(img.shape[:2]) // max_side)  # ceil
    if factor > 1:
        h, w = (img.shape[0] // factor) * factor, (img.shape[1] // factor) * factor
        img = img[:h, :w].reshape(h // factor, factor, w // factor, factor, *img.shape[2:])
        img = img.mean(axis=(1, 3))
        label += f" (averaged {factor}x{factor} to {img.shape[1]}x{img.shape[0]})"
    return img, label


def backend() -> tuple[object, str]:
    """(array module, description): CuPy on the current GPU when it can launch, else NumPy."""
    cupy = usable_cupy()
    if cupy is not None:
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        return cupy, f"GPU: {props['name'].decode()} (CuPy)"
    from cupytv._host.launch import launch_workers

    threads = launch_workers()
    return np, f"CPU: host executor, {threads} threads"


def _timed(xp, fn):
    """(result on the host, seconds): the GPU is synchronised so the time is the solve's."""
    start = time.perf_counter()
    out = fn()
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()
    return out, time.perf_counter() - start


def _zoom(img: np.ndarray) -> tuple[slice, slice]:
    """The crop shown in the zoomed row: centred, ZOOM_FRACTION of each side."""
    h, w = img.shape[:2]
    ch, cw = max(1, int(h * ZOOM_FRACTION)), max(1, int(w * ZOOM_FRACTION))
    return slice((h - ch) // 2, (h - ch) // 2 + ch), slice((w - cw) // 2, (w - cw) // 2 + cw)


#: File types --out may name (matplotlib writes each); any other path is a folder.
FIGURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")
FIGURE_NAME = "cupytv_demo.png"


def figure_path(out: Path) -> Path:
    """``out`` itself when it names a figure file, else ``out/cupytv_demo.png``."""
    return out if out.suffix.lower() in FIGURE_SUFFIXES else out / FIGURE_NAME


def run(
    out: Path,
    image: Path | None = None,
    lams: tuple[float, ...] = DEFAULT_LAMS,
    lam_1d: float = DEFAULT_LAM_1D,
    sigma: float = DEFAULT_SIGMA,
    max_side: int = DEFAULT_MAX_SIDE,
) -> Path:
    """Filter the photo and the signal, print what ran and how long, save the figure."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: the demo must work without a display
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit(
            "the demo draws its figure with matplotlib, which is not installed: "
            'pip install "cupytv[plot]"'
        ) from exc
    if not lams or any(not np.isfinite(v) or v < 0 for v in (*lams, lam_1d)):
        raise SystemExit(f"demo: expected finite weights >= 0, got --lam {lams} and {lam_1d}")
    if not (np.isfinite(sigma) and sigma >= 0):
        raise SystemExit(f"demo: expected --sigma >= 0, got {sigma}")

    xp, where = backend()
    print(f"backend: {where}" + (f" (no GPU: {gpu_unavailable_reason()})" if xp is np else ""))
    clean, label = load_image(image, max_side)
    noisy = clean + sigma * np.random.default_rng(SEED).standard_normal(clean.shape)
    # The first call compiles the kernels (or loads them from the disk cache): time it apart,
    # so the solve times below are what every later call costs.
    _, load_s = _timed(xp, lambda: (prox_tv2d(xp.zeros((2, 2)), 0.1), prox_tv1d(xp.zeros(2), 0.1)))
    print(f"kernels ready in {load_s:.2f} s (compiled once, then cached on disk)")

    # Channels first, contiguous: each colour is one (H, W) slice whose rows are contiguous, the
    # layout the kernels read fastest (an (H, W, 3) array works too, with strided fibers).
    def planes(img):
        return xp.asarray(np.ascontiguousarray(np.moveaxis(img, -1, 0) if img.ndim == 3 else img))

    def picture(y):
        return np.moveaxis(host_array(y), 0, -1) if clean.ndim == 3 else host_array(y)

    x_dev, clean_dev = planes(noisy), planes(clean)
    smooth, sharp = [], []
    for lam in lams:
        (y, info), sec = _timed(xp, lambda lam=lam: prox_tv2d(x_dev, lam, return_info=True))
        smooth.append((picture(y), lam, sec, int(info.n_iter.max())))
        y_clean, sec_c = _timed(xp, lambda lam=lam: prox_tv2d(clean_dev, lam))
        sharp.append((np.clip(2 * clean - picture(y_clean), 0, 1), lam, sec_c))
        quality = f", PSNR {psnr(smooth[-1][0], clean):.1f} dB" if sigma > 0 else ""
        print(
            f"2D {label}: lam={lam:g}: TV-Smooth {1e3 * sec:.1f} ms "
            f"({smooth[-1][3]} iterations{quality}); TV-Sharp of the photo {1e3 * sec_c:.1f} ms"
        )

    clean1, noisy1 = synthetic_signal()
    smooth1, sec1 = _timed(xp, lambda: host_array(prox_tv1d(xp.asarray(noisy1), lam_1d)))
    print(f"1D: {noisy1.size} samples, lam={lam_1d:g}: {1e3 * sec1:.2f} ms")

    ncols = len(lams) + 1
    fig = plt.figure(figsize=(3.6 * ncols, 13.5), constrained_layout=True)
    grid = fig.add_gridspec(4, ncols, height_ratios=(1, 1, 1, 0.85))
    gray = dict(cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    rows, cols = _zoom(clean)

    def show(r, c, img, title, zoom=False):
        ax = fig.add_subplot(grid[r, c])
        ax.imshow(np.clip(img[rows, cols] if zoom else img, 0, 1), **gray)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])

    noisy_title = f"noisy input, σ={sigma:g}" + (
        f"\nPSNR {psnr(noisy, clean):.1f} dB" if sigma > 0 else ""
    )
    show(0, 0, noisy, noisy_title)
    show(1, 0, noisy, "noisy input (zoom)", zoom=True)
    show(2, 0, clean, f"photo (zoom): {label}", zoom=True)
    for c, ((y, lam, sec, iters), (s, _, sec_c)) in enumerate(zip(smooth, sharp, strict=True), 1):
        quality = f", {psnr(y, clean):.1f} dB" if sigma > 0 else ""
        show(0, c, y, f"TV-Smooth prox(x), λ={lam:g}{quality}\n{iters} it, {1e3 * sec:.0f} ms")
        show(1, c, y, f"TV-Smooth λ={lam:g} (zoom)", zoom=True)
        show(
            2,
            c,
            s,
            f"TV-Sharp 2x − prox(x) of the photo (zoom)\nλ={lam:g}, {1e3 * sec_c:.0f} ms",
            zoom=True,
        )

    ax = fig.add_subplot(grid[3, :])
    ax.plot(noisy1, color="0.6", lw=0.6, label=f"noisy ({psnr(noisy1, clean1):.1f} dB)")
    ax.plot(clean1, color="k", lw=1.2, ls="--", label="clean")
    ax.plot(smooth1, color="tab:blue", lw=1.6, label=f"TV-Smooth ({psnr(smooth1, clean1):.1f} dB)")
    ax.set_title(
        f"1D: piecewise-constant signal + noise σ={DEFAULT_SIGMA:g}; "
        f"TV-Smooth λ={lam_1d:g} keeps the jumps ({1e3 * sec1:.1f} ms)"
    )
    ax.set_xlabel("sample")
    ax.set_ylabel("value")
    ax.legend(loc="upper right", fontsize=8, ncols=3)
    fig.suptitle(
        "cupytv demo: TV-Smooth y = prox(x) removes noise and keeps edges; "
        "TV-Sharp y = 2x − prox(x) enhances them\n"
        f"backend: {where}; times per solve, 2D to a 1e-3 relative objective gap",
        fontsize=11,
    )

    path = figure_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")
    return path
