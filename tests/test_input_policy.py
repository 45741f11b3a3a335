"""The input policy (docs/input_policy.md), entry point by entry point.

Every public entry point (array API forwards and VJPs, the exact reference, the torch functions and
modules, the CLI) gets each class of unusual input. A refused input must raise the documented
exception type with a message naming both what was expected and what was received; an accepted
one (views, read-only arrays, zero-size dimensions, half precision, every form of lam, ``out``
aliasing x, non-finite data) must give the result of the same call on a clean contiguous copy, bit
for bit. Mixing CuPy with NumPy, or two GPUs, needs a GPU (``gpu`` tests at the end); torch's
device check is exercised on the CPU with ``meta`` tensors.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import cupytv
from cupytv import reference
from cupytv.__main__ import main

try:
    import torch

    from cupytv.torch import TV1d, TV2d
    from cupytv.torch import prox_tv as t_prox_tv
    from cupytv.torch import prox_tv1d as t_prox_tv1d
    from cupytv.torch import prox_tv2d as t_prox_tv2d
except ImportError:  # torch is an optional extra: the array API's policy is tested without it
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")
ROOT = Path(__file__).resolve().parents[1]

#: The input every array case starts from: (batch, channel, rows, columns). 1D runs along the last
#: axis (36 fibers of 5), 2D over the last two (6 slices of 6 x 5), N-D over axes 1-3 (2 volumes).
SHAPE = (2, 3, 6, 5)
X = np.random.default_rng(20260901).standard_normal(SHAPE)
LAM = 0.25  # exact in every float type, so a lam of another type holds the very same value


def _g(x):
    """An upstream gradient for x: cos(3x) in x's dtype (ones for a non-float x, whose check
    must fire first)."""
    a = np.asarray(x)
    if a.dtype.kind != "f":
        return np.ones(a.shape)
    with np.errstate(invalid="ignore"):  # cos(inf): the non-finite cases' g is NaN there
        return np.asarray(np.cos(3.0 * a), dtype=a.dtype)


@dataclasses.dataclass(frozen=True)
class Entry:
    """A public array entry point, called as ``call(x, lam, **options)``.

    ``n_axes``: how many TV axes (1: ``axis=-1``; 2: ``axes=(-2, -1)``; 3: ``axes=(1, 2, 3)``);
    ``takes``: the option groups it accepts; ``kernel``: False for the exact reference (array-like
    x, float64 inside); ``x_name``: how its messages call the array (``y`` for prox_tv1d_vjp);
    ``lam_range``: whether lam must fit in the compute dtype (the kernels that read its value).
    """

    call: Callable
    n_axes: int
    takes: frozenset = frozenset()
    kernel: bool = True
    vjp: bool = False
    x_name: str = "x"
    lam_range: bool = True

    @property
    def reduced(self) -> tuple[int, ...]:
        """lam's per-fiber (per-slice, per-volume) shape for X."""
        return SHAPE[: 4 - self.n_axes] + (1,) * self.n_axes


ARRAY = {
    "prox_tv1d": Entry(cupytv.prox_tv1d, 1, frozenset({"method", "out"})),
    "prox_tv2d": Entry(cupytv.prox_tv2d, 2, frozenset({"method", "iters", "out"})),
    "prox_tv": Entry(
        lambda x, lam, axes=(1, 2, 3), **kw: cupytv.prox_tv(x, lam, axes, **kw),
        3,
        frozenset({"iters", "out"}),
    ),
    "prox_tv1d_vjp": Entry(
        lambda x, lam, g=None, **kw: cupytv.prox_tv1d_vjp(
            None, lam, _g(x) if g is None else g, y=x, **kw
        ),
        1,
        frozenset({"fuse_atol"}),
        vjp=True,
        x_name="y",
        lam_range=False,  # reads only lam's shape and which weights are 0
    ),
    "prox_tv2d_vjp": Entry(
        lambda x, lam, g=None, **kw: cupytv.prox_tv2d_vjp(x, lam, _g(x) if g is None else g, **kw),
        2,
        frozenset({"method", "iters", "n_iter"}),
        vjp=True,
    ),
    "prox_tv_vjp": Entry(
        lambda x, lam, g=None, axes=(1, 2, 3), **kw: cupytv.prox_tv_vjp(
            x, lam, _g(x) if g is None else g, axes, **kw
        ),
        3,
        frozenset({"iters", "n_iter"}),
        vjp=True,
    ),
    "reference.prox_tv1d": Entry(reference.prox_tv1d, 1, kernel=False),
    "reference.prox_tv2d": Entry(reference.prox_tv2d, 2, kernel=False),
    "reference.prox_tv1d_vjp": Entry(
        lambda x, lam, g=None, axis=-1: reference.prox_tv1d_vjp(
            x, lam, _g(x) if g is None else g, axis
        ),
        1,
        kernel=False,
        vjp=True,
    ),
    "reference.prox_tv2d_vjp": Entry(
        lambda x, lam, g=None, axes=(-2, -1): reference.prox_tv2d_vjp(
            x, lam, _g(x) if g is None else g, axes
        ),
        2,
        kernel=False,
        vjp=True,
    ),
}
FORWARDS_WITH_OUT = [name for name, e in ARRAY.items() if "out" in e.takes]


def assert_refused(call, exc, expected: str, got: str) -> None:
    """``call()`` raises ``exc`` whose message matches the regex ``expected`` and contains
    ``got`` verbatim: what was expected and what was received."""
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    assert re.search(expected, message), f"{expected!r} not in {message!r}"
    assert got in message, f"{got!r} not in {message!r}"


def _outputs(result) -> list:
    """Every array a call returned, as NumPy (forward: [y]; VJP: [gx, glam...])."""
    flat = []
    for r in result if isinstance(result, tuple) else (result,):
        flat.extend(_outputs(r) if isinstance(r, tuple) else [np.asarray(r)])
    return flat


def assert_bit_identical(a, b) -> None:
    outs_a, outs_b = _outputs(a), _outputs(b)
    assert len(outs_a) == len(outs_b)
    for u, v in zip(outs_a, outs_b, strict=True):
        np.testing.assert_array_equal(u, v, strict=True)


# ---------------------------------------------------------------------------------------------
# Array API and reference: refused inputs
# ---------------------------------------------------------------------------------------------


