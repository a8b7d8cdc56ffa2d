"""Kept pretrainings: a sweep's finished pretraining run exported to its records folder
(``spikessl sweep --keep-pretrained``), and rebuilt from that file where the run is missing.

The file, ``pretrain-<key>.safetensors`` (``checkpoints.export_safetensors``), holds the
weights, the config, the run's summary and per-epoch metrics: under a megabyte for the paper
presets. Committed with the records, it lets another machine rebuild the pretraining run
(``runs.restore_run``) and only fine-tune, and lets fine-tuning variants reuse it anywhere.

A pretraining longer than one sitting travels the same way: when a ``--keep-pretrained``
sweep stops before its pretraining finishes (Ctrl-C, SIGTERM, an error), the run's last
checkpoint is parked beside the records as ``pretrain-<key>.partial.pt`` (``park``; a few
megabytes, optimiser state included). A sweep elsewhere rebuilds the unfinished run from it
(``runs.rebuild_unfinished``) and resumes it where it stopped; the finished export
supersedes it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from spikessl.grid import PRETRAIN_UNUSED, Cell, pretrain_key, pretrained_with, stage_dir
from spikessl.runs import check_restorable, finished, rebuild_unfinished, restore_run

PARKED_SUFFIX = ".partial.pt"  # pretrain-<key>.partial.pt: an unfinished run's checkpoint


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
    parked = parked_path(records_dir, cell)
    if parked.exists():  # the finished export supersedes it
        parked.unlink()
        log(f"  pretrain: {parked.name} removed, its run has finished")


def rebuild(source: Path, pre_dir: Path, cell: Cell, log: Callable[[str], None]) -> None:
    """Rebuild the cell's pretraining run from ``source`` (the lock on ``pre_dir`` held): a
    kept export gives the finished run, a parked checkpoint (``park``) the unfinished one to
    resume. Nothing is done where a run is there by now; a file of another pretraining is
    refused."""
    from spikessl.checkpoints import load_checkpoint, load_export
    from spikessl.runs import remove_unstarted

    if (pre_dir / "checkpoint.pt").exists():  # another process's run, started or rebuilt
        return
    parked = source.name.endswith(PARKED_SUFFIX)
    saved = load_checkpoint(source) if parked else load_export(source)
    check(saved, source, cell)
    if pre_dir.exists():  # killed before its first checkpoint: nothing worth keeping
        remove_unstarted(pre_dir)
    if not parked:
        restore_run(saved, source, pre_dir)  # the file read once, above
        log(f"  pretrain: restored {pre_dir} from {source}")
    elif rebuild_unfinished(saved, source, pre_dir):
        log(f"  pretrain: rebuilt {pre_dir} from {source} (step {saved['step']})")


def restores(pre_dir: Path, export: Path) -> bool:
    """Whether the sweep rebuilds the pretraining run ``pre_dir`` from the kept ``export``:
    the file is there and no run has started (``sweep``, and ``dryrun`` to say so)."""
    return export.exists() and not (pre_dir / "checkpoint.pt").exists()


def check(saved: dict, source: Path, cell: Cell) -> None:
    """Refuse a kept export (``checkpoints.load_export``) or a parked checkpoint of another
    pretraining than the cell's, or one that cannot rebuild its run: an export without the
    finished run's summary (``runs.restore_run``), a parked file without training state."""
    if saved.get("command") != "pretrain" or not pretrained_with(saved["config"], cell.config):
        raise ValueError(
            f"{source} holds a {saved.get('command', 'spikessl')} run with other settings "
            f"than cell {cell.name}'s pretraining (its name says key "
            f"{pretrain_key(cell.config)}): move it out of the records folder, or put there "
            "the file of that pretraining"
        )
    if not source.name.endswith(PARKED_SUFFIX):
        check_restorable(saved, source)
    elif "loop" not in saved or "step" not in saved:
        raise ValueError(
            f"{source} holds no training state to resume (weights only): move it out of the "
            "records folder; the pretraining then runs from its start"
        )


def parked_path(records_dir: Path, cell: Cell) -> Path:
    """Where ``park`` puts the cell's unfinished pretraining: one file per pretraining key."""
    return records_dir / f"pretrain-{pretrain_key(cell.config)}{PARKED_SUFFIX}"


def park(cell: Cell, runs_root: Path, records_dir: Path, log: Callable[[str], None]) -> None:
    """When a sweep stops inside a cell: keep its pretraining if finished, else copy the
    unfinished run's ``checkpoint.pt`` to ``parked_path``, over an older copy of the same
    pretraining that got less far (never over one that got further)."""
    from spikessl.checkpoints import load_checkpoint
    from spikessl.records import replacing

    pre_dir = stage_dir(runs_root, "pretrain-{}", cell.config, PRETRAIN_UNUSED)
    if finished(pre_dir):
        keep(cell, runs_root, records_dir, log)
        return
    checkpoint, parked = pre_dir / "checkpoint.pt", parked_path(records_dir, cell)
    if not checkpoint.exists():
        return
    step = load_checkpoint(checkpoint).get("step", 0)
    if parked.exists() and load_checkpoint(parked).get("step", 0) > step:
        log(f"  pretrain: {parked} got further than {pre_dir} (step {step}); kept as it is")
        return
    records_dir.mkdir(parents=True, exist_ok=True)
    with replacing(parked) as fh:
        fh.write(checkpoint.read_bytes())
    log(
        f"  pretrain: unfinished, parked at step {step} as {parked}: a sweep with these "
        "records resumes it there, on any machine"
    )


def resumes_parked(pre_dir: Path, parked: Path) -> bool:
    """Whether the sweep rebuilds the unfinished pretraining ``pre_dir`` from ``parked``: the
    file is there and no run has started (``sweep``, and ``dryrun`` to say so)."""
    return parked.exists() and not (pre_dir / "checkpoint.pt").exists()
