"""Kept pretrainings: a sweep's finished pretraining run exported to its records folder
(``spikessl sweep --keep-pretrained``), and rebuilt from that file where the run is missing.

The file, ``pretrain-<key>.safetensors`` (``checkpoints.export_safetensors``), holds the
weights, the config, the run's summary and per-epoch metrics: under a megabyte for the paper
presets. Committed with the records, it lets another machine rebuild the pretraining run
(``restore.restore_run``) and only fine-tune, and lets fine-tuning variants reuse it anywhere.
A later spikessl finds it by the settings it holds where its name's key is an earlier one
(``kept_file``).

A stage longer than one sitting travels the same way: when a ``--keep-pretrained`` sweep
stops inside a cell (Ctrl-C, SIGTERM, an error), the last checkpoint of each of its unfinished
stages (``grid.Stage``) is parked beside the records as ``<stage>-<key>.partial.pt``
(``park``: ``pretrain-``, ``finetune-`` or ``supervised-``; a few megabytes, optimiser state
included). A sweep elsewhere rebuilds the unfinished run from it
(``restore.rebuild_unfinished``) and resumes it where it stopped; the finished export (a
pretraining) or the cell's record (a fine-tuning, a baseline) supersedes it. Either file also
replaces a local run that got less far (``replaces``), which is moved aside, never deleted.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from pathlib import Path

from spikessl.grid import FINETUNE, PRETRAIN, STAGES, SUPERVISED, Cell, Stage
from spikessl.records import records_held
from spikessl.restore import check_restorable, rebuild_unfinished, restore_run
from spikessl.runs import finished

PARKED_SUFFIX = ".partial.pt"  # <stage>-<key>.partial.pt: an unfinished run's checkpoint


def export_path(records_dir: Path, cell: Cell) -> Path:
    """Where ``keep_pretrained`` puts the cell's pretraining: one file per pretraining, named
    by its key or found by its settings (``kept_file``)."""
    return kept_file(records_dir, cell, ".safetensors")


def kept_file(records_dir: Path, cell: Cell, suffix: str, stage: Stage = PRETRAIN) -> Path:
    """``records_dir / <stage>-<key><suffix>``; where that is missing, a file of that form
    kept by an earlier spikessl for the settings the cell's stage reads (its name's key also
    hashed config fields added since, left here at their defaults), as ``grid.stage_dir``
    finds run folders: an upgrade of spikessl never orphans a kept or parked run.
    A ``ValueError`` where none matches but one cannot be read: it may be the cell's."""
    path = records_dir / f"{stage.command}-{stage.key(cell.config)}{suffix}"
    if path.exists() or not records_dir.is_dir():
        return path
    unreadable = []
    for other in sorted(records_dir.glob(f"{stage.command}-*{suffix}")):
        if not re.fullmatch(stage.command + r"-[0-9a-f]{12}" + re.escape(suffix), other.name):
            continue
        try:
            command, config = _saved(other)
            if command == stage.command and stage.ran(config, cell.config):
                return other
        except FileNotFoundError:  # dropped by another sweep meanwhile (``drop_parked``)
            continue
        except (ValueError, OSError) as err:
            unreadable.append(str(err))
    if unreadable:
        raise ValueError(
            f"{'; '.join(unreadable)}: it may be cell {cell.name}'s "
            f"{stage.noun}, kept by an earlier spikessl; restore the file (e.g. git checkout) or "
            "move it out of the records folder, and run again"
        )
    return path


def _saved(path: Path) -> tuple[str | None, dict]:
    """The command and config tree a kept or parked file holds, or a ``ValueError`` naming it
    (``checkpoints.load_checkpoint``, which reads either kind)."""
    from spikessl.checkpoints import load_checkpoint

    saved = load_checkpoint(path)
    if not isinstance(saved.get("config"), dict):
        raise ValueError(f"{path} holds no spikessl config")
    return saved.get("command"), saved["config"]


def keep(cell: Cell, runs_root: Path, records_dir: Path, log: Callable[[str], None]) -> None:
    """Export the cell's finished pretraining run to ``records_dir``, unless it is there; a
    parked checkpoint of it there is superseded (``drop_parked``)."""
    from spikessl.checkpoints import export_safetensors, load_checkpoint

    pre_dir = PRETRAIN.run_dir(runs_root, cell.config)
    if not finished(pre_dir):
        return
    export = export_path(records_dir, cell)
    records_dir.mkdir(parents=True, exist_ok=True)
    with records_held(records_dir, log):  # no park of this pretraining lands after the drop
        if not export.exists():
            export_safetensors(load_checkpoint(pre_dir), export, pre_dir)
            log(f"  pretrain: kept as {export}")
        drop_parked(records_dir, cell, log)


