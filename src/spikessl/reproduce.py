"""``spikessl reproduce``: the paper's Tables I-IV and Figs. 5-7, plus label efficiency.

It runs the plan of ``spikessl.protocol`` (the paper's grids around its best setting, then
the label-efficiency cells) as resumable ``sweep`` grids recorded in one folder. Then it writes
next to the records ``tables.{md,csv}``, ``label-efficiency.{md,csv,png}``,
``fig5-neighbors.png``, ``fig6-mnist-...png`` or ``fig7-cifar10-...png`` and ``README.md``
(``spikessl.report``; a README whose first line is not reproduce's marker, edited by hand, is
kept). Every number there comes from the records; a cell not run yet shows as "—".
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

from spikessl import dryrun, grid, report, sweep
from spikessl.paper import DATASETS, DEFAULT_SEEDS, QUICK
from spikessl.protocol import (
    Step,
    base_config,
    best_name,
    labelled_steps,
    paper_rows,
    plan,
    select,
    table_titles,
)
from spikessl.records import load_records


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


def _share(base: dict) -> str:
    return f"{100 * base['data']['labelled_fraction']:g}%"


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
