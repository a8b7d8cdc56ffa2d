"""The paper's protocol as sweep grids: the cells ``spikessl reproduce`` runs, and the rows of
Tables I-IV that set their records against the paper's numbers (``spikessl.paper``).

Bahari & Kheradpisheh vary one setting at a time around their best one (T=30, pretraining
batch 256, rotation + Gaussian noise views: the ``paper-<dataset>`` preset) and report the
test accuracy after fine-tuning on 20% of the labels. The plan:

1. tables: the best cell (named ``time_steps=<base T>``, with the supervised baseline of
   Figs. 6-7), then T=10,20, batch 64,128 and the views crop-rotate, crop-noise;
2. label efficiency: fine-tuning and the supervised baseline with 1/5/10/20/100% of the
   training labels for the first seed, 1% and 10% for the others. The first seed's cells reuse
   the best cell's pretraining (``finetune.*`` is not part of the pretraining key).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass

from spikessl import grid
from spikessl.config import load_config
from spikessl.config_yaml import parse_overrides, set_data_root, to_dict
from spikessl.paper import BEST, BUDGETS, CITED, DATASETS, FRACTIONS, QUICK, SEED_FRACTIONS, TABLES
from spikessl.records import METHODS, labelled_count


@dataclass(frozen=True)
class Step:
    """One ``sweep.run_sweep`` call of the plan."""

    what: str  # "tables" or "label efficiency"
    cells: tuple[grid.Cell, ...]
    baseline: bool


def base_config(
    dataset: str,
    budget: str,
    overrides: Sequence[str] = (),
    data_dir: str | None = None,
    device: str | None = None,
) -> dict:
    """``paper-<dataset>``, the budget's overrides, then the user's: every cell's base."""
    if dataset not in DATASETS or budget not in BUDGETS:
        raise ValueError(f"choose --dataset from {list(DATASETS)} and --budget from {BUDGETS}")
    tree = parse_overrides([*(QUICK[dataset] if budget == "quick" else []), *overrides])
    if data_dir:  # taken literally, as in the other commands
        set_data_root(tree, data_dir)
    if device:
        tree["device"] = device
    cfg = load_config(f"paper-{dataset}", tree)
    if cfg.data.name != dataset:
        raise ValueError(f"data.name={cfg.data.name} contradicts --dataset {dataset}: drop it")
    if cfg.finetune.label_fraction:  # the best cell would then duplicate a curve point
        raise ValueError(
            f"finetune.label_fraction={cfg.finetune.label_fraction}: reproduce varies it itself "
            "(the label-efficiency curve, on top of the labelled part's tables); drop it, or "
            "run one fraction with `spikessl sweep --config paper-<dataset> "
            "finetune.label_fraction=...`"
        )
    return to_dict(cfg)


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``: the first seed gets every labelled fraction."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected integers such as 0,1,2") from None
    if len(set(seeds)) < len(seeds) or min(seeds) < 0:
        raise ValueError(f"--seeds {text!r}: list distinct seeds >= 0, e.g. 0,1,2")
    return seeds


def best_name(base: dict) -> str:
    return f"time_steps={base['time_steps']}"


def row_cell(base: dict, key: str, setting: str) -> str:
    """The cell measuring ``key=setting``: the best cell where that is the base's own value."""
    if load_config(base, parse_overrides([f"{key}={setting}"])) == load_config(base):
        return best_name(base)
    return grid.cell_name(((key, setting),))