def drop_parked(
    records_dir: Path, cell: Cell, log: Callable[[str], None], stage: Stage = PRETRAIN
) -> None:
    """Remove the cell's parked checkpoint of ``stage`` (``park``) once that has finished."""
    parked = parked_path(records_dir, cell, stage)
    with contextlib.suppress(FileNotFoundError):  # none, or another sweep's removal first
        parked.unlink()
        log(f"  {stage.command}: {parked} removed: its run has finished")


def drop_recorded(records_dir: Path, cell: Cell, record: dict, log: Callable[[str], None]) -> None:
    """Remove the parked runs of the cell's stages that its ``record`` holds (``drop_parked``)."""
    drop_parked(records_dir, cell, log, FINETUNE)
    if "supervised_test_accuracy" in record:
        drop_parked(records_dir, cell, log, SUPERVISED)


def rebuild(
    source: Path, run_dir: Path, cell: Cell, log: Callable[[str], None], stage: Stage = PRETRAIN
) -> None:
    """Rebuild the run of the cell's ``stage`` in ``run_dir`` from ``source`` (the lock on
    ``run_dir`` held): a kept export gives the finished pretraining, a parked checkpoint
    (``park``) the unfinished run to resume. A finished run there is kept, and so is an
    unfinished one unless the file is better (``replaces``): then it is moved aside
    (``.<name>.behind-step<N>``), never deleted. A file of another run is refused."""
    from spikessl.checkpoints import load_checkpoint, load_export
    from spikessl.runs import remove_unstarted

    parked, local = source.name.endswith(PARKED_SUFFIX), run_dir / "checkpoint.pt"
    if local.exists() and finished(run_dir):
        return  # another process's run, finished meanwhile
    step = _step(local) if local.exists() else None  # each file read once
    try:
        saved = load_checkpoint(source) if parked else load_export(source)
    except ValueError as err:
        raise ValueError(f"{err}; or move {source} out of the records folder") from None
    if step is not None and parked and step >= saved.get("step", 0):
        return  # the run there got as far by now: ``replaces`` no longer holds
    check(saved, source, cell, stage)
    if step is not None:  # behind the file
        aside, n = run_dir.with_name(f".{run_dir.name}.behind-step{step}"), 1
        while aside.exists():  # an earlier move at the same step: never merged or replaced
            n += 1
            aside = run_dir.with_name(f".{run_dir.name}.behind-step{step}-{n}")
        run_dir.rename(aside)
        how = "got further than" if parked else "holds the finished run of"
        log(
            f"  {stage.command}: {source} {how} {run_dir} (step {step}): moved to {aside} "
            "(nothing reads it again: delete it once you do not need it)"
        )
    elif run_dir.exists():  # killed before its first checkpoint: nothing worth keeping
        remove_unstarted(run_dir)
    if not parked:
        restore_run(saved, source, run_dir)  # the file read once, above
        log(f"  {stage.command}: restored {run_dir} from {source}")
    elif rebuild_unfinished(saved, source, run_dir):
        log(f"  {stage.command}: rebuilt {run_dir} from {source} (step {saved['step']})")


def from_records(
    stage: Stage, run_dir: Path, cell: Cell, records_dir: Path, log: Callable[[str], None]
) -> None:
    """Rebuild the run of the cell's ``stage`` in ``run_dir`` from the records' kept or
    parked file of it, where that got further than the run there (``source``)."""
    from spikessl.runs import claim_run_dir

    if (path := source(records_dir, cell, run_dir, stage)) is not None:  # run elsewhere
        with claim_run_dir(run_dir, wait=lambda: log(f"  {stage.command}: waiting for {run_dir}")):
            rebuild(path, run_dir, cell, log, stage)


def source(records_dir: Path, cell: Cell, run_dir: Path, stage: Stage = PRETRAIN) -> Path | None:
    """The records' file the sweep rebuilds the run of the cell's ``stage`` in ``run_dir``
    from, None to run it as it is: for a pretraining the kept export (finished) before a
    parked checkpoint (unfinished), for the other stages a parked checkpoint, each only where
    it ``replaces`` what ``run_dir`` holds (``sweep``, and ``dryrun`` to say so)."""
    files = (export_path(records_dir, cell),) if stage is PRETRAIN else ()
    for path in (*files, parked_path(records_dir, cell, stage)):
        if path.exists() and replaces(path, run_dir):
            return path
    return None


def replaces(path: Path, run_dir: Path) -> bool:
    """Whether the records' ``path`` should stand in for the run in ``run_dir``: there is no
    run, or it is unfinished and the file got further (an export is finished)."""
    local = run_dir / "checkpoint.pt"
    if not local.exists():
        return True
    if finished(run_dir):
        return False
    return not path.name.endswith(PARKED_SUFFIX) or _step(local) < _step(path)


