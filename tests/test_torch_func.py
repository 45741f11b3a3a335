"""cupytv.torch under forward mode, double backward and torch.func (grad, vmap, jacrev, jacfwd).

The 1D prox is piecewise affine in (x, lam): on a fixed segment structure its Jacobian is exact,
and central differences of the forward agree with it up to rounding. The inputs are
piecewise-constant signals (levels at least ``MIN_STEP`` apart) plus noise far below lam, with lam
well between the structure's breakpoints, so a finite-difference step never changes the
structure (``piecewise`` checks it). The 2D and N-D maps of a fixed number of iterations are
piecewise affine too, and are checked the same way on random data.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from cupytv.torch import prox_tv, prox_tv1d, prox_tv2d  # noqa: E402

F64 = torch.float64
SEGMENTS, SEGMENT_LEN = 3, 4
MIN_STEP = 1.5  # levels this far apart stay separate for lam <= LAM_MAX on SEGMENT_LEN samples
LAM_MIN, LAM_MAX = 0.2, 0.4
# The noise's partial sums over a segment (< SEGMENT_LEN * NOISE) stay below the dual's margin on
# an end segment, LAM_MIN / SEGMENT_LEN = 0.05: each segment merges into one value.
NOISE = 0.003
FD_STEP = 1e-6
# The map is affine around these inputs: central differences are exact up to rounding of
# O(eps_64 * |y| / FD_STEP) ~ 1e-9.
FD_TOL = {"rtol": 1e-7, "atol": 1e-7}
GRADCHECK = {"eps": FD_STEP, "atol": 1e-6, "rtol": 1e-5}
FIXED = {"tol": 0.0, "max_iter": 5}  # 2D / N-D: a fixed number of iterations, a fixed map


@pytest.fixture(
    params=[pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]
)
def device(request):
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seeded():
    # The tangents and weights below come from torch's global generator: seeded per test, so a
    # test's draws do not depend on what ran before it (an unseeded weight once gave a Hessian
    # too small for its check after another file's tests).
    torch.manual_seed(16)


def piecewise(batch: tuple[int, ...], device, seed: int = 0) -> torch.Tensor:
    """Fibers of SEGMENTS constant runs (adjacent levels >= MIN_STEP apart) plus small noise.

    The steps alternate in sign: on a staircase (two steps of one sign) the prox keeps small
    jumps where the noise's partial sums rise, while on a peak or a valley the dual variable runs
    from lam to -lam across the segment with room to spare, so the segment merges."""
    gen = torch.Generator().manual_seed(seed)
    first = torch.where(torch.rand(*batch, 1, generator=gen) < 0.5, -1.0, 1.0)
    signs = first * (-1.0) ** torch.arange(SEGMENTS)
    steps = signs * (MIN_STEP + torch.rand(*batch, SEGMENTS, generator=gen))
    levels = steps.cumsum(-1).repeat_interleave(SEGMENT_LEN, dim=-1)
    x = levels + NOISE * torch.randn(levels.shape, generator=gen)
    return x.to(device=device, dtype=F64)


def lams(kind: str, channels: int, device) -> torch.Tensor:
    """A scalar lam, or one per channel (axis 1 of an (N, C, n) input)."""
    shape = () if kind == "scalar" else (1, channels, 1)  # per slice: one per channel
    gen = torch.Generator().manual_seed(1)
    lam = LAM_MIN + (LAM_MAX - LAM_MIN) * torch.rand(shape, generator=gen)
    return lam.to(device=device, dtype=F64)


def assert_structure(x: torch.Tensor, lam: torch.Tensor) -> None:
    """The premise of every comparison here: each fiber's output has SEGMENTS segments."""
    jumps = (torch.diff(prox_tv1d(x, lam), dim=-1) != 0).sum(-1)
    assert (jumps == SEGMENTS - 1).all(), jumps


def central_difference(f, primals, tangents):
    plus = f(*(p + FD_STEP * t for p, t in zip(primals, tangents, strict=True)))
    minus = f(*(p - FD_STEP * t for p, t in zip(primals, tangents, strict=True)))
    return (plus - minus) / (2 * FD_STEP)


LAM_KINDS = ["scalar", "per_slice"]