def _case(id_, exc, expected, got, *, x=X, lam=LAM, **options):
    """One refused input: (id, x, lam, options, exception, expected regex, received text)."""
    return (id_, x, lam, options, exc, expected, got)


def _axis_cases(e: Entry) -> list:
    """Bad axes, per number of TV axes."""
    if e.n_axes == 1:
        return [
            _case("axis out of range", ValueError, r"axis: expected an axis in \[-4, 3\]", "got 4",
                  axis=4),
            _case("axis below range", ValueError, "axis: expected an axis in", "got -5", axis=-5),
            _case("axis a float", TypeError, "axis: expected an int", "got float", axis=3.0),
            _case("axis a bool", TypeError, "axis: expected an int", "got bool", axis=True),
        ]  # fmt: skip
    if e.n_axes == 2:
        return [
            _case("axes out of range", ValueError, r"axes\[1\]: expected an axis in \[-4, 3\]",
                  "got 4", axes=(1, 4)),
            _case("axes repeated", ValueError, "axes: expected two distinct axes", "got (2, -2)",
                  axes=(2, -2)),
            _case("axes a float", TypeError, r"axes\[0\]: expected an int", "got float",
                  axes=(2.0, 3)),
            _case("axes three", ValueError, "axes: expected a pair of distinct", "got (1, 2, 3)",
                  axes=(1, 2, 3)),
            _case("axes an int", ValueError, "axes: expected a pair of distinct", "got 1", axes=1),
        ]  # fmt: skip
    return [
        _case("axes out of range", ValueError, r"axes\[2\]: expected an axis in \[-4, 3\]",
              "got 4", axes=(1, 2, 4)),
        _case("axes repeated", ValueError, "axes: expected distinct axes", "got (1, 3, -1)",
              axes=(1, 3, -1)),
        _case("axes a float", TypeError, r"axes\[1\]: expected an int", "got float",
              axes=(1, 2.0, 3)),
        _case("axes empty", ValueError, "axes: expected at least one axis", "got ()", axes=()),
        _case("axes a string", TypeError, "axes: expected an int or a sequence", "got '12'",
              axes="12"),
    ]  # fmt: skip


