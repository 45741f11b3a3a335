"""What a new user hit first (#16): messages and forms that should have just worked.

Each test fails on the code before the fix: the message it matches, or the form it uses, did
not exist.
"""

import numpy as np
import pytest

import cupytv

torch = pytest.importorskip("torch")
from cupytv.torch import TV1d, TV2d, prox_tv, prox_tv1d, prox_tv2d  # noqa: E402


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
    if torch.as_tensor(lam).dim() == 0:  # three axes: one weight for all is still "lam"
        with pytest.raises(ValueError, match=message):
            prox_tv(torch.zeros(2, 2, 4, 4), lam, (1, 2, 3))


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


CHANNELS_LAST_OPS = {
    "prox_tv1d": lambda t, lam: prox_tv1d(t, lam, -1),
    "prox_tv2d": lambda t, lam: prox_tv2d(t, (lam, 0.2)),
    "prox_tv": lambda t, lam: prox_tv(t, 0.2, (1, 2, 3)),
    "TV2d": lambda t, lam: TV2d(0.1, num_channels=3).double()(t),
}


@pytest.mark.parametrize("name", sorted(CHANNELS_LAST_OPS))
def test_channels_last_in_channels_last_out(name):
    # The ops read any layout in place; their outputs were C order whatever the input's.
    fn = CHANNELS_LAST_OPS[name]
    torch.manual_seed(1)
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    lam = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64).view(1, 3, 1, 1)
    cl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    x.requires_grad_()
    y, y_cl = fn(x, lam), fn(cl, lam)
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_cl, y, rtol=0, atol=0)
    g = torch.randn_like(y)
    torch.testing.assert_close(
        torch.autograd.grad(y_cl, cl, g)[0], torch.autograd.grad(y, x, g)[0], rtol=0, atol=0
    )


def test_ops_return_the_layout_their_fakes_promise():
    # 2D over axes that are not the last two: the array API hands back a view with the axes
    # moved into place; the op must return C order, as its fake implementation says.
    x = torch.randn(2, 5, 6, 3, dtype=torch.float64)
    lam = torch.tensor(0.3, dtype=torch.float64)
    torch.library.opcheck(torch.ops.cupytv.prox_tv2d.default, (x, lam, lam, [1, 2], 5, 0.0, "auto"))
    compiled = torch.compile(
        lambda t: prox_tv2d(t, 0.3, axes=(1, 2), max_iter=5, tol=0.0), backend="aot_eager"
    )
    cl = torch.randn(2, 3, 6, 7).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(
        compiled(cl), prox_tv2d(cl, 0.3, axes=(1, 2), max_iter=5, tol=0.0), rtol=0, atol=0
    )
