"""One training loop for SimCLR pretraining, fine-tuning and the supervised baseline.

What differs between the three is passed in as a ``Task``: the module being trained, its
parameter groups (learning rates), a loss on a batch and an optional per-epoch evaluation.
The loop owns everything else: seeded shuffling of an in-memory index, the learning-rate
schedule, progress and throughput, firing-rate monitoring, metrics, checkpoints.
"""

from __future__ import annotations

import json
import math
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from spikessl import _native
from spikessl.distributed import World, all_mean, any_process, gather_objects, my_slice
from spikessl.health import (
    check_divergence,
    check_rates,
    keep_before_divergence,
    nonfinite,
    stop_diverged,
)
from spikessl.records import replacing


@dataclass
class Task:
    name: str  # "pretrain", "finetune" or "supervised"
    model: nn.Module  # saved in the checkpoint
    param_groups: list[dict]  # each with "params" and "lr"
    # (images uint8 (B, C, H, W), labels (B,)) -> (loss, firing rate of each layer)
    loss: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
    evaluate: Callable[[], dict] | None = None  # per-epoch metrics, e.g. test accuracy
    evaluate_every: int = 1  # 0: only after the last epoch
    # the loss is a mean over this process's images (cross-entropy), not over the whole
    # batch (NT-Xent on gathered latents): under torchrun it is then weighted by its share
    local_mean: bool = False


@dataclass(frozen=True)
class LoopSettings:
    epochs: int
    batch_size: int
    schedule: str = "cosine"
    weight_decay: float = 0.0
    seed: int = 0
    drop_last: bool = True  # NT-Xent wants full batches; classification keeps every image
    progress: bool = True
    checkpoint_every: int = 0  # also checkpoint every this many steps (0: each epoch only)
    on_nonfinite: str = "stop"  # or "skip": drop a step whose loss/gradients are NaN/inf
    grad_clip: float = 0.0  # > 0: clip the gradients' global norm to this (after the check)
    warmup_steps: int = 0  # linear warm-up of the learning rate over these first steps
    on_divergence: str = "warn"  # or "stop": raise Diverged after a diverging epoch


SCHEDULES = ("cosine", "constant")


