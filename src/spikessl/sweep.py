"""Grids of full protocol runs (pretrain -> kNN -> fine-tune [-> supervised]), resumable.

``spikessl sweep --config mnist-quick time_steps=5,10 finetune.lr=1e-3,1e-2`` runs every
combination of the listed values as one *cell*. A long grid must survive interruption and a
move to another machine, so:

* every finished cell leaves a small JSON record in a records directory meant to be committed
  (e.g. ``docs/results/mnist-quick/``), and a rerun skips the cells recorded there;
* every stage of a cell has its own run directory under ``runs_root``, keyed by a hash of the
  settings it depends on: a finished stage is reused, an interrupted one resumes from its
  checkpoint (which equals an uninterrupted run), and cells that differ only in fine-tuning
  settings share one pretraining run (``pretrain-<key>/``). The supervised baseline ignores
  pretraining entirely, so it is shared across pretraining-only settings (``supervised-<key>/``).
  A stage directory made by an earlier spikessl, whose key also hashed fewer config fields,
  is found by its ``config.yaml`` when the fields added since are at their defaults.

Records from the whole grid are summarised in ``results.csv`` and ``results.md`` next to them,
and a grid over several seeds also in ``seeds.csv`` and ``seeds.md`` (``spikessl.records``).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from spikessl.config import Config, load_config, parse_overrides, to_dict
from spikessl.records import (
    load_records,
    read_record,
    write_atomic,
    write_seed_tables,
    write_tables,
)

# Settings that do not change a run's results: never part of a key, so a grid recorded on a
# laptop is still recognised on a GPU machine with another data folder.
IGNORED = ("device", "out_dir", "eval_batch_size", "checkpoint_every", "data.root")

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


def _relevant(cfg: Config, drop: tuple[str, ...] = ()) -> dict:
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


def cell_key(cfg: Config) -> str:
    """12 hex digits identifying every setting that changes a cell's results."""
    return _digest(_relevant(cfg))


def pretrain_key(cfg: Config) -> str:
    """Like ``cell_key`` without the fine-tuning settings: pretraining never reads them."""
    return _digest(_relevant(cfg, PRETRAIN_UNUSED))


def supervised_key(cfg: Config) -> str:
    """Like ``cell_key`` without the pretraining-only settings the baseline never reads."""
    return _digest(_relevant(cfg, _supervised_unused(cfg)))


PRETRAIN_UNUSED = ("finetune",)


def _supervised_unused(cfg: Config) -> tuple[str, ...]:
    # Fine-tuning augmentations reuse the augment section's strengths (not its views).
    augment = ("augment.views",) if cfg.finetune.augment else ("augment",)
    # no pretrained encoder to fine-tune or take prototypes from
    unused = ("finetune.encoder_lr_factor", "finetune.linear_probe", "finetune.head_init")
    return ("pretrain", "knn", *augment, *unused)


def log_to_stderr(message: str) -> None:
    """Default ``log`` of ``run_sweep`` and ``reproduce.reproduce``: one line, flushed."""
    print(message, file=sys.stderr, flush=True)


