"""Run configuration: frozen dataclasses, filled from YAML presets and ``key=value`` overrides
(read by ``spikessl.config_yaml``).

Library code receives these typed objects and never a raw config tree; parsing and
validation happen here, before any work starts, so a typo fails in a second with a
did-you-mean instead of after an hour of training. Nothing here imports PyTorch (the
sections' classes come from ``architecture`` and ``views``), so that second is not spent
loading it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from spikessl.architecture import EncoderConfig
from spikessl.config_yaml import did_you_mean, from_dict, merge, parse_overrides, read_yaml
from spikessl.dataset_catalog import DATASETS
from spikessl.views import AugmentConfig, resolve_views

DEVICES = ("auto", "cpu", "cuda", "mps")
SCHEDULES = ("cosine", "constant")  # the learning rate's shapes: spikessl.schedule.lr_factor


@dataclass(frozen=True)
class DataConfig:
    name: str = "mnist"
    root: str | None = None  # None: $SPIKESSL_DATA, else ./data
    labelled_fraction: float = 0.2  # the rest of the training set is the unlabelled part
    # >0: a class-balanced subset of about this many images (quick runs, tests): limit //
    # classes of each class, at least one (train_limit=5 on MNIST gives 10 images)
    train_limit: int = 0
    test_limit: int = 0  # >0: the same for the test images

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            hint = did_you_mean(self.name, DATASETS)
            raise ValueError(
                f"data.name={self.name!r} is unknown.{hint} Datasets: {', '.join(DATASETS)}"
            )
        _check(
            0 < self.labelled_fraction < 1,
            "data.labelled_fraction",
            self.labelled_fraction,
            "a fraction in (0, 1), e.g. 0.2 as in the paper",
        )
        _check(
            self.train_limit >= 0 and self.test_limit >= 0,
            "data.train_limit/test_limit",
            (self.train_limit, self.test_limit),
            ">= 0 (0 means the whole split)",
        )


@dataclass(frozen=True)
class PretrainConfig:
    epochs: int = 10
    batch_size: int = 256  # images per step; each gives two views, so 2N latents
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    grad_clip: float = 0.0  # > 0: clip the gradients' global norm to this before each step
    warmup_steps: int = 0  # > 0: the learning rate rises linearly over these first steps
    temperature: float = 0.5  # tau of eq. (1)
    projection_dim: int = 0  # 0: NT-Xent on the spike counts as in the paper; >0: MLP head
    # centre (and scale) each count over the batch before NT-Xent: batch norm without learned
    # parameters, so cosine similarities can be negative; kNN and fine-tuning see raw counts
    center: bool = False

    def __post_init__(self) -> None:
        _check(  # before _check_optim's >= 1: one message for 0 and 1
            self.batch_size >= 2,
            "pretrain.batch_size",
            self.batch_size,
            ">= 2: NT-Xent needs other images in the batch as negatives",
        )
        _check_optim(self, "pretrain")
        _check(self.temperature > 0, "pretrain.temperature", self.temperature, "> 0, e.g. 0.5")
        _check(self.projection_dim >= 0, "pretrain.projection_dim", self.projection_dim, ">= 0")
        _check(
            not (self.center and self.projection_dim),
            "pretrain.center",
            self.center,
            "false with pretrain.projection_dim > 0: choose the MLP head or centring",
        )


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3  # of the classifier head (and of every layer in the supervised baseline)
    weight_decay: float = 0.0
    schedule: str = "cosine"
    grad_clip: float = 0.0  # > 0: clip the gradients' global norm to this before each step
    warmup_steps: int = 0  # > 0: the learning rate rises linearly over these first steps
    encoder_lr_factor: float = 0.1  # pretrained layers learn at lr * this (paper: "lower")
    linear_probe: bool = False  # freeze the encoder entirely
    augment: tuple[str, ...] = ()  # augmentations of the labelled images, e.g. [crop]
    # fraction of the whole training set whose labels are used; 0: the labelled part.
    # Below data.labelled_fraction: a stratified subset of the labelled part; 1: every label.
    label_fraction: float = 0.0
    # cross-entropy logits: 0 = the output spike counts as they are (the paper); > 0 = the
    # spike rates (counts / T) times this, so the logits' range no longer grows with T
    logit_scale: float = 0.0
    # at least this many optimiser steps: a small label set repeats more epochs (still tested
    # about `epochs` times), so 1% of the labels is not judged after a handful of steps
    min_steps: int = 0
    # classifier weights at the start of fine-tuning: "random" (PyTorch's default), or
    # "prototypes": each class's row is the mean direction of its labelled images' spike
    # counts under the pretrained encoder (a nearest-class-mean classifier to start from)
    head_init: str = "random"
    # > 0: this share of the labelled part (stratified, seeded) is held out of fine-tuning and
    # of the supervised baseline, which report val_accuracy on it: settings can then be chosen
    # without looking at the test set. The same images whatever finetune.label_fraction is:
    # every budget's training images exclude them (at 1% labels they can outnumber those).
    val_fraction: float = 0.0

    def __post_init__(self) -> None:
        _check_optim(self, "finetune")
        _check(
            0.0 <= self.val_fraction < 1.0,
            "finetune.val_fraction",
            self.val_fraction,
            "a fraction in [0, 1) of the labelled part (0: no validation set; 0.1: a tenth)",
        )
        _check(
            self.head_init in ("random", "prototypes"),
            "finetune.head_init",
            self.head_init,
            '"random" or "prototypes" (class means of the pretrained spike counts)',
            ("random", "prototypes"),
        )
        _check(
            self.min_steps >= 0,
            "finetune.min_steps",
            self.min_steps,
            ">= 0 (0: exactly `epochs` epochs, however few steps that is)",
        )
        _check(
            self.logit_scale >= 0,
            "finetune.logit_scale",
            self.logit_scale,
            ">= 0 (0: raw spike counts; 10: rates times 10)",
        )
        _check(
            0.0 <= self.label_fraction <= 1.0,
            "finetune.label_fraction",
            self.label_fraction,
            "a fraction in [0, 1] (0: the labelled part; 0.01: 1% of the training labels)",
        )
        _check(
            self.encoder_lr_factor >= 0 and self.lr * self.encoder_lr_factor <= 1,
            "finetune.encoder_lr_factor",
            self.encoder_lr_factor,
            ">= 0 (0 freezes the encoder like linear_probe), and at most 1 / finetune.lr: "
            "the encoder's rate lr * factor is at most 1, as lr is",
        )
        if self.augment:
            try:
                object.__setattr__(self, "augment", resolve_views(self.augment))
            except ValueError as err:
                raise ValueError(
                    f"augment: {err} For no augmentation: finetune.augment=[]"
                ) from None


@dataclass(frozen=True)
class KNNConfig:
    k: int = 200
    temperature: float = 0.1
    every: int = 0  # pretraining: kNN accuracy every this many epochs (0: only at the end)
    # the labelled latents that vote: "labelled" = the labelled part only (the paper's 80/20
    # protocol: the other labels are thrown away); "train" = every training image, the bank
    # of the usual SSL kNN monitor (Wu et al. 2018, DINO), which uses all training labels
    bank: str = "labelled"

    def __post_init__(self) -> None:
        _check(self.k >= 1, "knn.k", self.k, ">= 1, e.g. 200")
        _check(self.temperature > 0, "knn.temperature", self.temperature, "> 0, e.g. 0.1")
        _check(self.every >= 0, "knn.every", self.every, ">= 0")
        _check(
            self.bank in ("labelled", "train"),
            "knn.bank",
            self.bank,
            "labelled (the labelled part, the paper's protocol) or train (every training label)",
            ("labelled", "train"),
        )


@dataclass(frozen=True)
class Config:
    seed: int = 0
    time_steps: int = 30  # T: steps every image is presented for
    device: str = "auto"
    out_dir: str = "runs"
    eval_batch_size: int = 512
    checkpoint_every: int = 0  # also checkpoint every this many steps (0: after each epoch)
    on_nonfinite: str = "stop"  # NaN/inf loss or gradients: "stop" with an error, or "skip"
    on_divergence: str = "warn"  # an epoch loss far above its best: "warn" or "stop" the run
    precision: str = "fp32"  # "bf16": autocast convolutions/matmuls (membranes stay fp32)
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    knn: KNNConfig = field(default_factory=KNNConfig)

    def __post_init__(self) -> None:
        _check(0 <= self.seed < 2**63, "seed", self.seed, "an integer from 0 to 2**63 - 1")
        _check(self.time_steps >= 1, "time_steps", self.time_steps, ">= 1, e.g. 30 as in the paper")
        gpu = self.device.partition("cuda:")[2]  # device=cuda:N: torch's name, not ours
        pick = f"; to pick GPU {gpu}, set CUDA_VISIBLE_DEVICES={gpu} and device=cuda" if gpu else ""
        if self.device.lower() == "gpu":  # not a did-you-mean of 'cpu'
            pick = "; for a GPU: cuda (NVIDIA) or mps (Apple), or auto to take the one there is"
        close = () if gpu or self.device.lower() == "gpu" else DEVICES
        _check(self.device in DEVICES, "device", self.device, f"one of {DEVICES}{pick}", close)
        _check(self.eval_batch_size >= 1, "eval_batch_size", self.eval_batch_size, ">= 1")
        _check(
            self.checkpoint_every >= 0,
            "checkpoint_every",
            self.checkpoint_every,
            ">= 0 (0: checkpoint after each epoch only)",
        )
        _check(
            self.precision in ("fp32", "bf16"),
            "precision",
            self.precision,
            "'fp32' or 'bf16' (bfloat16 autocast of convolutions and matmuls)",
            ("fp32", "bf16"),
        )
        _check(
            self.on_nonfinite in ("stop", "skip"),
            "on_nonfinite",
            self.on_nonfinite,
            "'stop' (raise an error) or 'skip' (drop the step)",
            ("stop", "skip"),
        )
        _check(
            self.on_divergence in ("warn", "stop"),
            "on_divergence",
            self.on_divergence,
            "'warn' (train on) or 'stop' (stop the run after the diverging epoch)",
            ("warn", "stop"),
        )
        f, part = self.finetune.label_fraction, self.data.labelled_fraction
        _check(
            f in (0.0, 1.0) or f <= part,
            "finetune.label_fraction",
            f,
            f"<= data.labelled_fraction={part} (a subset of the labelled part), or 1 (every "
            "label); values in between would label some of the pretraining images",
        )


def _check(ok: bool, key: str, value: Any, expected: str, choices: tuple = ()) -> None:
    if not ok:
        hint = did_you_mean(value, choices)
        raise ValueError(f"{key}={value!r} is invalid: expected {expected}{'.' * bool(hint)}{hint}")


def _check_optim(cfg: PretrainConfig | FinetuneConfig, section: str) -> None:
    _check(cfg.epochs >= 1, f"{section}.epochs", cfg.epochs, ">= 1")
    _check(cfg.batch_size >= 1, f"{section}.batch_size", cfg.batch_size, ">= 1")
    _check(  # far above 1 Adam's step size overflows float32: a crash, not a message
        0 < cfg.lr <= 1,
        f"{section}.lr",
        cfg.lr,
        "in (0, 1]: Adam moves each weight by about lr a step; e.g. 1e-3",
    )
    _check(cfg.weight_decay >= 0, f"{section}.weight_decay", cfg.weight_decay, ">= 0")
    _check(
        cfg.schedule in SCHEDULES,
        f"{section}.schedule",
        cfg.schedule,
        f"one of {SCHEDULES}",
        SCHEDULES,
    )
    _check(
        cfg.grad_clip >= 0,
        f"{section}.grad_clip",
        cfg.grad_clip,
        ">= 0 (0: no clipping; e.g. 1.0 caps the gradients' global norm at 1)",
    )
    _check(
        cfg.warmup_steps >= 0,
        f"{section}.warmup_steps",
        cfg.warmup_steps,
        ">= 0 (0: no warm-up; e.g. 100 raises the rate linearly over the first 100 steps)",
    )


def load_config(
    spec: str | dict = "paper-mnist", overrides: list[str] | dict | None = None
) -> Config:
    """Preset, YAML file or saved config dict, then overrides (``key=value`` or a dict)."""
    raw = dict(spec) if isinstance(spec, dict) else read_yaml(spec)
    if overrides:
        extra = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides))
        raw = merge(raw, extra)
    return from_dict(Config, raw)