def _refusals(e: Entry) -> list:
    """Every refused input of ``e``."""
    xn = e.x_name
    if e.n_axes == 2:
        zero_d = (f"{xn}: expected at least 2 dimensions for a 2D operator", "got 0")
    else:
        zero_d = (f"{xn}: expected an array with at least 1 dimension", "got a 0-d array")
    lam_nan = np.full(e.reduced, LAM)
    lam_nan.flat[-1] = np.nan
    dtype_msg = f"{xn}: expected a real floating-point dtype"
    broadcast_msg = r"lam: expected a scalar or an array broadcastable to \("
    cases = [
        _case("x int64", TypeError, dtype_msg, "got int64", x=X.astype(np.int64)),
        _case("x bool", TypeError, dtype_msg, "got bool", x=X > 0),
        _case("x complex", TypeError, dtype_msg, "got complex128", x=X + 1j),
        _case("x big-endian", TypeError, dtype_msg, "got >f8", x=X.astype(">f8")),
        _case("x 0-d", ValueError, *zero_d, x=np.array(1.0)),
        _case("lam negative", ValueError, "lam: expected values >= 0", "got -0.5", lam=-0.5),
        _case("lam nan", ValueError, "lam: expected finite values", "got nan", lam=np.nan),
        _case("lam inf", ValueError, "lam: expected finite values", "got inf", lam=np.inf),
        _case("lam -inf", ValueError, "lam: expected finite values", "got -inf", lam=-np.inf),
        _case("lam array with a nan", ValueError, "lam: expected finite", "got nan", lam=lam_nan),
        _case("lam does not broadcast", ValueError, broadcast_msg, "got shape (4, 1, 1)",
              lam=np.ones((4, 1, 1))),
        _case("lam bool", TypeError, "lam: expected a real number", "got dtype bool", lam=True),
        _case("lam complex", TypeError, "lam: expected a real", "got dtype complex128", lam=0.5j),
        _case("lam None", TypeError, "lam: expected a real number", "got dtype object", lam=None),
        _case("lam a string", TypeError, "lam: expected a real number", "got dtype <U3",
              lam="0.1"),
        *_axis_cases(e),
    ]  # fmt: skip
    if e.n_axes == 2:
        cases.append(_case("lam list of 3", ValueError,
                           r"lam: expected a scalar, an array, or a pair \(lam0, lam1\)",
                           "got a list of length 3", lam=[LAM] * 3))  # fmt: skip
    if e.n_axes == 3:
        cases.append(_case("lam list of 2", ValueError,
                           r"lam: expected .* one weight per axis \(3 for axes \(1, 2, 3\)\)",
                           "got a list of length 2", lam=[LAM] * 2))  # fmt: skip
    if e.kernel:
        not_array = f"{xn}: expected a numpy.ndarray or cupy.ndarray"
        cases.append(_case("x a list", TypeError, not_array, "got builtins.list", x=X.tolist()))
        if torch is not None:
            cases.append(_case("x a torch tensor", TypeError, not_array, "got torch.Tensor",
                               x=torch.zeros(SHAPE, dtype=torch.float64)))  # fmt: skip
    if e.kernel and e.lam_range:
        # lam is read in the compute dtype (float32 for float16/float32 x): 1e39, finite in
        # float64, would round to inf there (N-D: m * lam must fit).
        cases.append(_case("lam beyond float32", ValueError,
                           r"lam: expected values <= [0-9.]+e\+38 \(.*must fit in float32",
                           "got 1e+39", x=X.astype(np.float32), lam=1e39))  # fmt: skip
    if "method" in e.takes:
        cases += [
            _case("method unknown", ValueError, r"method: expected one of \['auto',", "got 'nope'",
                  method="nope"),
            _case("method None", ValueError, "method: expected one of", "got None", method=None),
        ]  # fmt: skip
    if "iters" in e.takes:
        least = 0 if e.n_axes == 2 else 1
        int_msg, tol_msg = "max_iter: expected an int", "tol: expected a finite number >= 0"
        low = rf"{int_msg} in \[0, 2\*\*31 - 2\]" if least == 0 else f"{int_msg} >= 1"
        cases += [
            _case("max_iter negative", ValueError, low, "got -1", max_iter=-1),
            _case("max_iter a float", TypeError, int_msg, "got float", max_iter=2.5),
            _case("max_iter a bool", TypeError, int_msg, "got bool", max_iter=True),
            _case("max_iter beyond int32", ValueError, rf"{int_msg} in \[{least}, 2\*\*31 - 2\]",
                  "got 1099511627776", max_iter=2**40),
            _case("tol negative", ValueError, tol_msg, "got -0.001", tol=-1e-3),
            _case("tol nan", ValueError, tol_msg, "got nan", tol=np.nan),
            _case("tol inf", ValueError, tol_msg, "got inf", tol=np.inf),
            _case("tol a string", TypeError, "tol: expected a real number", "got str", tol="1e-3"),
            _case("tol a bool", TypeError, "tol: expected a real number", "got bool", tol=True),
            _case("tol None", TypeError, "tol: expected a real number", "got NoneType", tol=None),
        ]  # fmt: skip
        if least == 1:
            cases.append(_case("max_iter 0", ValueError, f"{int_msg} >= 1", "got 0", max_iter=0))
    if "out" in e.takes:
        read_only = np.empty(SHAPE)
        read_only.flags.writeable = False
        shape_msg = r"out: expected x's shape and dtype \(2, 3, 6, 5\) float64"
        kind_msg = r"out: expected the same kind of array as x \(numpy.ndarray\)"
        cases += [
            _case("out wrong shape", ValueError, shape_msg, "got (3, 6, 5) float64",
                  out=np.empty(SHAPE[1:])),
            _case("out wrong dtype", ValueError, shape_msg, "got (2, 3, 6, 5) float32",
                  out=np.empty(SHAPE, np.float32)),
            _case("out a list", TypeError, kind_msg, "got builtins.list", out=X.tolist()),
            _case("out non-contiguous", ValueError, "out: expected a C-contiguous array",
                  "got a non-contiguous one", out=np.empty((2, 3, 6, 10))[..., ::2]),
            _case("out read-only", ValueError, "out: expected a writeable array",
                  "got a read-only one", out=read_only),
        ]  # fmt: skip
        if torch is not None:
            cases.append(_case("out a torch tensor", TypeError, kind_msg, "got torch.Tensor",
                               out=torch.empty(SHAPE, dtype=torch.float64)))  # fmt: skip
    if e.vjp:
        of = "y" if xn == "y" else "x"
        float_msg = "g: expected a real floating-point dtype"
        if e.kernel:
            g_msg = rf"g: expected {of}'s shape and dtype \(2, 3, 6, 5\) float64"
            cases += [
                _case("g wrong shape", ValueError, g_msg, "got (3, 6, 5) float64", g=_g(X)[0]),
                _case("g wrong dtype", ValueError, g_msg, "got (2, 3, 6, 5) float32",
                      g=_g(X).astype(np.float32)),
                _case("g a list", TypeError, f"g: expected the same kind of array as {of}",
                      "got builtins.list", g=_g(X).tolist()),
            ]  # fmt: skip
        else:
            cases.append(_case("g wrong shape", ValueError,
                               r"g: expected the shape of x, \(2, 3, 6, 5\)", "got (3, 6, 5)",
                               g=_g(X)[0]))  # fmt: skip
        cases.append(_case("g int64", TypeError, float_msg, "got int64",
                           g=np.ones(SHAPE, np.int64)))  # fmt: skip
    if "n_iter" in e.takes:
        batch = SHAPE[: 4 - e.n_axes]
        cases += [
            _case("n_iter floats", TypeError, "n_iter: expected (an )?integer", "got dtype float64",
                  n_iter=np.ones(batch)),
            _case("n_iter negative", ValueError, "n_iter: expected counts >= 0", "got -1",
                  n_iter=-1),
            _case("n_iter wrong shape", ValueError, "n_iter: expected an", "got shape (7,)",
                  n_iter=np.ones(7, np.int32)),
            _case("n_iter beyond int32", ValueError, r"n_iter: expected counts <= 2\*\*31 - 2",
                  "got 4294967296", n_iter=np.int64(2**32)),
        ]  # fmt: skip
    if "fuse_atol" in e.takes:
        atol_msg = "fuse_atol: expected a finite number >= 0"
        cases += [
            _case("fuse_atol negative", ValueError, atol_msg, "got -1.0", fuse_atol=-1.0),
            _case("fuse_atol nan", ValueError, atol_msg, "got nan", fuse_atol=np.nan),
        ]
    return cases


REFUSALS = [
    pytest.param(name, *case[1:], id=f"{name}-{case[0]}")
    for name, e in ARRAY.items()
    for case in _refusals(e)
]


@pytest.mark.parametrize(("entry", "x", "lam", "options", "exc", "expected", "got"), REFUSALS)
def test_array_api_refuses_bad_input_saying_expected_and_got(
    entry, x, lam, options, exc, expected, got
):
    assert_refused(lambda: ARRAY[entry].call(x, lam, **options), exc, expected, got)


def test_n_iter_beyond_int32_no_longer_wraps_around():
    # Regression: 2**32 + 3 was cast to int32 (3) and the backward silently replayed 3 iterations.
    x = X[0, 0]
    assert_refused(
        lambda: cupytv.prox_tv2d_vjp(x, LAM, _g(x), n_iter=np.int64(2**32 + 3)),
        ValueError,
        r"n_iter: expected counts <= 2\*\*31 - 2",
        "got 4294967299",
    )


# ---------------------------------------------------------------------------------------------
# Array API and reference: accepted inputs give the clean call's result, bit for bit
# ---------------------------------------------------------------------------------------------


def _view(kind: str, a: np.ndarray) -> np.ndarray:
    """A view of ``a``'s values (the broadcast one: of ``a[:1]``'s) laid out as ``kind`` says."""
    if kind == "strided":
        buf = np.zeros((*a.shape[:-2], 2 * a.shape[-2], a.shape[-1]), a.dtype)
        buf[..., ::2, :] = a
        return buf[..., ::2, :]
    if kind == "negative strides":
        return a[::-1, :, ::-1, ::-1].copy()[::-1, :, ::-1, ::-1]
    if kind == "transposed":  # the TV axis (last) is the slowest in memory
        return np.moveaxis(np.ascontiguousarray(np.moveaxis(a, -1, 0)), 0, -1)
    if kind == "broadcast":  # stride 0 along the batch axis, read-only
        return np.broadcast_to(a[:1], a.shape)
    if kind == "read-only":
        out = a.copy()
        out.flags.writeable = False
        return out
    raise AssertionError(kind)


