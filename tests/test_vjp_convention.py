"""One VJP convention: every ``*_vjp`` takes ``(x, lam, g, axes, ...)``, the reference's order.

The 1D backward needs only the forward's output, so ``y=`` is its explicit fast path; a call in
the order used before 0.2, ``(g, x_or_y, lam)``, is recognised and still works for this release
with a DeprecationWarning (before, passing x where y was expected gave a gradient 2.79 off, with
no warning).
"""

import numpy as np
import pytest

import cupytv
from cupytv import reference

RNG = np.random.default_rng(16)
X1 = np.cumsum(RNG.standard_normal((4, 30)), axis=1)
G1 = RNG.standard_normal(X1.shape)
X2 = RNG.standard_normal((2, 9, 11))
G2 = RNG.standard_normal(X2.shape)
X3 = RNG.standard_normal((2, 5, 6, 7))
G3 = RNG.standard_normal(X3.shape)
LAM = 0.7
# Per-fiber weights: the shape the old order would have swapped with g.
LAM_FIBER = np.linspace(0.2, 1.5, 4).reshape(4, 1)


@pytest.mark.parametrize("lam", [LAM, LAM_FIBER], ids=["scalar", "per-fiber"])
def test_tv1d_vjp_from_x_equals_from_y_and_the_reference(lam):
    y = cupytv.prox_tv1d(X1, lam)
    from_x = cupytv.prox_tv1d_vjp(X1, lam, G1)
    from_y = cupytv.prox_tv1d_vjp(None, lam, G1, y=y)
    both = cupytv.prox_tv1d_vjp(X1, lam, G1, y=y)
    for got in (from_x, both):
        np.testing.assert_array_equal(got[0], from_y[0])
        np.testing.assert_array_equal(got[1], from_y[1])
    want_x, want_lam = reference.prox_tv1d_vjp(X1, lam, G1)
    np.testing.assert_allclose(from_x[0], want_x, atol=1e-12)
    np.testing.assert_allclose(from_x[1], want_lam, atol=1e-10)


def test_tv1d_vjp_at_x_is_not_the_vjp_at_y():
    # Why the fast path must be explicit: the backward read at x (as if x were the output) is a
    # different, wrong gradient, so the two arrays must never be interchangeable positionally.
    y = cupytv.prox_tv1d(X1, LAM)
    right = cupytv.prox_tv1d_vjp(None, LAM, G1, y=y)[0]
    wrong = cupytv.prox_tv1d_vjp(None, LAM, G1, y=X1)[0]
    assert np.abs(right - wrong).max() > 0.1


def test_old_order_warns_and_still_gives_the_same_gradients():
    y = cupytv.prox_tv1d(X1, LAM_FIBER)
    want = cupytv.prox_tv1d_vjp(X1, LAM_FIBER, G1)
    with pytest.warns(DeprecationWarning, match=r"prox_tv1d_vjp\(g, \.\.\., lam\) is deprecated"):
        got = cupytv.prox_tv1d_vjp(G1, y, LAM_FIBER)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])

    n_iter = cupytv.prox_tv2d(X2, LAM, return_info=True)[1].n_iter
    want = cupytv.prox_tv2d_vjp(X2, (LAM, 0.3), G2, n_iter=n_iter)
    with pytest.warns(DeprecationWarning, match=r"prox_tv2d_vjp\(g, \.\.\., lam\)"):
        got = cupytv.prox_tv2d_vjp(G2, X2, (LAM, 0.3), n_iter=n_iter)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1][0], want[1][0])

    want = cupytv.prox_tv_vjp(X3, LAM, G3, (1, 2, 3), max_iter=5, tol=0)
    with pytest.warns(DeprecationWarning, match=r"prox_tv_vjp\(g, \.\.\., lam\)"):
        got = cupytv.prox_tv_vjp(G3, X3, LAM, (1, 2, 3), max_iter=5, tol=0)
    np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.filterwarnings("error::DeprecationWarning")
def test_the_new_order_never_warns():
    cupytv.prox_tv1d_vjp(X1, LAM_FIBER, G1)
    cupytv.prox_tv1d_vjp(None, LAM_FIBER, G1, y=X1)
    cupytv.prox_tv2d_vjp(X2, np.full((2, 1, 1), LAM), G2, n_iter=3)
    cupytv.prox_tv_vjp(X3, LAM, G3, (1, 2, 3), n_iter=2)
    # Fibers of length 1: a weight of x's full shape is legal, and g has that shape too.
    x = RNG.standard_normal((3, 1))
    cupytv.prox_tv1d_vjp(x, np.ones((3, 1)), x)


def test_bad_calls_are_loud():
    with pytest.raises(TypeError, match=r"expected x .* or y= .*, got neither"):
        cupytv.prox_tv1d_vjp(None, LAM, G1)
    with pytest.raises(ValueError, match=r"y: expected x's shape and dtype \(4, 30\) float64"):
        cupytv.prox_tv1d_vjp(X1, LAM, G1, y=X1[:, :5])
    with pytest.raises(ValueError, match=r"g: expected x's shape and dtype \(4, 30\) float64"):
        cupytv.prox_tv1d_vjp(X1, LAM, G1.astype(np.float32))
    with pytest.raises(ValueError, match=r"g: expected y's shape and dtype \(4, 30\) float64"):
        cupytv.prox_tv1d_vjp(None, LAM, G1[:2], y=X1)


def test_one_order_everywhere():
    # The reference, the array API and the torch ops' public functions read (x, lam, g, ...).
    import inspect

    for fn in (
        cupytv.prox_tv1d_vjp,
        cupytv.prox_tv2d_vjp,
        cupytv.prox_tv_vjp,
        reference.prox_tv1d_vjp,
        reference.prox_tv2d_vjp,
    ):
        assert list(inspect.signature(fn).parameters)[:3] == ["x", "lam", "g"], fn.__qualname__
