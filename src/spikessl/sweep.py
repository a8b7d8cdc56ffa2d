"""Grids of full protocol runs (pretrain -> kNN -> fine-tune [-> supervised]), resumable.

``spikessl sweep --config mnist-quick time_steps=5,10 finetune.lr=1e-3,1e-2`` runs every
cell of the grid (``spikessl.grid``: its cells, names and keys). A long grid must survive
interruption and a move to another machine, so:

* every finished cell leaves a small JSON record in a records directory meant to be committed
  (e.g. ``docs/results/mnist-quick/``), and a rerun skips the cells recorded there;
* every stage of a cell has its own run directory under ``runs_root``, keyed by a hash of the
  settings it depends on: a finished stage is reused, an interrupted one resumes from its
  checkpoint (which equals an uninterrupted run), and cells that differ only in fine-tuning
  settings share one pretraining run (``pretrain-<key>/``). The supervised baseline ignores
  pretraining entirely, so it is shared across pretraining-only settings (``supervised-<key>/``).
  A stage directory made by an earlier spikessl, whose key also hashed fewer config fields,
  is found by its ``config.yaml`` when the fields added since are at their defaults;
* with ``keep_pretrained`` (``--keep-pretrained``), each finished pretraining is also
  exported to the records directory as ``pretrain-<key>.safetensors`` (``spikessl.kept``).
  A cell whose pretraining folder is missing but whose export is there has the folder
  rebuilt from it and only fine-tunes: pretrainings move between machines with the records,
  and fine-tuning variants of a grid can reuse them anywhere. A sweep stopped inside a cell
  parks its unfinished stage's last checkpoint there too (``<stage>-<key>.partial.pt``), and
  a sweep elsewhere resumes it: a pretraining or fine-tuning can span several sittings.
  Such a file, named by an earlier spikessl's key, is found by the settings it holds.

``spikessl.dryrun`` says what a sweep would do, cell by cell, without doing it.

Records from the whole grid are summarised in ``results.csv`` and ``results.md`` next to them,
and a grid over several seeds also in ``seeds.csv`` and ``seeds.md`` (``spikessl.records``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from spikessl import kept, machine
from spikessl.config_yaml import to_dict
from spikessl.grid import FINETUNE, PRETRAIN, SUPERVISED, Cell, pretrain_key, record_matches
from spikessl.records import load_records, read_record, write_atomic, write_tables
from spikessl.runs import finished, stop_signals
from spikessl.seeds import write_seed_tables


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
    seed_tables: bool = True,
    keep_pretrained: bool = False,
) -> list[dict]:
    """Run every unrecorded cell, record it, and tabulate all the grid's records (and, with
    ``seed_tables`` and several seeds, their summary over seeds).

    A record whose key differs from its cell's (another preset or config defaults) is an
    error, raised before anything runs. With ``baseline``, recorded cells that lack the
    supervised baseline get it added. A cell whose training stops on its own numbers (a
    ``FloatingPointError``: on_nonfinite=stop, on_divergence=stop) is logged and the other
    cells run; then the sweep raises ``CellsFailed``, naming it. With ``keep_pretrained``,
    every cell's finished pretraining (recorded cells' too, where their run is at hand) is
    exported to ``records_dir``; an export found there stands in for a missing pretraining
    run, and a stopped cell's unfinished runs are parked there (``kept.park``). Returns the
    grid's records, in grid order.
    """
    records_dir, runs_root = Path(records_dir), Path(runs_root)
    check_sweep(cells, records_dir, runs_root)  # found now, not after a cell has trained
    names = [c.name for c in cells]
    recorded = {c.name: cell_record(records_dir, c) for c in cells}
    tables = records_dir / "results.csv", records_dir / "results.md"
    seeds = seed_tables and len({dict(c.overrides).get("seed") for c in cells}) > 1
    seed_paths = records_dir / "seeds.csv", records_dir / "seeds.md"

    def tabulate(records: list[dict]) -> None:
        write_tables(records, *tables)
        if seeds:
            write_seed_tables(records, *seed_paths)

    with stop_signals() as stopping:  # a stopped cell is parked, whatever stops it
        failed: list[str] = []  # cells whose training stopped on its own numbers
        stopped: dict[str, str] = {}  # pretraining key -> the cell whose pretraining stopped
        for i, cell in enumerate(cells, 1):
            tag = f"sweep [{i}/{len(cells)}] {cell.name}"
            record = recorded[cell.name]
            missing_baseline = baseline and "supervised_test_accuracy" not in (record or {})
            if keep_pretrained:  # a recorded cell's pretraining too, where its run is at hand
                kept.keep(cell, runs_root, records_dir, log)
            if record is not None and not missing_baseline:
                log(f"{tag}: recorded, skipping")
                kept.drop_recorded(records_dir, cell, record, log)  # a park another sweep made
                continue
            shared = pretrain_key(cell.config)
            if record is None and shared in stopped:  # resuming it would stop it again
                log(f"{tag}: skipped: it shares the pretraining that stopped in {stopped[shared]}")
                failed.append(cell.name)
                continue
            doing = "adding the supervised baseline" if record else "running"
            log(f"{tag}: {doing} (key {cell.key})")
            try:  # on_divergence=stop or on_nonfinite=stop end a cell on its own numbers
                if record is None:
                    record = _run_cell(cell, runs_root, records_dir, progress, log)
                    if keep_pretrained:
                        kept.keep(cell, runs_root, records_dir, log)
                    if missing_baseline:  # the SSL result is kept even if the baseline fails
                        _write_record(records_dir, cell, record, names, tabulate)
                if missing_baseline:
                    record = _add_supervised(record, cell, runs_root, records_dir, progress, log)
            except FloatingPointError as err:
                log(f"{tag}: stopped, going on with the other cells: {err}")
                if record is None and getattr(err, "stage", None) == "pretrain":
                    stopped[shared] = cell.name
                elif keep_pretrained:  # its pretraining finished, all the same
                    kept.keep(cell, runs_root, records_dir, log)
                baseline_only = record is not None  # its SSL result is recorded
                failed.append(cell.name + " (its supervised baseline)" * baseline_only)
                continue
            except BaseException:  # Ctrl-C, SIGTERM (resumable.Interrupted) or an error
                stopping.append("stopping")  # from here on a second signal waits
                if keep_pretrained:  # what the cell's runs did goes with the records
                    kept.park_stopped(cell, runs_root, records_dir, log)
                raise
            _write_record(records_dir, cell, record, names, tabulate)
            kept.drop_recorded(records_dir, cell, record, log)
        records = load_records(records_dir, names)
        if records:
            tabulate(records)
        if failed:
            raise CellsFailed(failed, records, records_dir)
        return records


class CellsFailed(FloatingPointError):
    """Cells of a sweep whose training stopped on its own numbers (on_divergence=stop,
    on_nonfinite=stop); ``records`` holds the grid's records all the same."""

    def __init__(self, failed: list[str], records: list[dict], records_dir: Path) -> None:
        self.failed, self.records = failed, records
        where = f"; the grid's records are in {records_dir}" if records else ""
        super().__init__(
            f"{len(failed)} cell(s) stopped: {', '.join(failed)} (why: the log above{where}). "
            "The same settings stop the same way: continue a diverged run with "
            "on_divergence=warn or skip a NaN step with on_nonfinite=skip, or measure other "
            "settings (e.g. pretrain.grad_clip=1.0 or a lower lr) with another --records folder"
        )