VIEWS = ["strided", "negative strides", "transposed", "broadcast", "read-only"]


@pytest.mark.parametrize("kind", VIEWS)
@pytest.mark.parametrize("entry", ARRAY)
def test_views_and_read_only_arrays_give_the_contiguous_result(entry, kind):
    e = ARRAY[entry]
    lam = 0.1 + 0.4 * np.random.default_rng(1).random(e.reduced)  # a weight per fiber
    x = _view(kind, X)
    assert not x.flags.c_contiguous or not x.flags.writeable
    extra = {"g": _view(kind, _g(X))} if e.vjp else {}
    clean = {k: np.ascontiguousarray(v) for k, v in extra.items()}
    assert_bit_identical(e.call(x, lam, **extra), e.call(np.ascontiguousarray(x), lam, **clean))
    if entry == "prox_tv1d":  # and the exact answer (cheap in 1D)
        np.testing.assert_allclose(e.call(x, lam), reference.prox_tv1d(x, lam), rtol=0, atol=1e-12)


ZERO_SHAPES = [(0, 3, 6, 5), (2, 0, 6, 5), (2, 3, 0, 5), (2, 3, 6, 0)]


@pytest.mark.parametrize("shape", ZERO_SHAPES, ids=str)
@pytest.mark.parametrize("entry", ARRAY)
def test_zero_size_dimensions_give_empty_results(entry, shape):
    e = ARRAY[entry]
    x = np.zeros(shape, np.float32)
    lam = np.full(shape[: 4 - e.n_axes] + (1,) * e.n_axes, LAM)  # a weight per (empty) fiber
    outs = _outputs(e.call(x, lam))
    assert (outs[0].shape, outs[0].dtype) == (shape, np.float32)
    if e.vjp:
        assert (outs[1].shape, outs[1].dtype) == (lam.shape, np.float32)
        assert not np.any(outs[1])  # no fiber contributes: zero
    if "out" in e.takes:
        out = np.empty(shape, np.float32)
        assert e.call(x, lam, out=out) is out


@pytest.mark.parametrize("axes", [(3,), (2, 3), (1, 2, 3)], ids=["1 axis", "2 axes", "3 axes"])
@pytest.mark.parametrize("shape", ZERO_SHAPES, ids=str)
def test_empty_slices_are_solved_exactly(shape, axes):
    # Regression: 2D reported gap NaN / converged False for empty slices (NaN means non-finite
    # input); one and three axes said gap 0 / converged True.
    _, info = cupytv.prox_tv(np.zeros(shape), LAM, axes, return_info=True)
    assert not np.any(info.n_iter)
    assert np.array_equal(info.gap, np.zeros_like(info.gap))
    assert np.all(info.converged)


@pytest.mark.parametrize("entry", ARRAY)
def test_float16_is_computed_in_higher_precision_and_returned_as_float16(entry):
    e = ARRAY[entry]
    x = X.astype(np.float16)
    inner = np.float32 if e.kernel else np.float64  # what the docs say it computes in
    g = {"g": _g(x)} if e.vjp else {}
    got = _outputs(e.call(x, LAM, **g))
    want = _outputs(e.call(x.astype(inner), LAM, **{k: v.astype(inner) for k, v in g.items()}))
    for u, v in zip(got, want, strict=True):
        assert u.dtype == np.float16
        # One float16 rounding of the same value (two roundings for the VJPs' lam gradients).
        np.testing.assert_allclose(u.astype(np.float64), v, rtol=2**-10, atol=2**-14)
    if not e.vjp and e.kernel:  # the forwards cast the float32 result once: exactly that
        np.testing.assert_array_equal(got[0], want[0].astype(np.float16))


def _lam_forms(e: Entry) -> dict:
    forms = {
        "int": 1,  # vs 1.0
        "numpy float32": np.float32(LAM),
        "0-d array": np.array(LAM),
        "per-fiber array": np.full(e.reduced, LAM),
        "float32 array": np.full(e.reduced, LAM, np.float32),
        "int array": np.ones(e.reduced, np.int64),  # vs 1.0
    }
    if e.n_axes == 1:
        forms["nested list"] = np.full(e.reduced, LAM).tolist()
    else:  # a tuple/list holds one weight per axis
        forms["one per axis (tuple)"] = (LAM,) * e.n_axes
        forms["one per axis (list)"] = [LAM] * e.n_axes
    if torch is not None:
        forms["torch tensor"] = torch.tensor(LAM, requires_grad=True)
    return forms


LAM_FORMS = [
    pytest.param(name, form, id=f"{name}-{form}")
    for name, e in ARRAY.items()
    for form in _lam_forms(e)
]


