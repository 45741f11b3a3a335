"""What a new user hit first (#16): messages and forms that should have just worked.

Each test fails on the code before the fix: the message it matches, or the form it uses, did
not exist.
"""

import numpy as np
import pytest

import cupytv

torch = pytest.importorskip("torch")
from cupytv.torch import TV1d, TV2d, prox_tv2d  # noqa: E402


def test_a_torch_tensor_in_the_array_api_gets_a_hint():
    with pytest.raises(TypeError, match=r"got torch\.Tensor \(for torch tensors use cupytv\.torch"):
        cupytv.prox_tv2d(torch.zeros(2, 4, 4), 0.1)


def test_a_numpy_pair_of_weights_gets_a_hint():
    with pytest.raises(ValueError, match=r"got shape \(2,\); for one weight per axis pass a tuple"):
        cupytv.prox_tv2d(np.zeros((3, 4, 4)), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"got shape \(3,\); for one weight per axis pass a tuple"):
        cupytv.prox_tv(np.zeros((2, 4, 4, 4)), np.array([0.1, 0.2, 0.3]), axes=(1, 2, 3))


@pytest.mark.parametrize(
    ("lam", "message"),
    [
        (-0.1, r"^lam: expected values >= 0, got -0\.1$"),
        (torch.tensor(-0.1), r"^lam: expected values >= 0, got -0\.1$"),
        (torch.tensor(-0.1, dtype=torch.float64), r"^lam: expected values >= 0, got -0\.1$"),
        (torch.tensor([0.1, -0.3]).view(1, 2, 1, 1), r"^lam: expected values >= 0, got -0\.3$"),
        ((0.1, -0.2), r"^lam\[1\]: expected values >= 0, got -0\.2$"),
    ],
)
def test_a_negative_weight_is_shown_as_given(lam, message):
    # Was "lam[0]: expected values >= 0, got -0.10000000149011612" for a scalar.
    with pytest.raises(ValueError, match=message):
        prox_tv2d(torch.zeros(2, 2, 4, 4), lam)


def test_tv2d_takes_a_pair_like_the_function():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    layer = TV2d((0.1, 0.4), learnable=False).double()
    lam = layer.lam  # the float32 buffer, cast with the module
    torch.testing.assert_close(layer(x), prox_tv2d(x, (lam[0], lam[1])), rtol=0, atol=0)
    learn = TV2d((0.1, 0.4), num_channels=3).double()
    assert learn.lam.shape == (3, 2)
    torch.testing.assert_close(learn.lam[:, 1], torch.full((3,), 0.4, dtype=torch.float64))
    y = learn(x)
    lam = learn.lam.detach()
    want = prox_tv2d(x, (lam[:, 0].view(1, 3, 1, 1), lam[:, 1].view(1, 3, 1, 1)))
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    y.square().sum().backward()
    assert learn.lam_raw.grad.shape == (3, 2)
    assert torch.all(learn.lam_raw.grad != 0)  # both axes' weights learn
    with pytest.raises(ValueError, match=r"lam\[1\]: expected a finite value > 0"):
        TV2d((0.1, 0.0))
    with pytest.raises(
        TypeError, match=r"expected a real number or a pair \(lam0, lam1\), got tuple"
    ):
        TV2d((0.1, 0.2, 0.3))


def test_an_unbatched_input_is_named_as_such():
    for layer, x in ((TV2d(0.1, num_channels=3), torch.randn(3, 16, 16)),
                     (TV1d(0.1, num_channels=3), torch.randn(3, 16))):  # fmt: skip
        with pytest.raises(ValueError, match=r"expected a batch \(N, C, .*unbatched input\?"):
            layer(x)
        assert layer(x.unsqueeze(0)).shape == (1, *x.shape)


def test_eager_calls_do_not_import_the_compiler():
    # Dispatching a custom op imports torch._dynamo on its first call (0.7-1.3 s here): eager
    # calls run the ops' implementations directly, so a process that never compiles never pays.
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from cupytv.torch import TV2d, prox_tv, prox_tv1d\n"
        "x = torch.randn(2, 3, 8, 8, requires_grad=True)\n"
        "(TV2d(0.1)(x).sum() + prox_tv1d(x, 0.1).sum() + prox_tv(x, 0.1, (1, 2, 3)).sum())"
        ".backward()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
