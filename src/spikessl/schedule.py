"""How long and how fast a training run goes: its steps and the learning rate at each.

``epoch_sizes`` turns a dataset's size and a batch into steps per epoch and steps in all,
refusing what cannot train; ``lr_factor`` is the schedule (linear warm-up, then cosine
decay or a constant rate) that ``train.fit`` multiplies every parameter group's rate by.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from spikessl.config import SCHEDULES

if TYPE_CHECKING:
    from spikessl.train import LoopSettings


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