def _write_record(
    records_dir: Path, cell: Cell, record: dict, names: list[str], tabulate: Callable
) -> None:
    records_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(records_dir / f"{cell.name}.json", json.dumps(record, indent=1) + "\n")
    tabulate(load_records(records_dir, names))  # progress visible mid-grid


def cell_record(records_dir: Path, cell: Cell) -> dict | None:
    """The cell's record in ``records_dir``, None if it has none; one made with other
    settings is refused (a ValueError that says how to rerun the cell)."""
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


def check_sweep(cells: list[Cell], records_dir: Path, runs_root: Path) -> None:
    """What stops a sweep before any cell (``run_sweep``, and ``dryrun.plan_cells`` to say so)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("sweep runs in one process: start it without torchrun")
    names = [c.name for c in cells]
    if len(set(names)) < len(names):
        raise ValueError("two cells of the grid have the same name: build them with expand_grid")
    _check_folders(records_dir, runs_root)


def _check_folders(records_dir: Path, runs_root: Path) -> None:
    for folder, option in ((records_dir, "--records"), (runs_root, "--run-dir")):
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{option} {folder} is a file, not a folder: name a folder")


def check_pretrained(pre_dir: Path, ft_dir: Path) -> None:
    """Refuse a fine-tuning still to start from a finished pretraining folder that has lost
    its ``checkpoint.pt``: there are no weights to start from (``_run_cell``, and
    ``dryrun.plan_cells`` to say so)."""
    ft_started = finished(ft_dir) or (ft_dir / "checkpoint.pt").exists()
    if finished(pre_dir) and not (pre_dir / "checkpoint.pt").exists() and not ft_started:
        raise ValueError(
            f"{pre_dir} holds a finished pretraining without its checkpoint.pt, so the "
            "fine-tuning has no weights to start from: put the file back, or move the folder "
            "away (the sweep then restores it from the records' kept pretrain-<key>.safetensors "
            "if there is one, or pretrains again)"
        )


def _run_cell(
    cell: Cell, runs_root: Path, records_dir: Path, progress: bool, log: Callable[[str], None]
) -> dict:
    from spikessl import distributed, pipeline  # torch: only when something trains

    cfg = cell.config
    pre_dir, ft_dir = PRETRAIN.run_dir(runs_root, cfg), FINETUNE.run_dir(runs_root, cfg)
    check_pretrained(pre_dir, ft_dir)
    kept.from_records(PRETRAIN, pre_dir, cell, records_dir, log)
    kept.from_records(FINETUNE, ft_dir, cell, records_dir, log)
    pre, fin = pipeline.staged(cfg, pre_dir, ft_dir, progress, log)
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
        **validation(fin, "finetune"),
        "finetune_steps": fin.get("steps"),
        "finetune_epochs": fin.get("epochs"),  # which epochs the curve's: records.accuracy_curve
        "finetune_accuracy_by_epoch": [
            r["test_accuracy"] for r in ft_epochs if "test_accuracy" in r
        ],
        "firing_rates": pre["firing_rates"],
        "wall_seconds": {"pretrain": pre["wall_seconds"], "finetune": fin["wall_seconds"]},
        "run_dirs": {"pretrain": str(pre_dir), "finetune": str(ft_dir)},
        **(
            {"pretrain_restored_from": Path(pre["restored_from"]).name}
            if "restored_from" in pre
            else {}
        ),
        "finished": _now(),
        "environment": machine.environment(distributed.resolve_device(cfg.device)),
    }


def _add_supervised(
    record: dict,
    cell: Cell,
    runs_root: Path,
    records_dir: Path,
    progress: bool,
    log: Callable[[str], None],
) -> dict:
    from spikessl import pipeline

    run_dir = SUPERVISED.run_dir(runs_root, cell.config)
    kept.from_records(SUPERVISED, run_dir, cell, records_dir, log)
    sup = pipeline.staged_supervised(cell.config, run_dir, progress, log)
    by_epoch = [r["test_accuracy"] for r in _metrics(run_dir) if "test_accuracy" in r]
    return {
        **record,
        "supervised_test_accuracy": sup["test_accuracy"],
        "supervised_best_test_accuracy": sup["best_test_accuracy"],
        **validation(sup, "supervised"),
        "supervised_steps": sup.get("steps"),
        "supervised_epochs": sup.get("epochs"),
        "supervised_accuracy_by_epoch": by_epoch,
        "wall_seconds": {**record["wall_seconds"], "supervised": sup["wall_seconds"]},
        "run_dirs": {**record.get("run_dirs", {}), "supervised": str(run_dir)},
        "finished": _now(),
    }


def validation(summary: dict, stage: str) -> dict:
    """A stage's validation numbers (``finetune.val_fraction`` > 0), prefixed for a record:
    every key of ``labelled.validation_summary`` except ``val_images``."""
    keys = ("val_accuracy", "best_val_accuracy", "best_val_epoch", "test_accuracy_at_best_val")
    return {f"{stage}_{k}": summary[k] for k in keys if k in summary}


def _metrics(run_dir: Path) -> list[dict]:
    """The per-epoch rows of ``metrics.jsonl``."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