def check(saved: dict, source: Path, cell: Cell, stage: Stage = PRETRAIN) -> None:
    """Refuse a kept export (``checkpoints.load_export``) or a parked checkpoint of another
    run than the cell's ``stage``, or one that cannot rebuild its run: an export without the
    finished run's summary (``restore_run``), a parked file without training state."""
    if saved.get("command") != stage.command or not stage.ran(saved["config"], cell.config):
        raise ValueError(
            f"{source} holds a {saved.get('command', 'spikessl')} run with other settings "
            f"than cell {cell.name}'s {stage.noun} (its name says key "
            f"{stage.key(cell.config)}): move it out of the records folder, or put there "
            f"the file of that {stage.noun}"
        )
    if not source.name.endswith(PARKED_SUFFIX):
        check_restorable(saved, source)
    elif "loop" not in saved or "step" not in saved:
        raise ValueError(
            f"{source} holds no training state to resume (weights only): move it out of the "
            f"records folder; the {stage.noun} then runs from its start"
        )


def parked_path(records_dir: Path, cell: Cell, stage: Stage = PRETRAIN) -> Path:
    """Where ``park`` puts the unfinished run of the cell's ``stage``: one file per run,
    named by its key or found by its settings (``kept_file``)."""
    return kept_file(records_dir, cell, PARKED_SUFFIX, stage)


def park(cell: Cell, runs_root: Path, records_dir: Path, log: Callable[[str], None]) -> None:
    """When a sweep stops inside a cell: keep its pretraining if finished (``keep``), and park
    each of its stages' unfinished runs (``park_stage``)."""
    if finished(PRETRAIN.run_dir(runs_root, cell.config)):
        keep(cell, runs_root, records_dir, log)
    for stage in STAGES:
        park_stage(stage, cell, runs_root, records_dir, log)


def park_stage(
    stage: Stage, cell: Cell, runs_root: Path, records_dir: Path, log: Callable[[str], None]
) -> None:
    """Copy the ``checkpoint.pt`` of the unfinished run of the cell's ``stage`` to
    ``parked_path``, over an older copy of the same run that got less far (never over one
    that got further, nor beside a pretraining's export). A run that another process holds (a
    second sweep over the same runs) is not this sweep's to park."""
    from spikessl.records import replacing
    from spikessl.runs import claim_run_dir

    run_dir, what = stage.run_dir(runs_root, cell.config), f"  {stage.command}:"
    checkpoint = run_dir / "checkpoint.pt"
    if finished(run_dir) or not checkpoint.exists():
        return
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(claim_run_dir(run_dir))
        except ValueError:  # held by another process
            log(f"{what} not parked: another process is running {run_dir}")
            return
        step = _step(checkpoint)  # the run's lock held: the file stays as read
        records_dir.mkdir(parents=True, exist_ok=True)
        # a sweep with another --run-dir may park the same run in these records:
        # the comparison and the copy are one step for it
        held.enter_context(records_held(records_dir, log))
        parked = parked_path(records_dir, cell, stage)  # the folder as the lock holds it
        if stage is PRETRAIN and (export := export_path(records_dir, cell)).exists():
            # another sweep finished it
            log(f"{what} not parked: {export} holds the finished pretraining")
            return
        if parked.exists() and _step(parked) > step:
            log(f"{what} {parked} got further than {run_dir} (step {step}); kept as it is")
            return
        with replacing(parked) as fh:
            fh.write(checkpoint.read_bytes())
    log(
        f"{what} unfinished, parked at step {step} as {parked}: a sweep with these "
        "records resumes it there, on any machine"
    )


def park_stopped(
    cell: Cell, runs_root: Path, records_dir: Path, log: Callable[[str], None]
) -> None:
    """``park`` as a stopped sweep leaves (a second Ctrl-C or SIGTERM waits for it: the
    sweep's ``runs.stop_signals`` ignores it): its own failure is logged, so the stop that
    called it is still what the user reads."""
    try:
        park(cell, runs_root, records_dir, log)
    except Exception as err:
        log(f"  not parked: {err}")


def _step(source: Path) -> int:
    """The optimiser step the checkpoint at ``source`` was saved after; a ``ValueError``
    that names the file where it cannot be read (``checkpoints.load_checkpoint``)."""
    from spikessl.checkpoints import load_checkpoint

    try:
        return int(load_checkpoint(source).get("step", 0))
    except ValueError as err:
        fix = "move it out of the records folder" if source.name.endswith(PARKED_SUFFIX) else ""
        raise ValueError(f"{err}{'; or ' + fix if fix else ''}") from None
