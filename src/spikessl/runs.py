"""Run directories: their default names, the lock that keeps two processes apart, and the
``summary.json`` that marks a run finished.

A training command writes one directory (``config.yaml``, ``metrics.jsonl``,
``checkpoint.pt``, ``summary.json``). Its summary is written last and atomically, so a
directory without one holds an unfinished run: resumable from its checkpoint, never
mistaken for a result. ``run_stage`` acts on that: it reuses a finished run, resumes an
interrupted one, or starts afresh (each stage of ``sweep`` and ``pipeline``). A run's
directory rebuilt from a file (a finished run's export, an unfinished run's parked
checkpoint) is ``spikessl.kept``'s.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from spikessl.config import Config
from spikessl.config_yaml import dump_yaml
from spikessl.records import write_atomic

if TYPE_CHECKING:  # torch only where something trains
    from spikessl.distributed import World


RUN_FILES = ("metrics.jsonl", "summary.json", "config.yaml", "checkpoint.pt")  # in every run


def default_run_dir(cfg: Config, command: str) -> Path:
    """``<out_dir>/<command>-<dataset>-<date-time>``, made unique and created here: two
    processes started in the same second never share one (``mkdir`` claims the name)."""
    stem = Path(cfg.out_dir) / f"{command}-{cfg.data.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    run_dir, n = stem, 1
    while True:
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            n += 1
            run_dir = stem.with_name(f"{stem.name}-{n}")


@contextlib.contextmanager
def removed_if_unused(root: Path) -> Iterator[None]:
    """Remove ``root``, a folder this process made for its stages (``default_run_dir``),
    when what runs inside fails before any stage wrote to it (the data not found, a Ctrl-C
    while loading): it then holds nothing but the stages' locks, and a retry makes another."""
    try:
        yield
    except BaseException:
        if root.is_dir() and all(p.name == ".locks" for p in root.iterdir()):
            shutil.rmtree(root, ignore_errors=True)
        raise


def new_run_dir(
    cfg: Config,
    command: str,
    run_dir: str | Path | None = None,
    world: World | None = None,
    resuming: bool = False,
) -> Path:
    """The run's directory, with its resolved config written (by the main process). Without
    ``run_dir`` the main process names a new one and, under torchrun, tells the others."""
    main = world is None or world.is_main
    if run_dir is None:
        run_dir = default_run_dir(cfg, command) if main else None
        if world is not None and world.size > 1:
            from spikessl.distributed import broadcast_object

            run_dir = broadcast_object(run_dir, world)
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resuming)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / "config.yaml", dump_yaml(cfg))  # never half a file
    return run_dir


def check_run_dir(run_dir: str | Path | None, resuming: bool = False) -> None:
    """Refuse a ``--run-dir`` that a new run cannot write: a file, a finished run, or an
    unfinished one (unless ``resuming`` it). Called before the data loads, and again by
    ``new_run_dir``."""
    if run_dir is None:
        return
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"{run_dir} is a file, not a folder: choose another --run-dir")
    if finished(run_dir):
        raise FileExistsError(f"{run_dir} already holds a finished run; choose another --run-dir")
    if not resuming and (run_dir / "checkpoint.pt").exists():
        raise FileExistsError(
            f"{run_dir} holds an unfinished run: continue it with --resume {run_dir}, or "
            "choose another --run-dir"
        )


