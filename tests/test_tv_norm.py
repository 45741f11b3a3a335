"""``tv_norm``: the weighted TV value (array API and torch) against the exact reference."""

import numpy as np
import pytest

import cupytv
from cupytv import reference
from cupytv._validation import host_array
from cupytv.testing import images_2d, signals_1d

RNG = np.random.default_rng(21)
#: Relative error of a float64 sum of n terms vs the exactly rounded one; float32 data summed in
#: float64 then rounded once to float32.
RTOL = {np.float64: 1e-13, np.float32: 2e-7}


def _inputs():
    ones = list(signals_1d(37, RNG).items())
    twos = list(images_2d(9, 13, RNG).items())
    return ones, twos


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tv_norm_matches_the_reference_on_adversarial_inputs(xp, dtype):
    ones, twos = _inputs()
    for name, x in ones:
        x = x.astype(dtype)
        got = host_array(cupytv.tv_norm(xp.asarray(x), 0.7))
        want = reference.tv_norm(x, 0.7)
        np.testing.assert_allclose(got, want, rtol=RTOL[dtype], err_msg=name)
        assert got.dtype == dtype
    for name, x in twos:
        x = x.astype(dtype)
        got = host_array(cupytv.tv_norm(xp.asarray(x), (0.3, 1.5), axes=(0, 1)))
        np.testing.assert_allclose(
            got, reference.tv_norm(x, (0.3, 1.5), axes=(0, 1)), rtol=RTOL[dtype], err_msg=name
        )


def test_tv_norm_is_the_objectives_regulariser(xp):
    # reference.objective(y, x) - 1/2 ||y - x||^2 is the TV term the proxes minimise against;
    # at the prox, F(y) <= F(any other point), checked with tv_norm's values.
    x = RNG.standard_normal((3, 4, 10, 12))
    lam = np.array([0.1, 0.4, 1.0]).reshape(3, 1, 1, 1)
    y = cupytv.prox_tv2d(x, lam, tol=1e-8, max_iter=5000)
    f = 0.5 * ((y - x) ** 2).sum(axis=(2, 3)) + host_array(
        cupytv.tv_norm(xp.asarray(y), lam, axes=(2, 3))
    )
    np.testing.assert_allclose(f, reference.objective(y, x, lam, axes=(2, 3)), rtol=1e-13)
    for other in (x, np.zeros_like(x), y + 1e-3 * RNG.standard_normal(x.shape)):
        assert np.all(f <= reference.objective(other, x, lam, axes=(2, 3)) + 1e-12)


def test_tv_norm_weights_axes_and_layouts(xp):
    x = RNG.standard_normal((2, 5, 6, 7))
    per_slice = RNG.uniform(0.1, 2.0, size=(2, 1, 1, 7))
    got = host_array(cupytv.tv_norm(xp.asarray(x), per_slice, axes=(1, 2)))
    assert got.shape == (2, 7)
    np.testing.assert_allclose(got, reference.tv_norm(x, per_slice, axes=(1, 2)), rtol=1e-13)
    # Three axes, one weight each; a transposed (strided) view gives the same values.
    lam3 = (0.5, 0.0, 2.0)
    want = reference.tv_norm(x, lam3, axes=(1, 2, 3))
    np.testing.assert_allclose(host_array(cupytv.tv_norm(xp.asarray(x), lam3, (1, 2, 3))), want)
    xt = xp.asarray(np.ascontiguousarray(x.transpose(3, 2, 1, 0))).transpose(3, 2, 1, 0)
    np.testing.assert_allclose(host_array(cupytv.tv_norm(xt, lam3, (1, 2, 3))), want)
    # Length-1 axes and lam = 0 give 0; a constant gives 0.
    assert host_array(cupytv.tv_norm(xp.ones((3, 1)), 5.0)).tolist() == [0.0, 0.0, 0.0]
    assert float(host_array(cupytv.tv_norm(xp.asarray(x[0, 0, 0]), 0.0))) == 0.0


def test_tv_norm_non_finite_and_bad_input(xp):
    x = RNG.standard_normal((4, 6))
    x[1, 2], x[2, 0] = np.nan, np.inf
    got = host_array(cupytv.tv_norm(xp.asarray(x), 1.0))
    assert np.isnan(got[1:3]).all()
    assert np.isfinite(got[[0, 3]]).all()
    with pytest.raises(ValueError, match=r"lam: expected values >= 0, got -1\.0"):
        cupytv.tv_norm(xp.asarray(x), -1.0)
    with pytest.raises(ValueError, match="one weight per axis"):
        cupytv.tv_norm(xp.asarray(x), (1.0, 2.0), axes=0)
    with pytest.raises(TypeError, match="expected a real floating-point dtype"):
        cupytv.tv_norm(xp.ones(3, dtype=np.int64))
    with pytest.raises(ValueError, match="axes: expected distinct axes"):
        cupytv.tv_norm(xp.asarray(x), 1.0, axes=(1, -1))


def test_torch_tv_norm_matches_and_differentiates():
    torch = pytest.importorskip("torch")
    from cupytv.torch import tv_norm

    x = torch.tensor(RNG.standard_normal((2, 3, 6, 5)), requires_grad=True)
    lam = torch.tensor([0.2, 0.5, 1.0], dtype=torch.float64).view(1, 3, 1, 1).requires_grad_()
    got = tv_norm(x, (lam, 0.3), axes=(2, 3))
    want = reference.tv_norm(x.detach().numpy(), (lam.detach().numpy(), 0.3), axes=(2, 3))
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-13)
    # Away from ties, TV is smooth: gradients in x and lam against finite differences, in both
    # autograd modes.
    assert torch.autograd.gradcheck(
        lambda x, lam: tv_norm(x, (lam, 0.3), axes=(2, 3)),
        (x, lam),
        check_forward_ad=True,
        check_backward_ad=True,
    )
    half = tv_norm(x.detach().to(torch.bfloat16), 0.5, axes=(2, 3))
    assert half.dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"lam: expected finite values >= 0, got -0\.1"):
        tv_norm(x, torch.tensor(-0.1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"lam\[0\]: expected a number or a tensor broadcastable"):
        tv_norm(x, (torch.ones(5, dtype=torch.float64), 1.0), axes=(2, 3))
