"""The seed's timing table, reproduced: forward and backward time of a TV layer, every peer.

Not a test: prints one table per case and writes `timing_table-<machine>.json` and `.md`.

The TV layer, one definition for every row:
    forward   y = prox(x, lam) = argmin_y 1/2 ||y - x||^2 + lam TV(y), for every fiber (1D:
              TV(y) = sum_i |y[i+1] - y[i]| along the last axis) or slice (2D, anisotropic: the
              absolute differences along rows plus those along columns, one lam for both);
    backward  the gradients of <g, y> with respect to x and to lam, for a fixed upstream
              g ~ N(0, 1) (seeded), as autograd's y.backward(g) or the array API's VJP computes
              them. lam is one weight per fiber (1D, shape (rows, 1)) or per slice (2D,
              (N, C, 1, 1)), all equal, so its gradient is per fiber/slice and checkable.
The 2D layer is the seed's: a fixed number of iterations (10) of proximal Dykstra alternating
exact 1D solves along rows then columns, differentiated through those iterations; cupytv's
"accelerated" method runs the same number of iterations of its accelerated variant.

Cases (`--quick` and `--size tiny` shrink them and say so in the output):
  1d   (4096, 64) rows, float64 and float32: per row a step signal (STEPS jumps at random places,
       levels ~ N(0, STEP_SCALE^2)) plus N(0, 1) noise; lam = LAM_1D.
  2d   (8, 3, 64, 64), float64 and float32, 10 iterations: bench_tv2d's feature maps (a smooth
       field plus a step edge plus N(0, 0.5^2) noise per slice); lam = bench_tv2d.FM_LAM.
  cv   (128, 64, 32, 32) float32 (the CV feature-map size), 10 iterations, the same maps.
float32 and float64 cases hold the same values (float32-representable), so both solve the same
problem against one reference.

Rows (each skipped, with a note, when its package is not importable):
  cupytv            every method, through the torch layer (cupytv.torch.prox_tv1d / prox_tv2d,
                    then y.backward(g)) and through the array API (prox_tv1d + prox_tv1d_vjp(x,
                    lam, g, y=y); prox_tv2d(..., max_iter=10, tol=0) + prox_tv2d_vjp(...,
                    n_iter)), on
                    the host executor (NumPy / CPU tensors) and, when CuPy can launch, on the GPU.
  proxTV            the seed's CPU layer: proxTV's tv1_1d per fiber from a Python loop (float64;
                    `classictautstring`, the plain taut string, and `pn`, projected Newton), and
                    for the backward the seed's dense per-fiber Jacobian: the segment ends S of y
                    (jumps below FUSE_RTOL * max|y| of the fiber count as none: proxTV's PN output
                    is not bit-equal within a segment), L_S the n x n matrix of prefix indicators
                    of S, grad_x = L_S (L_S^T L_S)^-1 L_S^T g and grad_lam = s^T (L_S^T L_S)^-1
                    L_S^T g (s: the sign of each jump out of a segment), by a dense batched
                    Cholesky in torch, float64. In 2D, the seed's Dykstra loop in torch over
                    that 1D layer (autograd through the iterations). Time-budgeted
                    (--proxtv-budget-s), see below.
  CVXPYLayers       the exact prox as a convex problem, 0.5 sum_squares(y - x) + lam * TV(y) (DPP),
                    in a CvxpyLayer with a batched x and lam and its own implicit backward
                    (diffcp), float64: at its defaults (diffcp + SCS) and with SCS tightened to
                    eps 1e-9. Built once per case (canonicalisation, not timed).
                    Time-budgeted (--cvxpy-budget-s).
Budgeted rows first run on a probe (the first few fibers or slices, at least one per core for
CVXPYLayers' parallel batch), grown until it takes PROBE_S (a short probe scales badly). When
PROJECTION_MARGIN times the probe's time scaled to the full batch fits in what is left of the
budget, the full batch runs; otherwise the row shows the probe's times scaled to the full batch,
marked `~` and saying so ("measured on k of n slices, scaled xm"): every fiber and slice is an
independent problem, so time is about linear in the batch.

Timing (as bench_tv1d.py): every implementation of a case is warmed up once (its output and
gradients checked then), then timed REPS times in interleaved rounds (forward then backward of
A, of B, ..., again), medians; one whose warm-up forward + backward took over SLOW_CALL_S is
timed by that warm-up alone. Each time is wall clock from the call until its result is ready
(the GPU is synchronised before and after). Column "Total / fastest" = (forward + backward)
over the fastest row's of the same table.

Accuracy, per row, on the case's first CHECK fibers/slices (all in 1D): the max abs error of y,
of grad_x and of grad_lam against the exact reference (cupytv.reference: Johnson's dynamic
programme in 1D, an interior-point solve in 2D, both snapped to the optimality conditions'
closed form; their VJPs are the exact prox's derivatives). For the 10-iteration 2D layers that
error is the error of stopping after 10 iterations, not a defect; the column "vs D10" compares
the Dykstra rows with the same 10 Dykstra iterations computed with the exact 1D reference solver
and its exact VJP in the seed's torch loop (accelerated and CVXPYLayers rows: "-").

Usage: python benchmarks/timing_table.py [--quick] [--out-dir DIR] [--cases 1d,2d,cv]
       [--hardware all|cpu|gpu] [--cvxpy-budget-s S] [--proxtv-budget-s S] [--machine SLUG]
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib
import importlib.metadata
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if (ROOT / "pyproject.toml").is_file():  # a checkout: its cupytv (installed: the wheel's)
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_tv1d import QUICK_REPS, REPS, SLOW_CALL_S, cpu_model, optional_import  # noqa: E402
from bench_tv2d import FM_LAM, as_float32_values, feature_maps, warm_up  # noqa: E402

import cupytv  # noqa: E402
from cupytv import reference, tv1d, tv2d  # noqa: E402
from cupytv._device import gpu_unavailable_reason, usable_cupy  # noqa: E402
from cupytv._host import build as host_build  # noqa: E402
from cupytv._host.launch import launch_workers  # noqa: E402

SEED = 0
LAM_1D = 0.5  # half the noise's standard deviation: most of the noise is flattened, steps stay
STEPS = 4  # jumps per 1D row
STEP_SCALE = 2.0  # standard deviation of the rows' step levels, twice the noise's
ITERS = 10  # the seed's fixed-iteration 2D layer
# Shapes and checked fibers/slices per size. The 2D reference costs ~0.2-0.5 s per 64 x 64 slice
# and ~0.05-0.1 s per 32 x 32 one (forward and VJP each), hence a subset in 2D.
SIZES = {
    "full": {"1d": (4096, 64), "2d": (8, 3, 64, 64), "cv": (128, 64, 32, 32)},
    "quick": {"1d": (512, 64), "2d": (2, 3, 64, 64), "cv": (4, 16, 32, 32)},
    "tiny": {"1d": (16, 12), "2d": (1, 2, 10, 12), "cv": (1, 3, 8, 8)},
}
CHECK = {
    "full": {"1d": 4096, "2d": 8, "cv": 16},
    "quick": {"1d": 512, "2d": 4, "cv": 4},
    "tiny": {"1d": 16, "2d": 2, "cv": 3},
}
SIZE_REPS = {"full": REPS, "quick": QUICK_REPS, "tiny": 2}
GROUPS = ("1d", "2d", "cv")
# (group, dtype, peers): proxTV is float64-only, so the peers join the float64 cases, and the CV
# case (float32 values, which they solve in float64) where they finish within their budgets.
CASES = (
    ("1d", np.float64, True),
    ("1d", np.float32, False),
    ("2d", np.float64, True),
    ("2d", np.float32, False),
    ("cv", np.float32, True),
)
CVXPY_BUDGET_S = 420.0  # total for every CVXPYLayers row of the run (probes included)
PROXTV_BUDGET_S = 180.0  # the same for the proxTV rows
PROBE_FIBERS = 32  # a budgeted row's probe: 1D fibers ...
PROBE_SLICES = 2  # ... or 2D slices (CVXPYLayers: at least one per core, it solves in parallel)
PROBE_S = 5.0  # a probe is grown until it runs this long (or covers the batch) before deciding
PROJECTION_MARGIN = 1.5  # the full batch runs when this times the probe's projection fits
PROXTV_METHODS = (("taut string", "classictautstring"), ("PN", "pn"))
# CVXPYLayers' defaults (diffcp + SCS at its default accuracy), then SCS tightened: does the
# implicit backward become exact when the forward is?
CVXPY_VARIANTS = (
    ("defaults: diffcp + SCS", None),
    ("SCS eps 1e-9", {"eps_abs": 1e-9, "eps_rel": 1e-9}),
)
FUSE_RTOL = 1e-9  # proxTV's jumps below this * max|y| of the fiber are rounding, not jumps
DENSE_CHUNK_BYTES = 256 * 2**20  # the dense backward's n x n matrices, per batch of fibers
SCALE_FIELDS = {"y": "y", "grad_x": "gx", "grad_lam": "glam"}
SEED_TABLE = (
    "CVXPYLayers (CPU) 20704 / 9932 ms; ProxTV taut string (CPU) 207.8 / 430.7 ms; ProxTV PN "
    "(CPU) 257.3 / 447.0 ms; their PN on a Titan X 9.0 / 17.7 ms and on an A6000 10.0 / 7.3 ms "
    "(forward / backward; no input size given)"
)


# ---------------------------------------------------------------------------------------------
# Inputs and the exact reference


@dataclass
class Inputs:
    """One case's problem: x and g (float64 holding float32 values) and lam per fiber/slice."""

    kind: str  # "1d": x (rows, n), lam (rows, 1); "2d": x (N, C, H, W), lam (N, C, 1, 1)
    x: np.ndarray
    g: np.ndarray
    lam: np.ndarray

    @property
    def units(self) -> int:
        """Fibers (1D) or slices (2D)."""
        return self.lam.size

    @property
    def tail(self) -> tuple[int, ...]:
        return self.x.shape[1:] if self.kind == "1d" else self.x.shape[-2:]

    def head(self, k: int) -> Inputs:
        """The first k fibers/slices (2D: as a (1, k, H, W) batch)."""
        if self.kind == "1d":
            return Inputs("1d", self.x[:k], self.g[:k], self.lam[:k])
        cut = (1, k, *self.tail)
        return Inputs(
            "2d",
            self.x.reshape(-1, *self.tail)[:k].reshape(cut),
            self.g.reshape(-1, *self.tail)[:k].reshape(cut),
            self.lam.reshape(-1)[:k].reshape(1, k, 1, 1),
        )


