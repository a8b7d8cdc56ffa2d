"""Run configuration: frozen dataclasses, filled from YAML presets and ``key=value`` overrides.

Library code receives these typed objects and never a raw config tree; parsing and
validation happen here, before any work starts, so a typo fails in a second with a
did-you-mean instead of after an hour of training.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from spikessl.augment import AugmentConfig, resolve_views
from spikessl.data import DATASETS
from spikessl.encoders import EncoderConfig
from spikessl.train import SCHEDULES

DEVICES = ("auto", "cpu", "cuda", "mps")


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's core-schema scalars and no duplicate keys.

    PyYAML reads YAML 1.1, where ``010`` is eight (octal), ``1:30`` is ninety (base 60),
    ``yes``/``on`` are True and ``1e-3`` is text: ``time_steps=010`` would run T=8. Here
    ``010`` is ten, ``1:30`` and ``yes`` are text (and refused where a number or a bool
    belongs), ``1e-3`` is a number, and a key given twice in a mapping is an error.
    """

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *defaults" may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"found the key {key!r} twice", key_node.start_mark
                    )
                seen.add(key)
            except TypeError:  # unhashable: SafeConstructor says so below
                continue
        return super().construct_mapping(node, deep)


def _yaml_int(loader: YamlLoader, node: yaml.Node) -> int:
    text = loader.construct_scalar(node)
    body = text.lstrip("+-")
    sign = -1 if text.startswith("-") else 1
    if body[:2] in ("0o", "0x"):
        return sign * int(body[2:], 8 if body[1] == "o" else 16)
    return sign * int(body, 10)


_BOOL, _INT, _FLOAT = (f"tag:yaml.org,2002:{t}" for t in ("bool", "int", "float"))
YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _pattern, _first in (
    (_BOOL, r"true|True|TRUE|false|False|FALSE", "tTfF"),
    (_INT, r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", "-+0123456789"),
    (
        _FLOAT,
        r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)",
        "-+0123456789.",
    ),
):
    YamlLoader.add_implicit_resolver(_tag, re.compile(f"^(?:{_pattern})$"), list(_first))
YamlLoader.add_constructor(_INT, _yaml_int)


class YamlDumper(yaml.SafeDumper):
    """Quotes exactly the text that ``YamlLoader`` would read as something else ("1e-3")."""


YamlDumper.yaml_implicit_resolvers = YamlLoader.yaml_implicit_resolvers


