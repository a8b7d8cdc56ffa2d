"""torchrun data parallelism: 2 gloo processes with batch B equal 1 process with batch 2B."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from spikessl import distributed
from spikessl import train as loop
from spikessl.encoders import EncoderConfig, SpikingEncoder
from spikessl.losses import nt_xent

CFG = EncoderConfig(conv_channels=(4, 8), fc_sizes=(16,), norm="batch", slope=5.0)
T, STEPS = 4, 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(views: torch.Tensor, world: distributed.World) -> dict:
    """A few SimCLR steps on fixed views; returns losses, first-step gradients, weights."""
    torch.manual_seed(0)
    enc = SpikingEncoder(CFG)
    distributed.convert_batchnorm(enc)  # in both runs: the same float64 statistics
    net = distributed.data_parallel(distributed.Traced(enc), world, torch.device("cpu"))
    params = list(enc.parameters())
    opt = torch.optim.Adam(params, 1e-2)
    losses, grads = [], None
    for step in range(STEPS):
        x1 = distributed.my_slice(views[step, 0], world)
        x2 = distributed.my_slice(views[step, 1], world)
        z, _ = net(torch.cat([x1, x2]), T)
        b = len(x1)
        z1, z2 = distributed.gather(z[:b], world), distributed.gather(z[b:], world)
        loss = nt_xent(z1, z2, 0.5)
        opt.zero_grad()
        loss.backward()  # DDP averages the gradients of the processes
        if grads is None:
            grads = [p.grad.clone() for p in params]
        opt.step()
        losses.append(loss.item())
    state = {k: v.clone() for k, v in enc.state_dict().items()}
    return {"losses": losses, "grads": grads, "state": state}


def worker(rank: int, port: int, job, arg: str, out_path: str) -> None:
    """Process ``rank`` of 2 (gloo): ``job(arg, world)``, whose result rank 0 saves."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    world = distributed.setup(torch.device("cpu"))
    result = job(arg, world)
    if world.is_main:
        torch.save(result, out_path)
    torch.distributed.destroy_process_group()


def train_saved(views_path: str, world: distributed.World) -> dict:
    return train(torch.load(views_path), world)


def test_two_processes_equal_one_with_the_concatenated_batch(tmp_path):
    torch.manual_seed(1)
    views = torch.randn(STEPS, 2, 16, 1, 28, 28)  # per step: two views of 16 images
    torch.save(views, tmp_path / "views.pt")
    threads = torch.get_num_threads()  # restored: later tests compare runs across processes
    torch.set_num_threads(1)
    try:
        single = train(views, distributed.World())
    finally:
        torch.set_num_threads(threads)
    mp.spawn(
        worker,
        args=(free_port(), train_saved, str(tmp_path / "views.pt"), str(tmp_path / "out.pt")),
        nprocs=2,
        join=True,
    )
    double = torch.load(tmp_path / "out.pt")
    for a, b in zip(double["losses"], single["losses"]):
        assert abs(a - b) <= 1e-5 * abs(b)
    # relative to the gradient's scale: a conv bias followed by batch norm has a gradient
    # that is zero up to rounding, where a per-tensor relative error means nothing
    a = torch.cat([g.flatten() for g in double["grads"]])
    b = torch.cat([g.flatten() for g in single["grads"]])
    assert (a - b).norm() <= 1e-5 * b.norm()
    assert (a - b).abs().max() <= 1e-5 * b.abs().max()
    # after Adam steps, rounding-level differences could meet spike thresholds; the weights
    # still agree to 1e-5 of how far they moved (measured: 2e-6)
    torch.manual_seed(0)
    start = SpikingEncoder(CFG).state_dict()
    for key, b in single["state"].items():
        if b.dtype.is_floating_point and key in start:
            moved = (b - start[key]).norm()
            assert (double["state"][key] - b).norm() <= 1e-5 * moved + 1e-7, key


