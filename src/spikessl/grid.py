"""A grid's cells and the keys that identify them (what ``spikessl sweep`` runs).

``time_steps=10,30 finetune.lr=1e-3,1e-2`` is a grid: every combination of the listed values
is one *cell*, with a readable name (``time_steps=10__finetune.lr=1e-3``, its record's file
name) and a *key*, a hash of every setting that changes its results. A stage of a cell is
keyed by the settings it reads: cells that differ only in fine-tuning settings share one
pretraining key, and the supervised baseline ignores pretraining settings. Settings added to
spikessl after a record or run directory was made count as the same when left at their
defaults (``same_settings``), so a grid stays resumable across an upgrade.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from spikessl.config import Config, load_config
from spikessl.config_yaml import load_yaml, parse_overrides, to_dict
from spikessl.dataset_catalog import check_encoder_fits, check_pretraining_fills

# Settings that do not change a run's results: never part of a key, so a grid recorded on a
# laptop is still recognised on a GPU machine with another data folder (on_divergence=stop
# only ends a diverging run early: a run it lets finish is the same).
IGNORED = (
    "device",
    "out_dir",
    "eval_batch_size",
    "checkpoint_every",
    "on_divergence",
    "data.root",
)

_OPEN, _CLOSE = "[{(", "]})"


@dataclass(frozen=True)
class Cell:
    """One combination of grid values, with its resolved config."""

    overrides: tuple[tuple[str, str], ...]  # (dotted key, raw value text), in grid order
    config: Config
    name: str  # filesystem-safe and readable: "time_steps=10__pretrain.batch_size=256"
    key: str  # hash of every setting that changes the results


def split_values(text: str) -> list[str]:
    """``"10,30"`` -> ``["10", "30"]``, splitting only at top-level commas.

    Commas inside brackets, braces or quotes belong to one value, so
    ``"[32,64],[64,128]"`` is two values (two lists).
    """
    values, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
            if depth < 0:
                raise ValueError(f"grid values {text!r}: {ch!r} closes nothing")
        elif ch == "," and depth == 0:
            values.append(text[start:i])
            start = i + 1
    if quote or depth:
        raise ValueError(f"grid values {text!r}: unbalanced quotes or brackets")
    values = [v.strip() for v in [*values, text[start:]]]
    if not all(values):
        raise ValueError(f"grid values {text!r}: an empty value (stray comma?)")
    return values


def expand_grid(base: str | dict, grid: list[str]) -> list[Cell]:
    """Cells of the cartesian product of ``grid`` (``"key=v1,v2"`` items; first varies slowest).

    ``base`` is a preset name, a YAML path or a config dict (settings shared by every cell,
    e.g. ``to_dict(load_config(preset, ["device=cuda"]))``). Every cell's config is built and
    validated here, so a typo in the last value fails before the first cell trains.
    """
    axes: dict[str, list[str]] = {}
    for item in grid:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"grid item {item!r} must look like key=v1,v2, e.g. time_steps=10,30")
        if key in axes:
            raise ValueError(f"grid key {key} is given twice; list its values once: {key}=v1,v2")
        axes[key] = split_values(text)
    cells = []
    for combo in itertools.product(*axes.values()):
        overrides = tuple(zip(axes, combo))
        name = cell_name(overrides)
        try:
            config = load_config(base, parse_overrides([f"{k}={v}" for k, v in overrides]))
            check_encoder_fits(config)  # e.g. data.name=mnist,cifar10 on one preset
            check_pretraining_fills(config)  # e.g. data.train_limit=200 at batch 256
        except ValueError as err:
            raise ValueError(f"grid cell {name}: {err}") from None
        cells.append(Cell(overrides, config, name, cell_key(config)))
    names = [c.name for c in cells]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"grid values give the same cell name twice: {', '.join(twice)}")
    return cells


def cell_name(overrides: tuple[tuple[str, str], ...]) -> str:
    """``(("encoder.conv_channels", "[32,64]"),)`` -> ``"encoder.conv_channels=32-64"``."""
    parts = []
    for key, value in overrides:
        value = re.sub(r"[\[\]{}()'\"\s]", "", value)
        parts.append(f"{key}={re.sub(r'[^A-Za-z0-9._+=-]', '-', value)}")
    name = "__".join(parts) or "base"
    if len(name) > 150:  # file names stop at 255 bytes; keep it unique with a hash
        name = f"{name[:140]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return name


def relevant_settings(cfg: Config, drop: tuple[str, ...] = ()) -> dict:
    """``to_dict(cfg)`` without ``IGNORED`` and ``drop`` (dotted keys or whole sections)."""
    return _prune(to_dict(cfg), drop)


def _prune(tree: dict, drop: tuple[str, ...] = ()) -> dict:
    """A config tree (modified in place) without ``IGNORED`` and ``drop``."""
    for dotted in (*IGNORED, *drop):
        *parents, leaf = dotted.split(".")
        node = tree
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    return tree


def _digest(tree: dict) -> str:
    canonical = json.dumps(tree, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


PRETRAIN_UNUSED = ("finetune",)  # pretraining never reads these


def supervised_unused(cfg: Config) -> tuple[str, ...]:
    """The settings the supervised baseline never reads: pretraining, kNN and the rest."""
    # Fine-tuning augmentations reuse the augment section's strengths (not its views).
    augment = ("augment.views",) if cfg.finetune.augment else ("augment",)
    # no pretrained encoder to fine-tune or take prototypes from
    unused = ("finetune.encoder_lr_factor", "finetune.linear_probe", "finetune.head_init")
    return ("pretrain", "knn", *augment, *unused)


@dataclass(frozen=True)
class Stage:
    """A stage of a cell: run in its own folder under a sweep's runs root (``stage_dir``),
    keyed by the settings it reads, and parked beside the records by name (``kept.park``)."""

    command: str  # what its checkpoint says it ran: "pretrain", "finetune" or "supervised"
    template: str  # its folder under the runs root, "{}" standing for its key
    noun: str  # what messages call it

    def unused(self, cfg: Config) -> tuple[str, ...]:
        """The settings this stage never reads: left out of its key."""
        if self.command == "supervised":
            return supervised_unused(cfg)
        return PRETRAIN_UNUSED if self.command == "pretrain" else ()

    def key(self, cfg: Config) -> str:
        return _digest(relevant_settings(cfg, self.unused(cfg)))

    def run_dir(self, runs_root: Path, cfg: Config) -> Path:
        return stage_dir(runs_root, self.template, cfg, self.unused(cfg))

    def ran(self, config: dict, cfg: Config) -> bool:
        """Whether a run with config tree ``config`` (not modified) ran this stage as ``cfg``."""
        drop = self.unused(cfg)
        return config_matches(json.loads(json.dumps(config)), relevant_settings(cfg, drop), drop)


PRETRAIN = Stage("pretrain", "pretrain-{}", "pretraining")
FINETUNE = Stage("finetune", "{}/finetune", "fine-tuning")  # its key is the cell's
SUPERVISED = Stage("supervised", "supervised-{}", "supervised baseline")
STAGES = (PRETRAIN, FINETUNE, SUPERVISED)  # in the order a cell runs them


def cell_key(cfg: Config) -> str:
    """12 hex digits identifying every setting that changes a cell's results."""
    return _digest(relevant_settings(cfg))


