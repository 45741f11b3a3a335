"""cupytv.torch: the differentiable ops and the TV1d / TV2d layers.

Every test runs on CPU tensors (host executor, CI) and on CUDA tensors under the ``gpu`` marker.
gradcheck runs in float64 on inputs drawn without ties (the prox is not differentiable where two
segments' values meet); a fixed iteration count (tol = 0) makes the 2D forward a fixed map, whose
gradient the op computes exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cupytv  # noqa: E402
from cupytv._validation import host_array  # noqa: E402
from cupytv.torch import TV1d, TV2d, prox_tv, prox_tv1d, prox_tv2d  # noqa: E402
from cupytv.torch._bridge import to_array  # noqa: E402

FIXED = {"tol": 0.0, "max_iter": 6}
# gradcheck's finite differences (eps 1e-6) against the analytic VJP in float64.
GRADCHECK = {"eps": 1e-6, "atol": 1e-6, "rtol": 1e-5}


@pytest.fixture(
    params=[
        pytest.param("cpu", id="cpu"),
        pytest.param("cuda", id="cuda", marks=pytest.mark.gpu),
    ]
)
def device(request):
    return torch.device(request.param)


def randn(*shape, device, dtype=torch.float64, grad=True):
    t = torch.randn(*shape, dtype=dtype, device=device)
    return t.requires_grad_(grad)


LAM_SHAPES_2D = {
    "scalar": (),
    "per_channel": (1, 3, 1, 1),
    "per_sample": (2, 1, 1, 1),
    "both": (2, 3, 1, 1),
}


@pytest.mark.parametrize("lam_shape", list(LAM_SHAPES_2D.values()), ids=list(LAM_SHAPES_2D))
def test_prox_tv2d_gradcheck(device, lam_shape):
    torch.manual_seed(0)
    x = randn(2, 3, 5, 6, device=device)
    lam = (0.1 + 0.3 * torch.rand(lam_shape, dtype=torch.float64, device=device)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: prox_tv2d(a, b, **FIXED), (x, lam), **GRADCHECK)


def test_prox_tv2d_gradcheck_pair_and_axes(device):
    torch.manual_seed(1)
    x = randn(4, 2, 7, device=device)
    lam0 = torch.tensor(0.2, dtype=torch.float64, device=device, requires_grad=True)
    lam1 = torch.full((1, 2, 1), 0.35, dtype=torch.float64, device=device, requires_grad=True)
    f = lambda a, b, c: prox_tv2d(a, (b, c), axes=(0, 2), **FIXED)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, lam0, lam1), **GRADCHECK)


@pytest.mark.parametrize("lam_shape", [(), (1, 3, 1), (2, 1, 1)])
def test_prox_tv1d_gradcheck(device, lam_shape):
    torch.manual_seed(2)
    x = randn(2, 3, 9, device=device)
    lam = (0.1 + 0.3 * torch.rand(lam_shape, dtype=torch.float64, device=device)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: prox_tv1d(a, b), (x, lam), **GRADCHECK)


def test_prox_tv_three_axes_gradcheck_and_dispatch(device):
    torch.manual_seed(9)
    x = randn(2, 3, 4, 5, device=device)
    lams = tuple(
        torch.tensor(v, dtype=torch.float64, device=device, requires_grad=True)
        for v in (0.1, 0.2, 0.3)
    )
    f = lambda a, *ls: prox_tv(a, ls, axes=(1, 2, 3), tol=0.0, max_iter=4)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, *lams), **GRADCHECK)
    xd = x.detach()
    np.testing.assert_array_equal(
        prox_tv(xd, 0.2, axes=(1, 2, 3)).cpu().numpy(),
        cupytv.prox_tv(xd.cpu().numpy(), 0.2, axes=(1, 2, 3)),
    )
    torch.testing.assert_close(prox_tv(xd, 0.2, axes=-1), prox_tv1d(xd, 0.2), rtol=0, atol=0)
    torch.testing.assert_close(prox_tv(xd, 0.2, axes=(2, 3)), prox_tv2d(xd, 0.2), rtol=0, atol=0)


def test_matches_the_array_api(device):
    # Bit for bit against the array API on the same device (the GPU's compiler contracts
    # multiply-adds that the host's does not, so CPU and GPU agree to rounding only).
    torch.manual_seed(3)
    x = torch.randn(2, 3, 12, 10, device=device)
    y = prox_tv2d(x, 0.2)
    ref = host_array(cupytv.prox_tv2d(to_array(x), 0.2))
    np.testing.assert_array_equal(y.cpu().numpy(), ref)
    y1 = prox_tv1d(x, 0.2, axis=2)
    ref1 = host_array(cupytv.prox_tv1d(to_array(x), 0.2, 2))
    np.testing.assert_array_equal(y1.cpu().numpy(), ref1)
    np.testing.assert_allclose(y.cpu().numpy(), cupytv.prox_tv2d(x.cpu().numpy(), 0.2), atol=1e-6)


def test_per_sample_lam_is_not_tiled_in_the_wrong_order(device):
    # The seed tiles per-sample weights channel-major; here sample n must get lam[n] whatever C.
    torch.manual_seed(4)
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64, device=device)
    lam = torch.tensor([0.05, 0.5, 2.0], dtype=torch.float64, device=device).view(3, 1, 1, 1)
    y = prox_tv2d(x, lam)
    for n in range(3):
        torch.testing.assert_close(y[n], prox_tv2d(x[n], float(lam[n])), rtol=0, atol=0)


def test_module_equals_functional_smooth_and_sharp(device):
    torch.manual_seed(5)
    x = torch.randn(2, 3, 8, 9, device=device)
    smooth = TV2d(0.2, num_channels=3).to(device)
    sharp = TV2d(0.2, num_channels=3, mode="sharp").to(device)
    lam = smooth.lam.view(1, 3, 1, 1)
    y = prox_tv2d(x, lam)
    torch.testing.assert_close(smooth(x), y, rtol=0, atol=0)
    torch.testing.assert_close(sharp(x), 2 * x - y, rtol=0, atol=0)
    fixed = TV1d(0.3, learnable=False).to(device)
    torch.testing.assert_close(fixed(x), prox_tv1d(x, 0.3), rtol=0, atol=0)
    assert "num_channels=3" in repr(smooth)
    assert "fixed" in repr(fixed)


def test_learnable_lam_is_softplus_and_trains(device):
    layer = TV2d(0.25, num_channels=2).to(device)
    torch.testing.assert_close(layer.lam, torch.full((2,), 0.25, device=device))
    x = torch.randn(4, 2, 8, 8, device=device)
    target = torch.zeros_like(x)
    loss = ((layer(x) - target) ** 2).mean()
    loss.backward()
    assert layer.lam_raw.grad is not None
    assert torch.all(layer.lam_raw.grad != 0)


def test_non_contiguous_and_channels_last(device):
    torch.manual_seed(6)
    x = torch.randn(2, 3, 10, 12, device=device)
    expected = prox_tv2d(x.contiguous(), 0.3)
    cl = x.to(memory_format=torch.channels_last)
    torch.testing.assert_close(prox_tv2d(cl, 0.3), expected, rtol=0, atol=0)
    t = x.transpose(2, 3)  # a non-contiguous view: the slices are transposed
    torch.testing.assert_close(prox_tv2d(t, 0.3, axes=(-1, -2)).transpose(2, 3),
                               prox_tv2d(x, 0.3, axes=(-2, -1)), rtol=1e-5, atol=1e-5)  # fmt: skip
    g = torch.randn_like(x)
    xa = cl.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    (prox_tv2d(xa, 0.3) * g).sum().backward()
    (prox_tv2d(xb, 0.3) * g).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=0)


def test_empty_batch(device):
    x = torch.zeros(0, 3, 5, 5, device=device, requires_grad=True)
    y = prox_tv2d(x, 0.1)
    y.sum().backward()
    assert y.shape == x.shape
    assert x.grad.shape == x.shape


def test_half_inputs_compute_in_float32(device):
    torch.manual_seed(7)
    x = torch.randn(2, 8, 8, device=device)
    for half in (torch.float16, torch.bfloat16):
        xh = x.to(half).requires_grad_()
        y = prox_tv2d(xh, 0.2)
        assert y.dtype == half
        torch.testing.assert_close(y, prox_tv2d(xh.detach().float(), 0.2).to(half))
        y.float().sum().backward()
        assert xh.grad.dtype == half


def test_autocast(device):
    layer = TV2d(0.1).to(device)
    conv = torch.nn.Conv2d(1, 1, 3, padding=1).to(device)
    x = torch.randn(2, 1, 8, 8, device=device)
    dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    with torch.autocast(device.type, dtype=dtype):
        y = layer(conv(x))
    assert y.dtype == dtype
    y.float().sum().backward()
    assert layer.lam_raw.grad is not None


# aot_eager runs what involves our ops (Dynamo, fake tensors, AOT autograd); inductor, what users
# get by default, adds ~25 s of C++ code generation on the CI machine.
COMPILE_BACKENDS = ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)]


@pytest.mark.parametrize("backend", COMPILE_BACKENDS)
def test_torch_compile_runs_our_ops_bit_for_bit(device, backend):
    # Our contract: a compiled graph calls the same kernels on the same inputs, so the results are
    # identical to eager ones, forward and backward, on any CPU. Weights are given as tensors, so
    # nothing in the graph is computed by code the compiler generates.
    torch.manual_seed(8)
    x = torch.randn(2, 2, 8, 8, device=device, requires_grad=True)
    lam2 = torch.tensor([0.2, 0.3], device=device).view(1, 2, 1, 1).requires_grad_()
    lam1 = torch.tensor(0.1, device=device, requires_grad=True)

    def f(x, lam2, lam1):
        y = prox_tv2d(x, lam2, max_iter=10, tol=0.0)
        return 2 * y - prox_tv1d(y, lam1)

    compiled = torch.compile(f, fullgraph=True, backend=backend)
    y, y_eager = compiled(x, lam2, lam1), f(x, lam2, lam1)
    torch.testing.assert_close(y, y_eager, rtol=0, atol=0)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, lam2, lam1), g)
    grads_eager = torch.autograd.grad(y_eager, (x, lam2, lam1), g)
    for a, b in zip(grads, grads_eager, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("backend", COMPILE_BACKENDS)
def test_torch_compile_fullgraph(device, backend):
    # A model around our layers: the compiler generates its own code for the convolution and the
    # softplus of the weights, whose rounding depends on the CPU's instruction set (inductor's
    # convolution differed from eager's by up to 2.4e-7 on an AMD EPYC), so the model agrees
    # within float32 rounding, not bit for bit. The TV layer runs fixed iterations: with a
    # tolerance, a 1-ulp change of its input could change a slice's iteration count.
    torch.manual_seed(8)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 2, 3, padding=1),
        TV2d(0.2, num_channels=2, max_iter=10, tol=0.0),
        TV1d(0.1),
    ).to(device)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    x = torch.randn(2, 2, 8, 8, device=device)
    y_eager = model(x)
    y = compiled(x)
    # float32 tolerances: both prox maps are 1-Lipschitz, so input rounding is not amplified.
    torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-6)
    y.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    y_eager.square().sum().backward()
    for a, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-5)


def test_custom_ops_pass_opcheck(device):
    x = torch.randn(2, 5, 6, dtype=torch.float64, device=device)
    lam = torch.tensor(0.3, dtype=torch.float64, device=device)
    torch.library.opcheck(
        torch.ops.cupytv.prox_tv2d.default, (x, lam, lam, [-2, -1], 5, 0.0, "auto")
    )
    torch.library.opcheck(torch.ops.cupytv.prox_tv1d.default, (x, lam, -1, "auto"))
    g = torch.randn_like(x)
    y = prox_tv1d(x, lam)
    torch.library.opcheck(torch.ops.cupytv.prox_tv1d_vjp.default, (g, y, lam, -1))
    _, n_iter = prox_tv2d(x, lam, return_n_iter=True)
    torch.library.opcheck(
        torch.ops.cupytv.prox_tv2d_vjp.default, (g, x, lam, lam, [-2, -1], n_iter, "auto")
    )
    v = torch.randn(2, 3, 4, 5, dtype=torch.float64, device=device)
    torch.library.opcheck(
        torch.ops.cupytv.prox_tvnd.default, (v, [lam, lam, lam], [1, 2, 3], 4, 0.0)
    )


@pytest.mark.gpu
def test_cuda_side_stream_and_devices():
    # Kernels must launch on PyTorch's current stream (and device): the same result on a side
    # stream, with no synchronisation added by the caller beyond the stream's own ordering.
    torch.manual_seed(10)
    for index in range(torch.cuda.device_count()):
        dev = torch.device("cuda", index)
        x = torch.randn(8, 3, 32, 32, device=dev)
        expected = prox_tv2d(x, 0.2)
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            y = prox_tv2d(x * 1.0, 0.2)
            g = torch.autograd.grad(prox_tv2d(x.requires_grad_(), 0.2).sum(), x)[0]
        torch.cuda.current_stream(dev).wait_stream(side)
        torch.testing.assert_close(y, expected, rtol=0, atol=0)
        assert g.device == dev
        x.requires_grad_(False)


def test_errors(device):
    x = torch.randn(2, 4, 4, device=device)
    with pytest.raises(TypeError, match="expected a floating-point tensor"):
        prox_tv2d(torch.ones(2, 4, 4, dtype=torch.int64, device=device), 0.1)
    with pytest.raises(TypeError, match=r"expected a torch\.Tensor"):
        prox_tv2d(np.zeros((4, 4)), 0.1)
    with pytest.raises(ValueError, match="expected values >= 0"):
        prox_tv2d(x, -0.1)
    with pytest.raises(ValueError, match="on x's device"):
        prox_tv2d(x, torch.tensor(0.1, device="meta"))
    with pytest.raises(ValueError, match="lam: expected a finite value >= 0"):
        TV2d(-1.0, learnable=False)
    with pytest.raises(ValueError, match="> 0"):
        TV2d(0.0)
    with pytest.raises(ValueError, match="mode: expected one of"):
        TV2d(0.1, mode="blur")
    with pytest.raises(ValueError, match="expected 3 channels along axis 1"):
        TV2d(0.1, num_channels=3)(torch.randn(2, 2, 4, 4, device=device))