def classify(run_dir: str, world: distributed.World) -> dict:
    """`train.fit` of a linear classifier: 7 images in global batches of 4, the last one of 3
    split 2 + 1 between two processes. Returns the weights after the epoch."""
    torch.manual_seed(0)
    model = torch.nn.Linear(12, 3).double()
    net = distributed.data_parallel(model, world, torch.device("cpu"))
    images = torch.randint(0, 256, (7, 3, 2, 2), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])

    def loss(x, y):
        rates = torch.full((1,), 0.5)  # a firing rate that draws no silent-layer warning
        return F.cross_entropy(net(x.double().flatten(1) / 255), y), rates

    task = loop.Task(
        "finetune", model, [{"params": model.parameters(), "lr": 0.1}], loss, local_mean=True
    )
    settings = loop.LoopSettings(
        epochs=1, batch_size=4 // world.size, schedule="constant", drop_last=False, progress=False
    )
    loop.fit(task, images, labels, settings, Path(run_dir), world=world)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_an_uneven_last_batch_weighs_every_image_alike(tmp_path):
    single = classify(str(tmp_path / "one"), distributed.World())
    out = tmp_path / "out.pt"
    mp.spawn(worker, args=(free_port(), classify, str(tmp_path / "two"), str(out)), nprocs=2)
    double = torch.load(out)
    for key, b in single.items():  # float64: equal to rounding, not just close
        torch.testing.assert_close(double[key], b, rtol=1e-12, atol=1e-12)


def test_torchrun_cli_smoke(tmp_path):
    runs = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "spikessl",
        "pretrain",
        "--config",
        "mnist-quick",
        "time_steps=2",
        "pretrain.epochs=1",
        "pretrain.batch_size=16",
        "data.train_limit=400",
        "data.test_limit=100",
        "knn.k=5",
        "device=cpu",
        "--no-progress",
        f"out_dir={runs}",  # no --run-dir: rank 0 names the run, and every rank uses it
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = runs.iterdir()  # one run folder, not one per process
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0 < summary["knn_accuracy"] <= 100
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1  # rank 0 alone writes
    loop = torch.load(run_dir / "checkpoint.pt", weights_only=True)["loop"]
    assert loop["processes"] == 2  # and keeps each process's RNG, to resume each exactly
    assert not torch.equal(loop["rngs"][0]["torch"], loop["rngs"][1]["torch"])
    assert out.stdout.count('"command": "pretrain"') == 1  # and reports


DIVERGING = """
import sys
from spikessl import cli, pipeline

real, calls = pipeline.nt_xent, []

def jumps_after_epoch_1(z1, z2, t):  # 10 steps an epoch
    calls.append(1)
    return real(z1, z2, t) + (10.0 if len(calls) > 10 else 0.0)

pipeline.nt_xent = jumps_after_epoch_1
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_run_stopped_under_torchrun_says_why_once_and_exits_cleanly(tmp_path):
    script = tmp_path / "diverging.py"
    script.write_text(DIVERGING)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    cmd += ["2", str(script), "pretrain", "--config", "mnist-quick", "time_steps=2"]
    cmd += ["pretrain.epochs=2", "pretrain.batch_size=16", "data.train_limit=400"]
    cmd += ["data.test_limit=100", "knn.k=5", "device=cpu", "on_divergence=stop"]
    cmd += ["--no-progress", "--run-dir", str(tmp_path / "run")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode != 0
    assert out.stderr.count("spikessl pretrain: error: pretrain: its loss diverged at epoch 2") == 1
    assert "terminate called" not in out.stderr, out.stderr[-3000:]  # no process aborted
    assert "exitcode  : 2" in out.stderr, out.stderr[-3000:]  # torchrun's account of rank 0


def test_convert_batchnorm_keeps_a_batch_norm_without_parameters():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3, affine=False))
    x = torch.randn(8, 4)
    expected = model(x)
    distributed.convert_batchnorm(model)
    assert isinstance(model[1], distributed.GlobalBatchNorm) and not model[1].affine
    torch.testing.assert_close(model(x), expected)