def plan(base: dict, seeds: Sequence[int]) -> list[Step]:
    """The sweeps to run, in order; every cell's config is built and checked here."""
    if not seeds:
        raise ValueError("--seeds: give at least one seed, e.g. 0,1,2")
    best = grid.expand_grid(base, [f"time_steps={base['time_steps']}"])
    steps = [Step("tables", tuple(best), True)]
    for (_, _, key), paper in TABLES.items():
        # every row the best cell does not measure, the paper's own best setting included
        # when an override moved the base off it (views=crop-rotate still gets rotate-noise)
        values = [v for v in paper if row_cell(base, key, v) != best[0].name]
        if values:
            cells = grid.expand_grid(base, [f"{key}={','.join(values)}"])
            steps.append(Step("tables", tuple(cells), False))
    # the best cell already fine-tunes on the labelled part: it is that fraction's point
    own = base["data"]["labelled_fraction"]
    first = tuple(f for f in FRACTIONS if not (f == own and seeds[0] == base["seed"]))
    grids = [(seeds[:1], first), (seeds[1:], SEED_FRACTIONS)]
    # a subset of the labelled part trains for as many steps as the whole part: 1% of the
    # labels is not judged after a twentieth of the updates (and the baseline gets the same)
    ft = base["finetune"]
    few = base | {"finetune": ft | {"min_steps": max(ft["min_steps"], labelled_steps(base))}}
    for group, fractions in (g for g in grids if g[0]):
        cells = []
        for subset, cell_base in ((True, few), (False, base)):
            chosen = [f for f in fractions if (f < own) == subset]
            axes = [
                f"seed={','.join(map(str, group))}",
                f"finetune.label_fraction={','.join(map(str, chosen))}",
            ]
            cells += grid.expand_grid(cell_base, axes) if chosen else []
        cells.sort(key=lambda c: int(dict(c.overrides)["seed"]))  # seed by seed, fractions rising
        steps.append(Step("label efficiency", tuple(cells), True))
    return steps


def select(steps: list[Step], only: Sequence[str]) -> set[str]:
    """Names of the planned cells matching any of the ``only`` patterns (all if none)."""
    names = [cell.name for step in steps for cell in step.cells]
    if not only:
        return set(names)
    matches = {p: {n for n in names if fnmatch.fnmatchcase(n, p)} for p in only}
    unmatched = [p for p, found in matches.items() if not found]
    if unmatched:
        raise ValueError(
            f"--only {','.join(unmatched)} matches no cell of this plan; its cells are: "
            f"{', '.join(names)} (shell patterns such as 'seed=0__*' work too)"
        )
    return set().union(*matches.values())


def labelled_steps(base: dict) -> int:
    """Fine-tuning steps on the whole labelled part: ``finetune.epochs`` of its batches."""
    data, ft = base["data"], base["finetune"]
    kept = 1 - ft.get("val_fraction", 0.0)  # the labelled part less its validation share
    images = round(labelled_count(data, data["labelled_fraction"]) * kept)
    return math.ceil(images / ft["batch_size"]) * ft["epochs"]


def paper_rows(dataset: str, base: dict) -> list[dict]:
    """Tables I-IV before any record: each row's table, setting, paper accuracy, cell, metric.

    ``cell`` measures the row (None: no cell here does), ``metric`` is the field of its record
    to set against the paper; ``report.table_rows`` fills in ours from the records.
    """
    column, best = list(DATASETS).index(dataset), best_name(base)

    def row(table: str, setting: str, cell: str | None, paper, method="SSL + fine-tune"):
        keys = ("table", "setting", "cell", "paper", "metric")
        return dict(zip(keys, (table, setting, cell, paper, METHODS[method])))

    rows = []
    for (number, _, key), paper in TABLES.items():
        cells = [row_cell(base, key, setting) for setting in paper]
        rows += [row(number, s, c, acc[column]) for (s, acc), c in zip(paper.items(), cells)]
        if best not in cells:  # an override moved the base off the paper's rows
            value = base
            for part in key.split("."):
                value = value[part]
            text = "+".join(map(str, value)) if isinstance(value, list) else str(value)
            rows.append(row(number, f"{text} (this run's base)", best, None))
    rows.append(row("IV", "SSL SNN + fine-tuning (best cell)", best, BEST[column]))
    rows.append(row("IV", "supervised-only SNN, same labels", best, None, "supervised only"))
    rows += [row("IV", f"{name} (cited)", None, acc[column]) for name, acc in CITED.items()]
    return rows


def table_titles() -> dict[str, str]:
    """Table number -> what it varies: the headings of Tables I-IV."""
    return {number: title for number, title, _ in TABLES} | {"IV": "the best setting"}
