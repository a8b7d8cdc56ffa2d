"""``spikessl reproduce``: the paper's Tables I-IV and Figs. 5-7, plus label efficiency.

Bahari & Kheradpisheh vary one setting at a time around their best one (T=30, pretraining
batch 256, rotation + Gaussian noise views: the ``paper-<dataset>`` preset) and report the
test accuracy after fine-tuning on 20% of the labels. This runs that protocol as resumable
``sweep`` grids recorded in one folder:

1. tables: the best cell (named ``time_steps=<base T>``, with the supervised baseline of
   Figs. 6-7), then T=10,20, batch 64,128 and the views crop-rotate, crop-noise;
2. label efficiency: fine-tuning and the supervised baseline with 1/5/10/20/100% of the
   training labels for the first seed, 1% and 10% for the others. The first seed's cells reuse
   the best cell's pretraining (``finetune.*`` is not part of the pretraining key).

Then it writes next to the records ``tables.{md,csv}``, ``label-efficiency.{md,csv,png}``,
``fig5-neighbors.png``, ``fig6-mnist-...png`` or ``fig7-cifar10-...png`` and ``README.md``
(``spikessl.report``; a README whose first line is not reproduce's marker, edited by hand, is
kept). Every number there comes from the records; a cell not run yet shows as "—".
"""

from __future__ import annotations

import fnmatch
import math
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from spikessl import dryrun, grid, report, sweep
from spikessl.config import load_config
from spikessl.config_yaml import parse_overrides, set_data_root, to_dict
from spikessl.records import labelled_count, load_records

DATASETS = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
BUDGETS = ("quick", "paper")
# budget "quick": the preset plus these (a first look, not the paper's numbers). MNIST
# fine-tunes for 2 epochs so that its grid takes about an hour on 2 CPU cores
# (docs/results/README.md, "Reading `mnist-quick`"); CIFAR-10's records are of 3.
QUICK = {
    "mnist": ["pretrain.epochs=1", "finetune.epochs=2"],
    "cifar10": ["pretrain.epochs=1", "finetune.epochs=3"],
}
FRACTIONS = (0.01, 0.05, 0.1, 0.2, 1.0)  # label efficiency, first seed
SEED_FRACTIONS = (0.01, 0.1)  # every other seed: where a margin over the baseline matters most
DEFAULT_SEEDS = (0, 1, 2)

# The paper's accuracies in %, (MNIST, CIFAR-10). Tables I-III: setting -> accuracy.
BEST = (94.23, 62.24)  # T=30, batch 256, rotate-noise: "Ours" in Table IV
TABLES = {
    ("I", "time steps", "time_steps"): {"10": (78.21, 51.63), "20": (91.54, 57.84), "30": BEST},
    ("II", "pretraining batch size", "pretrain.batch_size"): {
        "64": (87.45, 52.76),
        "128": (90.87, 57.58),
        "256": BEST,
    },
    ("III", "augmentations", "augment.views"): {
        "crop-rotate": (92.43, 61.21),
        "crop-noise": (93.86, 60.12),
        "rotate-noise": BEST,
    },
}
CITED = {"[21] spiking self-supervised": (93.06, None), "[22] SimCLR ANN": (None, 60.1)}


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


def _share(base: dict) -> str:
    return f"{100 * base['data']['labelled_fraction']:g}%"


def labelled_steps(base: dict) -> int:
    """Fine-tuning steps on the whole labelled part: ``finetune.epochs`` of its batches."""
    data, ft = base["data"], base["finetune"]
    kept = 1 - ft.get("val_fraction", 0.0)  # the labelled part less its validation share
    images = round(labelled_count(data, data["labelled_fraction"]) * kept)
    return math.ceil(images / ft["batch_size"]) * ft["epochs"]