@pytest.mark.parametrize("kind", LAM_KINDS)
def test_tv1d_gradcheck_forward_and_backward_ad(device, kind):
    x, lam = piecewise((2, 3), device), lams(kind, 3, device)
    assert_structure(x, lam)
    assert torch.autograd.gradcheck(
        prox_tv1d,
        (x.requires_grad_(), lam.requires_grad_()),
        check_forward_ad=True,
        check_backward_ad=True,
        check_batched_grad=True,
        check_batched_forward_grad=True,
        **GRADCHECK,
    )


@pytest.mark.parametrize("kind", LAM_KINDS)
def test_tv1d_gradgradcheck(device, kind):
    x, lam = piecewise((2, 3), device, seed=2), lams(kind, 3, device)
    assert_structure(x, lam)
    assert torch.autograd.gradgradcheck(
        prox_tv1d,
        (x.requires_grad_(), lam.requires_grad_()),
        check_fwd_over_rev=True,
        check_rev_over_rev=True,
        check_batched_grad=True,
        **GRADCHECK,
    )


@pytest.mark.parametrize("kind", LAM_KINDS)
def test_tv1d_jvp_is_the_jacobian_not_zero(device, kind):
    x, lam = piecewise((2, 3), device, seed=3), lams(kind, 3, device)
    assert_structure(x, lam)
    tx, tl = torch.randn_like(x), torch.randn_like(lam)
    expected = central_difference(prox_tv1d, (x, lam), (tx, tl))
    assert expected.abs().max() > 0.1  # the old op returned an all-zero tangent
    _, tangent = torch.func.jvp(prox_tv1d, (x, lam), (tx, tl))
    torch.testing.assert_close(tangent, expected, **FD_TOL)
    # lam's part alone: averaged jump signs, (s_out - s_in) / |S| on each segment.
    _, tangent = torch.func.jvp(lambda b: prox_tv1d(x, b), (lam,), (tl,))
    expected = central_difference(lambda b: prox_tv1d(x, b), (lam,), (tl,))
    torch.testing.assert_close(tangent, expected, **FD_TOL)
    # The dual-number API of torch.autograd.forward_ad gives the same tangent.
    with torch.autograd.forward_ad.dual_level():
        dual = prox_tv1d(torch.autograd.forward_ad.make_dual(x, tx), lam)
        tangent = torch.autograd.forward_ad.unpack_dual(dual).tangent
    expected = central_difference(lambda a: prox_tv1d(a, lam), (x,), (tx,))
    torch.testing.assert_close(tangent, expected, **FD_TOL)


def jacobian_by_differences(f, primal):
    columns = [
        central_difference(f, (primal,), (e.view_as(primal),))
        for e in torch.eye(primal.numel(), dtype=F64, device=primal.device)
    ]
    return torch.stack(columns, dim=-1).reshape(*f(primal).shape, *primal.shape)


@pytest.mark.parametrize("kind", LAM_KINDS)
def test_tv1d_jacfwd_and_jacrev(device, kind):
    x, lam = piecewise((1, 2), device, seed=4), lams(kind, 2, device)
    assert_structure(x, lam)
    for argnum, f in enumerate((lambda a: prox_tv1d(a, lam), lambda b: prox_tv1d(x, b))):
        expected = jacobian_by_differences(f, (x, lam)[argnum])
        assert expected.abs().max() > 0.1
        torch.testing.assert_close(torch.func.jacfwd(f)((x, lam)[argnum]), expected, **FD_TOL)
        torch.testing.assert_close(torch.func.jacrev(f)((x, lam)[argnum]), expected, **FD_TOL)


def test_tv1d_grad_and_hessian(device):
    x, lam = piecewise((2, 3), device, seed=5), lams("per_slice", 3, device)
    assert_structure(x, lam)
    weight = torch.randn_like(x)

    def loss(a, b):
        return (weight * prox_tv1d(a, b).square()).sum()

    gx, gl = torch.func.grad(loss, argnums=(0, 1))(x, lam)
    tx, tl = torch.randn_like(x), torch.randn_like(lam)
    torch.testing.assert_close(
        (gx * tx).sum() + (gl * tl).sum(), central_difference(loss, (x, lam), (tx, tl)), **FD_TOL
    )
    # Double backward: the Hessian of a smooth loss of y, P diag(2 w) P in x, against
    # differences of the gradient; forward over reverse (hessian) and reverse over reverse agree.
    xs, grad = x[:1, :1], lambda a: torch.func.grad(loss)(a, lam[:, :1])
    weight = weight[:1, :1]
    expected = jacobian_by_differences(grad, xs)
    assert expected.abs().max() > 0.1
    hessian = torch.func.hessian(lambda a: loss(a, lam[:, :1]))(xs)
    torch.testing.assert_close(hessian, expected, **FD_TOL)
    torch.testing.assert_close(torch.func.jacrev(grad)(xs), expected, **FD_TOL)