def step_rows(shape, rng) -> np.ndarray:
    """Rows of STEPS + 1 constant levels (~ N(0, STEP_SCALE^2)) plus N(0, 1) noise."""
    rows, n = shape
    cuts = np.sort(rng.integers(1, n, (rows, STEPS)), axis=1)
    segment = (np.arange(n)[None, :, None] >= cuts[:, None, :]).sum(axis=-1)
    levels = STEP_SCALE * rng.standard_normal((rows, STEPS + 1))
    return np.take_along_axis(levels, segment, axis=1) + rng.standard_normal(shape)


def make_inputs(group: str, shape) -> Inputs:
    rng = np.random.default_rng(SEED)
    if group == "1d":
        x, lam = step_rows(shape, rng), np.full((shape[0], 1), LAM_1D)
    else:
        x, lam = feature_maps(shape, rng), np.full((*shape[:-2], 1, 1), FM_LAM)
    g = np.random.default_rng(SEED + 1).standard_normal(shape)
    return Inputs("1d" if group == "1d" else "2d", as_float32_values(x), as_float32_values(g), lam)


@dataclass
class Reference:
    """Exact y, grad_x (flattened to fibers/slices) and grad_lam (per unit) of the checked units;
    in 2D also the same for 10 exact Dykstra iterations (None without torch)."""

    count: int
    y: np.ndarray
    gx: np.ndarray
    glam: np.ndarray
    dykstra: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    seconds: float

    @property
    def scale(self) -> dict[str, float]:
        """The exact values' magnitudes, to read the errors against."""
        return {k: float(np.max(np.abs(getattr(self, a)))) for k, a in SCALE_FIELDS.items()}