def cell_states(steps: list[Step], records_dir: Path) -> dict[str, str]:
    """Each planned cell: "recorded", "needs the supervised baseline", "to run" or "conflict"."""
    states = {}
    for step in steps:
        for cell in step.cells:
            found = load_records(records_dir, [cell.name])
            if not found:
                states[cell.name] = "to run"
            elif not grid.record_matches(found[0], cell):
                states[cell.name] = "conflict"
            elif step.baseline and "supervised_test_accuracy" not in found[0]:
                states[cell.name] = "needs the supervised baseline"
            else:
                states[cell.name] = "recorded"
    return states


def paper_rows(dataset: str, base: dict) -> list[dict]:
    """Tables I-IV before any record: each row's table, setting, paper accuracy, cell, metric.

    ``cell`` measures the row (None: no cell here does), ``metric`` is the field of its record
    to set against the paper; ``report.table_rows`` fills in ours from the records.
    """
    column, best = list(DATASETS).index(dataset), best_name(base)

    def row(table: str, setting: str, cell: str | None, paper, method="SSL + fine-tune"):
        keys = ("table", "setting", "cell", "paper", "metric")
        return dict(zip(keys, (table, setting, cell, paper, report.METHODS[method])))

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


def report_contents(
    dataset: str, budget: str, overrides: Sequence[str], base: dict, steps: list[Step]
) -> report.Contents:
    """What the records folder reports: the tables' rows, the cells behind each figure."""
    pre, ft = base["pretrain"], base["finetune"]
    settings = (
        f"Every cell: preset `paper-{dataset}`, budget `{budget}` "
        f"({' '.join(QUICK[dataset]) if budget == 'quick' else 'the preset as is'}), extra "
        f"overrides: {' '.join(overrides) or 'none'}. Best setting: T={base['time_steps']}, "
        f"pretraining batch {pre['batch_size']}, views {'+'.join(base['augment']['views'])}; "
        f"{pre['epochs']} pretraining and {ft['epochs']} fine-tuning epochs (batch "
        f"{ft['batch_size']}); label fractions below {_share(base)} fine-tune for "
        f"{labelled_steps(base)} steps, as many as the labelled part."
    )
    label_cells = [c.name for s in steps if s.what == "label efficiency" for c in s.cells]
    return report.Contents(
        dataset=dataset,
        name=DATASETS[dataset],
        budget=budget,
        overrides=tuple(overrides),
        settings=settings,
        titles=table_titles(),
        layout=tuple(paper_rows(dataset, base)),
        best=steps[0].cells[0],
        cells=tuple(cell.name for step in steps for cell in step.cells),
        # the best cell is the labelled part's own point (fraction 0.2)
        label_cells=(best_name(base), *label_cells),
    )


# --- the command ---------------------------------------------------------------------------


def command_line(
    dataset: str,
    budget: str,
    overrides: Sequence[str],
    seeds: Sequence[int],
    records: str | None,
    keep_pretrained: bool = False,
) -> str:
    """The command that makes these outputs (machine-local --data-dir, --device and --run-dir
    left out: they say where this machine keeps things, not what the outputs are)."""
    parts = ["spikessl", "reproduce", "--dataset", dataset, "--budget", budget, *overrides]
    if list(seeds) != list(DEFAULT_SEEDS):
        parts += ["--seeds", ",".join(map(str, seeds))]
    parts += ["--records", records] if records else []
    parts += ["--keep-pretrained"] if keep_pretrained else []
    return shlex.join(parts)


