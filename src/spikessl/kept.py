"""Kept pretrainings: a sweep's finished pretraining run exported to its records folder
(``spikessl sweep --keep-pretrained``), and rebuilt from that file where the run is missing.

The file, ``pretrain-<key>.safetensors`` (``checkpoints.export_safetensors``), holds the
weights, the config, the run's summary and per-epoch metrics: under a megabyte for the paper
presets. Committed with the records, it lets another machine rebuild the pretraining run
(``runs.restore_run``) and only fine-tune, and lets fine-tuning variants reuse it anywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from spikessl.grid import PRETRAIN_UNUSED, Cell, pretrain_key, pretrained_with, stage_dir
from spikessl.runs import check_restorable, finished, restore_run


def export_path(records_dir: Path, cell: Cell) -> Path:
    """Where ``keep_pretrained`` puts the cell's pretraining: one file per pretraining key."""
    return records_dir / f"pretrain-{pretrain_key(cell.config)}.safetensors"


def keep(cell: Cell, runs_root: Path, records_dir: Path, log: Callable[[str], None]) -> None:
    """Export the cell's finished pretraining run to ``records_dir``, unless it is there."""
    from spikessl.checkpoints import export_safetensors, load_checkpoint

    export = export_path(records_dir, cell)
    pre_dir = stage_dir(runs_root, "pretrain-{}", cell.config, PRETRAIN_UNUSED)
    if export.exists() or not finished(pre_dir):
        return
    export_safetensors(load_checkpoint(pre_dir), export, pre_dir)
    log(f"  pretrain: kept as {export}")


def restore(export: Path, pre_dir: Path, cell: Cell, log: Callable[[str], None]) -> None:
    """Rebuild the cell's pretraining run from ``export`` (the lock on ``pre_dir`` held),
    unless a run is there by now; an export of another pretraining is refused."""
    from spikessl.checkpoints import load_export
    from spikessl.runs import remove_unstarted

    if (pre_dir / "checkpoint.pt").exists():  # another process's run, started or restored
        return
    saved = load_export(export)
    check(saved, export, cell)
    if pre_dir.exists():  # killed before its first checkpoint: nothing worth keeping
        remove_unstarted(pre_dir)
    restore_run(saved, export, pre_dir)  # the file read once, above
    log(f"  pretrain: restored {pre_dir} from {export}")


def restores(pre_dir: Path, export: Path) -> bool:
    """Whether the sweep rebuilds the pretraining run ``pre_dir`` from the kept ``export``:
    the file is there and no run has started (``sweep``, and ``dryrun`` to say so)."""
    return export.exists() and not (pre_dir / "checkpoint.pt").exists()


def check(saved: dict, export: Path, cell: Cell) -> None:
    """Refuse an export (``checkpoints.load_export``) of another pretraining than the cell's,
    or one that cannot rebuild a finished run (``runs.restore_run``)."""
    if saved.get("command") != "pretrain" or not pretrained_with(saved["config"], cell.config):
        raise ValueError(
            f"{export} holds a {saved.get('command', 'spikessl')} run with other settings "
            f"than cell {cell.name}'s pretraining (its name says key "
            f"{pretrain_key(cell.config)}): move it out of the records folder, or put there "
            "the export of that pretraining"
        )
    check_restorable(saved, export)
