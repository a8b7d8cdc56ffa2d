"""What makes the training loop resumable: a resumed run equals an uninterrupted one.

SIGINT/SIGTERM are deferred to the end of a step (``deferred_signals``), then a checkpoint is
written whole or not at all (``atomic_save``) and holds the model, the optimiser, every RNG
and the loop's place (``Progress``); ``restore_checkpoint`` puts all of it back.
"""

from __future__ import annotations

import random
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from spikessl.distributed import World, gather_objects
from spikessl.records import replacing


def atomic_save(obj: object, path: Path) -> None:
    """``torch.save`` through ``records.replacing``: a crash never leaves half a file."""
    with replacing(path) as fh:
        torch.save(obj, fh)


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived: the step finished, a checkpoint was written, training stops."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


@contextmanager
def deferred_signals():
    """SIGINT/SIGTERM only set a flag, so a step is never cut in half (main thread only)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda signum, _frame: received.append(signum))
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    np_state = np.random.get_state()
    state["numpy"] = (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:])
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    if "cuda" in state and torch.cuda.is_available():  # as many GPUs as both machines have:
        for i, gpu_state in zip(range(torch.cuda.device_count()), state["cuda"]):  # moved runs
            torch.cuda.set_rng_state(gpu_state, i)


def fresh_sums() -> dict:
    return {"loss": 0.0, "images": 0, "rates": None, "seconds": 0.0, "skipped": 0}


@dataclass
class Progress:
    """Where the loop stands: what a checkpoint saves and a resume restores."""

    epoch: int = 0  # finished epochs
    epoch_step: int = 0  # finished steps of the epoch under way
    step: int = 0  # finished steps in all
    history: list[dict] = field(default_factory=list)  # one record per finished epoch
    sums: dict = field(default_factory=fresh_sums)  # the epoch under way, so far


def restore_checkpoint(
    resume: dict,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    shuffle: torch.Generator,
    world: World,
    run_dir: Path,
    device: torch.device,
) -> Progress:
    """Load a checkpoint written by ``save_checkpoint`` of the same run into the model,
    optimiser, shuffling generator and RNGs, and return where its loop stood."""
    model.load_state_dict(resume["model"])
    optimizer.load_state_dict(resume["optimizer"])
    loop = resume["loop"]
    if loop.get("processes", 1) != world.size:  # steps, schedule and RNG streams change
        raise ValueError(
            f"{run_dir} was trained by {loop.get('processes', 1)} process(es): resume it "
            f"with as many (torchrun --nproc_per_node {loop.get('processes', 1)}), not "
            f"{world.size}"
        )
    # copies: the caller's checkpoint dict stays as it was loaded
    sums = dict(loop["sums"])
    if torch.is_tensor(sums["rates"]):  # saved from the training device, loaded on the CPU
        sums["rates"] = sums["rates"].to(device)
    shuffle.set_state(loop["shuffle_state"])
    set_rng_state(loop["rngs"][world.rank] if "rngs" in loop else loop["rng"])
    return Progress(loop["epoch"], loop["epoch_step"], loop["step"], list(loop["history"]), sums)


def save_checkpoint(
    at: Progress,
    epoch_start_shuffle: Tensor,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    world: World,
    run_dir: Path,
    extra_state: dict | None,
) -> None:
    """Write ``checkpoint.pt``: model, optimiser, every process's RNGs and the loop's place
    (``shuffle_state`` is the generator at the start of the epoch under way)."""
    rngs = gather_objects(rng_state(), world)  # every process draws its own augmentations
    if not world.is_main:
        return
    loop = {
        "epoch": at.epoch,
        "epoch_step": at.epoch_step,
        "step": at.step,
        "shuffle_state": epoch_start_shuffle,
        "rng": rngs[0],
        "sums": at.sums,
        "history": at.history,
        "processes": world.size,
    }
    if world.size > 1:
        loop["rngs"] = rngs
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": at.epoch,
        "step": at.step,
        "loop": loop,
        **(extra_state or {}),
    }
    atomic_save(state, run_dir / "checkpoint.pt")