def pretrain_key(cfg: Config) -> str:
    """Like ``cell_key`` without the fine-tuning settings: pretraining never reads them."""
    return PRETRAIN.key(cfg)


def supervised_key(cfg: Config) -> str:
    """Like ``cell_key`` without the pretraining-only settings the baseline never reads."""
    return SUPERVISED.key(cfg)


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def same_settings(old: dict, new: dict) -> bool:
    """Whether config trees ``old`` and ``new`` hold the same settings (``IGNORED`` aside),
    except config fields added to spikessl since ``old`` was written, which ``new`` leaves at
    their defaults: a grid stays resumable across an upgrade of spikessl."""
    return not changed_settings(old, new)


def changed_settings(old: dict, new: dict) -> list[str]:
    """Where ``same_settings`` finds config trees ``old`` and ``new`` differ, one
    ``"key: old -> new"`` per setting (``absent`` for a key one of them lacks)."""

    def flat(tree: dict) -> dict:  # JSON's view: tuples and lists alike
        return _flat(_prune(json.loads(json.dumps(tree))))

    old, new, default = flat(old), flat(new), flat(to_dict(Config()))
    absent = object()
    changed = [k for k, v in old.items() if new.get(k, absent) != v]
    changed += [k for k, v in new.items() if k not in old and default.get(k, absent) != v]

    def shown(tree: dict, key: str) -> str:
        return json.dumps(tree[key]) if key in tree else "absent"

    return [f"{k}: {shown(old, k)} -> {shown(new, k)}" for k in changed]


def listed_changes(changed: list[str], most: int = 4) -> str:
    """``changed_settings`` for a message: the first ``most`` and how many more."""
    more = f"; and {len(changed) - most} more" if len(changed) > most else ""
    return "; ".join(changed[:most]) + more


def pretrained_with(config: dict, cfg: Config) -> bool:
    """Whether a pretraining run's config tree ``config`` pretrains as ``cfg`` does: its
    settings other than ``PRETRAIN_UNUSED`` are the ``same_settings``."""
    return PRETRAIN.ran(config, cfg)


def record_matches(record: dict, cell: Cell) -> bool:
    """Whether ``record`` measured ``cell``: the same key, or ``same_settings``."""
    if record["key"] == cell.key:
        return True
    config = record.get("config")
    return isinstance(config, dict) and same_settings(config, relevant_settings(cell.config))


def stage_dir(runs_root: Path, template: str, cfg: Config, drop: tuple[str, ...] = ()) -> Path:
    """``runs_root / template.format(key)``, the key hashing ``cfg`` without ``drop``; or when
    that does not exist, a run directory of the same template made by an earlier spikessl for
    the same settings (its key also hashed config fields added since, left here at defaults)."""
    settings = relevant_settings(cfg, drop)
    path = runs_root / template.format(_digest(settings))
    if path.exists():
        return path
    for config_yaml in sorted(runs_root.glob(template.format("*") + "/config.yaml")):
        if made_with(config_yaml.parent, settings, drop):
            return config_yaml.parent
    return path


def made_with(run_dir: Path, settings: dict, drop: tuple[str, ...] = ()) -> bool:
    """Whether the run in ``run_dir`` was made with ``settings`` (a config tree): its
    ``config.yaml`` without ``drop`` holds the ``same_settings``. An unreadable one does not
    (not a run of ours: never reused)."""
    try:
        old = load_yaml((run_dir / "config.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return config_matches(old, settings, drop)


def config_matches(old: object, settings: dict, drop: tuple[str, ...] = ()) -> bool:
    """Whether ``old``, a run's config tree as read from its ``config.yaml``, holds the
    ``same_settings`` as ``settings`` once ``drop`` is left out (modifies ``old``)."""
    return isinstance(old, dict) and not config_changes(old, settings, drop)


def config_changes(old: dict, settings: dict, drop: tuple[str, ...] = ()) -> list[str]:
    """``changed_settings`` from ``old``, a run's config tree, to ``settings`` once ``drop``
    is left out (modifies ``old``)."""
    return changed_settings(_prune(old, drop), settings)
