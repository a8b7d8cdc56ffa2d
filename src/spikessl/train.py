"""One training loop for SimCLR pretraining, fine-tuning and the supervised baseline.

What differs between the three is passed in as a ``Task``: the module being trained, its
parameter groups (learning rates), a loss on a batch and an optional per-epoch evaluation.
The loop owns everything else: seeded shuffling of an in-memory index, the learning-rate
schedule, progress and throughput, firing-rate monitoring, metrics, checkpoints.
"""

from __future__ import annotations

import json
import math
import os
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

SILENT, SATURATED = 1e-4, 0.99  # firing rates that starve the surrogate gradient


@dataclass
class Task:
    name: str  # "pretrain", "finetune" or "supervised"
    model: nn.Module  # saved in the checkpoint
    param_groups: list[dict]  # each with "params" and "lr"
    # (images uint8 (B, C, H, W), labels (B,)) -> (loss, firing rate of each layer)
    loss: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
    evaluate: Callable[[], dict] | None = None  # per-epoch metrics, e.g. test accuracy
    evaluate_every: int = 1  # 0: only after the last epoch


@dataclass(frozen=True)
class LoopSettings:
    epochs: int
    batch_size: int
    schedule: str = "cosine"
    weight_decay: float = 0.0
    seed: int = 0
    drop_last: bool = True  # NT-Xent wants full batches; classification keeps every image
    progress: bool = True


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of the base learning rate at ``step`` of ``total``: cosine decay to 0."""
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r}; use 'cosine' or 'constant'")
    return 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))


def atomic_save(obj: object, path: Path) -> None:
    """Write to a temporary file, fsync, then rename: a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_rates(rates: Tensor, where: str) -> str | None:
    """A warning text when some layer is silent or saturated (no surrogate gradient)."""
    bad = [
        f"layer {i} {'silent' if r < SILENT else 'saturated'} (rate {r:.2g})"
        for i, r in enumerate(rates.tolist())
        if not SILENT <= r <= SATURATED  # also catches NaN
    ]
    if not bad:
        return None
    return (
        f"{where}: {', '.join(bad)}. A layer that never (or always) fires passes no "
        "gradient; try encoder.norm=batch, a lower encoder.threshold or a smaller slope."
    )


def fit(
    task: Task,
    images: Tensor,
    labels: Tensor,
    settings: LoopSettings,
    run_dir: Path,
    extra_state: dict | None = None,
) -> list[dict]:
    """Train ``task`` on ``images[i], labels[i]`` (in-memory uint8 tensors on the device).

    Writes ``metrics.jsonl`` (one line per epoch) and ``checkpoint.pt`` (state_dicts plus
    ``extra_state``, e.g. the config) into ``run_dir``; returns the per-epoch metrics.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    _native.keep_freed_memory()  # every step reuses the last step's memory: no page faults
    (run_dir / "metrics.jsonl").write_text("")  # a rerun in the same directory starts afresh
    optimizer = torch.optim.Adam(task.param_groups, weight_decay=settings.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    n = images.shape[0]
    steps_per_epoch = (
        n // settings.batch_size if settings.drop_last else math.ceil(n / settings.batch_size)
    )
    if steps_per_epoch < 1:
        raise ValueError(
            f"{task.name}: {n} training images do not fill one batch of "
            f"{settings.batch_size}; lower batch_size or use more data"
        )
    total = steps_per_epoch * settings.epochs
    seen = steps_per_epoch * settings.batch_size if settings.drop_last else n  # images/epoch
    shuffle = torch.Generator().manual_seed(settings.seed)
    history: list[dict] = []
    step = 0
    warned = False
    for epoch in range(1, settings.epochs + 1):
        task.model.train()
        order = torch.randperm(n, generator=shuffle).to(images.device)
        loss_sum, rate_sum, t0 = 0.0, None, time.perf_counter()
        bar = tqdm(
            total=seen,
            unit="img",
            leave=False,
            desc=f"{task.name} {epoch}/{settings.epochs}",
            disable=not settings.progress,
        )
        for b in range(steps_per_epoch):
            idx = order[b * settings.batch_size : (b + 1) * settings.batch_size]
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * lr_factor(settings.schedule, step, total)
            loss, rates = task.loss(images[idx], labels[idx])
            if not torch.isfinite(loss):
                kept = (
                    f"; the last good checkpoint (epoch {epoch - 1}) is {run_dir / 'checkpoint.pt'}"
                    if epoch > 1
                    else ""
                )
                raise FloatingPointError(
                    f"{task.name}: loss is {loss.item()} at epoch {epoch}, step {step}: likely "
                    f"a too-high learning rate (lower lr) or an exploding input{kept}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += loss.item() * len(idx)
            rate_sum = rates if rate_sum is None else rate_sum + rates
            bar.update(len(idx))
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if not warned and (msg := check_rates(rates, f"{task.name} step {step}")):
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
                warned = True  # once per run: the per-epoch rates are in the metrics
        bar.close()
        seconds = time.perf_counter() - t0
        rates_epoch = (rate_sum / steps_per_epoch).tolist()
        record = {
            "epoch": epoch,
            "step": step,
            "loss": loss_sum / seen,
            "lr": optimizer.param_groups[0]["lr"],
            "firing_rates": [round(r, 5) for r in rates_epoch],
            "seconds": round(seconds, 2),
            "images_per_s": round(seen / seconds, 1),
        }
        last = epoch == settings.epochs
        every = task.evaluate_every
        if task.evaluate is not None and (last or (every and epoch % every == 0)):
            record.update(task.evaluate())
        history.append(record)
        with open(run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        state = {
            "model": task.model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "step": step,
            **(extra_state or {}),
        }
        atomic_save(state, run_dir / "checkpoint.pt")
        shown = {k: v for k, v in record.items() if k not in ("step", "lr", "firing_rates")}
        rates_txt = " ".join(f"{r:.3f}" for r in rates_epoch)
        print(
            f"[{task.name}] "
            + "  ".join(_fmt(k, v) for k, v in shown.items())
            + f"  rates {rates_txt}",
            file=sys.stderr,
            flush=True,
        )
    return history


def _fmt(key: str, value: object) -> str:
    if isinstance(value, float):
        return f"{key} {value:.4g}"
    return f"{key} {value}"