def reproduce(
    dataset: str,
    budget: str,
    overrides: Sequence[str] = (),
    records: str | None = None,
    runs: str | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    dry_run: bool = False,
    progress: bool = True,
    data_dir: str | None = None,
    device: str | None = None,
    log: Callable[[str], None] = sweep.log_to_stderr,
    report_only: bool = False,
    only: Sequence[str] = (),
    keep_pretrained: bool = False,
) -> dict:
    """Run every unrecorded cell (or, with ``dry_run``, list them), then write the outputs.

    ``report_only``: write the tables, figures and README from the records there are (a
    grid finished in part), running nothing. ``only``: run just the cells whose names match
    one of these shell patterns (``time_steps=10``, ``seed=0__*``); the outputs still
    cover every recorded cell. ``keep_pretrained``: export each finished pretraining to the
    records directory (``sweep.run_sweep``), where any rerun finds it.
    """
    base = base_config(dataset, budget, overrides, data_dir, device)
    records_dir = Path(records or f"docs/results/{dataset}-{budget}")
    runs_root = Path(runs or f"runs/reproduce/{dataset}-{budget}")
    steps = plan(base, seeds)
    chosen = select(steps, only)
    states = cell_states(steps, records_dir)
    result = {"command": "reproduce", "dataset": dataset, "budget": budget}
    result |= {"overrides": list(overrides), "records": str(records_dir)}
    if dry_run:
        cells = [(step.what, cell.name) for step in steps for cell in step.cells]
        plans: dict[str, str] = {}  # the chosen cells, stage by stage
        claimed: dict[Path, str] = {}  # runs shared across the steps' sweeps, as they run
        exports: list[Path] = []  # what --keep-pretrained would write, step by step
        for step in steps:
            picked = [c for c in step.cells if c.name in chosen]
            step_plans = dryrun.plan_cells(picked, records_dir, runs_root, step.baseline, claimed)
            found = dryrun.planned_exports(picked, records_dir, runs_root, step_plans)
            exports += [e for e in found if e not in exports]
            plans |= step_plans
        shown: dict[str, str] = {}  # each cell's line: its plan, or (not chosen) its state
        for _, name in cells:
            state = states[name]
            if state == "conflict":  # refused, chosen or not: plan_cells says why if chosen
                state = f"refused: {records_dir / name}.json has other settings"
            shown[name] = plans.get(name, state)
        for i, (what, name) in enumerate(cells, 1):
            more = "" if name in chosen else ", not in --only"
            log(f"reproduce [{i}/{len(cells)}] {what}: {name}: {shown[name]}{more}")
        stopped = dryrun.refused(shown)
        if keep_pretrained and not stopped:
            for export in exports:
                log(f"reproduce: --keep-pretrained would write {export}")
        if stopped:  # as the run itself would stop
            raise dryrun.refusal("reproduce", stopped)
        todo = [n for n, state in states.items() if state != "recorded" and n in chosen]
        return result | {"dry_run": True, "cells": len(cells), "to_run": todo}
    conflicts = [name for name, state in states.items() if state == "conflict"]
    if conflicts:
        raise ValueError(
            f"{records_dir} holds records of {', '.join(conflicts)} made with other settings: "
            "use another --records directory, or delete those records to rerun them"
        )
    if report_only and set(states.values()) == {"to run"}:  # e.g. a mistyped --records
        log(
            f"reproduce: {records_dir} holds no record of this grid's cells: the report shows "
            "the paper's numbers only (check --records, default docs/results/<dataset>-<budget>)"
        )
    failed: list[str] = []  # cells stopped on their own numbers: the others still run
    for step in [] if report_only else steps:
        cells = [c for c in step.cells if c.name in chosen]
        if cells:
            try:
                # one step's seeds are not the grid's: label-efficiency.md summarises them all
                sweep.run_sweep(
                    cells,
                    records_dir,
                    runs_root,
                    step.baseline,
                    progress,
                    log,
                    seed_tables=False,
                    keep_pretrained=keep_pretrained,
                )
            except sweep.CellsFailed as err:
                failed += err.failed
    command = command_line(dataset, budget, overrides, seeds, records, keep_pretrained)
    shown = report_contents(dataset, budget, overrides, base, steps)
    outputs = report.write_outputs(shown, records_dir, command, log)
    if failed:  # the tables and figures show every other cell
        names = [cell.name for step in steps for cell in step.cells]
        raise sweep.CellsFailed(failed, load_records(records_dir, names), records_dir)
    return result | outputs