def load_yaml(text: str) -> Any:
    """``text`` read with ``YamlLoader`` (YAML 1.2 numbers and bools, no duplicate keys)."""
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 (a SafeLoader)


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
            close = difflib.get_close_matches(self.name, list(DATASETS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
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
        _check_optim(self, "pretrain")
        _check(
            self.batch_size >= 2,
            "pretrain.batch_size",
            self.batch_size,
            ">= 2: NT-Xent needs other images in the batch as negatives",
        )
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
            self.encoder_lr_factor >= 0,
            "finetune.encoder_lr_factor",
            self.encoder_lr_factor,
            ">= 0 (0 freezes the encoder like linear_probe)",
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
        _check(self.device in DEVICES, "device", self.device, f"one of {DEVICES}{pick}")
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
        )
        _check(
            self.on_nonfinite in ("stop", "skip"),
            "on_nonfinite",
            self.on_nonfinite,
            "'stop' (raise an error) or 'skip' (drop the step)",
        )
        _check(
            self.on_divergence in ("warn", "stop"),
            "on_divergence",
            self.on_divergence,
            "'warn' (train on) or 'stop' (stop the run after the diverging epoch)",
        )
        f, part = self.finetune.label_fraction, self.data.labelled_fraction
        _check(
            f in (0.0, 1.0) or f <= part,
            "finetune.label_fraction",
            f,
            f"<= data.labelled_fraction={part} (a subset of the labelled part), or 1 (every "
            "label); values in between would label some of the pretraining images",
        )


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ValueError(f"{key}={value!r} is invalid: expected {expected}")


def _check_optim(cfg: PretrainConfig | FinetuneConfig, section: str) -> None:
    _check(cfg.epochs >= 1, f"{section}.epochs", cfg.epochs, ">= 1")
    _check(cfg.batch_size >= 1, f"{section}.batch_size", cfg.batch_size, ">= 1")
    _check(cfg.lr > 0, f"{section}.lr", cfg.lr, "> 0, e.g. 1e-3 for Adam")
    _check(cfg.weight_decay >= 0, f"{section}.weight_decay", cfg.weight_decay, ">= 0")
    _check(cfg.schedule in SCHEDULES, f"{section}.schedule", cfg.schedule, f"one of {SCHEDULES}")
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


# --- YAML <-> dataclasses ---------------------------------------------------------------


def preset_names() -> list[str]:
    return sorted(
        p.name[:-5]
        for p in resources.files("spikessl.presets").iterdir()
        if p.name.endswith(".yaml")
    )


def _read_yaml(spec: str) -> dict:
    """A preset name shipped with the package, or a path to a YAML file."""
    path = Path(spec)
    try:
        is_path = path.suffix in (".yaml", ".yml") or path.exists()
    except OSError as err:  # e.g. a name too long for the file system
        raise ValueError(f"--config {spec[:60]!r}...: {err.strerror}") from None
    if is_path:
        if path.is_dir():
            raise ValueError(f"config {spec} is a directory; pass a .yaml file or a preset")
        if not path.is_file():
            raise FileNotFoundError(
                f"config file {spec} not found; or use a preset: {', '.join(preset_names())}"
            )
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise ValueError(
                f"config {spec} is not a YAML text file (a checkpoint? pass a run to "
                "--pretrained, or use its config.yaml)"
            ) from None
    else:
        if spec not in preset_names():
            close = difflib.get_close_matches(spec, preset_names(), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown preset {spec!r}.{hint} Presets: "
                f"{', '.join(preset_names())}; or pass a path to a .yaml file"
            )
        text = resources.files("spikessl.presets").joinpath(f"{spec}.yaml").read_text()
    try:
        raw = load_yaml(text) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"config {spec} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"config {spec} must be a YAML mapping of keys to values")
    return raw


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {key}: {part} is not a section")
    if isinstance(value, dict) and isinstance(node.get(leaf), dict):
        value = _merge(node[leaf], value)  # pretrain.epochs=1 pretrain={lr: 0.1}: both hold
    node[leaf] = value


def parse_overrides(items: list[str]) -> dict:
    """``["pretrain.lr=3e-4", "time_steps=10"]`` -> nested dict; values parsed as YAML."""
    tree: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key=value, e.g. time_steps=10")
        try:
            value = load_yaml(text)
        except yaml.YAMLError as err:
            if "twice" in str(getattr(err, "problem", "")):
                raise ValueError(f"override {item!r}: {err.problem}") from None
            value = text
        _set_dotted(tree, key.strip(), value)
    return tree


def set_data_root(tree: dict, root: str) -> dict:
    """``--data-dir ROOT`` into an override tree: ``data.root``, taken literally (no YAML)."""
    if not isinstance(tree.setdefault("data", {}), dict):
        raise ValueError(
            f"data={tree['data']!r}: data is a section; set its keys, e.g. data.name=mnist"
        )
    tree["data"]["root"] = root
    return tree


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    spec: str | dict = "paper-mnist", overrides: list[str] | dict | None = None
) -> Config:
    """Preset, YAML file or saved config dict, then overrides (``key=value`` or a dict)."""
    raw = dict(spec) if isinstance(spec, dict) else _read_yaml(spec)
    if overrides:
        extra = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides))
        raw = _merge(raw, extra)
    return from_dict(Config, raw)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ValueError(f"{key} must be a section (mapping), got {value!r}")
        return from_dict(hint, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key)
    if origin is tuple:
        if isinstance(value, str):  # "8,16" or "crop+rotate" from the command line
            names = args[0] is str  # "+" joins names; in numbers it is an exponent's sign (1e+0)
            text = value.replace("+", ",") if names else value
            value = [_scalar(v) for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key} must be a list, got {value!r}: {_list_example(key, args)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ValueError(f"{key} must have {len(args)} entries, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if hint is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string
            number = float(value)
        except (ValueError, OverflowError):
            number = None
        if number is not None:
            if not math.isfinite(number):
                raise ValueError(f"{key}={value!r} must be a finite number")
            return number
    if hint in (int, bool, str) and type(value) is hint:
        return value
    expected = getattr(hint, "__name__", hint)
    hint_text = ""
    if hint is str and value is None:  # key= with nothing after the "="
        hint_text = f"; give it a value: {key}=TEXT"
    elif hint is str:  # key=123 on the command line is read as a number
        hint_text = f"; quote it to keep it a string: {key}=\"'{value}'\""
    raise ValueError(f"{key}={value!r} has the wrong type: expected {expected}{hint_text}")


def _list_example(key: str, args: tuple) -> str:
    """How to write a list for ``key`` whose hint is ``tuple[args]``."""
    if args[0] is str:
        return f"e.g. {key}=crop+rotate"
    # brackets, quoted for the shell: a sweep reads 8,16 as two cells
    if len(args) == 2 and args[1] is Ellipsis:
        return f"e.g. '{key}=[8,16]'"
    return f"{len(args)} numbers, e.g. '{key}=[{','.join(['0.5'] * len(args))}]'"


def _scalar(text: str) -> Any:
    try:
        return load_yaml(text)
    except yaml.YAMLError:
        return text.strip()


def from_dict(cls: type, raw: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``raw``, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown config key {path!r}.{hint} Valid keys here: {', '.join(names)}"
            )
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except ValueError as err:
        if not prefix or str(err).startswith(prefix):
            raise
        raise ValueError(f"{prefix}: {err}") from None


def to_dict(cfg: Any) -> dict:
    """Plain dict (tuples as lists) for YAML/JSON, inverse of ``from_dict``."""

    def plain(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def dump_yaml(cfg: Config) -> str:
    return yaml.dump(to_dict(cfg), Dumper=YamlDumper, sort_keys=False)
