"""TV2d under DistributedDataParallel: two CPU processes (gloo) train one model on different data.

The learnable weight ``lam`` is an ordinary parameter, so DDP must all-reduce its gradient like
any other: after a few SGD steps both ranks must hold bit-identical weights, the first step's
all-reduced gradient must be the mean of the two ranks' local gradients, and the loss must fall.

The workers are this file run as a script, launched torchrun-style (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``) in subprocesses with a timeout, so a stuck rendezvous or
collective fails the test instead of hanging CI. Each worker writes what it saw to a ``.pt``
file; the test compares them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

WORLD_SIZE = 2
#: Seconds the two workers may take together (import, rendezvous, kernel load, training); they
#: need about ten on a 2-core machine with a warm kernel cache.
WORKER_TIMEOUT_S = 120
STEPS = 6
LEARNING_RATE = 0.2
CHANNELS = 4
IMAGE_SIZE = 16
BATCH = 4
#: Both ranks start from this seed (DDP broadcasts rank 0's parameters anyway); rank r draws its
#: data from DATA_SEED + r, so the local gradients differ and the all-reduce has work to do.
MODEL_SEED = 0
DATA_SEED = 1000
NOISE = 0.3
#: The first step's all-reduced gradient vs the mean of the local ones: same float32 values
#: summed in another order by gloo, so only rounding separates them.
GRAD_RTOL = 1e-5
REPO_ROOT = Path(__file__).resolve().parents[1]


def _model():
    from cupytv.torch import TV2d

    torch.manual_seed(MODEL_SEED)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, CHANNELS, 3, padding=1),
        TV2d(0.05, num_channels=CHANNELS, mode="smooth"),
        torch.nn.Conv2d(CHANNELS, 1, 3, padding=1),
    )


def _data(rank: int):
    """Noisy piecewise-constant images (upsampled 4x4 blocks) and their clean targets."""
    gen = torch.Generator().manual_seed(DATA_SEED + rank)
    blocks = torch.rand(BATCH, 1, 4, 4, generator=gen)
    clean = torch.nn.functional.interpolate(blocks, size=(IMAGE_SIZE, IMAGE_SIZE), mode="nearest")
    noisy = clean + NOISE * torch.randn(clean.shape, generator=gen)
    return noisy, clean


def _worker(out_dir: Path) -> None:
    """One rank: record the local lam gradient, train with DDP, save the results."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")  # env:// rendezvous from the launcher's variables
    rank = dist.get_rank()
    torch.set_num_threads(1)
    model = _model()
    noisy, clean = _data(rank)
    loss_fn = torch.nn.functional.mse_loss
    tv = model[1]
    # The gradient this rank alone would take, before DDP wraps (and hooks) the parameters.
    (local_grad,) = torch.autograd.grad(loss_fn(model(noisy), clean), tv.lam_raw)

    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=LEARNING_RATE)
    losses, first_grad = [], None
    for _ in range(STEPS):
        opt.zero_grad()
        loss = loss_fn(ddp(noisy), clean)
        loss.backward()
        if first_grad is None:
            first_grad = tv.lam_raw.grad.clone()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(loss_fn(ddp(noisy), clean).item())
    torch.save(
        {
            "lam": tv.lam.detach().clone(),
            "params": [p.detach().clone() for p in model.parameters()],
            "local_grad": local_grad,
            "first_grad": first_grad,
            "losses": losses,
        },
        out_dir / f"rank{rank}.pt",
    )
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out_dir: Path) -> None:
    """Start the ranks as torchrun would and wait for both, killing them on timeout."""
    env = dict(os.environ)
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        WORLD_SIZE=str(WORLD_SIZE),
        OMP_NUM_THREADS="1",  # two ranks on a 2-core runner: no oversubscription
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
    )
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(out_dir)],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(WORLD_SIZE)
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=WORKER_TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        pytest.fail(f"DDP workers did not finish within {WORKER_TIMEOUT_S} s")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    for rank, (proc, out) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"rank {rank} exited with {proc.returncode}:\n{out}"


def test_ddp_lam_identical_across_ranks(tmp_path):
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available in this build")
    # Build or load the host kernels once here, so the ranks do not both compile them.
    from cupytv.torch import prox_tv2d

    x = torch.ones(1, 1, 2, 2, requires_grad=True)
    prox_tv2d(x, 0.1).sum().backward()

    _launch(tmp_path)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE))

    # Different shards give different local gradients: the identity below is the all-reduce's.
    assert not torch.equal(r0["local_grad"], r1["local_grad"])
    mean_grad = (r0["local_grad"] + r1["local_grad"]) / WORLD_SIZE
    for r in (r0, r1):
        torch.testing.assert_close(r["first_grad"], mean_grad, rtol=GRAD_RTOL, atol=0)
    # Bit-identical weights, lam included, and lam actually trained.
    assert r0["lam"].numpy().tobytes() == r1["lam"].numpy().tobytes()
    for p0, p1 in zip(r0["params"], r1["params"], strict=True):
        assert p0.numpy().tobytes() == p1.numpy().tobytes()
    assert not torch.allclose(r0["lam"], torch.full((CHANNELS,), 0.05))
    for r in (r0, r1):
        assert r["losses"][-1] < r["losses"][0], r["losses"]


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
    # The results are on disk and the process group is destroyed. torch 2.13's exit-time teardown
    # of gloo aborted about one run in ten with "terminate called without an active exception"
    # (also before any cupytv change of the session that found it; a rank runs our kernels on
    # one thread, so no thread of ours is alive): leave without the interpreter's teardown.
    sys.stdout.flush()
    os._exit(0)
