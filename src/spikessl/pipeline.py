"""The paper's protocol as functions: pretrain, kNN, fine-tune, supervised baseline.

Each takes a ``Config``, builds data, models and a ``train.Task``, runs the one training
loop and writes a run directory: ``config.yaml``, ``metrics.jsonl``, ``checkpoint.pt``
(``state_dict`` + config) and ``summary.json``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spikessl import distributed
from spikessl.augment import build_augment, two_views
from spikessl.checkpoints import load_checkpoint, pretrained_encoder
from spikessl.config import Config
from spikessl.config_yaml import to_dict
from spikessl.data import Data, load_data
from spikessl.dataset_catalog import check_pretraining_fills
from spikessl.distributed import World
from spikessl.encoders import SimCLR, SpikingClassifier, SpikingEncoder
from spikessl.evaluate import (
    Pixels,
    images_accuracy,
    knn_accuracy,
    knn_voters,
    precision,
    probe_accuracy,
    test_accuracy,
)
from spikessl.heads import param_groups, prototype_head
from spikessl.labelled import (
    check_same_split,
    finetune_epochs,
    labelled_split,
    validation_summary,
)
from spikessl.losses import nt_xent
from spikessl.records import evaluation_interval
from spikessl.runs import check_run_dir, new_run_dir, run_stage, write_summary
from spikessl.schedule import epoch_sizes
from spikessl.train import LoopSettings, Task, fit


def _start(cfg: Config) -> tuple[torch.device, World, Data]:
    """Device, torchrun process group (if any), seeded RNG and the data."""
    device = distributed.resolve_device(cfg.device)
    world = distributed.setup(device)
    device = distributed.local_device(device, world)
    torch.manual_seed(cfg.seed)  # the same initial weights in every process
    return device, world, load_data(cfg, device)


def _distribute(model: nn.Module, cfg: Config, world: World) -> None:
    """Global batch-norm statistics, and distinct augmentations, in every process."""
    if world.size > 1:
        distributed.convert_batchnorm(model)
        torch.manual_seed(cfg.seed + world.rank)


def pretrain(
    cfg: Config,
    run_dir: str | Path | None = None,
    progress: bool = True,
    resume: dict | None = None,
) -> dict:
    """SimCLR on the unlabelled part: NT-Xent of the spike counts of two augmented views."""
    check_run_dir(run_dir, resume is not None)  # before the data and the kNN pass
    check_pretraining_fills(cfg)
    device, world, data = _start(cfg)
    pre = cfg.pretrain
    model = SimCLR(SpikingEncoder(cfg.encoder), pre.projection_dim, pre.center).to(device)
    _distribute(model, cfg, world)
    augment = build_augment(cfg.augment, cfg.encoder.image_size, cfg.encoder.in_channels)
    settings = _loop(cfg, cfg.pretrain, drop_last=True, progress=progress)
    # a batch the unlabelled images cannot fill fails now, not after the kNN pass below
    epoch_sizes("pretrain", len(data.unlabelled), pre.batch_size * world.size, settings)
    if resume is not None:
        knn_init = resume["knn_accuracy_at_init"]
    else:
        knn_init = knn_accuracy(model.encoder, data, cfg) if world.is_main else None
    run_dir = new_run_dir(cfg, "pretrain", run_dir, world, resume is not None)
    T, B = cfg.time_steps, cfg.pretrain.batch_size

    net = distributed.data_parallel(
        distributed.Traced(model.encoder, model.projector), world, device
    )

    def loss(images: Tensor, _labels: Tensor) -> tuple[Tensor, Tensor]:
        v1, v2 = two_views(augment, images.float() / 255.0)
        views = data.normalize(torch.cat([v1, v2]))  # (2B, C, H, W): one pass for both
        with precision(cfg, views.device):
            z, rates = net(views, T)  # (2B, D) spike counts (projected), per-layer rates
        # every process computes the loss of the global batch; gradients flow back to owners
        z1, z2 = distributed.gather(z[:B], world), distributed.gather(z[B:], world)
        return nt_xent(z1, z2, cfg.pretrain.temperature), rates

    task = Task(
        "pretrain",
        model,
        [{"params": model.parameters(), "lr": cfg.pretrain.lr}],
        loss,
        evaluate=lambda: {"knn_accuracy": knn_accuracy(model.encoder, data, cfg)},
        evaluate_every=cfg.knn.every,
    )
    x, y = data.train_images[data.unlabelled], data.train_labels[data.unlabelled]
    t0 = time.perf_counter()
    extra = {
        "command": "pretrain",
        "config": to_dict(cfg),
        "knn_accuracy_at_init": knn_init,
        "split": {"labelled": data.labelled.cpu(), "unlabelled": data.unlabelled.cpu()},
    }
    history = fit(task, x, y, settings, run_dir, extra, world, resume)
    if not world.is_main:
        return {}
    return write_summary(
        run_dir,
        {
            "command": "pretrain",
            "knn_accuracy": history[-1]["knn_accuracy"],
            "knn_accuracy_at_init": knn_init,
            "final_loss": history[-1]["loss"],
            "firing_rates": history[-1]["firing_rates"],
            "epochs": cfg.pretrain.epochs,
            "unlabelled_images": len(x),
            "wall_seconds": round(time.perf_counter() - t0, 1),
        },
    )


def staged(
    cfg: Config, pre_dir: Path, ft_dir: Path, progress: bool, log: Callable[[str], None]
) -> tuple[dict, dict]:
    """Pretraining in ``pre_dir``, then fine-tuning from it in ``ft_dir``: each stage reused
    when finished and resumed when interrupted (``runs.run_stage``). Their summaries.

    A validation part that leaves a class nothing to fine-tune on fails here, before the
    pretraining (``labelled_split``), not after it."""
    if cfg.finetune.val_fraction:
        labelled_split(load_data(cfg, torch.device("cpu")), cfg)
    pre = run_stage("pretrain", pre_dir, log, lambda r: pretrain(cfg, pre_dir, progress, resume=r))
    fin = run_stage(
        "finetune",
        ft_dir,
        log,
        lambda r: finetune(
            cfg, None if r is not None else load_checkpoint(pre_dir), ft_dir, progress, resume=r
        ),
    )
    return pre, fin


def staged_supervised(
    cfg: Config, run_dir: Path, progress: bool, log: Callable[[str], None]
) -> dict:
    """The supervised baseline in ``run_dir``, reused or resumed as in ``staged``."""
    return run_stage(
        "supervised", run_dir, log, lambda r: finetune(cfg, None, run_dir, progress, resume=r)
    )


def _loop(cfg: Config, section, drop_last: bool, progress: bool) -> LoopSettings:
    return LoopSettings(
        section.epochs,
        section.batch_size,
        section.schedule,
        section.weight_decay,
        cfg.seed,
        drop_last,
        progress,
        cfg.checkpoint_every,
        cfg.on_nonfinite,
        section.grad_clip,
        section.warmup_steps,
        cfg.on_divergence,
    )


def finetune(
    cfg: Config,
    checkpoint: dict | None,
    run_dir: str | Path | None = None,
    progress: bool = True,
    resume: dict | None = None,
) -> dict:
    """Classifier on the labelled part: pretrained encoder at a lower learning rate.

    With ``checkpoint=None`` this is the supervised baseline: the same network trained
    from scratch on the same labelled images, every layer at the head's learning rate.
    ``resume``: this command's own unfinished checkpoint (its weights replace the others).
    """
    check_run_dir(run_dir, resume is not None)  # before the data and the class-mean head
    device, world, data = _start(cfg)
    if resume is not None:
        command = resume["command"]
        encoder = SpikingEncoder(cfg.encoder)
    else:
        command = "finetune" if checkpoint is not None else "supervised"
        encoder = pretrained_encoder(checkpoint, cfg) if checkpoint else SpikingEncoder(cfg.encoder)
        if checkpoint is not None:
            check_same_split(checkpoint, data)
    pretrained = command == "finetune"
    model = SpikingClassifier(encoder, data.num_classes).to(device)
    ft = cfg.finetune
    labelled, held = labelled_split(data, cfg)
    x, y = data.train_images[labelled], data.train_labels[labelled]
    if pretrained and resume is None and ft.head_init == "prototypes":
        prototype_head(model, x, y, data, cfg)
    _distribute(model, cfg, world)
    groups, frozen = param_groups(model, ft, pretrained)
    encoder.requires_grad_(not frozen)
    augment, enc = None, cfg.encoder
    if ft.augment:  # the augment section's strengths, the labelled images' own views
        views = replace(cfg.augment, views=ft.augment)
        augment = build_augment(views, enc.image_size, enc.in_channels)
    T = cfg.time_steps

    net = distributed.data_parallel(distributed.Traced(model), world, device)

    def loss(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        x = images.float() / 255.0
        if augment is not None:
            x = augment(x)
        if frozen:
            encoder.eval()  # a linear probe must not move the batch-norm statistics
        with precision(cfg, x.device):
            counts, rates = net(data.normalize(x), T)
        logits = counts * (ft.logit_scale / T) if ft.logit_scale else counts
        return F.cross_entropy(logits, labels), rates

    def evaluate() -> dict:
        scores = {"test_accuracy": test_accuracy(model, data, cfg)}
        if len(held):  # finetune.val_fraction > 0
            scores["val_accuracy"] = images_accuracy(model, *validation, data, cfg)
        return scores

    run_dir = new_run_dir(cfg, command, run_dir, world, resume is not None)
    validation = data.train_images[held], data.train_labels[held]
    task = Task(command, model, groups, loss, evaluate, local_mean=True)
    epochs = finetune_epochs(ft, len(x), world.size)
    task.evaluate_every = evaluation_interval(epochs, ft.epochs)  # at most ft.epochs points
    t0 = time.perf_counter()
    history = fit(
        task,
        x,
        y,
        replace(_loop(cfg, ft, drop_last=False, progress=progress), epochs=epochs),
        run_dir,
        {"config": to_dict(cfg), "command": command},
        world,
        resume,
    )
    if not world.is_main:
        return {}
    return write_summary(
        run_dir,
        {
            "command": command,
            "test_accuracy": history[-1]["test_accuracy"],
            "best_test_accuracy": max(h["test_accuracy"] for h in history if "test_accuracy" in h),
            "epochs": epochs,
            "steps": history[-1]["step"],
            "labelled_images": len(x),
            **validation_summary(history, len(held)),
            "firing_rates": history[-1]["firing_rates"],
            "wall_seconds": round(time.perf_counter() - t0, 1),
        },
    )


def probe(cfg: Config, checkpoint: dict | None) -> dict:
    """Linear-probe accuracy of a pretrained encoder's latents (or of a fresh one, without):
    a logistic regression on the frozen spike counts of the labelled images (the
    ``finetune.label_fraction`` that fine-tuning uses), and the same on the input pixels."""
    device, _, data = _start(cfg)
    encoder = pretrained_encoder(checkpoint, cfg) if checkpoint else SpikingEncoder(cfg.encoder)
    labelled = labelled_split(data, cfg)[0]
    result: dict = {"command": "probe", "labelled_images": int(labelled.numel())}
    for name, model in (("probe", encoder.to(device)), ("pixel_probe", Pixels())):
        score, weight_decay, held_out = probe_accuracy(model, data, cfg, labelled)
        result[f"{name}_accuracy"] = score
        result[f"{name}_weight_decay"] = weight_decay
        result[f"{name}_held_out_accuracy"] = {str(k): round(v, 2) for k, v in held_out.items()}
    result["pretrained"] = checkpoint is not None
    return result


def knn(cfg: Config, checkpoint: dict | None) -> dict:
    """kNN accuracy of a pretrained encoder's latents (or of a fresh one, without), and of
    the input pixels with the same bank, queries and k: what a latent has to beat."""
    device, _, data = _start(cfg)
    encoder = pretrained_encoder(checkpoint, cfg) if checkpoint else SpikingEncoder(cfg.encoder)
    bank_size = len(data.train_labels[knn_voters(data, cfg)])
    return {
        "command": "knn",
        "knn_accuracy": knn_accuracy(encoder.to(device), data, cfg),
        "pixel_knn_accuracy": knn_accuracy(Pixels(), data, cfg),
        "k": min(cfg.knn.k, bank_size),  # knn_predict votes with at most the whole bank
        "bank": cfg.knn.bank,
        "bank_size": bank_size,
        "pretrained": checkpoint is not None,
    }