def exact_reference(inputs: Inputs, count: int, torch) -> Reference:
    t0 = time.perf_counter()
    head = inputs.head(count)
    x, g = head.x.reshape(count, *inputs.tail), head.g.reshape(count, *inputs.tail)
    if inputs.kind == "1d":
        lam = head.lam.reshape(count, 1)
        y = reference.prox_tv1d(x, lam)
        gx, glam = reference.prox_tv1d_vjp(x, lam, g)
        dykstra = None
    else:
        lam = head.lam.reshape(count, 1, 1)
        y = reference.prox_tv2d(x, lam)
        gx, glam = reference.prox_tv2d_vjp(x, lam, g)
        dykstra = exact_dykstra(x, lam, g, torch) if torch is not None else None
    return Reference(count, y, gx, glam.reshape(count), dykstra, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# The seed's CPU layer: a host 1D solver per fiber, its backward, Dykstra in torch


class ProxTVDense:
    """proxTV's tv1_1d per fiber forward; the seed's dense per-fiber Jacobian backward."""

    def __init__(self, prox_tv, method: str):
        self.prox_tv, self.method = prox_tv, method

    def forward(self, torch, x: np.ndarray, lam: np.ndarray):
        solve = self.prox_tv.tv1_1d
        y = np.stack([solve(r, w, method=self.method) for r, w in zip(x, lam[:, 0], strict=True)])
        yt = torch.from_numpy(y)
        # The seed keeps sign(y[i] - y[i+1]) with rounding-sized jumps zeroed, nothing else.
        z = yt[:, :-1] - yt[:, 1:]
        tol = FUSE_RTOL * yt.abs().amax(dim=1, keepdim=True)
        sign_z = torch.sign(z) * (z.abs() > tol)
        return yt, sign_z

    @staticmethod
    def backward(torch, sign_z, g):
        """grad_x = L_S (L_S^T L_S)^-1 L_S^T g, grad_lam = s^T (L_S^T L_S)^-1 L_S^T g.

        L_S: column c is the indicator of samples 0..e_c (e_c: the c-th segment end, the last
        sample always one), columns past the segment count zero and their diagonal of L_S^T L_S
        set to 1 (the seed's padding), so every fiber is one dense n x n Cholesky solve.
        """
        fibers, n = g.shape
        grad_x, grad_lam = torch.empty_like(g), torch.empty((fibers, 1), dtype=g.dtype)
        chunk = max(1, DENSE_CHUNK_BYTES // (3 * n * n * g.element_size()))
        rows = torch.arange(n)
        for s in range(0, fibers, chunk):
            sz = torch.nn.functional.pad(sign_z[s : s + chunk], (0, 1))  # sign_z[n-1] = 0
            ends_mask = sz != 0
            ends_mask[:, -1] = True
            count = ends_mask.sum(dim=1, keepdim=True)
            ends = torch.argsort((~ends_mask).to(torch.int8), dim=1, stable=True)
            valid = rows[None, :] < count
            lower = (rows[None, :, None] <= ends[:, None, :]) & valid[:, None, :]
            lower = lower.to(g.dtype)
            ltl = lower.transpose(-1, -2) @ lower + torch.diag_embed((~valid).to(g.dtype))
            rhs = lower.transpose(-1, -2) @ g[s : s + chunk, :, None]
            tmp = torch.cholesky_solve(rhs, torch.linalg.cholesky(ltl))
            grad_x[s : s + chunk] = (lower @ tmp)[..., 0]
            sign_out = torch.where(valid, -sz.gather(1, ends), 0.0)
            grad_lam[s : s + chunk, 0] = (sign_out * tmp[..., 0]).sum(dim=1)
        return grad_x, grad_lam


class ExactFiberSolver:
    """cupytv.reference's 1D prox and its exact VJP, for the 10-iteration Dykstra reference."""

    @staticmethod
    def forward(torch, x: np.ndarray, lam: np.ndarray):
        return torch.from_numpy(reference.prox_tv1d(x, lam)), (x, lam)

    @staticmethod
    def backward(torch, saved, g):
        x, lam = saved
        gx, glam = reference.prox_tv1d_vjp(x, lam, g.numpy())
        return torch.from_numpy(gx), torch.from_numpy(np.asarray(glam))


@functools.cache
def fiber_prox(torch):
    """torch.autograd.Function: y = solver's prox of every row of x (F, n), lam (F, 1).

    Built on first use: torch is optional, and one class serves every solver.
    """

    class FiberProx(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, lam, solver):
            y, ctx.saved = solver.forward(torch, x.detach().numpy(), lam.detach().numpy())
            ctx.solver = solver
            return y

        @staticmethod
        def backward(ctx, g):
            grad_x, grad_lam = ctx.solver.backward(torch, ctx.saved, g.contiguous())
            return grad_x, grad_lam, None

    return FiberProx


def dykstra(torch, x, lam, iters: int, solver):
    """The seed's 2D layer: proximal Dykstra over a differentiable 1D prox, rows then columns.

    x: (S, H, W) tensor, lam: (S, 1, 1) tensor; returns Y after `iters` iterations.
    """
    s, h, w = x.shape
    apply = fiber_prox(torch).apply
    lam_rows = lam.expand(s, h, 1).reshape(-1, 1)
    lam_cols = lam.expand(s, w, 1).reshape(-1, 1)

    def along_rows(v):
        return apply(v.reshape(-1, w), lam_rows, solver).reshape(s, h, w)

    def along_cols(v):
        t = v.transpose(1, 2).contiguous().reshape(-1, h)
        return apply(t, lam_cols, solver).reshape(s, w, h).transpose(1, 2)

    y, p, q = x, torch.zeros_like(x), torch.zeros_like(x)
    for _ in range(iters):
        z = along_rows(y + p)
        p = p + y - z
        y_next = along_cols(z + q)
        q = q + z - y_next
        y = y_next
    return y


def exact_dykstra(x, lam, g, torch):
    """(y, grad_x, grad_lam) of ITERS Dykstra iterations with the exact 1D prox and VJP."""
    xt = torch.from_numpy(x).requires_grad_()
    lt = torch.from_numpy(lam).requires_grad_()
    y = dykstra(torch, xt, lt, ITERS, ExactFiberSolver())
    y.backward(torch.from_numpy(g))
    return y.detach().numpy(), xt.grad.numpy(), lt.grad.numpy().reshape(-1)


# ---------------------------------------------------------------------------------------------
# Implementations


@dataclass
class Runner:
    """One implementation built on one batch: forward() -> state; backward(state) -> grads;
    result(state, grads) -> (y, grad_x, grad_lam or None) as host float64 arrays."""

    forward: Callable[[], object]
    backward: Callable[[object], object]
    result: Callable[[object, object], tuple]
    sync: Callable[[], None]


@dataclass
class Impl:
    """A row of a table: how to build its Runner for a case's inputs."""

    package: str  # the Package cell
    hardware: str
    api: str  # "torch", "array" or "peer"
    method: str
    build: Callable[[Inputs], Runner]
    budget: Budget | None = None
    probe: int | None = None  # units a budgeted row's probe runs on
    dykstra: bool = False  # compare with the 10 exact Dykstra iterations
    note: str | None = None


@dataclass
class Budget:
    name: str
    total_s: float
    spent_s: float = 0.0

    @property
    def left_s(self) -> float:
        return self.total_s - self.spent_s


def host(a) -> np.ndarray | None:
    """A float64 NumPy copy of a NumPy/CuPy array or a tensor (None stays None)."""
    if a is None:
        return None
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    elif hasattr(a, "get"):
        a = a.get()
    return np.asarray(a, dtype=np.float64)


def nothing() -> None:
    return None


def host_result(y, grads) -> tuple:
    return host(y), host(grads[0]), host(grads[1])


def autograd_runner(torch_prox, x, lam, g, sync=nothing) -> Runner:
    """A Runner for y = torch_prox(x, lam) on leaf tensors: y.backward(g), x.grad, lam.grad."""

    def forward():
        x.grad = lam.grad = None
        return torch_prox(x, lam)

    def backward(y):
        y.backward(g)
        return x.grad, lam.grad

    return Runner(forward, backward, host_result, sync)


def cupytv_array(kind: str, xp, dtype, method: str, iters: int | None, sync) -> Callable:
    """cupytv's array API on NumPy (host executor) or CuPy arrays."""

    def build(inputs: Inputs) -> Runner:
        x, g = xp.asarray(inputs.x.astype(dtype)), xp.asarray(inputs.g.astype(dtype))
        lam = xp.asarray(inputs.lam.astype(dtype))
        if kind == "1d":

            def forward():
                return cupytv.prox_tv1d(x, lam, method=method)

            def backward(y):
                return cupytv.prox_tv1d_vjp(None, lam, g, y=y)

            return Runner(forward, backward, host_result, sync)

        def forward():
            return cupytv.prox_tv2d(
                x, lam, max_iter=iters, tol=0.0, method=method, return_info=True
            )

        def backward(state):
            return cupytv.prox_tv2d_vjp(x, lam, g, n_iter=state[1].n_iter, method=method)

        def result(state, grads):
            return host_result(state[0], grads)

        return Runner(forward, backward, result, sync)

    return build


def cupytv_torch(torch, kind: str, device: str, dtype, method: str, iters, sync) -> Callable:
    """cupytv.torch's layer functions: y = prox(x, lam); y.backward(g)."""
    import cupytv.torch as ct

    tdtype = getattr(torch, np.dtype(dtype).name)

    def build(inputs: Inputs) -> Runner:
        def tensor(a, grad=False):
            return torch.tensor(a, dtype=tdtype, device=device, requires_grad=grad)

        def prox(x, lam):
            if kind == "1d":
                return ct.prox_tv1d(x, lam, method=method)
            return ct.prox_tv2d(x, lam, max_iter=iters, tol=0.0, method=method)

        x, lam, g = tensor(inputs.x, True), tensor(inputs.lam, True), tensor(inputs.g)
        return autograd_runner(prox, x, lam, g, sync)

    return build


def proxtv_layer(torch, kind: str, solver: ProxTVDense, iters) -> Callable:
    """The seed's CPU layer over proxTV (1D; 2D through Dykstra), float64."""

    def build(inputs: Inputs) -> Runner:
        def prox(x, lam):
            if kind == "1d":
                return fiber_prox(torch).apply(x, lam, solver)
            flat = x.reshape(-1, *inputs.tail)
            return dykstra(torch, flat, lam.reshape(-1, 1, 1), iters, solver).reshape(x.shape)

        x = torch.from_numpy(inputs.x.copy()).requires_grad_()
        lam = torch.from_numpy(inputs.lam.copy()).requires_grad_()
        return autograd_runner(prox, x, lam, torch.from_numpy(inputs.g.copy()))

    return build


class CvxpyLayers:
    """One CvxpyLayer per fiber/slice shape, built on first use and shared by the variants."""

    def __init__(self, torch, cp, layer_class):
        self.torch, self.cp, self.layer_class = torch, cp, layer_class
        self.layers: dict[tuple, object] = {}
        self.build_s: dict[tuple, float] = {}

    def layer(self, tail: tuple[int, ...]):
        if tail not in self.layers:
            cp = self.cp
            t0 = time.perf_counter()
            x, lam, y = cp.Parameter(tail), cp.Parameter(nonneg=True), cp.Variable(tail)
            if len(tail) == 1:
                tv = cp.norm1(cp.diff(y))
            else:
                tv = cp.sum(cp.abs(cp.diff(y, axis=0))) + cp.sum(cp.abs(cp.diff(y, axis=1)))
            problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(y - x) + lam * tv))
            assert problem.is_dpp()
            self.layers[tail] = self.layer_class(problem, parameters=[x, lam], variables=[y])
            self.build_s[tail] = time.perf_counter() - t0
        return self.layers[tail]

    def runner(self, solver_args) -> Callable:
        torch = self.torch

        def build(inputs: Inputs) -> Runner:
            layer = self.layer(tuple(inputs.tail))
            units = inputs.units  # CvxpyLayer takes one batch axis: slices flattened
            x = torch.tensor(inputs.x.reshape(units, *inputs.tail), requires_grad=True)
            lam = torch.tensor(inputs.lam.reshape(units), requires_grad=True)
            g = torch.tensor(inputs.g.reshape(units, *inputs.tail))

            def prox(x, lam):
                return layer(x, lam, solver_args=solver_args)[0]

            return autograd_runner(prox, x, lam, g)

        return build


