"""The labelled images of a fine-tuning run: which ones it trains on (the label budget),
which it holds out to validate on, that they are the ones its pretraining left out, and how
many epochs a small budget needs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from spikessl.checkpoints import split_digest
from spikessl.config import Config, FinetuneConfig
from spikessl.data import Data, stratified_split
from spikessl.records import finetune_epoch_count


def finetune_epochs(ft: FinetuneConfig, images: int, processes: int = 1) -> int:
    """``ft.epochs``, or more where ``images`` labelled images give under ``ft.min_steps`` steps.

    ``ft.batch_size`` is per process, as in ``train.fit``.
    """
    per_epoch = math.ceil(images / (ft.batch_size * processes))
    return finetune_epoch_count(ft.epochs, ft.min_steps, per_epoch)


def labelled_split(data: Data, cfg: Config) -> tuple[Tensor, Tensor]:
    """(trained, held): the training images whose labels fine-tuning uses
    (``finetune.label_fraction``), and the validation part held out of them
    (``finetune.val_fraction`` of the labelled part, stratified and seeded; none at 0).

    The same images are held out of every label budget: the fractions below the labelled part
    draw from the rest of it, in proportion, and 1 is every other training image.
    """
    f, held = cfg.finetune.label_fraction, _validation(data, cfg)
    if f == 1.0:
        everything = torch.arange(len(data.train_labels), device=data.labelled.device)
        part = everything[~torch.isin(everything, held)]
    else:
        part = data.labelled[~torch.isin(data.labelled, held)]  # the labelled part at val 0
        if f != 0.0 and f != cfg.data.labelled_fraction:
            labels = data.train_labels[part].cpu()
            _, keep = stratified_split(labels, f / cfg.data.labelled_fraction, cfg.seed)
            part = part[keep.to(part.device)]
    _check_every_class_trains(data, part, held, cfg)
    return part, held


def _check_every_class_trains(data: Data, part: Tensor, held: Tensor, cfg: Config) -> None:
    """The validation part must leave every class something to train on: it takes at least
    one labelled image of each class, all of them where a class has one (a tiny
    ``data.train_limit``), or where ``val_fraction`` rounds up to every one."""
    labels = data.train_labels
    missing = sorted(set(labels[held].unique().tolist()) - set(labels[part].unique().tolist()))
    if not missing:
        return
    counts = torch.bincount(labels[data.labelled].cpu(), minlength=data.num_classes)
    fewest = min(int(counts[c]) for c in missing)
    fixes = [
        "finetune.label_fraction=1 (train on every other training label)",
        "more data (a larger data.train_limit, or 0 for all)",
        "finetune.val_fraction=0",
    ]
    if fewest > 1:  # one image of a class always goes to validation
        fixes.insert(0, "a lower finetune.val_fraction")
    raise ValueError(
        f"finetune.val_fraction={cfg.finetune.val_fraction} holds out every labelled image of "
        f"class(es) {missing} (the labelled part has {fewest} of the fewest), so fine-tuning, "
        f"the supervised baseline and the probe would train without them; use "
        + ", or ".join(fixes)
    )


def _validation(data: Data, cfg: Config) -> Tensor:
    if cfg.finetune.val_fraction == 0:
        return data.labelled[:0]
    labels = data.train_labels[data.labelled].cpu()
    _, held = stratified_split(labels, cfg.finetune.val_fraction, cfg.seed)
    return data.labelled[held.to(data.labelled.device)]


def check_same_split(checkpoint: dict, data: Data) -> None:
    """The labelled part must be the one the pretraining left out (the paper's 80/20)."""
    saved = checkpoint.get("split", {}).get("labelled")
    digest = checkpoint.get("split_labelled_sha256")  # a safetensors export's record of it
    if (saved is not None and not torch.equal(saved.cpu(), data.labelled.cpu())) or (
        digest is not None and digest != split_digest(data.labelled)
    ):
        raise ValueError(
            "fine-tuning's labelled part is not the one this pretraining run left out: its seed, "
            "data.labelled_fraction or data.train_limit differ from the run's, so images it "
            "pretrained on would be fine-tuned on. Drop the --config or overrides that set them "
            "(the run's own config is the default), or pretrain with them"
        )


def validation_summary(history: list[dict], held_out: int) -> dict:
    """With a validation part: its final accuracy, its best and at which epoch, and the test
    accuracy of that epoch (the epoch a validation set would choose, the test set unseen)."""
    if not held_out:
        return {}
    rows = [h for h in history if "val_accuracy" in h]
    best = max(rows, key=lambda h: h["val_accuracy"])  # the first of equals: the earliest
    return {
        "val_images": held_out,
        "val_accuracy": rows[-1]["val_accuracy"],
        "best_val_accuracy": best["val_accuracy"],
        "best_val_epoch": best["epoch"],
        "test_accuracy_at_best_val": best["test_accuracy"],
    }
