"""Sweep records on disk: one JSON file per finished cell, read back and tabulated.

A record is written atomically (``write_atomic``), so an interrupted sweep never leaves half of
one; ``load_records`` reads a records directory back, and ``write_tables`` summarises its records
as ``results.csv`` (plain numbers) and ``results.md`` (a GitHub table). A grid over several
seeds is also summarised over them: ``seeds.py``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

SSL, SUPERVISED = "finetune_test_accuracy", "supervised_test_accuracy"
ACCURACIES = ("knn_accuracy", SSL, SUPERVISED)
DIVERGED = "†"  # beside an SSL number whose SimCLR pretraining diverged
METHODS = {"SSL + fine-tune": SSL, "supervised only": SUPERVISED}  # name -> its accuracy
DASH = "—"  # in a table: not measured (yet)


@contextmanager
def replacing(path: Path) -> Iterator[BinaryIO]:
    """A binary file that becomes ``path`` when the block ends without error.

    Written under a unique temporary name in the same folder, flushed to disk, then renamed
    over ``path``: a crash never leaves half a file, an error keeps the previous one, and
    two processes writing the same path never share a temporary file.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as fh:  # "x": never another writer's file
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def records_held(records_dir: Path, log: Callable[[str], None], wait_s: float = 30.0):
    """Keep other processes' parks and keeps (``kept.park``, ``kept.keep``) out of ``records_dir``
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
                        f"  another process has held {records_dir} for "
                        f"{wait_s:g} s; going ahead without its lock"
                    )
                    break
                time.sleep(0.1)
    except OSError as err:
        log(f"  going ahead without the records folder's lock ({err})")
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def write_atomic(path: Path, text: str) -> None:
    """``text`` written to ``path`` through ``replacing``: never half a record."""
    with replacing(path) as fh:
        fh.write(text.encode())


def read_record(path: Path) -> dict:
    """One record file, or a ValueError that names it and how to rerun its cell."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        record, reason = None, str(err)
    else:
        reason = "not a sweep record (no 'cell' and 'key')"
    if not (isinstance(record, dict) and "cell" in record and "key" in record):
        raise ValueError(
            f"sweep record {path} is unreadable ({reason}); delete it to rerun that cell"
        )
    return record


def finetune_epoch_count(planned: int, min_steps: int, per_epoch: int) -> int:
    """``finetune.epochs`` (``planned``), or more where ``per_epoch`` steps an epoch give
    under ``finetune.min_steps`` steps in all."""
    return max(planned, math.ceil(min_steps / per_epoch))


def labelled_count(data: dict, fraction: float) -> int:
    """About how many images ``fraction`` of the training set (``data``: the config's data
    section) holds; the stratified split rounds each class, so a few images more or less."""
    from spikessl.dataset_catalog import DATASETS

    return round(fraction * (data.get("train_limit") or DATASETS[data["name"]].train_size))


def evaluation_interval(epochs: int, planned: int) -> int:
    """Fine-tuning measures test accuracy every this many of its ``epochs`` and after the
    last: every epoch unless ``finetune.min_steps`` stretches training beyond the planned
    ``finetune.epochs``, then at most ``planned`` points (21 epochs of 20 planned: 11)."""
    return math.ceil(epochs / planned)


def evaluated_epochs(epochs: int, planned: int) -> list[int]:
    """The epochs whose test accuracy a fine-tuning of ``epochs`` (>= 1) epochs measures."""
    every = evaluation_interval(epochs, planned)
    return sorted({*range(every, epochs + 1, every), epochs})


def accuracy_curve(record: dict, method: str = "finetune") -> dict[int, float] | None:
    """A record's test accuracy per epoch for ``method`` ("finetune" or "supervised"), keyed
    by the epochs that measured it; None where the record holds no such curve.

    Records keep the values as a list; the epochs are ``{method}_epochs`` (recorded since
    it was added) or, in older records, the one epoch count that gives the recorded steps
    (``finetune.min_steps`` stretches training) and as many values.
    """
    values = record.get(f"{method}_accuracy_by_epoch")
    if not isinstance(values, list) or not values:
        return None
    planned = ((record.get("config") or {}).get("finetune") or {}).get("epochs")
    epochs = record.get(f"{method}_epochs") or _recorded_epochs(record, method, len(values))
    if not (isinstance(planned, int) and planned >= 1 and isinstance(epochs, int) and epochs >= 1):
        raise ValueError(
            f"record {record.get('cell', '?')} does not say at which epochs its {len(values)} "
            f"{method} test accuracies were measured: rerun its sweep with this spikessl, or "
            "plot its run directory (metrics.jsonl) instead"
        )
    at = evaluated_epochs(epochs, planned)
    if len(at) != len(values):
        raise ValueError(
            f"record {record.get('cell', '?')}: {len(values)} {method} test accuracies for "
            f"{epochs} epochs, which measure {len(at)}: the record is damaged; rerun its cell"
        )
    return dict(zip(at, values))


