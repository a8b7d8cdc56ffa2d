"""What a sweep record says about the machine it ran on: versions, CPU, threads, GPU, and a
speed probe that lets wall times compare across machines."""

from __future__ import annotations

import functools
import os
import platform
import time
from pathlib import Path


def environment(device) -> dict:
    """The record's ``environment``: what ran the cell on ``device`` (a ``torch.device``)."""
    import torch

    import spikessl

    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "cpus": os.cpu_count(),
        # the CPU's kernels and the number of threads order floating-point sums: the same
        # seed gives the same numbers bit for bit only where both are the same
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "spikessl": getattr(spikessl, "__version__", None),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    env["speed_probe"] = speed_probe(str(device))
    return env


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache
def speed_probe(device: str, batch: int = 64, time_steps: int = 10, steps: int = 10) -> float:
    """Images per second through one fixed SimCLR step on ``device``, once per process.

    Wall times only compare within one machine (the same run took 2x as long on one 2-core
    machine as on another), so each record carries this probe: the paper-mnist network with
    batch norm at T=10, ``2 x batch`` random images, forward -> NT-Xent -> backward -> Adam,
    the fastest of ``steps`` timed steps after one warm-up (as ``timeit`` advises: slower
    steps measure other load; on one 2-core machine repeats of the median spread +-12%, of
    the fastest +-3%). It takes about 1.5 s on 2 CPU cores. A run's seconds times its
    record's probe (probe-images of work) compare across machines.
    """
    import torch

    from spikessl.encoders import EncoderConfig, SpikingEncoder
    from spikessl.losses import nt_xent

    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        net = SpikingEncoder(EncoderConfig(slope=5.0, norm="batch")).to(device)
        optim = torch.optim.Adam(net.parameters(), lr=1e-3)
        images = torch.rand(2 * batch, 1, 28, 28, device=device)
        seconds = []
        for _ in range(steps + 1):
            start = time.perf_counter()
            counts = net(images, time_steps)
            loss = nt_xent(counts[:batch], counts[batch:], temperature=0.1)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - start)
    return round(2 * batch / min(seconds[1:]), 1)