def run_sweep(
    cells: list[Cell],
    records_dir: str | Path,
    runs_root: str | Path = "runs/sweep",
    baseline: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = log_to_stderr,
) -> list[dict]:
    """Run every unrecorded cell, record it, and tabulate all the grid's records.

    A record whose key differs from its cell's (another preset or config defaults) is an
    error, raised before anything runs. With ``baseline``, recorded cells that lack the
    supervised baseline get it added. Returns the grid's records, in grid order.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("sweep runs in one process: start it without torchrun")
    records_dir, runs_root = Path(records_dir), Path(runs_root)
    names = [c.name for c in cells]
    if len(set(names)) < len(names):
        raise ValueError("run_sweep: two cells have the same name; build them with expand_grid")
    recorded = {c.name: _recorded(records_dir, c) for c in cells}
    tables = records_dir / "results.csv", records_dir / "results.md"
    seeds = len({dict(c.overrides).get("seed") for c in cells}) > 1
    seed_tables = records_dir / "seeds.csv", records_dir / "seeds.md"

    def tabulate(records: list[dict]) -> None:
        write_tables(records, *tables)
        if seeds:
            write_seed_tables(records, *seed_tables)

    for i, cell in enumerate(cells, 1):
        tag = f"sweep [{i}/{len(cells)}] {cell.name}"
        record = recorded[cell.name]
        missing_baseline = baseline and "supervised_test_accuracy" not in (record or {})
        if record is not None and not missing_baseline:
            log(f"{tag}: recorded, skipping")
            continue
        log(f"{tag}: {'adding the supervised baseline' if record else 'running'} (key {cell.key})")
        if record is None:
            record = _run_cell(cell, runs_root, progress, log)
        if missing_baseline:
            record = _add_supervised(record, cell, runs_root, progress, log)
        records_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(records_dir / f"{cell.name}.json", json.dumps(record, indent=1) + "\n")
        tabulate(load_records(records_dir, names))  # progress visible mid-grid
    records = load_records(records_dir, names)
    if records:
        tabulate(records)
    return records


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

    def flat(tree: dict) -> dict:  # JSON's view: tuples and lists alike
        return _flat(_prune(json.loads(json.dumps(tree))))

    old, new, default = flat(old), flat(new), flat(to_dict(Config()))
    return all(k in new and new[k] == v for k, v in old.items()) and all(
        k in old or (k in default and default[k] == v) for k, v in new.items()
    )


def record_matches(record: dict, cell: Cell) -> bool:
    """Whether ``record`` measured ``cell``: the same key, or ``same_settings``."""
    if record["key"] == cell.key:
        return True
    config = record.get("config")
    return isinstance(config, dict) and same_settings(config, _relevant(cell.config))


def _stage_dir(runs_root: Path, template: str, cfg: Config, drop: tuple[str, ...] = ()) -> Path:
    """``runs_root / template.format(key)``, the key hashing ``cfg`` without ``drop``; or when
    that does not exist, a run directory of the same template made by an earlier spikessl for
    the same settings (its key also hashed config fields added since, left here at defaults)."""
    settings = _relevant(cfg, drop)
    path = runs_root / template.format(_digest(settings))
    if path.exists():
        return path
    for config_yaml in sorted(runs_root.glob(template.format("*") + "/config.yaml")):
        try:
            old = yaml.safe_load(config_yaml.read_text())
        except (OSError, yaml.YAMLError):
            continue  # not a run of ours: never reused
        if isinstance(old, dict) and same_settings(_prune(old, drop), settings):
            return config_yaml.parent
    return path


def _recorded(records_dir: Path, cell: Cell) -> dict | None:
    path = records_dir / f"{cell.name}.json"
    if not path.exists():
        return None
    record = read_record(path)
    if not record_matches(record, cell):
        raise ValueError(
            f"{path} was recorded with other settings (key {record['key']}, now {cell.key}): "
            "the preset, the grid's other values or spikessl's config defaults changed. Use "
            f"another --records directory, or delete {path} to rerun this cell."
        )
    return record


def _run_cell(cell: Cell, runs_root: Path, progress: bool, log: Callable[[str], None]) -> dict:
    from spikessl import checkpoints, pipeline  # torch: only when something trains

    cfg = cell.config
    pre_dir = _stage_dir(runs_root, "pretrain-{}", cfg, PRETRAIN_UNUSED)
    ft_dir = _stage_dir(runs_root, "{}/finetune", cfg)  # keyed by cell.key
    pre = _stage(
        "pretrain", pre_dir, log, lambda r: pipeline.pretrain(cfg, pre_dir, progress, resume=r)
    )
    fin = _stage(
        "finetune",
        ft_dir,
        log,
        lambda r: pipeline.finetune(
            cfg,
            None if r is not None else checkpoints.load_checkpoint(pre_dir),
            ft_dir,
            progress,
            resume=r,
        ),
    )
    pre_epochs, ft_epochs = _metrics(pre_dir), _metrics(ft_dir)
    config = to_dict(cfg)
    config["data"].pop("root", None)  # a local path, not a setting
    return {
        "cell": cell.name,
        "key": cell.key,
        "grid": dict(cell.overrides),
        "config": config,
        "knn_accuracy_at_init": pre["knn_accuracy_at_init"],
        "knn_accuracy": pre["knn_accuracy"],
        "pretrain_loss_by_epoch": [round(r["loss"], 5) for r in pre_epochs],
        "knn_by_epoch": {
            str(r["epoch"]): r["knn_accuracy"] for r in pre_epochs if "knn_accuracy" in r
        },
        "finetune_test_accuracy": fin["test_accuracy"],
        "finetune_best_test_accuracy": fin["best_test_accuracy"],
        "finetune_steps": fin.get("steps"),
        "finetune_accuracy_by_epoch": [
            r["test_accuracy"] for r in ft_epochs if "test_accuracy" in r
        ],
        "firing_rates": pre["firing_rates"],
        "wall_seconds": {"pretrain": pre["wall_seconds"], "finetune": fin["wall_seconds"]},
        "run_dirs": {"pretrain": str(pre_dir), "finetune": str(ft_dir)},
        "finished": _now(),
        "environment": _environment(pipeline.resolve_device(cfg.device)),
    }


def _add_supervised(
    record: dict, cell: Cell, runs_root: Path, progress: bool, log: Callable[[str], None]
) -> dict:
    from spikessl import pipeline

    run_dir = _stage_dir(runs_root, "supervised-{}", cell.config, _supervised_unused(cell.config))
    sup = _stage(
        "supervised",
        run_dir,
        log,
        lambda r: pipeline.finetune(cell.config, None, run_dir, progress, resume=r),
    )
    by_epoch = [r["test_accuracy"] for r in _metrics(run_dir) if "test_accuracy" in r]
    return {
        **record,
        "supervised_test_accuracy": sup["test_accuracy"],
        "supervised_best_test_accuracy": sup["best_test_accuracy"],
        "supervised_steps": sup.get("steps"),
        "supervised_accuracy_by_epoch": by_epoch,
        "wall_seconds": {**record["wall_seconds"], "supervised": sup["wall_seconds"]},
        "run_dirs": {**record.get("run_dirs", {}), "supervised": str(run_dir)},
        "finished": _now(),
    }


def _stage(
    what: str, run_dir: Path, log: Callable[[str], None], run: Callable[[dict | None], dict]
) -> dict:
    """Reuse a finished run, resume an interrupted one, or start ``run(resume=None)`` afresh.

    Another spikessl process at work on ``run_dir`` (a second sweep over the same runs) is
    waited for, then its run reused or resumed, never deleted or written over.
    """
    from spikessl.pipeline import claim_run_dir

    wait = f"  {what}: another process is running {run_dir}; waiting for it to finish"
    with claim_run_dir(run_dir, wait=lambda: log(wait)):
        return _stage_claimed(what, run_dir, log, run)


def _stage_claimed(
    what: str, run_dir: Path, log: Callable[[str], None], run: Callable[[dict | None], dict]
) -> dict:
    from spikessl.checkpoints import load_checkpoint
    from spikessl.pipeline import finished, write_summary

    summary_path = run_dir / "summary.json"
    if finished(run_dir):
        try:
            summary = json.loads(summary_path.read_text())
            log(f"  {what}: finished earlier, reusing {run_dir}")
            return summary
        except json.JSONDecodeError:  # half-written by an older version: the checkpoint redoes it
            summary_path.unlink()
    resume, before = None, 0.0
    if (run_dir / "checkpoint.pt").exists():
        resume = load_checkpoint(run_dir)
        if "loop" not in resume:
            raise ValueError(f"{run_dir} has no resumable training state; delete it to rerun")
        log(f"  {what}: resuming {run_dir} after step {resume['step']}")
        # seconds trained before the interruption, read before the resumed loop runs
        loop = resume["loop"]
        before = sum(r["seconds"] for r in loop["history"]) + loop["sums"]["seconds"]
    else:
        if run_dir.exists():  # killed before its first checkpoint: nothing worth keeping
            shutil.rmtree(run_dir)
        log(f"  {what}: {run_dir}")
    summary = run(resume)
    if resume is not None:  # the summary timed only the resumed part: add the rest
        summary["wall_seconds"] = round(summary["wall_seconds"] + before, 1)
        summary["resumed"] = True
        write_summary(run_dir, summary)
    return summary


def _metrics(run_dir: Path) -> list[dict]:
    """The per-epoch rows of ``metrics.jsonl``."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _environment(device) -> dict:
    import torch

    import spikessl

    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "cpus": os.cpu_count(),
        # the CPU's kernels and the number of threads order floating-point sums: the same
        # seed gives the same numbers bit for bit only where both are the same
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "spikessl": getattr(spikessl, "__version__", None),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    env["speed_probe"] = speed_probe(str(device))
    return env


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache
def speed_probe(device: str, batch: int = 64, time_steps: int = 10, steps: int = 10) -> float:
    """Images per second through one fixed SimCLR step on ``device``, once per process.

    Wall times only compare within one machine (the same run took 2x as long on one 2-core
    machine as on another), so each record carries this probe: the paper-mnist network with
    batch norm at T=10, ``2 x batch`` random images, forward -> NT-Xent -> backward -> Adam,
    the fastest of ``steps`` timed steps after one warm-up (as ``timeit`` advises: slower
    steps measure other load; on one 2-core machine repeats of the median spread +-12%, of
    the fastest +-3%). It takes about 1.5 s on 2 CPU cores. A run's seconds times its
    record's probe (probe-images of work) compare across machines.
    """
    import torch

    from spikessl.encoders import EncoderConfig, SpikingEncoder
    from spikessl.losses import nt_xent

    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        net = SpikingEncoder(EncoderConfig(slope=5.0, norm="batch")).to(device)
        optim = torch.optim.Adam(net.parameters(), lr=1e-3)
        images = torch.rand(2 * batch, 1, 28, 28, device=device)
        seconds = []
        for _ in range(steps + 1):
            start = time.perf_counter()
            counts = net(images, time_steps)
            loss = nt_xent(counts[:batch], counts[batch:], temperature=0.1)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - start)
    return round(2 * batch / min(seconds[1:]), 1)
