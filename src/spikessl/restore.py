"""A run's folder rebuilt from one file: a finished run from its ``spikessl export``
(``restore_run``), an unfinished one from a copy of its ``checkpoint.pt`` (``rebuild_unfinished``),
so that a sweep on another machine reuses or resumes it (``spikessl.kept``). Each folder is
built beside its place and renamed into it, so an interrupted rebuild leaves no half run.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from spikessl.records import write_atomic
from spikessl.runs import finished


def check_restorable(saved: dict, export: Path) -> None:
    """Refuse an export ``restore_run`` cannot rebuild a finished run's folder from."""
    if "summary" not in saved:
        raise ValueError(
            f"{export} holds weights but not its run's summary and metrics (it was exported "
            "from a checkpoint file, or from an unfinished run): export the finished run's "
            "folder (`spikessl export RUN_DIR`)"
        )


def restore_run(saved: dict, export: Path, run_dir: Path) -> dict:
    """Rebuild a finished run's folder at ``run_dir`` (which must not exist) from ``saved``,
    the ``spikessl export`` of that run's folder read from ``export``
    (``checkpoints.load_export``): ``checkpoint.pt`` with its weights, config and split digest
    (no optimizer state: finished, so never resumed), ``config.yaml``, ``metrics.jsonl`` and
    ``summary.json``. Returns the summary, which names the export.
    """
    import torch

    check_restorable(saved, export)
    summary = {**saved["summary"], "run_dir": str(run_dir), "restored_from": str(export)}

    def fill(tmp: Path) -> None:
        keep = ("model", "config", "command", "split_labelled_sha256")
        torch.save({k: saved[k] for k in keep if k in saved}, tmp / "checkpoint.pt")
        _write_config_and_metrics(tmp, saved["config"], saved["metrics"])
        write_atomic(tmp / "summary.json", json.dumps(summary, indent=2) + "\n")

    if not _place(run_dir, fill):  # another process restored it first
        if not finished(run_dir):
            raise FileExistsError(f"{run_dir} appeared while it was being restored")
        return json.loads((run_dir / "summary.json").read_text())
    return summary


def rebuild_unfinished(saved: dict, source: Path, run_dir: Path) -> bool:
    """Rebuild an unfinished run's folder at ``run_dir`` (which must not exist) from
    ``source``, a copy of its ``checkpoint.pt`` (``saved``, read with
    ``checkpoints.load_checkpoint``): the checkpoint itself, ``config.yaml`` and the finished
    epochs' ``metrics.jsonl``, so that ``run_stage`` resumes it as if it had stopped here.
    False where another process put a run there first. ``saved`` must hold the loop's state
    (``spikessl.kept.check``)."""

    def fill(tmp: Path) -> None:
        shutil.copyfile(source, tmp / "checkpoint.pt")
        _write_config_and_metrics(tmp, saved["config"], saved["loop"]["history"])

    return _place(run_dir, fill)


def _write_config_and_metrics(run_dir: Path, config: dict, metrics: list[dict]) -> None:
    import yaml

    from spikessl.config_yaml import YamlDumper

    (run_dir / "config.yaml").write_text(yaml.dump(config, Dumper=YamlDumper, sort_keys=False))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))


def _place(run_dir: Path, fill: Callable[[Path], None]) -> bool:
    """Build a run folder with ``fill`` in a hidden folder beside ``run_dir`` and rename it
    into place, so an interrupted rebuild leaves no half run behind. False (and nothing
    left) where ``run_dir`` appeared meanwhile (a caller without ``claim_run_dir``'s lock)."""
    tmp = run_dir.with_name(f".{run_dir.name}.restoring-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
        tmp.rename(run_dir)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and run_dir.exists():
            return False
        raise
    return True
