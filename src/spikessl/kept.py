"""Kept pretrainings: a sweep's finished pretraining run exported to its records folder
(``spikessl sweep --keep-pretrained``), and rebuilt from that file where the run is missing.

The file, ``pretrain-<key>.safetensors`` (``checkpoints.export_safetensors``), holds the
weights, the config, the run's summary and per-epoch metrics: under a megabyte for the paper
presets. Committed with the records, it lets another machine rebuild the pretraining run
(``restore.restore_run``) and only fine-tune, and lets fine-tuning variants reuse it anywhere.
A later spikessl finds it by the settings it holds where its name's key is an earlier one
(``kept_file``).

A pretraining longer than one sitting travels the same way: when a ``--keep-pretrained``
sweep stops before its pretraining finishes (Ctrl-C, SIGTERM, an error), the run's last
checkpoint is parked beside the records as ``pretrain-<key>.partial.pt`` (``park``; a few
megabytes, optimiser state included). A sweep elsewhere rebuilds the unfinished run from it
(``restore.rebuild_unfinished``) and resumes it where it stopped; the finished export
supersedes it. Either file also replaces a local run that got less far (``replaces``),
which is moved aside, never deleted.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from spikessl.grid import PRETRAIN_UNUSED, Cell, pretrain_key, pretrained_with, stage_dir
from spikessl.restore import check_restorable, rebuild_unfinished, restore_run
from spikessl.runs import finished

PARKED_SUFFIX = ".partial.pt"  # pretrain-<key>.partial.pt: an unfinished run's checkpoint


def export_path(records_dir: Path, cell: Cell) -> Path:
    """Where ``keep_pretrained`` puts the cell's pretraining: one file per pretraining, named
    by its key or found by its settings (``kept_file``)."""
    return kept_file(records_dir, cell, ".safetensors")


def kept_file(records_dir: Path, cell: Cell, suffix: str) -> Path:
    """``records_dir / pretrain-<key><suffix>``; where that is missing, a file of that form
    kept by an earlier spikessl for the cell's pretraining settings (its name's key also
    hashed config fields added since, left here at their defaults), as ``grid.stage_dir``
    finds run folders: an upgrade of spikessl never orphans a kept or parked pretraining.
    A ``ValueError`` where none matches but one cannot be read: it may be the cell's."""
    path = records_dir / f"pretrain-{pretrain_key(cell.config)}{suffix}"
    if path.exists() or not records_dir.is_dir():
        return path
    unreadable = []
    for other in sorted(records_dir.glob(f"pretrain-*{suffix}")):
        if not re.fullmatch(r"pretrain-[0-9a-f]{12}" + re.escape(suffix), other.name):
            continue
        try:
            command, config = _saved(other)
            if command == "pretrain" and pretrained_with(config, cell.config):
                return other
        except FileNotFoundError:  # dropped by another sweep meanwhile (``drop_parked``)
            continue
        except (ValueError, OSError) as err:
            unreadable.append(str(err))
    if unreadable:
        raise ValueError(
            f"{'; '.join(unreadable)}: it may be cell {cell.name}'s "
            "pretraining, kept by an earlier spikessl; restore the file (e.g. git checkout) or "
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

    pre_dir = stage_dir(runs_root, "pretrain-{}", cell.config, PRETRAIN_UNUSED)
    if not finished(pre_dir):
        return
    export = export_path(records_dir, cell)
    records_dir.mkdir(parents=True, exist_ok=True)
    with _records_held(records_dir, log):  # no park of this pretraining lands after the drop
        if not export.exists():
            export_safetensors(load_checkpoint(pre_dir), export, pre_dir)
            log(f"  pretrain: kept as {export}")
        drop_parked(records_dir, cell, log)


def drop_parked(records_dir: Path, cell: Cell, log: Callable[[str], None]) -> None:
    """Remove the cell's parked checkpoint (``park``) once its pretraining has finished."""
    parked = parked_path(records_dir, cell)
    with contextlib.suppress(FileNotFoundError):  # none, or another sweep's removal first
        parked.unlink()
        log(f"  pretrain: {parked} removed: its run has finished")


def rebuild(source: Path, pre_dir: Path, cell: Cell, log: Callable[[str], None]) -> None:
    """Rebuild the cell's pretraining run from ``source`` (the lock on ``pre_dir`` held): a
    kept export gives the finished run, a parked checkpoint (``park``) the unfinished one to
    resume. A finished run there is kept, and so is an unfinished one unless the file is
    better (``replaces``): then it is moved aside (``.<name>.behind-step<N>``), never
    deleted. A file of another pretraining is refused."""
    from spikessl.checkpoints import load_checkpoint, load_export
    from spikessl.runs import remove_unstarted

    parked, local = source.name.endswith(PARKED_SUFFIX), pre_dir / "checkpoint.pt"
    if local.exists() and finished(pre_dir):
        return  # another process's run, finished meanwhile
    step = _step(local) if local.exists() else None  # each file read once
    try:
        saved = load_checkpoint(source) if parked else load_export(source)
    except ValueError as err:
        raise ValueError(f"{err}; or move {source} out of the records folder") from None
    if step is not None and parked and step >= saved.get("step", 0):
        return  # the run there got as far by now: ``replaces`` no longer holds
    check(saved, source, cell)
    if step is not None:  # behind the file
        aside, n = pre_dir.with_name(f".{pre_dir.name}.behind-step{step}"), 1
        while aside.exists():  # an earlier move at the same step: never merged or replaced
            n += 1
            aside = pre_dir.with_name(f".{pre_dir.name}.behind-step{step}-{n}")
        pre_dir.rename(aside)
        how = "got further than" if parked else "holds the finished run of"
        log(
            f"  pretrain: {source} {how} {pre_dir} (step {step}): moved to {aside} "
            "(nothing reads it again: delete it once you do not need it)"
        )
    elif pre_dir.exists():  # killed before its first checkpoint: nothing worth keeping
        remove_unstarted(pre_dir)
    if not parked:
        restore_run(saved, source, pre_dir)  # the file read once, above
        log(f"  pretrain: restored {pre_dir} from {source}")
    elif rebuild_unfinished(saved, source, pre_dir):
        log(f"  pretrain: rebuilt {pre_dir} from {source} (step {saved['step']})")


def source(records_dir: Path, cell: Cell, pre_dir: Path) -> Path | None:
    """The records' file the sweep rebuilds the cell's pretraining run from, None to run it
    as it is: the kept export (finished) before a parked checkpoint (unfinished), each only
    where it ``replaces`` what ``pre_dir`` holds (``sweep``, and ``dryrun`` to say so)."""
    for path in (export_path(records_dir, cell), parked_path(records_dir, cell)):
        if path.exists() and replaces(path, pre_dir):
            return path
    return None


def replaces(path: Path, pre_dir: Path) -> bool:
    """Whether the records' ``path`` should stand in for the run in ``pre_dir``: there is no
    run, or it is unfinished and the file got further (an export is finished)."""
    local = pre_dir / "checkpoint.pt"
    if not local.exists():
        return True
    if finished(pre_dir):
        return False
    return not path.name.endswith(PARKED_SUFFIX) or _step(local) < _step(path)


def check(saved: dict, source: Path, cell: Cell) -> None:
    """Refuse a kept export (``checkpoints.load_export``) or a parked checkpoint of another
    pretraining than the cell's, or one that cannot rebuild its run: an export without the
    finished run's summary (``restore_run``), a parked file without training state."""
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
    """Where ``park`` puts the cell's unfinished pretraining: one file per pretraining, named
    by its key or found by its settings (``kept_file``)."""
    return kept_file(records_dir, cell, PARKED_SUFFIX)


def park(cell: Cell, runs_root: Path, records_dir: Path, log: Callable[[str], None]) -> None:
    """When a sweep stops inside a cell: keep its pretraining if finished, else copy the
    unfinished run's ``checkpoint.pt`` to ``parked_path``, over an older copy of the same
    pretraining that got less far (never over one that got further). A run that another
    process holds (a second sweep over the same runs) is not this sweep's to park."""
    from spikessl.records import replacing
    from spikessl.runs import claim_run_dir

    pre_dir = stage_dir(runs_root, "pretrain-{}", cell.config, PRETRAIN_UNUSED)
    if finished(pre_dir):
        keep(cell, runs_root, records_dir, log)
        return
    checkpoint = pre_dir / "checkpoint.pt"
    if not checkpoint.exists():
        return
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(claim_run_dir(pre_dir))
        except ValueError:  # held by another process
            log(f"  pretrain: not parked: another process is running {pre_dir}")
            return
        step = _step(checkpoint)  # the run's lock held: the file stays as read
        records_dir.mkdir(parents=True, exist_ok=True)
        # a sweep with another --run-dir may park the same pretraining in these records:
        # the comparison and the copy are one step for it
        held.enter_context(_records_held(records_dir, log))
        parked = parked_path(records_dir, cell)  # the folder as the lock holds it
        if (export := export_path(records_dir, cell)).exists():  # another sweep finished it
            log(f"  pretrain: not parked: {export} holds the finished pretraining")
            return
        if parked.exists() and _step(parked) > step:
            log(f"  pretrain: {parked} got further than {pre_dir} (step {step}); kept as it is")
            return
        with replacing(parked) as fh:
            fh.write(checkpoint.read_bytes())
    log(
        f"  pretrain: unfinished, parked at step {step} as {parked}: a sweep with these "
        "records resumes it there, on any machine"
    )


@contextlib.contextmanager
def _records_held(records_dir: Path, log: Callable[[str], None], wait_s: float = 30.0):
    """Keep other processes' parks and keeps (``park``, ``keep``) out of ``records_dir``
    meanwhile: POSIX ``flock`` on the folder itself, so the records (committed) get no lock
    file; it serialises the processes of one machine. Where it cannot be had (no ``flock``, a
    file system without it, another process holding it past ``wait_s``: stopped or stuck),
    the caller goes ahead without it: a race between two parks is rarer than a lost one."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd, deadline = None, time.monotonic() + wait_s
    try:
        fd = os.open(records_dir, os.O_RDONLY)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    log(
                        f"  pretrain: another process has held {records_dir} for "
                        f"{wait_s:g} s; going ahead without its lock"
                    )
                    break
                time.sleep(0.1)
    except OSError as err:
        log(f"  pretrain: going ahead without the records folder's lock ({err})")
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def park_stopped(
    cell: Cell, runs_root: Path, records_dir: Path, log: Callable[[str], None]
) -> None:
    """``park`` as a stopped sweep leaves (a second Ctrl-C or SIGTERM waits for it: the
    sweep's ``runs.stop_signals`` ignores it): its own failure is logged, so the stop that
    called it is still what the user reads."""
    try:
        park(cell, runs_root, records_dir, log)
    except Exception as err:
        log(f"  pretrain: not parked: {err}")


def _step(source: Path) -> int:
    """The optimiser step the checkpoint at ``source`` was saved after; a ``ValueError``
    that names the file where it cannot be read (``checkpoints.load_checkpoint``)."""
    from spikessl.checkpoints import load_checkpoint

    try:
        return int(load_checkpoint(source).get("step", 0))
    except ValueError as err:
        fix = "move it out of the records folder" if source.name.endswith(PARKED_SUFFIX) else ""
        raise ValueError(f"{err}{'; or ' + fix if fix else ''}") from None