def _recorded_epochs(record: dict, method: str, points: int) -> int | None:
    """The fine-tuning epoch count of an older record (before ``{method}_epochs``): the one
    that ``finetune.min_steps`` gives for as many labelled images as the config names,
    checked against the recorded steps and ``points`` evaluations; None if it does not fit."""
    from spikessl.dataset_catalog import DATASETS

    config = record.get("config") or {}
    ft, data = config.get("finetune") or {}, config.get("data") or {}
    planned, min_steps = ft.get("epochs"), ft.get("min_steps", 0)
    if not min_steps:
        return planned if points == planned else None
    steps, batch = record.get(f"{method}_steps"), ft.get("batch_size")
    if not (isinstance(steps, int) and isinstance(planned, int) and steps >= 1):
        return None
    if not (isinstance(batch, int) and batch >= 1 and data.get("name") in DATASETS):
        return None
    fraction = ft.get("label_fraction") or data.get("labelled_fraction", 0.2)
    # steps an epoch for the labelled images (the split's per-class rounding moves the
    # count by a few images: this only where it sits at a multiple of the batch)
    per_epoch = math.ceil(labelled_count(data, fraction) / batch)
    epochs = finetune_epoch_count(planned, min_steps, per_epoch)
    fits = steps == epochs * per_epoch and len(evaluated_epochs(epochs, planned)) == points
    return epochs if fits else None


def load_records(records_dir: str | Path, names: list[str] | None = None) -> list[dict]:
    """The records in ``records_dir``: all (by file name), or those of ``names`` that exist."""
    records_dir = Path(records_dir)
    if names is None:
        paths = sorted(records_dir.glob("*.json"))
    else:
        paths = [p for p in (records_dir / f"{n}.json" for n in names) if p.exists()]
    return [read_record(p) for p in paths]


def pretrain_diverged_epoch(record: dict) -> int | None:
    """The first epoch at which the record's SimCLR pretraining diverged, judged from its
    ``pretrain_loss_by_epoch`` by the rule the training loop warns with
    (``health.check_divergence``), or None. Tables mark such cells; their numbers stay as
    measured."""
    losses = record.get("pretrain_loss_by_epoch") or []
    if len(losses) < 2:
        return None
    from spikessl.health import check_divergence  # health imports this module

    history: list[dict] = []
    for epoch, loss in enumerate(losses, 1):
        if check_divergence(history, loss, ""):
            return epoch
        history.append({"epoch": epoch, "loss": loss})
    return None


def default_columns(records: list[dict]) -> list[str]:
    """Grid keys, seed, the accuracies (with the validation part's where one was held out:
    ``finetune.val_fraction``), the epoch a pretraining diverged (if one did) and each stage's
    wall time (minutes)."""
    columns = list(dict.fromkeys(k for r in records for k in r.get("grid", {})))
    if "seed" not in columns:
        columns.append("seed")
    columns += ["knn_accuracy_at_init", "knn_accuracy"]
    baseline = any("supervised_test_accuracy" in r for r in records)
    for stage in ["finetune", *(["supervised"] if baseline else [])]:
        columns.append(f"{stage}_test_accuracy")
        if any(f"{stage}_val_accuracy" in r for r in records):
            columns.append(f"{stage}_val_accuracy")
    if any(pretrain_diverged_epoch(r) for r in records):
        columns.append("pretrain_diverged_epoch")
    stages = ["pretrain", "finetune", *(["supervised"] if baseline else [])]
    return columns + [f"{stage}_minutes" for stage in stages]


def _value(record: dict, column: str):
    """A grid value (raw text), a record field, ``<stage>_minutes`` or a dotted config key."""
    if column in record.get("grid", {}):
        return record["grid"][column]
    if column == "pretrain_diverged_epoch":
        return pretrain_diverged_epoch(record)
    stage = column.removesuffix("_minutes")
    if column.endswith("_minutes") and stage in record.get("wall_seconds", {}):
        return round(record["wall_seconds"][stage] / 60, 2)
    if column in record and not isinstance(record[column], (dict, list)):
        return record[column]
    node = record.get("config", {})
    for part in column.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _markdown_cell(column: str, value) -> str:
    if value is None:
        return ""
    if "accuracy" in column and isinstance(value, (int, float)):
        return f"{value:.2f}%"
    if column.endswith("_minutes"):
        return f"{value:.1f}"
    return str(value).replace("|", "\\|")


def csv_text(rows: list[dict], columns: list[str]) -> str:
    """``rows`` as CSV text with a header; missing and None values are empty fields."""
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: "" if r.get(k) is None else r[k] for k in columns} for r in rows)
    return out.getvalue()


def write_tables(
    records: list[dict],
    csv_path: str | Path,
    md_path: str | Path,
    columns: list[str] | None = None,
) -> None:
    """One row per record: ``csv_path`` (plain numbers) and ``md_path`` (a GitHub table)."""
    columns = columns or default_columns(records)
    rows = [[_value(r, c) for c in columns] for r in records]
    write_atomic(Path(csv_path), csv_text([dict(zip(columns, row)) for row in rows], columns))
    numeric = [all(isinstance(v, (int, float)) for v in col if v is not None) for col in zip(*rows)]
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---:" if n else "---" for n in (numeric or [False] * len(columns))) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_markdown_cell(c, v) for c, v in zip(columns, row)) + " |")
    write_atomic(Path(md_path), "\n".join(lines) + "\n")
