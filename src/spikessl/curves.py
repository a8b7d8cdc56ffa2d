"""Per-epoch test accuracy read back for ``spikessl compare``: from a run's folder
(``metrics.jsonl``; kNN accuracy for a pretraining) or from a sweep record (SSL + fine-tune
and, where the record holds one, supervised-only), so a committed record redraws Figs. 6-7.
"""

from __future__ import annotations

import json
from pathlib import Path

from spikessl.records import accuracy_curve

RUN_LABELS = {"finetune": "SSL pretrained + fine-tuned", "supervised": "supervised only"}


def run_curve(run_dir: str) -> tuple[str, dict[int, float]]:
    """A run's command and its test accuracy by epoch (kNN accuracy for pretraining)."""
    path = Path(run_dir) / "metrics.jsonl"
    stages = [s for s in ("pretrain", "finetune", "supervised") if (Path(run_dir) / s).is_dir()]
    if stages and not path.exists():  # a pipeline's folder
        shown = [s for s in stages if s != "pretrain"] or stages  # the accuracy curves first
        raise FileNotFoundError(
            f"{run_dir} is a pipeline's folder, its runs are in {', '.join(stages)}: pass them, "
            f"e.g. {' '.join(str(Path(run_dir) / s) for s in shown)}"
        )
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        raise FileNotFoundError(
            f"no {path}: pass a spikessl run directory or a sweep record (a .json file)"
        ) from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is corrupt ({err}); rerun or resume that run") from None
    try:
        command = json.loads((Path(run_dir) / "summary.json").read_text())["command"]
    except (OSError, ValueError, KeyError):
        command = Path(run_dir).name
    metric = "knn_accuracy" if command == "pretrain" else "test_accuracy"
    values = {r["epoch"]: r[metric] for r in rows if metric in r}
    if not values:
        raise ValueError(f"{path} has no per-epoch {metric}: is the run finished?")
    return command, values


def record_curves(path: str) -> dict[str, dict[int, float]]:
    """A sweep record's curves (``docs/results/*/*.json``): SSL + fine-tune, and supervised
    only where the record holds a baseline, so a committed record redraws Figs. 6-7."""
    not_a_record = ValueError(
        f"{path} is not a sweep record (a .json file): pass a record written by "
        "`spikessl sweep` or `spikessl reproduce`, or a run directory"
    )
    try:
        record = json.loads(Path(path).read_text())
    except UnicodeDecodeError:
        raise not_a_record from None
    except json.JSONDecodeError as err:
        if Path(path).suffix.lower() != ".json":  # results.csv, README.md, ...
            raise not_a_record from None
        raise ValueError(
            f"{path} is a damaged record ({err}): restore it (records are meant to be "
            "committed: `git checkout` it) or delete it and rerun its sweep, which redoes only "
            "that cell"
        ) from None
    curves = {}
    for method, label in RUN_LABELS.items() if isinstance(record, dict) else ():
        if (curve := accuracy_curve(record, method)) is not None:  # at the epochs measured
            curves[label] = curve
    if not curves:
        raise ValueError(
            f"{path} holds no {' or '.join(f'{m}_accuracy_by_epoch' for m in RUN_LABELS)}: pass "
            "a record written by "
            "`spikessl sweep` or `spikessl reproduce`, or a run directory"
        )
    return curves