def implementations(case, env, budgets) -> list[Impl]:
    """Every row of a case importable here, cupytv's first."""
    kind = "1d" if case.group == "1d" else "2d"
    methods = tuple(tv1d.METHODS if kind == "1d" else tv2d.METHODS)
    iters = None if kind == "1d" else ITERS
    torch, gpu = env.torch, env.gpu
    impls = []
    kinds = []
    if env.hardware in ("all", "cpu"):
        kinds.append(("CPU", np, "cpu", nothing))
    if env.hardware in ("all", "gpu") and gpu is not None:
        kinds.append((env.gpu_name, gpu, "cuda", lambda: gpu.cuda.Device().synchronize()))
    for hardware, xp, device, sync in kinds:
        for method in methods:
            dyk = method == "dykstra"
            if torch is not None and (device == "cpu" or env.torch_cuda):
                build = cupytv_torch(torch, kind, device, case.dtype, method, iters, sync)
                impls.append(
                    Impl(f"cupytv.torch `{method}`", hardware, "torch", method, build, dykstra=dyk)
                )
            build = cupytv_array(kind, xp, case.dtype, method, iters, sync)
            package = f"cupytv `{method}` (array API)"
            impls.append(Impl(package, hardware, "array", method, build, dykstra=dyk))
    if not case.peers or env.hardware == "gpu" or torch is None:
        return impls
    inside = " (float64 inside)" if case.dtype != np.float64 else ""
    probe = PROBE_FIBERS if kind == "1d" else PROBE_SLICES
    if env.prox_tv is not None:
        for name, method in PROXTV_METHODS:
            build = proxtv_layer(torch, kind, ProxTVDense(env.prox_tv, method), iters)
            impls.append(
                Impl(
                    f"proxTV {name} + dense Jacobian",
                    "CPU",
                    "peer",
                    method,
                    build,
                    budgets["proxtv"],
                    probe,
                    dykstra=kind == "2d",
                    note=f"tv1_1d(method='{method}') per fiber, 1 thread{inside}",
                )
            )
    if env.cvxpy is not None:
        probe = max(probe, os.cpu_count() or 1)  # diffcp solves a batch over every core
        for name, args in CVXPY_VARIANTS:
            impls.append(
                Impl(
                    f"CVXPYLayers ({name})",
                    "CPU",
                    "peer",
                    name,
                    env.cvxpy.runner(args),
                    budgets["cvxpy"],
                    probe,
                    note=f"exact prox as a cone program{inside}",
                )
            )
    return impls