def test_tv1d_vmap_matches_a_loop(device):
    x = piecewise((4, 3), device, seed=6)
    lam = lams("per_slice", 3, device)[0].expand(4, 3, 1).clone()  # one lam per vmapped sample
    lam += 0.05 * torch.arange(4, dtype=F64, device=device).view(4, 1, 1)
    y = torch.vmap(prox_tv1d)(x, lam)
    loop = torch.stack([prox_tv1d(a, b) for a, b in zip(x, lam, strict=True)])
    torch.testing.assert_close(y, loop, rtol=0, atol=0)
    # x shared, lam vmapped; and per-sample gradients of (x, lam) through vmap(grad).
    y = torch.vmap(prox_tv1d, in_dims=(None, 0))(x[0], lam)
    torch.testing.assert_close(y, torch.stack([prox_tv1d(x[0], b) for b in lam]), rtol=0, atol=0)
    weight = torch.randn_like(x[0])

    def loss(a, b):
        return (weight * prox_tv1d(a, b).square()).sum()

    per_sample = torch.vmap(torch.func.grad(loss, argnums=(0, 1)), in_dims=(0, None))(x, lam[0])
    for i in range(len(x)):
        a, b = x[i].clone().requires_grad_(), lam[0].clone().requires_grad_()
        loss(a, b).backward()
        torch.testing.assert_close(per_sample[0][i], a.grad, rtol=0, atol=0)
        torch.testing.assert_close(per_sample[1][i], b.grad, rtol=0, atol=0)


# 2D and N-D: the fixed-iteration map (FIXED) on random data, as tests/test_torch.py's gradchecks
# (its kinks are where an intermediate 1D solution changes structure, away from these points).
# name: (op(x, lam), x's shape, lam's shape when not scalar: one weight per slice or volume).
OPS_ND = {
    "prox_tv2d": (lambda a, b: prox_tv2d(a, b, **FIXED), (2, 2, 3, 3), (1, 2, 1, 1)),
    "prox_tv2d_accelerated": (
        lambda a, b: prox_tv2d(a, b, method="accelerated", **FIXED),
        (2, 2, 3, 3),
        (2, 2, 1, 1),
    ),
    "prox_tv": (
        lambda a, b: prox_tv(a, b, axes=(-3, -2, -1), **FIXED),
        (2, 2, 2, 3),
        (2, 1, 1, 1),
    ),
}


ACCELERATED = "prox_tv2d_accelerated"  # its arithmetic differs from Dykstra's by the momentum only


def nd_inputs(name: str, kind: str, device, seed: int = 7):
    _, shape, lam_shape = OPS_ND[name]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=F64)
    lam_shape = () if kind == "scalar" else lam_shape
    lam = LAM_MIN + (LAM_MAX - LAM_MIN) * torch.rand(lam_shape, generator=gen, dtype=F64)
    return x.to(device), lam.to(device)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        (name, kind)
        for name in OPS_ND
        for kind in LAM_KINDS
        if (name, kind) != (ACCELERATED, "scalar")
    ],
)
def test_tv2d_and_nd_gradcheck_forward_and_double(device, name, kind):
    op = OPS_ND[name][0]
    x, lam = nd_inputs(name, kind, device)
    inputs = (x.requires_grad_(), lam.requires_grad_())
    # gradcheck's batched checks run torch's legacy vmap, whose fallback cannot take the N-D
    # op's list of weights; torch.func.vmap, which uses the registered rules, is tested below.
    batched = name != "prox_tv"
    assert torch.autograd.gradcheck(
        op, inputs, check_forward_ad=True, check_batched_grad=batched,
        check_batched_forward_grad=batched, **GRADCHECK,
    )  # fmt: skip
    # fast_mode (random projections of the Jacobians, still exact comparisons): the full second
    # derivative costs one backward per input and output, 10 s here.
    assert torch.autograd.gradgradcheck(
        op, inputs, check_fwd_over_rev=True, check_batched_grad=batched, fast_mode=True,
        **GRADCHECK,
    )  # fmt: skip