def lr_factor(schedule: str, step: int, total: int, warmup: int = 0) -> float:
    """Multiplier of the base learning rate at ``step`` (from 0) of ``total`` steps.

    The first ``warmup`` steps rise linearly, ``(step + 1) / warmup``, to the full rate;
    then ``constant`` keeps it and ``cosine`` decays it to 0 over the remaining steps.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; use one of {SCHEDULES}")
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


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
def _deferred_signals():
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
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _grads_finite(params: list[Tensor]) -> bool:
    grads = [p.grad for p in params if p.grad is not None]
    return not grads or bool(torch.stack([g.float().norm() for g in grads]).isfinite().all())


def epoch_sizes(
    name: str, n: int, batch: int, settings: LoopSettings, processes: int = 1
) -> tuple[int, int, int]:
    """Steps per epoch, steps in all, and images per epoch, for ``n`` images in global
    batches of ``batch``; a ``ValueError`` that says what to change when they cannot train.
    Without ``drop_last`` a last, partial batch is kept unless it has fewer images than
    ``processes``: some process would get none (a NaN mean loss)."""
    drop_last = settings.drop_last or 0 < n % batch < processes
    steps_per_epoch = n // batch if drop_last else math.ceil(n / batch)
    if steps_per_epoch < 1:
        raise ValueError(
            f"{name}: {n} training images do not fill one batch of {batch}; lower "
            "batch_size or use more data"
        )
    total = steps_per_epoch * settings.epochs
    if settings.warmup_steps >= total:
        raise ValueError(
            f"{name}: warmup_steps={settings.warmup_steps} leaves none of its {total} "
            "optimiser steps at the full learning rate; lower warmup_steps (in the pretrain "
            "or finetune section) below that, e.g. to a tenth of it"
        )
    return steps_per_epoch, total, steps_per_epoch * batch if drop_last else n


def _backward_and_step(
    loss: Tensor, optimizer: torch.optim.Optimizer, params: list[Tensor], clip: float, world: World
) -> str | None:
    """Backward, gradient clipping (``clip`` > 0) and one optimiser step, unless the loss or a
    gradient is not finite: then nothing is stepped and the reason is returned. Under
    torchrun every process skips, or none."""
    optimizer.zero_grad(set_to_none=True)
    bad = None if torch.isfinite(loss) else f"loss is {loss.item()}"
    if any_process(bad is not None, world):
        return bad or "loss is not finite in another process"
    loss.backward()  # under torchrun, DDP averages the gradients here
    if not _grads_finite(params):
        return "gradients are not finite"
    if clip:
        nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    return None


def fit(
    task: Task,
    images: Tensor,
    labels: Tensor,
    settings: LoopSettings,
    run_dir: Path,
    extra_state: dict | None = None,
    world: World | None = None,
    resume: dict | None = None,
) -> list[dict]:
    """Train ``task`` on ``images[i], labels[i]`` (in-memory uint8 tensors on the device).

    Writes ``metrics.jsonl`` (one line per epoch) and ``checkpoint.pt`` (model, optimizer,
    RNG and loop state plus ``extra_state``, e.g. the config) into ``run_dir`` after every
    epoch and every ``checkpoint_every`` steps; returns the per-epoch metrics. ``resume``, a
    checkpoint of the same run, continues exactly where it stopped: the result equals an
    uninterrupted run. With ``world`` (torchrun), ``batch_size`` is per process.
    """
    world = world or World()
    main = world.is_main
    run_dir.mkdir(parents=True, exist_ok=True)
    _native.keep_freed_memory()  # every step reuses the last step's memory: no page faults
    optimizer = torch.optim.Adam(task.param_groups, weight_decay=settings.weight_decay)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    n, batch = images.shape[0], settings.batch_size * world.size  # global batch
    steps_per_epoch, total, seen = epoch_sizes(task.name, n, batch, settings, world.size)
    shuffle = torch.Generator().manual_seed(settings.seed)
    history: list[dict] = []
    done_epochs, epoch_step, step = 0, 0, 0
    sums: dict = {"loss": 0.0, "images": 0, "rates": None, "seconds": 0.0, "skipped": 0}
    if resume is not None:
        task.model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        loop = resume["loop"]
        if loop.get("processes", 1) != world.size:  # steps, schedule and RNG streams change
            raise ValueError(
                f"{run_dir} was trained by {loop.get('processes', 1)} process(es): resume it "
                f"with as many (torchrun --nproc_per_node {loop.get('processes', 1)}), not "
                f"{world.size}"
            )
        # copies: the caller's checkpoint dict stays as it was loaded
        history, sums = list(loop["history"]), dict(loop["sums"])
        if torch.is_tensor(sums["rates"]):  # saved from the training device, loaded on the CPU
            sums["rates"] = sums["rates"].to(images.device)
        done_epochs, epoch_step, step = loop["epoch"], loop["epoch_step"], loop["step"]
        shuffle.set_state(loop["shuffle_state"])
        set_rng_state(loop["rngs"][world.rank] if "rngs" in loop else loop["rng"])
    if main:  # metrics.jsonl always holds exactly the finished epochs of this run
        lines = "".join(json.dumps(r) + "\n" for r in history)
        (run_dir / "metrics.jsonl").write_text(lines)
    diverged = next((h for h in history if h.get("diverging")), None)
    if diverged and settings.on_divergence == "stop":  # a run stopped for it stays stopped
        raise stop_diverged(task.name, run_dir, diverged, done_epochs)

    def save(epoch_start_shuffle: Tensor) -> None:
        rngs = gather_objects(rng_state(), world)  # every process draws its own augmentations
        if not main:
            return
        loop = {
            "epoch": done_epochs,
            "epoch_step": epoch_step,
            "step": step,
            "shuffle_state": epoch_start_shuffle,
            "rng": rngs[0],
            "sums": sums,
            "history": history,
            "processes": world.size,
        }
        if world.size > 1:
            loop["rngs"] = rngs
        state = {
            "model": task.model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": done_epochs,
            "step": step,
            "loop": loop,
            **(extra_state or {}),
        }
        atomic_save(state, run_dir / "checkpoint.pt")

    warned = False
    with _deferred_signals() as received:
        for epoch in range(done_epochs + 1, settings.epochs + 1):
            task.model.train()
            epoch_start = shuffle.get_state()
            order = torch.randperm(n, generator=shuffle).to(images.device)
            bar = tqdm(
                total=seen,
                initial=min(epoch_step * batch, seen),
                unit="img",
                leave=False,
                desc=f"{task.name} {epoch}/{settings.epochs}",
                disable=not (settings.progress and main),
            )
            t0 = time.perf_counter()
            for b in range(epoch_step, steps_per_epoch):
                rows = order[b * batch : (b + 1) * batch]
                idx = my_slice(rows, world)
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base * lr_factor(
                        settings.schedule, step, total, settings.warmup_steps
                    )
                loss, rates = task.loss(images[idx], labels[idx])
                # DDP averages the processes' gradients: a process's mean counts by its share
                # of the batch, which a last batch of len(rows) % processes != 0 splits unevenly
                share = len(idx) * world.size / len(rows) if task.local_mean else 1.0
                bad = _backward_and_step(loss * share, optimizer, params, settings.grad_clip, world)
                if bad is not None:  # stops the run, or warns and counts the skipped step
                    last = run_dir / "checkpoint.pt" if main else None
                    nonfinite(task.name, bad, epoch, step, settings.on_nonfinite, last)
                    sums["skipped"] += 1
                step += 1
                epoch_step = b + 1
                if bad is None:
                    sums["loss"] += loss.item() * len(idx)
                    sums["images"] += len(idx)
                sums["rates"] = rates if sums["rates"] is None else sums["rates"] + rates
                bar.update(len(idx) * world.size)
                bar.set_postfix(loss=f"{loss.item():.4f}")
                if main and not warned and (msg := check_rates(rates, f"{task.name} step {step}")):
                    warnings.warn(msg, RuntimeWarning, stacklevel=2)
                    warned = True  # once per run: the per-epoch rates are in the metrics
                stop = any_process(bool(received), world)
                every = settings.checkpoint_every
                if stop or (every and step % every == 0 and epoch_step < steps_per_epoch):
                    sums["seconds"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    save(epoch_start)
                if stop:
                    bar.close()
                    signum = received[0] if received else signal.SIGTERM
                    raise Interrupted(
                        signum,
                        f"{task.name}: stopped by signal {signum} at epoch "
                        f"{epoch}, step {step}; checkpoint saved in {run_dir}",
                    )
            bar.close()
            seconds = sums["seconds"] + time.perf_counter() - t0
            rates_epoch = (sums["rates"] / steps_per_epoch).tolist()
            record = {
                "epoch": epoch,
                "step": step,
                "loss": _mean_loss(sums, world),
                "lr": optimizer.param_groups[0]["lr"],
                "firing_rates": [round(r, 5) for r in rates_epoch],
                "seconds": round(seconds, 2),
                "images_per_s": round(seen / seconds, 1),
            }
            if sums["skipped"]:
                record["skipped_steps"] = sums["skipped"]
            every = task.evaluate_every
            due = epoch == settings.epochs or (every and epoch % every == 0)
            if main and task.evaluate is not None and due:  # evaluation: main process only
                t_eval = time.perf_counter()
                record.update(task.evaluate())
                # wall time beside "seconds" (training only): a resumed run's total adds both
                record["eval_seconds"] = round(time.perf_counter() - t_eval, 2)
            where = f"{task.name} epoch {epoch}"
            if main and (msg := check_divergence(history, record["loss"], where)):
                record["diverging"] = True
                keep_before_divergence(run_dir, msg)
            history.append(record)
            done_epochs, epoch_step = epoch, 0
            sums = {"loss": 0.0, "images": 0, "rates": None, "seconds": 0.0, "skipped": 0}
            if main:
                with open(run_dir / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(record) + "\n")
            save(shuffle.get_state())
            if main:
                _print_epoch(task.name, record, rates_epoch)
            if settings.on_divergence == "stop" and any_process("diverging" in record, world):
                raise stop_diverged(task.name, run_dir, record, epoch)
    return history


def _mean_loss(sums: dict, world: World) -> float:
    """The epoch's loss per image over every process; NaN when every step was skipped (0.0
    would pass for the best epoch yet, and flag every later one as diverging)."""
    images = all_mean(sums["images"], world)
    return all_mean(sums["loss"], world) / images if images else float("nan")


def _print_epoch(name: str, record: dict, rates: list[float]) -> None:
    hidden = ("step", "lr", "firing_rates", "eval_seconds")
    shown = {k: v for k, v in record.items() if k not in hidden}
    rates_txt = " ".join(f"{r:.3f}" for r in rates)
    line = "  ".join(_fmt(k, v) for k, v in shown.items())
    print(f"[{name}] {line}  rates {rates_txt}", file=sys.stderr, flush=True)


def _fmt(key: str, value: object) -> str:
    if isinstance(value, float):
        return f"{key} {value:.4g}"
    return f"{key} {value}"