# ---------------------------------------------------------------------------------------------
# Measuring


@dataclass
class Row:
    impl: Impl
    forward_s: list[float] = field(default_factory=list)
    backward_s: list[float] = field(default_factory=list)
    errors: dict = field(default_factory=dict)
    scaled: dict | None = None  # measured on a probe and scaled to the full batch
    skipped: str | None = None

    @property
    def forward(self) -> float:
        return statistics.median(self.forward_s)

    @property
    def backward(self) -> float:
        return statistics.median(self.backward_s)


def time_once(runner: Runner):
    """(forward s, backward s, state, grads) of one forward and backward."""
    runner.sync()
    t0 = time.perf_counter()
    state = runner.forward()
    runner.sync()
    t1 = time.perf_counter()
    grads = runner.backward(state)
    runner.sync()
    return t1 - t0, time.perf_counter() - t1, state, grads


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def accuracy(inputs: Inputs, ref: Reference, out: tuple, dyk: bool) -> dict:
    """Max abs errors of y, grad_x, grad_lam on the checked units (those the batch holds)."""
    y, gx, glam = out
    n = min(ref.count, y.size // int(np.prod(inputs.tail)))
    y, gx = y.reshape(-1, *inputs.tail)[:n], gx.reshape(-1, *inputs.tail)[:n]
    glam = None if glam is None else glam.reshape(-1)[:n]

    def errors(ry, rgx, rglam):
        return {
            "forward": max_abs(y, ry[:n]),
            "grad_x": max_abs(gx, rgx[:n]),
            "grad_lam": None if glam is None else max_abs(glam, rglam[:n]),
        }

    result = {"checked": n, **errors(ref.y, ref.gx, ref.glam)}
    result["vs_dykstra10"] = errors(*ref.dykstra) if dyk and ref.dykstra is not None else None
    return result


def measure(impls: list[Impl], inputs: Inputs, ref: Reference, reps: int, notes) -> list[Row]:
    """Probe the budgeted rows, warm every row up (checking it), then time in rounds."""
    rows, live = [], []
    for impl in impls:
        row = Row(impl)
        rows.append(row)
        print(f"  {impl.package} on {impl.hardware} ...", flush=True)
        t0 = time.perf_counter()
        try:
            runner = warm(row, inputs, ref)
        except Exception as exc:
            if impl.api != "peer":
                raise
            runner, row.skipped = None, f"failed: {type(exc).__name__}: {str(exc)[:200]}"
        if impl.budget is not None:
            impl.budget.spent_s += time.perf_counter() - t0
        if runner is not None:
            live.append((row, runner))
        elif row.skipped:
            notes.append(f"{impl.package}: {row.skipped}")
            print(f"    skipped: {row.skipped}", flush=True)
        else:
            print(f"    {format_row(row)}", flush=True)
    spent = [0.0] * len(live)
    for _ in range(reps):
        for k, (row, runner) in enumerate(live):
            start = time.perf_counter()
            fwd, bwd, state, grads = time_once(runner)
            del state, grads
            row.forward_s.append(fwd)
            row.backward_s.append(bwd)
            spent[k] += time.perf_counter() - start
    for (row, _), seconds in zip(live, spent, strict=True):
        if row.impl.budget is not None:
            row.impl.budget.spent_s += seconds
        print(f"    {format_row(row)}", flush=True)
    return rows


def warm(row: Row, inputs: Inputs, ref: Reference) -> Runner | None:
    """Probe (budgeted rows), warm up and check; the Runner when the row still needs its rounds.

    A budgeted row whose probe, scaled to the full batch, would overrun what is left of its
    budget keeps the probe's times scaled (row.scaled says so) and its accuracy on the probe.
    """
    impl, units, budget = row.impl, inputs.units, row.impl.budget
    if budget is not None:
        if budget.left_s <= 0:
            row.skipped = f"the {budget.name} budget ({budget.total_s:g} s) was spent before it"
            return None
        start, k = time.perf_counter(), min(units, impl.probe)
        while k < units:
            probe = inputs.head(k)
            runner = impl.build(probe)
            fwd, bwd, state, grads = time_once(runner)
            factor, left = units / k, budget.left_s - (time.perf_counter() - start)
            grow = min(units, max(2 * k, math.ceil(k * PROBE_S / (fwd + bwd))))
            if fwd + bwd < PROBE_S and grow < units and left >= 2 * PROBE_S:
                # A short probe scales badly (per-call overheads, a batch that fits in cache).
                k = grow
                continue
            if PROJECTION_MARGIN * (fwd + bwd) * factor <= left:
                del runner, state, grads  # the full batch fits: run it
                break
            row.errors = accuracy(probe, ref, runner.result(state, grads), impl.dykstra)
            row.forward_s, row.backward_s = [fwd * factor], [bwd * factor]
            row.scaled = {
                "measured_on": k,
                "of": units,
                "factor": factor,
                "projected_s": (fwd + bwd) * factor,
                "budget_left_s": left,
            }
            return None
    runner = impl.build(inputs)
    fwd, bwd, state, grads = time_once(runner)
    row.errors = accuracy(inputs, ref, runner.result(state, grads), impl.dykstra)
    del state, grads
    if fwd + bwd > SLOW_CALL_S:  # a slow row: its warm-up is its time
        row.forward_s, row.backward_s = [fwd], [bwd]
        return None
    return runner


# ---------------------------------------------------------------------------------------------
# Cases and the report


@dataclass(frozen=True)
class Case:
    group: str  # "1d", "2d" or "cv"
    dtype: type
    peers: bool
    shape: tuple[int, ...]
    check: int

    @property
    def iters(self) -> int | None:
        return None if self.group == "1d" else ITERS

    @property
    def lam(self) -> float:
        return LAM_1D if self.group == "1d" else FM_LAM

    @property
    def name(self) -> str:
        return f"{self.group} {'x'.join(map(str, self.shape))} {np.dtype(self.dtype).name}"

    @property
    def title(self) -> str:
        dtype = np.dtype(self.dtype).name
        if self.group == "1d":
            return (
                f"1D layer: {self.shape} {dtype}, λ = {self.lam:g} per row; rows of "
                f"{STEPS + 1} random levels + N(0, 1) noise"
            )
        what = "2D layer" if self.group == "2d" else "2D layer at the CV feature-map size"
        return (
            f"{what}: {self.shape} {dtype}, {ITERS} iterations, λ = {self.lam:g} per slice; "
            f"bench_tv2d's feature maps"
        )


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    for limit, spec in ((100, ".0f"), (10, ".1f"), (1, ".2f")):
        if ms >= limit:
            return format(ms, spec)
    return format(ms, ".3f")


def fmt_err(value) -> str:
    if value is None:
        return "-"
    return "0" if value == 0 else f"{value:.1e}"


def fmt_ratio(ratio: float) -> str:
    return f"{ratio:.1f}×" if ratio < 10 else f"{ratio:.0f}×"


def format_row(row: Row) -> str:
    """One line of console progress."""
    e = row.errors
    scaled = f" (scaled x{row.scaled['factor']:.3g})" if row.scaled else ""
    return (
        f"fwd {fmt_ms(row.forward)} ms, bwd {fmt_ms(row.backward)} ms{scaled}; errors y "
        f"{fmt_err(e.get('forward'))}, grad_x {fmt_err(e.get('grad_x'))}, grad_lam "
        f"{fmt_err(e.get('grad_lam'))}"
    )


def timed(rows: list[Row]) -> list[Row]:
    return [r for r in rows if not r.skipped]


def markdown_table(case: Case, rows: list[Row]) -> list[str]:
    """The seed's columns (Package, Hardware, Forward, Backward, Total ratio) plus accuracy."""
    done = timed(rows)
    fastest = min((r.forward + r.backward for r in done), default=None)
    two_d = case.group != "1d"
    header = (
        "| Package | Hardware | Forward (ms) | Backward (ms) | Total / fastest | y err | ∂x err "
        "| ∂λ err |"
    )
    rule = "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    if two_d:
        header += " vs D10: y / ∂x / ∂λ |"
        rule += " ---: |"
    lines = [header, rule]
    for r in done:
        e, mark = r.errors, "~" if r.scaled else ""
        package = r.impl.package + (" †" if r.scaled else "")
        cells = [
            package,
            r.impl.hardware,
            mark + fmt_ms(r.forward),
            mark + fmt_ms(r.backward),
            mark + fmt_ratio((r.forward + r.backward) / fastest),
            fmt_err(e["forward"]),
            fmt_err(e["grad_x"]),
            fmt_err(e["grad_lam"]),
        ]
        if two_d:
            d = e.get("vs_dykstra10")
            cells.append(
                "-"
                if d is None
                else " / ".join(fmt_err(d[k]) for k in ("forward", "grad_x", "grad_lam"))
            )
        lines.append("| " + " | ".join(cells) + " |")
    for r in done:
        if r.scaled:
            s = r.scaled
            unit = "rows" if case.group == "1d" else "slices"
            lines.append(
                f"\n† {r.impl.package}: measured on {s['measured_on']} of {s['of']} {unit} and "
                f"scaled ×{s['factor']:.3g} (the full batch, projected at "
                f"{s['projected_s']:.0f} s, would overrun the {s['budget_left_s']:.0f} s left of "
                "its budget)."
            )
    for r in rows:
        if r.skipped:
            lines.append(f"\nSkipped: {r.impl.package} ({r.impl.hardware}): {r.skipped}.")
    return lines


def row_json(row: Row, fastest: float | None) -> dict:
    impl = row.impl
    out = {
        "package": impl.package,
        "hardware": impl.hardware,
        "api": impl.api,
        "method": impl.method,
        "note": impl.note,
        "skipped": row.skipped,
    }
    if row.skipped:
        return out
    total = row.forward + row.backward
    return {
        **out,
        "forward_s": row.forward,
        "backward_s": row.backward,
        "total_ratio_to_fastest": total / fastest,
        "forward_times_s": row.forward_s,
        "backward_times_s": row.backward_s,
        "reps": len(row.forward_s),
        "scaled": row.scaled,
        "errors": row.errors,
    }


def machine_slug(gpu_name: str | None) -> str:
    """`gpu-nvidia-h100` or `cpu-2core-xeon`: the kind of machine, for the file names."""
    if gpu_name:
        return "gpu-" + "-".join(re.findall(r"[a-z0-9]+", gpu_name.lower())[:2])
    model = re.sub(r"\((r|tm)\)", " ", cpu_model().lower())
    skip = {"intel", "amd", "processor", "cpu", "core", "with"}
    words = [w for w in re.findall(r"[a-z0-9.]+", model) if w not in skip and "ghz" not in w]
    return f"cpu-{os.cpu_count()}core-" + "-".join(words[:2] or ["unknown"])


# ---------------------------------------------------------------------------------------------
# Main


@dataclass
class Env:
    hardware: str
    torch: object = None
    torch_cuda: bool = False
    gpu: object = None
    gpu_name: str | None = None
    prox_tv: object = None
    cvxpy: CvxpyLayers | None = None
    versions: dict = field(default_factory=dict)


def version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(hardware: str, notes: list[str]) -> Env:
    """What is importable and usable here; a note for each thing that is not."""
    env = Env(hardware)

    def optional(module: str, distribution: str):
        mod, _ = optional_import(module, distribution)
        if mod is None:
            notes.append(f"{distribution} not importable; its rows are skipped")
        return mod

    env.torch = optional("torch", "torch")
    if env.torch is None:
        notes.append(
            "without torch the torch-layer, proxTV and CVXPYLayers rows and the 10-iteration "
            "Dykstra reference (vs D10) are skipped"
        )
    env.prox_tv = optional("prox_tv", "prox-tv")
    cvxpylayers = optional("cvxpylayers.torch", "cvxpylayers")
    if cvxpylayers is not None and env.torch is not None:
        import cvxpy

        env.cvxpy = CvxpyLayers(env.torch, cvxpy, cvxpylayers.CvxpyLayer)
    if hardware != "cpu":
        env.gpu = usable_cupy()
        if env.gpu is None:
            notes.append(f"no usable GPU ({gpu_unavailable_reason()}); GPU rows skipped")
        else:
            props = env.gpu.cuda.runtime.getDeviceProperties(env.gpu.cuda.Device().id)
            name = props["name"]
            env.gpu_name = name.decode() if isinstance(name, bytes) else name
            env.torch_cuda = env.torch is not None and env.torch.cuda.is_available()
            if env.torch is not None and not env.torch_cuda:
                notes.append("torch has no CUDA here; GPU rows of the torch layer skipped")
    env.versions = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cupytv": cupytv.__version__,
        "torch": getattr(env.torch, "__version__", None),
        "cupy": env.gpu.__version__
        if env.gpu is not None
        else version("cupy-cuda12x") or version("cupy-cuda13x"),
        "prox_tv": version("prox-tv") if env.prox_tv is not None else None,
        "cvxpylayers": version("cvxpylayers") if env.cvxpy is not None else None,
        "cvxpy": version("cvxpy") if env.cvxpy is not None else None,
        "diffcp": version("diffcp") if env.cvxpy is not None else None,
    }
    return env


