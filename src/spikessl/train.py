"""One training loop for SimCLR pretraining, fine-tuning and the supervised baseline.

What differs between the three is passed in as a ``Task``: the module being trained, its
parameter groups (learning rates), a loss on a batch and an optional per-epoch evaluation.
The loop owns everything else: seeded shuffling of an in-memory index, the learning-rate
schedule, progress and throughput, firing-rate monitoring, metrics, checkpoints.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from spikessl import _native
from spikessl.distributed import World, all_mean, any_process, my_slice
from spikessl.health import (
    check_divergence,
    check_rates,
    keep_before_divergence,
    nonfinite,
    stop_diverged,
)
from spikessl.resumable import (
    Interrupted,
    Progress,
    deferred_signals,
    fresh_sums,
    restore_checkpoint,
    save_checkpoint,
)
from spikessl.schedule import epoch_sizes, lr_factor


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


def _grads_finite(params: list[Tensor]) -> bool:
    grads = [p.grad for p in params if p.grad is not None]
    return not grads or bool(torch.stack([g.float().norm() for g in grads]).isfinite().all())


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


def _epoch_record(
    task: Task,
    at: Progress,
    epoch: int,
    last_epoch: int,
    lr: float,
    steps_per_epoch: int,
    seen: int,
    world: World,
    run_dir: Path,
) -> dict:
    """The finished epoch's metrics line: mean loss, firing rates, speed, the task's
    evaluation when due (main process only) and a divergence flag."""
    seconds = at.sums["seconds"]
    rates = (at.sums["rates"] / steps_per_epoch).tolist()
    record = {
        "epoch": epoch,
        "step": at.step,
        "loss": _mean_loss(at.sums, world),
        "lr": lr,
        "firing_rates": [round(r, 5) for r in rates],
        "seconds": round(seconds, 2),
        "images_per_s": round(seen / seconds, 1),
    }
    if at.sums["skipped"]:
        record["skipped_steps"] = at.sums["skipped"]
    every = task.evaluate_every
    due = epoch == last_epoch or (every and epoch % every == 0)
    if world.is_main and task.evaluate is not None and due:  # evaluation: main process only
        t_eval = time.perf_counter()
        record.update(task.evaluate())
        # wall time beside "seconds" (training only): a resumed run's total adds both
        record["eval_seconds"] = round(time.perf_counter() - t_eval, 2)
    where = f"{task.name} epoch {epoch}"
    if world.is_main and (msg := check_divergence(at.history, record["loss"], where)):
        record["diverging"] = True
        keep_before_divergence(run_dir, msg)
    return record


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
    at = Progress()
    if resume is not None:
        device = images.device
        at = restore_checkpoint(resume, task.model, optimizer, shuffle, world, run_dir, device)
    if main:  # metrics.jsonl always holds exactly the finished epochs of this run
        lines = "".join(json.dumps(r) + "\n" for r in at.history)
        (run_dir / "metrics.jsonl").write_text(lines)
    diverged = next((h for h in at.history if h.get("diverging")), None)
    if diverged and settings.on_divergence == "stop":  # a run stopped for it stays stopped
        raise stop_diverged(task.name, run_dir, diverged, at.epoch)

    def save(epoch_start_shuffle: Tensor) -> None:
        save_checkpoint(at, epoch_start_shuffle, task.model, optimizer, world, run_dir, extra_state)

    warned = False
    with deferred_signals() as received:
        for epoch in range(at.epoch + 1, settings.epochs + 1):
            task.model.train()
            epoch_start = shuffle.get_state()
            order = torch.randperm(n, generator=shuffle).to(images.device)
            bar = tqdm(
                total=seen,
                initial=min(at.epoch_step * batch, seen),
                unit="img",
                leave=False,
                desc=f"{task.name} {epoch}/{settings.epochs}",
                disable=not (settings.progress and main),
            )
            t0 = time.perf_counter()
            for b in range(at.epoch_step, steps_per_epoch):
                rows = order[b * batch : (b + 1) * batch]
                idx = my_slice(rows, world)
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base * lr_factor(
                        settings.schedule, at.step, total, settings.warmup_steps
                    )
                loss, rates = task.loss(images[idx], labels[idx])
                # DDP averages the processes' gradients: a process's mean counts by its share
                # of the batch, which a last batch of len(rows) % processes != 0 splits unevenly
                share = len(idx) * world.size / len(rows) if task.local_mean else 1.0
                bad = _backward_and_step(loss * share, optimizer, params, settings.grad_clip, world)
                if bad is not None:  # stops the run, or warns and counts the skipped step
                    last = run_dir / "checkpoint.pt" if main else None
                    nonfinite(task.name, bad, epoch, at.step, settings.on_nonfinite, last)
                    at.sums["skipped"] += 1
                at.step += 1
                at.epoch_step = b + 1
                if bad is None:
                    at.sums["loss"] += loss.item() * len(idx)
                    at.sums["images"] += len(idx)
                at.sums["rates"] = rates if at.sums["rates"] is None else at.sums["rates"] + rates
                bar.update(len(idx) * world.size)
                bar.set_postfix(loss=f"{loss.item():.4f}")
                if (
                    main
                    and not warned
                    and (msg := check_rates(rates, f"{task.name} step {at.step}"))
                ):
                    warnings.warn(msg, RuntimeWarning, stacklevel=2)
                    warned = True  # once per run: the per-epoch rates are in the metrics
                stop = any_process(bool(received), world)
                every = settings.checkpoint_every
                if stop or (every and at.step % every == 0 and at.epoch_step < steps_per_epoch):
                    at.sums["seconds"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    save(epoch_start)
                if stop:
                    bar.close()
                    raise _stopped(
                        task.name, received, f"at epoch {epoch}, step {at.step}", run_dir
                    )
            bar.close()
            at.sums["seconds"] += time.perf_counter() - t0
            lr = optimizer.param_groups[0]["lr"]
            record = _epoch_record(
                task, at, epoch, settings.epochs, lr, steps_per_epoch, seen, world, run_dir
            )
            at.history.append(record)
            at.epoch, at.epoch_step, at.sums = epoch, 0, fresh_sums()
            if main:
                with open(run_dir / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(record) + "\n")
            save(shuffle.get_state())
            if main:
                _print_epoch(task.name, record)
            if settings.on_divergence == "stop" and any_process("diverging" in record, world):
                raise stop_diverged(task.name, run_dir, record, epoch)
            if any_process(bool(received), world):  # it came during the epoch's evaluation
                raise _stopped(task.name, received, f"after epoch {epoch}", run_dir)
    return at.history


def _stopped(name: str, received: list[int], where: str, run_dir: Path) -> Interrupted:
    """What ``fit`` raises once a deferred SIGINT/SIGTERM is seen and the checkpoint saved
    (``signum`` is SIGTERM for a process that learned of another's signal)."""
    signum = received[0] if received else signal.SIGTERM
    return Interrupted(
        signum, f"{name}: stopped by signal {signum} {where}; checkpoint saved in {run_dir}"
    )


def _mean_loss(sums: dict, world: World) -> float:
    """The epoch's loss per image over every process; NaN when every step was skipped (0.0
    would pass for the best epoch yet, and flag every later one as diverging)."""
    images = all_mean(sums["images"], world)
    return all_mean(sums["loss"], world) / images if images else float("nan")


def _print_epoch(name: str, record: dict) -> None:
    hidden = ("step", "lr", "firing_rates", "eval_seconds")
    shown = {k: v for k, v in record.items() if k not in hidden}
    rates_txt = " ".join(f"{r:.3f}" for r in record["firing_rates"])
    line = "  ".join(_fmt(k, v) for k, v in shown.items())
    print(f"[{name}] {line}  rates {rates_txt}", file=sys.stderr, flush=True)


def _fmt(key: str, value: object) -> str:
    if isinstance(value, float):  # accuracies in percent, as the summaries print them
        return f"{key} {value:.2f}" if key.endswith("accuracy") else f"{key} {value:.4g}"
    return f"{key} {value}"
