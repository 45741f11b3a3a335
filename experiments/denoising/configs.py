"""The three configurations of the denoising experiment: ``tiny`` (CI), ``cpu``, ``gpu``.

Every number that shapes a run lives here, in one frozen dataclass, so a results file that
records ``dataclasses.asdict(config)`` says exactly what was run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

#: Noise levels on the 0-255 scale, as in the seed's table (images are scaled to [0, 1], so the
#: noise added is sigma / 255).
SIGMAS = (25, 50)
#: Where the TV layer may go (see README.md, "Where the TV layer goes"): on the denoised output
#: image, or on the feature maps after the first conv block.
TV_PLACEMENTS = ("output", "inside")
#: Sizes and counts that must be at least 1 (the command line can change them).
POSITIVE_FIELDS = ("channels", "patch", "batch_size", "steps", "tune_patches", "tune_patch")


@dataclass(frozen=True)
class Config:
    """One run of the experiment: data, networks, training, evaluation.

    Attributes:
        name: the preset's name (``tiny``, ``cpu`` or ``gpu``).
        depth: conv layers of DnCNN (17 in Zhang et al. 2017).
        channels: feature maps per hidden layer (64 in Zhang et al. 2017).
        patch: side of the square training patches (40 in Zhang et al. for sigma 25 and 50).
        batch_size: patches per training step.
        steps: training steps per model, noise level and seed.
        lr: Adam learning rate of the conv and BatchNorm weights; cosine-annealed to
            ``lr * lr_final_fraction`` over ``steps``.
        lr_final_fraction: where the cosine schedule ends, as a fraction of ``lr``.
        lam_lr_factor: the TV layer's raw λ parameter learns ``lam_lr_factor`` times faster:
            softplus(raw) ≈ exp(raw) for small λ, so an Adam step moves λ by a *fraction* of
            itself, and at ``lr`` alone it could change by well under 2x in a short run.
        seeds: training seeds (model initialisation, patch positions and training noise).
        sigmas: noise levels on the 0-255 scale.
        tv_placement: one of :data:`TV_PLACEMENTS`.
        tv_lam_init: initial λ of the TV layer, small so that it starts close to the identity.
        tv_max_iter: cap on the TV prox iterations per slice (it stops earlier, at a certified
            relative duality gap of 1e-3, the cupytv default).
        eval_crop: test images are centre-cropped to at most this side (None: whole images).
        tune_patches: noisy training patches on which the classical TV baseline's λ is tuned.
        tune_patch: side of those patches.
        sample_crop: side of the crop shown in ``samples.png``.
        log_every: print a progress line every this many training steps.
        threads: CPU threads of torch and of cupytv's host executor (None: one per core).
            Work as small as ``tiny``'s gains nothing from a second thread, and on a busy
            machine a thread that loses its core stalls every parallel region of the other:
            2 threads ran tiny's steps ~100x slower than 1 while another process held one of
            2 cores.
    """

    name: str
    depth: int
    channels: int
    patch: int
    batch_size: int
    steps: int
    lr: float
    seeds: tuple[int, ...]
    eval_crop: int | None
    tune_patches: int
    tune_patch: int
    sample_crop: int
    log_every: int
    lr_final_fraction: float = 0.01
    lam_lr_factor: float = 10.0
    sigmas: tuple[int, ...] = SIGMAS
    tv_placement: str = "output"
    tv_lam_init: float = 0.01
    tv_max_iter: int = 50
    threads: int | None = None

    def __post_init__(self):
        if self.tv_placement not in TV_PLACEMENTS:
            raise ValueError(
                f"tv_placement: expected one of {list(TV_PLACEMENTS)}, got {self.tv_placement!r}"
            )
        if self.depth < 2:
            raise ValueError(f"depth: expected >= 2 (first and last conv), got {self.depth}")
        for name in POSITIVE_FIELDS:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if not self.seeds:
            raise ValueError("seeds: expected at least one seed")

    def replace(self, **changes) -> Config:
        """A copy with ``changes`` applied (None values are ignored), validated again."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


CONFIGS = {
    # CI: the whole pipeline in seconds; its numbers mean nothing beyond "it runs".
    "tiny": Config(
        name="tiny", depth=3, channels=8, patch=24, batch_size=4, steps=6, lr=1e-3, seeds=(0,),
        eval_crop=40, tune_patches=4, tune_patch=32, sample_crop=32, log_every=3, threads=1,
    ),
    # A few minutes on 2 CPU cores for everything (README.md gives the measured time).
    "cpu": Config(
        name="cpu", depth=8, channels=16, patch=40, batch_size=32, steps=300, lr=2e-3,
        seeds=(0, 1, 2), eval_crop=256, tune_patches=32, tune_patch=96, sample_crop=96,
        log_every=100,
    ),
    # The standard DnCNN-S scale (Zhang et al. 2017: depth 17, 64 channels, 40x40 patches,
    # batch 128), for a GPU: `--device cuda`.
    "gpu": Config(
        name="gpu", depth=17, channels=64, patch=40, batch_size=128, steps=20_000, lr=1e-3,
        seeds=(0, 1, 2), eval_crop=None, tune_patches=256, tune_patch=96, sample_crop=128,
        log_every=1000,
    ),
}  # fmt: skip