def warm_kernels(env: Env) -> None:
    """Compile and load every path before timing: a first call's one-time costs (kernel builds,
    torch's custom-op dispatch, LAPACK and solver pools) are not a row's time."""
    gpu = env.gpu if env.hardware != "cpu" else None
    warm_up(gpu)  # bench_tv2d's: every 2D kernel path, both dtypes, forward and backward
    for xp in [np] + ([gpu] if gpu is not None else []):
        for dtype in (np.float32, np.float64):
            x = xp.zeros((2, 8), dtype)
            for method in tv1d.METHODS:
                cupytv.prox_tv1d_vjp(None, 0.1, x, y=cupytv.prox_tv1d(x, 0.1, method=method))
    torch = env.torch
    if torch is None:
        return
    import cupytv.torch as ct

    devices = ["cpu"] + (["cuda"] if gpu is not None and env.torch_cuda else [])
    for device in devices:
        for dtype in (torch.float32, torch.float64):
            x = torch.ones((2, 8, 8), dtype=dtype, device=device, requires_grad=True)
            ct.prox_tv1d(x, 0.1).sum().backward()
            ct.prox_tv2d(x, 0.1, max_iter=2, tol=0.0).sum().backward()
    tiny = Inputs("2d", np.ones((1, 1, 4, 4)), np.ones((1, 1, 4, 4)), np.full((1, 1, 1, 1), 0.1))
    if env.prox_tv is not None:
        runner = proxtv_layer(torch, "2d", ProxTVDense(env.prox_tv, "pn"), 2)(tiny)
        time_once(runner)
    if env.cvxpy is not None:
        time_once(env.cvxpy.runner(None)(tiny.head(1)))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (same as --size quick)")
    parser.add_argument("--size", choices=tuple(SIZES), default="full")
    parser.add_argument("--cases", default=",".join(GROUPS), help="comma-separated: 1d,2d,cv")
    parser.add_argument(
        "--hardware", choices=("all", "cpu", "gpu"), default="all",
        help="gpu: only the GPU rows (a short run on a lent GPU); cpu: no GPU rows",
    )  # fmt: skip
    parser.add_argument("--cvxpy-budget-s", type=float, default=CVXPY_BUDGET_S)
    parser.add_argument("--proxtv-budget-s", type=float, default=PROXTV_BUDGET_S)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--machine", help="the file names' machine slug (default: derived)")
    args = parser.parse_args(argv)
    if args.quick:
        args.size = "quick"
    args.cases = tuple(c for c in args.cases.split(",") if c)
    unknown = set(args.cases) - set(GROUPS)
    if unknown:
        parser.error(f"--cases: expected some of {list(GROUPS)}, got {sorted(unknown)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if host_build.sanitize_enabled():
        sys.exit("unset CUPYTV_HOST_SANITIZE: sanitized builds are not what this measures")
    started, load_start = time.perf_counter(), os.getloadavg()
    notes: list[str] = []
    env = environment(args.hardware, notes)
    omp_threads = launch_workers()
    torch_threads = env.torch.get_num_threads() if env.torch is not None else None
    if args.hardware == "gpu" and env.gpu is None:
        sys.exit(f"--hardware gpu: no usable GPU here ({gpu_unavailable_reason()})")
    slug = args.machine or machine_slug(env.gpu_name)
    if args.size != "full":
        slug += f"-{args.size}"
        notes.append(f"--size {args.size}: reduced sizes, not the issue's")
    print(
        f"{cpu_model()}, {os.cpu_count()} cores, {omp_threads} host threads, torch threads "
        f"{torch_threads}, load average {load_start[0]:.2f}; GPU: {env.gpu_name or 'none'}; "
        f"size {args.size}"
    )
    warm_kernels(env)
    budgets = {
        "cvxpy": Budget("CVXPYLayers", args.cvxpy_budget_s),
        "proxtv": Budget("proxTV", args.proxtv_budget_s),
    }
    reps = SIZE_REPS[args.size]
    cases = [
        Case(g, dtype, peers, SIZES[args.size][g], CHECK[args.size][g])
        for g, dtype, peers in CASES
        if g in args.cases
    ]
    results, md_cases = [], []
    problems: dict[str, tuple[Inputs, Reference]] = {}
    for i, case in enumerate(cases, 1):
        print(f"\n[{i}/{len(cases)}] {case.title}", flush=True)
        if case.group not in problems:
            inputs = make_inputs(case.group, case.shape)
            count = min(case.check, inputs.units)
            print(f"  exact reference on {count} of {inputs.units} ...", flush=True)
            problems[case.group] = (inputs, exact_reference(inputs, count, env.torch))
        inputs, ref = problems[case.group]
        rows = measure(implementations(case, env, budgets), inputs, ref, reps, notes)
        table = markdown_table(case, rows)
        print("\n".join(table), flush=True)
        unit = "rows" if case.group == "1d" else "slices"
        scale = ref.scale
        about = (
            f"Accuracy on {ref.count} of {inputs.units} {unit}, where the exact max |y| = "
            f"{scale['y']:.2g}, max |∂x| = {scale['grad_x']:.2g}, max |∂λ| = "
            f"{scale['grad_lam']:.2g}."
        )
        if any(r.impl.api == "peer" for r in rows) and case.dtype != np.float64:
            about += " The peers compute in float64 (from the same float32 values)."
        md_cases += [f"\n### {case.title}\n", about + "\n", *table]
        fastest = min((r.forward + r.backward for r in timed(rows)), default=None)
        results.append(
            {
                "name": case.name,
                "title": case.title,
                "group": case.group,
                "shape": list(case.shape),
                "dtype": np.dtype(case.dtype).name,
                "lam": case.lam,
                "iterations": case.iters,
                "checked": ref.count,
                "units": inputs.units,
                "reference_s": ref.seconds,
                "reference_max_abs": ref.scale,
                "rows": [row_json(r, fastest) for r in rows],
            }
        )
    seconds = time.perf_counter() - started
    machine = {
        "slug": slug,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "omp_threads": omp_threads,
        "torch_threads": torch_threads,
        "gpu": env.gpu_name,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
    }
    report = {
        "benchmark": "timing_table",
        "size": args.size,
        "argv": list(sys.argv[1:] if argv is None else argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": seconds,
        "machine": machine,
        "versions": env.versions,
        "definition": DEFINITION,
        "seed_table": SEED_TABLE,
        "budgets": {k: {"total_s": b.total_s, "spent_s": b.spent_s} for k, b in budgets.items()},
        "cvxpy_build_s": {
            "x".join(map(str, k)): v for k, v in (env.cvxpy.build_s if env.cvxpy else {}).items()
        },
        "cases": results,
        "notes": notes,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.out_dir / f"timing_table-{slug}.json"
    md_path = json_path.with_suffix(".md")
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(markdown(report, md_cases) + "\n")
    print(f"\nwrote {json_path} and {md_path} ({seconds:.0f} s)")
    return report


DEFINITION = {
    "forward": "y = prox(x, lam): argmin_y 1/2 ||y - x||^2 + lam TV(y) per fiber (1D) or slice "
    "(2D, anisotropic, 10 iterations of the layer's method)",
    "backward": "gradients of <g, y> w.r.t. x and lam (one lam per fiber/slice), g ~ N(0, 1)",
    "time": "wall clock per call, median of the repeats after a warm-up (GPU synchronised)",
    "errors": "max abs error of y, grad_x, grad_lam on the checked fibers/slices against "
    "cupytv.reference (the exact prox and its exact derivatives)",
    "vs_dykstra10": "the same against 10 Dykstra iterations with the exact 1D prox and VJP",
}


def markdown(report: dict, md_cases: list[str]) -> str:
    m, v = report["machine"], report["versions"]
    gpu = f", GPU {m['gpu']}" if m["gpu"] else ", no GPU"
    lines = [
        f"# TV layer timing table: {m['slug']}",
        "",
        f"{report['date']}, {m['cpu']} ({m['cores']} cores, {m['omp_threads']} host threads, "
        f"torch {m['torch_threads']} threads){gpu}; load average {m['load_average_start'][0]:.2f} "
        f"at start, {m['load_average_end'][0]:.2f} at end; {report['seconds']:.0f} s in all.",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + ".",
        "Produced by `" + " ".join(["python benchmarks/timing_table.py", *report["argv"]]) + "`.",
        "",
        "Forward: y = prox(x, λ) of every fiber (1D) or slice (2D: the seed's layer, 10 "
        "iterations). Backward: the gradients of ⟨g, y⟩ with respect to x and λ (one λ per "
        "fiber or slice), g ~ N(0, 1). Times: median wall clock per call after a warm-up (a GPU "
        "synchronised); Total / fastest: forward + backward over the fastest row's. Errors: max "
        "abs error of y, ∂x and ∂λ against the exact prox and its exact derivatives "
        "(cupytv.reference); for the 10-iteration 2D layers they are the error of stopping after "
        "10 iterations. "
        "vs D10: against the same 10 Dykstra iterations computed with the exact 1D solver and "
        "its exact derivative (rows that run another iteration: -). proxTV rows: the seed's CPU "
        "layer (proxTV per fiber, 1 thread, then the dense per-fiber Jacobian backward); "
        "CVXPYLayers rows: the exact prox as a cone program, its own implicit backward.",
        "",
        f"The seed's table, for comparison: {report['seed_table']}.",
        *md_cases,
    ]
    if report["notes"]:
        lines += ["", "Notes:", *(f"- {n}" for n in report["notes"])]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