@contextlib.contextmanager
def claim_run_dir(run_dir: Path, wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Keep other processes from writing ``run_dir`` while this one does.

    An advisory lock on ``.locks/<run_dir name>.lock`` beside ``run_dir`` (POSIX ``flock``,
    released when the process ends, however it ends; outside the run so that deleting the run
    does not drop it). Held by another process: with ``wait``, call it and wait for the lock;
    without, raise ``ValueError``. The CLI's training commands and ``sweep``'s stages take it;
    ``pretrain``/``finetune`` called from Python do not. No ``flock`` (Windows): no lock.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    locks = run_dir.parent / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{run_dir.name}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if wait is None:
                raise ValueError(
                    f"another spikessl process is writing {run_dir} (it holds "
                    f"{lock.name}): let it finish (then --resume {run_dir} if it was "
                    "interrupted), or choose another --run-dir"
                ) from None
            wait()
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished run (``write_summary`` wrote its summary)."""
    return (run_dir / "summary.json").exists()


def write_summary(run_dir: Path, summary: dict) -> dict:
    """Write ``summary.json``, the mark of a finished run, atomically (a kill leaves none)."""
    summary["run_dir"] = str(run_dir)
    write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def run_stage(
    what: str, run_dir: Path, log: Callable[[str], None], run: Callable[[dict | None], dict]
) -> dict:
    """Reuse a finished run, resume an interrupted one, or start ``run(resume=None)`` afresh
    (``run`` gets the checkpoint to resume from, or None); returns the run's summary.

    What ``sweep`` and ``pipeline`` do for each stage. Another spikessl process at work on
    ``run_dir`` (a second sweep over the same runs) is waited for, then its run reused or
    resumed, never deleted or written over.
    """
    wait = f"  {what}: another process is running {run_dir}; waiting for it to finish"
    with claim_run_dir(run_dir, wait=lambda: log(wait)):
        return _run_claimed(what, run_dir, log, run)


def _run_claimed(
    what: str, run_dir: Path, log: Callable[[str], None], run: Callable[[dict | None], dict]
) -> dict:
    from spikessl.checkpoints import load_checkpoint

    summary_path = run_dir / "summary.json"
    if finished(run_dir):
        try:
            summary = json.loads(summary_path.read_text())
            log(f"  {what}: finished earlier, reusing {run_dir}")
            return summary
        except json.JSONDecodeError:  # half-written by an older version: the checkpoint redoes it
            if not (run_dir / "checkpoint.pt").exists():  # nothing to redo it from: keep the run
                raise ValueError(
                    f"{summary_path} is corrupt and {run_dir} has no checkpoint.pt to redo the "
                    f"run's last epoch from: delete {run_dir} to rerun this stage"
                ) from None
            summary_path.unlink()
    resume, before = None, 0.0
    if (run_dir / "checkpoint.pt").exists():
        resume = load_checkpoint(run_dir)
        if "loop" not in resume:
            raise ValueError(f"{run_dir} has no resumable training state; delete it to rerun")
        log(f"  {what}: resuming {run_dir} after step {resume['step']}")
        # seconds trained before the interruption, read before the resumed loop runs
        loop = resume["loop"]
        history = loop["history"]
        before = sum(r["seconds"] + r.get("eval_seconds", 0.0) for r in history)
        before += loop["sums"]["seconds"]
    else:
        if run_dir.exists():  # killed before its first checkpoint: nothing worth keeping
            remove_unstarted(run_dir)
        log(f"  {what}: {run_dir}")
    summary = run(resume)
    if resume is not None:  # the summary timed only the resumed part: add the rest
        summary["wall_seconds"] = round(summary["wall_seconds"] + before, 1)
        summary["resumed"] = True
        write_summary(run_dir, summary)
    return summary


def remove_unstarted(run_dir: Path) -> None:
    """Delete a stage's folder that a run left before its first checkpoint, or raise a
    ValueError if it holds anything else: a folder of the user's is never deleted."""
    own = {"config.yaml", "metrics.jsonl"}  # and write_atomic's ".<name>.<pid>-<hex>.tmp"
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir} is a file, where a run folder belongs: move it away")
    other = sorted(
        p.name
        for p in run_dir.iterdir()
        if p.name not in own and not (p.name.startswith(".") and p.name.endswith(".tmp"))
    )
    if other:
        listed = ", ".join(other[:5]) + (", ..." if len(other) > 5 else "")
        raise ValueError(
            f"{run_dir} holds files that are not a spikessl run's ({listed}), and no "
            "checkpoint.pt to resume from: move them away or choose another --run-dir"
        )
    shutil.rmtree(run_dir)


class Stopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM that stopped a sweep outside a training step (``stop_signals``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def stop_signals() -> Iterator[list]:
    """Ctrl-C and SIGTERM (a scheduler's, ``kill``) stop a sweep alike, also outside training
    steps (loading data, a kNN pass), so that the stopped cell is parked: Python's default
    would end the process at once on SIGTERM. Yields a list: once it holds something (the
    first signal, or the sweep's own stop being handled), further signals are ignored until
    the block ends, so a second one cannot cut the park short. Training steps defer both
    signals themselves (``resumable.deferred_signals``)."""
    stopping: list = []
    if threading.current_thread() is not threading.main_thread():
        yield stopping
        return

    def stop(signum, frame):
        if not stopping:
            stopping.append(signum)
            raise Stopped(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopping
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