@pytest.mark.parametrize("name", list(OPS_ND))
def test_tv2d_and_nd_jvp_jacfwd_hessian(device, name):
    op = OPS_ND[name][0]
    x, lam = nd_inputs(name, "per_slice", device, seed=8)
    tx, tl = torch.randn_like(x), torch.randn_like(lam)
    expected = central_difference(op, (x, lam), (tx, tl))
    assert expected.abs().max() > 0.1  # the old op returned an all-zero tangent
    _, tangent = torch.func.jvp(op, (x, lam), (tx, tl))
    torch.testing.assert_close(tangent, expected, **FD_TOL)
    small, lam0 = x[0, :2], lam[0, :2] if lam.shape[1] > 1 else lam[0]
    f = lambda a: op(a, lam0)  # noqa: E731
    jac = jacobian_by_differences(f, small)
    torch.testing.assert_close(torch.func.jacfwd(f)(small), jac, **FD_TOL)
    torch.testing.assert_close(torch.func.jacrev(f)(small), jac, **FD_TOL)
    weight = torch.randn_like(small)

    def loss(a):
        return (weight * f(a).square()).sum()

    hessian = jacobian_by_differences(torch.func.grad(loss), small)
    torch.testing.assert_close(torch.func.hessian(loss)(small), hessian, **FD_TOL)


@pytest.mark.parametrize("name", list(OPS_ND))
def test_tv2d_and_nd_vmap_matches_a_loop(device, name):
    op = OPS_ND[name][0]
    x, lam = nd_inputs(name, "scalar", device, seed=9)  # vmapped over axis 0
    lam_batch = lam + 0.1 * torch.arange(len(x), dtype=F64, device=device)
    y = torch.vmap(op)(x, lam_batch)
    loop = torch.stack([op(a, b) for a, b in zip(x, lam_batch, strict=True)])
    torch.testing.assert_close(y, loop, rtol=0, atol=0)
    weight = torch.randn_like(x[0])

    def loss(a, b):
        return (weight * op(a, b).square()).sum()

    per_sample = torch.vmap(torch.func.grad(loss, argnums=(0, 1)), in_dims=(0, None))(x, lam)
    tx = torch.randn_like(x)
    tangents = torch.vmap(lambda a, t: torch.func.jvp(lambda c: op(c, lam), (a,), (t,))[1])(x, tx)
    for i in range(len(x)):
        a, b = x[i].clone().requires_grad_(), lam.clone().requires_grad_()
        loss(a, b).backward()
        torch.testing.assert_close(per_sample[0][i], a.grad, rtol=0, atol=0)
        torch.testing.assert_close(per_sample[1][i], b.grad, rtol=0, atol=0)
        _, expected = torch.func.jvp(lambda c: op(c, lam), (x[i],), (tx[i],))
        torch.testing.assert_close(tangents[i], expected, rtol=0, atol=0)


def test_jvp_ops_pass_opcheck(device):
    # Schema, fake (meta) implementation, autograd registration and AOT dispatch of the new ops.
    x = torch.randn(2, 4, 5, dtype=F64, device=device)
    lam, lam_dot = (torch.tensor(v, dtype=F64, device=device) for v in (0.3, 0.5))
    _, n_iter = prox_tv2d(x, lam, return_n_iter=True, **FIXED)
    torch.library.opcheck(
        torch.ops.cupytv.prox_tv2d_jvp.default,
        (x, lam, lam, torch.randn_like(x), lam_dot, lam_dot, [-2, -1], n_iter, "auto"),
    )
    v = torch.randn(2, 3, 4, 5, dtype=F64, device=device)
    n_iter = torch.full((2,), FIXED["max_iter"], dtype=torch.int32, device=device)
    torch.library.opcheck(
        torch.ops.cupytv.prox_tvnd_jvp.default,
        (v, [lam] * 3, torch.randn_like(v), [lam_dot] * 3, [1, 2, 3], n_iter),
    )