@pytest.mark.parametrize(("entry", "form"), LAM_FORMS)
def test_every_form_of_lam_gives_the_float_result(entry, form):
    e = ARRAY[entry]
    lam = _lam_forms(e)[form]
    plain = 1.0 if form.startswith("int") else LAM
    got, want = _outputs(e.call(X, lam)), _outputs(e.call(X, plain))
    np.testing.assert_array_equal(got[0], want[0], strict=True)  # y, or grad_x
    if e.vjp:  # grad_lam has lam's shape (a tuple for one weight per axis), summing to the same
        per_axis = e.n_axes > 1 and isinstance(lam, tuple | list)
        assert got[1].shape == np.shape(lam[0] if per_axis else lam)
        np.testing.assert_allclose(sum(g.sum() for g in got[1:]), want[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("overlap", ["out is x", "out starts before x", "out starts after x"])
@pytest.mark.parametrize("entry", FORWARDS_WITH_OUT)
def test_out_may_alias_x(entry, overlap, dtype):
    e = ARRAY[entry]
    x0 = X.astype(dtype)
    want = e.call(x0.copy(), LAM)
    if overlap == "out is x":
        x = out = x0.copy()
    else:  # two C-contiguous arrays of X's shape sharing all but 7 elements of one buffer
        buf = np.zeros(X.size + 7, dtype)
        lo, hi = buf[: X.size].reshape(SHAPE), buf[7:].reshape(SHAPE)
        x, out = (hi, lo) if overlap == "out starts before x" else (lo, hi)
        x[...] = x0
    result = e.call(x, LAM, out=out)
    assert result is out
    np.testing.assert_array_equal(out, want, strict=True)


# Where a non-finite sample at X[1, 2, 3, 4] must stay: its fiber, slice or volume.
REGION = {1: (1, 2, 3), 2: (1, 2), 3: (1,)}


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("entry", ARRAY)
def test_non_finite_data_stays_in_its_fiber_slice_or_volume(entry, bad):
    e = ARRAY[entry]
    lam = 0.1 + 0.4 * np.random.default_rng(2).random(e.reduced)  # a weight per fiber
    x = X.copy()
    x[1, 2, 3, 4] = bad
    clean = X.copy()
    clean[1, 2, 3, 4] = 0.0
    region = REGION[e.n_axes]
    got, want = _outputs(e.call(x, lam)), _outputs(e.call(clean, lam))
    outside = np.ones(SHAPE, bool)
    outside[region] = False
    assert np.all(np.isnan(got[0][region])), "the fiber/slice/volume holding it is all NaN"
    np.testing.assert_array_equal(got[0][outside], want[0][outside], strict=True)
    if e.vjp:  # and its weight's gradient is NaN, the other weights' exact
        glam, glam_clean = got[1], want[1]
        assert np.isnan(glam[region]).all()
        keep = np.ones(e.reduced, bool)
        keep[region] = False
        np.testing.assert_array_equal(glam[keep], glam_clean[keep], strict=True)


def test_the_reference_takes_array_likes():
    fiber = X[0, 0, 0]
    np.testing.assert_array_equal(
        reference.prox_tv1d(fiber.tolist(), LAM), reference.prox_tv1d(fiber, LAM)
    )
    assert_refused(lambda: reference.prox_tv1d([1, 2, 3], LAM), TypeError,
                   "x: expected a real floating-point dtype", "got int64")  # fmt: skip


@needs_torch
def test_lam_from_another_framework_is_copied_to_the_host():
    # NumPy x with a torch lam (CPU here; a CUDA one too): read on the host, as any lam.
    lam = torch.full((2, 3, 6, 1), LAM, dtype=torch.float64)
    np.testing.assert_array_equal(cupytv.prox_tv1d(X, lam), cupytv.prox_tv1d(X, LAM), strict=True)


# ---------------------------------------------------------------------------------------------
# torch functions
# ---------------------------------------------------------------------------------------------

TORCH_FUNCTIONS = ["prox_tv1d", "prox_tv2d", "prox_tv"]


def _tfun(name: str):
    """(call(x, lam, **kw), number of TV axes) of a torch function, with X's axes."""
    return {
        "prox_tv1d": (lambda x, lam, **kw: t_prox_tv1d(x, lam, **kw), 1),
        "prox_tv2d": (lambda x, lam, **kw: t_prox_tv2d(x, lam, **kw), 2),
        "prox_tv": (lambda x, lam, axes=(1, 2, 3), **kw: t_prox_tv(x, lam, axes, **kw), 3),
    }[name]


def _torch_refusals(name: str) -> list:
    _, n_axes = _tfun(name)
    tx = torch.from_numpy(X)
    meta = torch.tensor(LAM, dtype=torch.float64, device="meta")
    cpu_lam = torch.tensor(LAM, dtype=torch.float64)
    # prox_tv2d hands a single lam to the array API as the pair (lam, lam): it says lam[0].
    lam_name = r"lam(\[0\])?"
    if n_axes == 2:
        zero_d = ("x: expected at least 2 dimensions", "got 0")
    else:
        zero_d = ("x: expected an array with at least 1 dimension", "got a 0-d array")
    real = "lam: expected a real number, a real array or a tensor"
    tensor_msg = r"x: expected a floating-point tensor \(float16, bfloat16, float32 or float64\)"
    cases = [
        _case("x a NumPy array", TypeError, "x: expected a torch.Tensor", "got numpy.ndarray"),
        _case("x int64", TypeError, tensor_msg, "got torch.int64", x=tx.long()),
        _case("x bool", TypeError, tensor_msg, "got torch.bool", x=tx > 0),
        _case("x complex", TypeError, tensor_msg, "got torch.complex128",
              x=tx.to(torch.complex128)),
        _case("x 0-d", ValueError, *zero_d, x=torch.tensor(1.0)),
        _case("lam negative", ValueError, f"{lam_name}: expected values >= 0", "got -0.5",
              x=tx, lam=-0.5),
        _case("lam nan", ValueError, f"{lam_name}: expected finite values", "got nan",
              x=tx, lam=float("nan")),
        _case("lam inf", ValueError, f"{lam_name}: expected finite values", "got inf",
              x=tx, lam=float("inf")),
        _case("lam does not broadcast", ValueError,
              f"{lam_name}: expected a scalar or an array broadcastable", "got shape (4, 1, 1)",
              x=tx, lam=torch.ones(4, 1, 1, dtype=torch.float64)),
        _case("lam bool", TypeError, real, "got bool", x=tx, lam=True),
        _case("lam complex", TypeError, real, "got complex", x=tx, lam=0.5j),
        _case("lam None", TypeError, real, "got NoneType", x=tx, lam=None),
        _case("lam a string", TypeError, real, "got str", x=tx, lam="0.1"),
        _case("lam bool tensor", TypeError, "lam: expected a real-valued tensor",
              "got torch.bool", x=tx, lam=torch.tensor(True)),
        _case("lam complex tensor", TypeError, "lam: expected a real-valued tensor",
              "got torch.complex64", x=tx, lam=torch.tensor(0.5j)),
        _case("lam on another device", ValueError, "lam: expected a tensor on x's device cpu",
              "got one on meta", x=tx, lam=meta),
        _case("x on another device", ValueError, "lam: expected a tensor on x's device meta",
              "got one on cpu", x=tx.to("meta"), lam=cpu_lam),
    ]  # fmt: skip
    if n_axes == 1:
        return [
            *cases,
            _case("axis out of range", ValueError, r"axis: expected an axis in \[-4, 3\]",
                  "got 4", x=tx, axis=4),
            _case("axis a float", TypeError, "axis: expected an int", "got float", x=tx,
                  axis=3.0),
            _case("method unknown", ValueError, "method: expected one of", "got 'nope'", x=tx,
                  method="nope"),
            _case("method None", ValueError, "method: expected one of", "got None", x=tx,
                  method=None),
        ]  # fmt: skip
    pair = n_axes == 2
    cases += [
        _case("axes out of range", ValueError, r"expected an axis in \[-4, 3\]", "got 4", x=tx,
              axes=(1, 4) if pair else (1, 2, 4)),
        _case("axes repeated", ValueError, "axes: expected .*distinct axes", "got (", x=tx,
              axes=(2, -2) if pair else (1, 3, -1)),
        _case("axes a float", TypeError, "expected an int", "got float", x=tx,
              axes=(2.5, 3) if pair else (1, 2.5, 3)),
        _case("max_iter a float", TypeError, "max_iter: expected an int", "got float", x=tx,
              max_iter=2.5),
        _case("max_iter a bool", TypeError, "max_iter: expected an int", "got bool", x=tx,
              max_iter=True),
        _case("max_iter negative", ValueError, "max_iter: expected an int (in|>=)", "got -1",
              x=tx, max_iter=-1),
        _case("tol a string", TypeError, "tol: expected a real number", "got str", x=tx,
              tol="1e-3"),
        _case("tol a bool", TypeError, "tol: expected a real number", "got bool", x=tx,
              tol=True),
        _case("tol nan", ValueError, "tol: expected a finite number >= 0", "got nan", x=tx,
              tol=float("nan")),
        _case("lam list of the wrong length", ValueError, "lam: expected",
              "got 3 items" if pair else "got a list of length 2", x=tx,
              lam=[LAM] * (3 if pair else 2)),
    ]  # fmt: skip
    if pair:
        cases.append(_case("method unknown", ValueError, "method: expected one of",
                           "got 'nope'", x=tx, method="nope"))  # fmt: skip
    return cases


TORCH_REFUSALS = (
    [
        pytest.param(name, *case[1:], id=f"torch.{name}-{case[0]}")
        for name in TORCH_FUNCTIONS
        for case in _torch_refusals(name)
    ]
    if torch is not None
    else []
)


@needs_torch
@pytest.mark.parametrize(("name", "x", "lam", "options", "exc", "expected", "got"), TORCH_REFUSALS)
def test_torch_functions_refuse_bad_input_saying_expected_and_got(
    name, x, lam, options, exc, expected, got
):
    call, _ = _tfun(name)
    assert_refused(lambda: call(x, lam, **options), exc, expected, got)


def _forward_backward(call, x, lam):
    """(y, grad x, grad lam) of the loss sum(c * y), with fixed weights c_k = cos(3 k)."""
    x = x.detach().requires_grad_()
    lam = lam.detach().requires_grad_() if isinstance(lam, torch.Tensor) else lam
    y = call(x, lam)
    weights = torch.cos(3 * torch.arange(y.numel(), dtype=y.dtype)).reshape(y.shape)
    (y * weights).sum().backward()
    grad_lam = lam.grad if isinstance(lam, torch.Tensor) else None
    return y.detach(), x.grad, grad_lam


@needs_torch
@pytest.mark.parametrize("kind", ["strided", "transposed", "expanded"])
@pytest.mark.parametrize("name", TORCH_FUNCTIONS)
def test_torch_views_give_the_contiguous_result_forward_and_backward(name, kind):
    call, _ = _tfun(name)
    base = torch.from_numpy(X)
    if kind == "strided":
        x = torch.zeros(2, 3, 12, 5, dtype=torch.float64)[:, :, ::2]
        x[...] = base
    elif kind == "transposed":
        x = base.permute(3, 2, 1, 0).contiguous().permute(3, 2, 1, 0)
    else:  # stride 0 along the batch
        x = base[:1].expand(SHAPE)
    assert not x.is_contiguous()
    lam = torch.tensor(LAM, dtype=torch.float64)
    got = _forward_backward(call, x, lam)
    want = _forward_backward(call, x.contiguous(), lam)
    for u, v in zip(got, want, strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=0)


@needs_torch
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", TORCH_FUNCTIONS)
def test_torch_half_types_are_computed_in_float32(name, dtype):
    call, _ = _tfun(name)
    x = torch.from_numpy(X).to(getattr(torch, dtype))
    y = call(x, LAM)
    assert y.dtype == x.dtype
    torch.testing.assert_close(y, call(x.float(), LAM).to(x.dtype), rtol=0, atol=0)


@needs_torch
@pytest.mark.parametrize("name", TORCH_FUNCTIONS)
def test_torch_zero_size_forward_and_backward(name):
    call, _ = _tfun(name)
    x = torch.zeros(2, 3, 0, 5, dtype=torch.float64, requires_grad=True)
    lam = torch.tensor(LAM, dtype=torch.float64, requires_grad=True)
    y = call(x, lam)
    assert y.shape == x.shape
    assert y.dtype == x.dtype
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert lam.grad.shape == ()
    assert float(lam.grad) == 0.0


@needs_torch
@pytest.mark.parametrize("name", TORCH_FUNCTIONS)
def test_torch_meta_tensors_give_a_shape_only_result(name):
    call, _ = _tfun(name)
    y = call(torch.empty(SHAPE, device="meta"), LAM)
    assert y.device.type == "meta"
    assert y.shape == SHAPE
    assert y.dtype == torch.float32


@needs_torch
@pytest.mark.parametrize("name", TORCH_FUNCTIONS)
def test_torch_lam_forms_give_the_float_result(name):
    call, n_axes = _tfun(name)
    x = torch.from_numpy(X)
    want = call(x, LAM)
    reduced = SHAPE[: 4 - n_axes] + (1,) * n_axes
    forms = [
        np.float64(LAM),
        np.full(reduced, LAM),
        torch.tensor(LAM, dtype=torch.float32),  # another float dtype: converted
        torch.full(reduced, LAM, dtype=torch.float64, requires_grad=True),
    ]
    for lam in forms:
        torch.testing.assert_close(call(x, lam), want, rtol=0, atol=0)
    ones = call(x, 1.0)
    for lam in (1, np.int64(1), torch.ones((), dtype=torch.int64)):
        torch.testing.assert_close(call(x, lam), ones, rtol=0, atol=0)


@needs_torch
def test_torch_lam_requiring_grad_gets_the_array_api_gradient():
    x = torch.from_numpy(X)
    lam = torch.full((2, 3, 6, 1), LAM, dtype=torch.float64)
    y, _, grad_lam = _forward_backward(lambda a, b: t_prox_tv1d(a, b), x, lam)
    weights = torch.cos(3 * torch.arange(y.numel(), dtype=y.dtype)).reshape(y.shape)
    _, want = cupytv.prox_tv1d_vjp(None, lam.numpy(), weights.numpy(), y=y.numpy())
    assert grad_lam.shape == lam.shape
    np.testing.assert_array_equal(grad_lam.numpy(), want)


@needs_torch
def test_torch_non_finite_data_stays_in_its_slice():
    x = torch.from_numpy(X.copy())
    x[1, 2, 3, 4] = float("nan")
    clean = torch.from_numpy(X)
    y, want = t_prox_tv2d(x, LAM), t_prox_tv2d(clean, LAM)
    assert torch.isnan(y[1, 2]).all()
    outside = torch.ones(SHAPE, dtype=torch.bool)
    outside[1, 2] = False
    torch.testing.assert_close(y[outside], want[outside], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# torch modules
# ---------------------------------------------------------------------------------------------

FINITE = "lam: expected a finite value"
MODULE_REFUSALS = [
    ({"lam": -1.0, "learnable": False}, ValueError, f"{FINITE} >= 0", "got -1.0"),
    ({"lam": float("nan")}, ValueError, f"{FINITE} > 0", "got nan"),
    ({"lam": float("inf"), "learnable": False}, ValueError, FINITE, "got inf"),
    ({"lam": 0.0}, ValueError, rf"{FINITE} > 0 \(softplus never reaches 0\)", "got 0.0"),
    ({"lam": True}, TypeError, "lam: expected a real number", "got bool True"),
    ({"lam": "0.1"}, TypeError, "lam: expected a real number", "got str '0.1'"),
    ({"lam": None}, TypeError, "lam: expected a real number", "got NoneType"),
    ({"lam": [0.1]}, TypeError, "lam: expected a real number", "got list"),
    ({"mode": "blur"}, ValueError, r"mode: expected one of \['smooth', 'sharp'\]", "got 'blur'"),
    ({"num_channels": 0}, ValueError, "num_channels: expected a positive int or None", "got 0"),
    ({"num_channels": True}, ValueError, "num_channels: expected a positive int", "got True"),
    ({"num_channels": 2.0}, ValueError, "num_channels: expected a positive int", "got 2.0"),
    ({"channel_axis": 1.0}, TypeError, "channel_axis: expected an int", "got float"),
]


@needs_torch
@pytest.mark.parametrize("layer", ["TV1d", "TV2d"])
@pytest.mark.parametrize(("options", "exc", "expected", "got"), MODULE_REFUSALS)
def test_modules_refuse_bad_arguments_when_built(layer, options, exc, expected, got):
    cls = {"TV1d": TV1d, "TV2d": TV2d}[layer]
    assert_refused(lambda: cls(**options), exc, expected, got)


@needs_torch
def test_tv2d_axes_must_be_a_pair_when_built():
    assert_refused(lambda: TV2d(0.1, axes=1), ValueError, "axes: expected a pair", "got 1")


@needs_torch
@pytest.mark.parametrize("layer", ["TV1d", "TV2d"])
def test_modules_refuse_bad_input_when_called(layer):
    cls = {"TV1d": TV1d, "TV2d": TV2d}[layer]
    x = torch.from_numpy(X).float()
    assert_refused(lambda: cls(0.1, num_channels=4)(x), ValueError,
                   "x: expected 4 channels along axis 1", "got shape (2, 3, 6, 5)")  # fmt: skip
    # Regression: channel_axis was taken modulo x.dim(), so 5 silently meant axis 1.
    assert_refused(lambda: cls(0.1, num_channels=3, channel_axis=5)(x), ValueError,
                   r"channel_axis: expected an axis in \[-4, 3\]", "got 5")  # fmt: skip
    # Regression: a 0-d x divided by zero (ZeroDivisionError).
    assert_refused(lambda: cls(0.1, num_channels=3)(torch.tensor(1.0)), ValueError,
                   "x: expected a tensor with a channel axis", "got a 0-d tensor")  # fmt: skip
    assert_refused(lambda: cls(0.1, method="nope")(x), ValueError, "method: expected one of",
                   "got 'nope'")  # fmt: skip
    assert_refused(lambda: cls(0.1)(x.long()), TypeError, "x: expected a floating-point tensor",
                   "got torch.int64")  # fmt: skip


@needs_torch
@pytest.mark.parametrize("layer", ["TV1d", "TV2d"])
def test_modules_accept_numpy_ints_and_scalars_and_views(layer):
    cls = {"TV1d": TV1d, "TV2d": TV2d}[layer]
    x = torch.from_numpy(X).float()
    reference_layer = cls(0.25, num_channels=3)
    want = reference_layer(x)
    for lam in (np.float64(0.25), torch.tensor(0.25)):
        torch.testing.assert_close(cls(lam, num_channels=np.int64(3))(x), want, rtol=0, atol=0)
    view = x.permute(3, 2, 1, 0).contiguous().permute(3, 2, 1, 0)
    torch.testing.assert_close(reference_layer(view), want, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected", "got"),
    [
        (["--lam", "-1"], "demo: expected finite weights >= 0", "--lam (-1.0,)"),
        (["--lam", "nan"], "demo: expected finite weights >= 0", "--lam (nan,)"),
        (["--lam-1d", "-2"], "demo: expected finite weights >= 0", "and -2.0"),
        (["--sigma", "-1"], "demo: expected --sigma >= 0", "got -1.0"),
        (["--image", "no/such.png"], "demo: --image expects an image file", "got 'no/such.png'"),
    ],
)
def test_cli_demo_refuses_bad_values_before_any_work(tmp_path, argv, expected, got):
    pytest.importorskip("matplotlib")
    with pytest.raises(SystemExit) as info:
        main(["demo", "--out", str(tmp_path), *argv])
    message = str(info.value.code)
    assert expected in message, message
    assert got in message, message
    assert not list(tmp_path.iterdir()), "nothing written"


@pytest.mark.parametrize(
    ("argv", "expected", "got"),
    [
        (["demo", "--max-side", "0"], "argument --max-side: expected a positive int", "got 0"),
        (["demo", "--max-side", "x"], "argument --max-side: expected a positive int", "got 'x'"),
        (["demo", "--lam", "abc"], "argument --lam: invalid float value", "'abc'"),
        (["demo", "--out", "FILE"], "argument --out: expected a folder", "(an existing file)"),
        (["bench", "--out", "FILE"], "argument --out: expected a folder", "(an existing file)"),
        (["check", "--backend", "nope"], "argument --backend: invalid choice", "'nope'"),
        (["nope"], "argument command: invalid choice", "'nope'"),
        ([], "the following arguments are required: command", "usage: cupytv"),
    ],
)
def test_cli_argument_errors_exit_2_with_a_message(
    tmp_path, monkeypatch, capsys, argv, expected, got
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("not a folder")
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert got in err, err


def test_cli_bench_refuses_an_unknown_suite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["bench", "--suite", "nope", "--out", str(tmp_path / "out")])
    message = str(info.value.code)
    assert "bench: expected suites among [" in message, message
    assert "got ['nope']" in message, message
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(cupytv.usable_cupy() is not None, reason="a GPU is usable here")
def test_cli_check_cuda_without_a_gpu_says_why():
    with pytest.raises(SystemExit) as info:
        main(["check", "--backend", "cuda"])
    assert "check: no usable CUDA backend (" in str(info.value.code)


def test_the_policy_names_every_entry_point():
    text = (ROOT / "docs" / "input_policy.md").read_text(encoding="utf-8")
    names = [*ARRAY, "TV1d", "TV2d", "demo", "check", "bench"]
    names += [f"cupytv.torch.{n}" for n in TORCH_FUNCTIONS]
    missing = [n for n in names if f"`{n}" not in text and f"{n}`" not in text]
    assert not missing, missing


# ---------------------------------------------------------------------------------------------
# Arrays on different devices (a GPU)
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("entry", FORWARDS_WITH_OUT)
def test_numpy_and_cupy_do_not_mix_in_out(entry):
    import cupy

    e = ARRAY[entry]
    assert_refused(lambda: e.call(cupy.asarray(X), LAM, out=np.empty(SHAPE)), TypeError,
                   r"out: expected the same kind of array as x \(cupy.ndarray\)",
                   "got numpy.ndarray")  # fmt: skip
    assert_refused(lambda: e.call(X, LAM, out=cupy.empty(SHAPE)), TypeError,
                   r"out: expected the same kind of array as x \(numpy.ndarray\)",
                   "got cupy.ndarray")  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("entry", ["prox_tv1d_vjp", "prox_tv2d_vjp", "prox_tv_vjp"])
def test_numpy_and_cupy_do_not_mix_in_g(entry):
    import cupy

    e = ARRAY[entry]
    assert_refused(lambda: e.call(cupy.asarray(X), LAM, g=_g(X)), TypeError,
                   r"g: expected the same kind of array as [xy] \(cupy.ndarray\)",
                   "got numpy.ndarray")  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("entry", ["prox_tv1d", "prox_tv2d", "prox_tv", "prox_tv2d_vjp"])
def test_lam_of_the_other_kind_is_accepted(entry):
    import cupy

    e = ARRAY[entry]
    lam = 0.1 + 0.4 * np.random.default_rng(3).random(e.reduced)
    xd = cupy.asarray(X)
    g, gd = ({"g": _g(X)}, {"g": cupy.asarray(_g(X))}) if e.vjp else ({}, {})
    want = [cupy.asnumpy(a) for a in _cupy_outputs(e.call(xd, cupy.asarray(lam), **gd))]
    got = [cupy.asnumpy(a) for a in _cupy_outputs(e.call(xd, lam, **gd))]  # NumPy lam, CuPy x
    for u, v in zip(got, want, strict=True):
        np.testing.assert_array_equal(u, v)
    host = _outputs(e.call(X, cupy.asarray(lam), **g))  # CuPy lam, NumPy x: read on the host
    for u, v in zip(host, _outputs(e.call(X, lam, **g)), strict=True):
        np.testing.assert_array_equal(u, v)


def _cupy_outputs(result) -> list:
    return list(result) if isinstance(result, tuple) else [result]


@pytest.mark.gpu
def test_arrays_on_two_gpus_do_not_mix():
    import cupy

    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    with cupy.cuda.Device(0):
        x = cupy.asarray(X)
    with cupy.cuda.Device(1):
        out = cupy.empty(SHAPE)
        g = cupy.asarray(_g(X))
    assert_refused(lambda: cupytv.prox_tv1d(x, LAM, out=out), ValueError,
                   "out: expected an array on x's device 0", "got device 1")  # fmt: skip
    assert_refused(lambda: cupytv.prox_tv1d_vjp(None, LAM, g, y=x), ValueError,
                   "g: expected an array on y's device 0", "got device 1")  # fmt: skip


@pytest.mark.gpu
@needs_torch
@pytest.mark.parametrize("name", TORCH_FUNCTIONS)
def test_torch_cpu_and_cuda_do_not_mix(name):
    call, _ = _tfun(name)
    x = torch.from_numpy(X)
    cpu_lam = torch.tensor(LAM, dtype=torch.float64)
    assert_refused(lambda: call(x.cuda(), cpu_lam), ValueError,
                   "lam: expected a tensor on x's device cuda:0", "got one on cpu")  # fmt: skip
    assert_refused(lambda: call(x, cpu_lam.cuda()), ValueError,
                   "lam: expected a tensor on x's device cpu", "got one on cuda:0")  # fmt: skip


@pytest.mark.parametrize("entries", [1, 4, 64, 65, 300])  # Python-float path up to 64, NumPy after
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.nan, "lam: expected finite values, got nan"),
        (np.inf, "lam: expected finite values, got inf"),
        (-np.inf, "lam: expected finite values, got -inf"),
        (-0.5, "lam: expected values >= 0, got -0.5"),
        (-0.0, None),  # accepted: -0.0 >= 0
        (1e39, "lam: expected values <= 3.403e+38"),
        (3.4e38, None),  # accepted: finite in float32
    ],
)
def test_an_array_weight_with_one_bad_entry_is_refused_at_any_size(entries, bad, message):
    """The weight check's two paths (Python floats for small arrays, NumPy reductions above)
    refuse the same values with the same messages, wherever the bad entry is."""
    x = np.zeros((2, entries, 5), np.float32)
    for where in {0, entries // 2, entries - 1}:
        lam = np.full((1, entries, 1), 0.25)
        lam[0, where, 0] = bad
        if message is None:
            assert cupytv.prox_tv1d(x, lam).shape == x.shape
            continue
        with pytest.raises(ValueError, match=re.escape(message)):
            cupytv.prox_tv1d(x, lam)
