"""What a training run watches in its own numbers: layers that are silent or saturated
(no surrogate gradient), a loss that diverges, and a non-finite loss or gradient; the
warnings it gives and the errors that stop it (``Stopped``, ``Diverged``).

Nothing here trains; ``train.fit`` calls these.
"""

from __future__ import annotations

import math
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from spikessl.records import replacing

if TYPE_CHECKING:
    from torch import Tensor

SILENT, SATURATED = 1e-4, 0.99  # firing rates that starve the surrogate gradient
# an epoch's loss above twice the lowest so far, and this much above it, is a divergence
DIVERGED_BY = 0.5


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
        "gradient; try encoder.norm=batch (where it is off), a lower (silent) or higher "
        "(saturated) encoder.threshold, or a smaller encoder.slope."
    )


def check_divergence(history: list[dict], loss: float, where: str) -> str | None:
    """A warning text when ``loss`` (this epoch's) has more than doubled from the lowest
    epoch loss in ``history`` and risen by over ``DIVERGED_BY``: training is diverging.

    Measured: a 32-channel MNIST encoder's NT-Xent went 0.92 -> 2.23 -> 5.08 in two epochs
    and did not come back, and the loop went on without a word.
    """
    finite = [h for h in history if math.isfinite(h["loss"])]  # NaN: every step was skipped
    if not finite or not math.isfinite(loss):
        return None  # a non-finite loss is on_nonfinite's business
    best = min(finite, key=lambda h: h["loss"])
    if loss <= 2 * best["loss"] or loss - best["loss"] <= DIVERGED_BY:
        return None
    return (
        f"{where}: loss {loss:.4g}, up from {best['loss']:.4g} at epoch {best['epoch']}: "
        "training is diverging and rarely recovers; rerun with a lower learning rate or "
        "with gradient clipping (grad_clip=1.0 in the pretrain or finetune section)"
    )


class Stopped(FloatingPointError):
    """Training stopped on its own numbers, in ``stage`` (the task's name: "pretrain",
    "finetune", "supervised"): a NaN/inf under on_nonfinite=stop, or ``Diverged``."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


class Diverged(Stopped):
    """An epoch's loss diverged (``check_divergence``) and ``on_divergence`` is "stop": the
    epoch's metrics and checkpoint are saved, the last checkpoint before it is kept in
    ``checkpoint-before-divergence.pt``, and training stops."""


def stop_diverged(name: str, run_dir: Path, record: dict, at: int) -> Diverged:
    """The error for ``record``, the run's first diverging epoch, with the run at epoch ``at``."""
    went_on = f", and the run is at epoch {at}" if at != record["epoch"] else ""
    return Diverged(
        name,
        f"{name}: its loss diverged at epoch {record['epoch']} ({record['loss']:.4g}{went_on}): "
        f"stopped (on_divergence=stop). {run_dir} keeps its metrics, its checkpoint and the "
        "last checkpoint before the divergence (checkpoint-before-divergence.pt). Rerun with "
        "gradient clipping (grad_clip=1.0 in the pretrain or finetune section) or a lower "
        "learning rate, or continue this run with on_divergence=warn",
    )


def nonfinite(
    name: str, bad: str, epoch: int, step: int, policy: str, checkpoint: Path | None
) -> None:
    """A step skipped for a non-finite loss or gradient: raise (``policy`` "stop", naming
    the last good ``checkpoint`` if there is one) or warn ("skip")."""
    if policy == "stop":
        kept = (
            f"; the last good checkpoint is {checkpoint}"
            if checkpoint is not None and checkpoint.exists()
            else ""
        )
        raise Stopped(
            name,
            f"{name}: {bad} at epoch {epoch}, step {step}: likely a too-high learning rate "
            f"(lower lr) or an exploding input (on_nonfinite=skip skips such steps){kept}",
        )
    warnings.warn(f"{name} step {step}: {bad}; step skipped", RuntimeWarning, stacklevel=3)


def keep_before_divergence(run_dir: Path, msg: str) -> None:
    """On the first diverging epoch, keep a copy of the last checkpoint saved before this
    epoch's end (the epoch's own is written after this) and warn; later ones say nothing."""
    kept = run_dir / "checkpoint-before-divergence.pt"
    if kept.exists():
        return
    with open(run_dir / "checkpoint.pt", "rb") as src, replacing(kept) as dst:
        shutil.copyfileobj(src, dst)
    msg += f" (the last checkpoint before this epoch's end: {kept})"
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
