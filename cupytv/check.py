"""``python -m cupytv check``: every operator on every backend against the exact reference.

For users who want to trust a GPU (or a new machine) before training on it: each case runs one
operator (the 1D methods, the 2D methods, three axes, and the VJPs) on random and adversarial
inputs (:mod:`cupytv.testing`) in float32 and float64, compares with :mod:`cupytv.reference`, and
prints one table row per case with its error, tolerance, verdict and time. The exit status is 1
when any case fails.

Tolerances (max abs error, relative to 1 + max|x|): exact 1D solvers within the rounding of
their sums (``EXACT_TOL``); iterative 2D solves run to a tight certified gap, whose
strong-convexity bound sqrt(2 gap F) is far below ``ITERATIVE_TOL``; their VJPs run long enough
for the segment structure to settle (``CONVERGED_ITERS``, as in tests/test_tv2d.py).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import reference, testing
from ._device import gpu_unavailable_reason, usable_cupy
from ._validation import host_array

#: Per dtype: exact solvers, iterative solvers and gradients (relative to 1 + max|x|). Measured
#: on the host (2026-11-26): float64 at most 1e-16 / 3e-11 / 1e-16, float32 5e-8 / 2e-6 / 7e-8;
#: the tolerances leave 50x or more.
EXACT_TOL = {np.float32: 1e-5, np.float64: 1e-10}
ITERATIVE_TOL = {np.float32: 1e-4, np.float64: 1e-6}
GRADIENT_TOL = {np.float32: 1e-4, np.float64: 1e-7}
#: Stopping tolerance of the 2D and N-D forwards checked here, and the VJPs' replayed iterations.
#: float32 cannot certify gaps much below eps(float32) * sum|z| (|x| + |z|) / F (the rounding
#: slack of the certificate, ~1e-5 on small images), so its solves run to their MAX_ITER cap.
CHECK_GAP = {np.float32: 1e-7, np.float64: 1e-12}
CONVERGED_ITERS = 2000
MAX_ITER = {np.float32: 2000, np.float64: 20000}
SEED = 0


@dataclass
class Case:
    operator: str
    dtype: type
    shape: tuple[int, ...]
    run: Callable  # (xp, x) -> (error, tolerance)


@dataclass
class Row:
    operator: str
    backend: str
    dtype: str
    shape: str
    abs_err: float
    rel_err: float
    tol: float
    ok: bool
    seconds: float


def _err(got, want, x) -> tuple[float, float]:
    got, want = host_array(got).astype(np.float64), np.asarray(want, np.float64)
    abs_err = float(np.max(np.abs(got - want), initial=0.0))
    return abs_err, abs_err / (1.0 + float(np.max(np.abs(x), initial=0.0)))


def _inputs_1d(n: int, rng) -> np.ndarray:
    signals = testing.signals_1d(n, rng)
    return np.stack([signals[k] for k in sorted(signals)])  # one fiber per family


def _inputs_2d(h: int, w: int, rng) -> np.ndarray:
    images = testing.images_2d(h, w, rng)
    return np.stack([images[k] for k in sorted(images)])


def cases(quick: bool) -> list[Case]:
    """Every check: the operators, each dtype, random and adversarial inputs."""
    import cupytv

    rng = np.random.default_rng(SEED)
    n1, (h, w), vol = (40, (12, 10), (3, 4, 5)) if quick else (200, (33, 20), (4, 5, 6))
    x1 = _inputs_1d(n1, rng)
    x2 = _inputs_2d(h, w, rng)
    x3 = rng.standard_normal((2, 1, *vol[1:]))  # a singleton axis: the 3-axis prox is 2D there
    g1 = rng.standard_normal(x1.shape)
    g2 = rng.standard_normal(x2.shape)
    lam1, lam2 = 0.3, (0.2, 0.4)
    ref1 = reference.prox_tv1d(x1, lam1)
    ref2 = reference.prox_tv2d(x2, lam2)
    ref1_vjp = reference.prox_tv1d_vjp(x1, lam1, g1)
    ref2_vjp = reference.prox_tv2d_vjp(x2, lam2, g2)
    g3 = rng.standard_normal(x3.shape)
    ref3 = np.stack([reference.prox_tv2d(v[0], lam2)[None] for v in x3])
    ref3_vjp = np.stack(
        [reference.prox_tv2d_vjp(v[0], lam2, h[0])[0][None] for v, h in zip(x3, g3, strict=True)]
    )
    out = []
    for dtype in (np.float64, np.float32):

        def to(xp, a, dtype=dtype):
            return xp.asarray(np.asarray(a, dtype=dtype))

        for method in ("condat", "taut_string", "pn"):

            def run(xp, method=method, dtype=dtype, to=to):
                y = cupytv.prox_tv1d(to(xp, x1), lam1, method=method)
                return _err(y, ref1, x1), EXACT_TOL[dtype]

            out.append(Case(f"prox_tv1d {method}", dtype, x1.shape, run))

        def run_vjp1(xp, dtype=dtype, to=to):
            y = cupytv.prox_tv1d(to(xp, x1), lam1)
            gx, _ = cupytv.prox_tv1d_vjp(None, lam1, to(xp, g1), y=y)
            return _err(gx, ref1_vjp[0], g1), GRADIENT_TOL[dtype]

        out.append(Case("prox_tv1d_vjp", dtype, x1.shape, run_vjp1))
        for method in ("accelerated", "dykstra"):

            def run2(xp, method=method, dtype=dtype, to=to):
                y = cupytv.prox_tv2d(
                    to(xp, x2), lam2, tol=CHECK_GAP[dtype], max_iter=MAX_ITER[dtype], method=method
                )
                return _err(y, ref2, x2), ITERATIVE_TOL[dtype]

            def run2_vjp(xp, method=method, dtype=dtype, to=to):
                gx, _ = cupytv.prox_tv2d_vjp(
                    to(xp, x2), lam2, to(xp, g2), n_iter=CONVERGED_ITERS, method=method
                )
                return _err(gx, ref2_vjp[0], g2), GRADIENT_TOL[dtype]

            out.append(Case(f"prox_tv2d {method}", dtype, x2.shape, run2))
            out.append(Case(f"prox_tv2d_vjp {method}", dtype, x2.shape, run2_vjp))

        def run3(xp, dtype=dtype, to=to):
            y = cupytv.prox_tv(
                to(xp, x3),
                (0.7, *lam2),
                axes=(1, 2, 3),
                tol=CHECK_GAP[dtype],
                max_iter=MAX_ITER[dtype],
            )
            return _err(y, ref3, x3), ITERATIVE_TOL[dtype]

        def run3_vjp(xp, dtype=dtype, to=to):
            gx, _ = cupytv.prox_tv_vjp(
                to(xp, x3), (0.7, *lam2), to(xp, g3), axes=(1, 2, 3), n_iter=CONVERGED_ITERS
            )
            return _err(gx, ref3_vjp, g3), GRADIENT_TOL[dtype]

        out.append(Case("prox_tv 3 axes", dtype, x3.shape, run3))
        out.append(Case("prox_tv_vjp 3 axes", dtype, x3.shape, run3_vjp))
    return out


def backends(choice: str) -> list[tuple[str, object]]:
    """(name, array module) for ``host``, ``cuda`` or ``all`` (cuda only where CuPy can run)."""
    chosen = [("host", np)] if choice in ("host", "all") else []
    if choice in ("cuda", "all"):
        cupy, reason = usable_cupy(), gpu_unavailable_reason()
        if cupy is not None:
            chosen.append(("cuda", cupy))
        elif choice == "cuda":
            raise SystemExit(f"check: no usable CUDA backend ({reason})")
        else:
            print(f"note: cuda backend skipped ({reason})", file=sys.stderr)
    return chosen


def run(backend: str = "host", quick: bool = False, stream=None) -> list[Row]:
    """Run every case on the chosen backends, print the table, return the rows."""
    stream = stream or sys.stdout
    todo = [(name, xp, case) for name, xp in backends(backend) for case in cases(quick)]
    rows = []
    tty = sys.stderr.isatty()  # a progress line only where someone watches it
    for i, (name, xp, case) in enumerate(todo, 1):
        if tty:
            progress = f"[{i}/{len(todo)}] {case.operator} {name} {np.dtype(case.dtype).name}"
            print(f"\r{progress:<70}", end="", file=sys.stderr, flush=True)
        start = time.perf_counter()
        (abs_err, rel_err), tol = case.run(xp)
        seconds = time.perf_counter() - start
        ok = bool(rel_err <= tol)  # NaN fails
        shape = "x".join(map(str, case.shape))
        dtype = np.dtype(case.dtype).name
        rows.append(Row(case.operator, name, dtype, shape, abs_err, rel_err, tol, ok, seconds))
    if tty:
        print("\r" + " " * 70 + "\r", end="", file=sys.stderr)
    header = (
        f"{'operator':<26} {'backend':<7} {'dtype':<7} {'shape':<10} {'abs err':>9} "
        f"{'rel err':>9} {'rel tol':>8} {'result':<6} {'time s':>7}"
    )
    print(header, file=stream)
    for r in rows:
        print(
            f"{r.operator:<26} {r.backend:<7} {r.dtype:<7} {r.shape:<10} {r.abs_err:>9.2e} "
            f"{r.rel_err:>9.2e} {r.tol:>8.0e} {'pass' if r.ok else 'FAIL':<6} {r.seconds:>7.2f}",
            file=stream,
        )
    # Said once under the table: a row reading "abs err 3.7e-05 ... tol 1e-05 pass" looked wrong.
    print(
        "abs err: max |result - reference|; rel err: abs err / (1 + max|x|), the error a row "
        "passes on when it is <= rel tol",
        file=stream,
    )
    failed = sum(not r.ok for r in rows)
    print(f"{len(rows) - failed} passed, {failed} failed", file=stream)
    return rows
