"""The dry-run: what ``sweep.run_sweep`` would do with each cell, stage by stage, training
and writing nothing (``spikessl sweep --dry-run``, ``spikessl reproduce --dry-run``)."""

from __future__ import annotations

from pathlib import Path

from spikessl import kept
from spikessl.grid import FINETUNE, PRETRAIN, SUPERVISED, Cell, Stage
from spikessl.runs import finished
from spikessl.sweep import cell_record, check_pretrained, check_sweep


def plan_cells(
    cells: list[Cell],
    records_dir: str | Path,
    runs_root: str | Path,
    baseline: bool = False,
    claimed: dict[Path, str] | None = None,
) -> dict[str, str]:
    """What ``run_sweep`` would do with each cell, by name, as one line; nothing is written.

    "recorded" (skipped), "refused: <why>" (a record or kept or parked file ``run_sweep``
    would refuse, stopping the grid), or, for a cell to run, each stage's plan: done
    (reused), resumes from its checkpoint, restored from a kept export, resumes from a parked
    checkpoint (``kept.park``), shared with an earlier cell
    (the pretraining, or the baseline, that cells differing only in other settings share),
    or to run. ``claimed`` (stage run directory -> the first cell to need it) carries those
    over from an earlier sweep of the same runs, and is updated. Judged from the files
    present: a run another process finishes meanwhile, or one whose summary is corrupt,
    may be reused or redone where this says otherwise.
    """
    records_dir, runs_root = Path(records_dir), Path(runs_root)
    check_sweep(cells, records_dir, runs_root)
    claimed = {} if claimed is None else claimed
    states: dict[str, str] = {}
    for cell in cells:
        try:
            record = cell_record(records_dir, cell)
            missing_baseline = baseline and "supervised_test_accuracy" not in (record or {})
            if record is not None and not missing_baseline:
                states[cell.name] = "recorded"
                continue
            cfg, stages = cell.config, (SUPERVISED,) * missing_baseline
            if record is None:
                check_pretrained(PRETRAIN.run_dir(runs_root, cfg), FINETUNE.run_dir(runs_root, cfg))
                stages = (PRETRAIN, FINETUNE, *stages)
            parts = [_plan(s, cell, records_dir, runs_root, claimed) for s in stages]
        except ValueError as err:
            states[cell.name] = f"refused: {err}"
            continue
        states[cell.name] = ("recorded; " if record else "") + ", ".join(parts)
    return states


def planned_exports(
    cells: list[Cell], records_dir: str | Path, runs_root: str | Path, states: dict[str, str]
) -> list[Path]:
    """The exports ``run_sweep`` with ``keep_pretrained`` would write, in order, given the
    cells' ``plan_cells`` states: one per pretraining that is, or will be, finished and has
    none yet (a pretraining that stops on its own numbers writes none)."""
    records_dir, runs_root = Path(records_dir), Path(runs_root)
    exports: list[Path] = []
    for cell in cells:
        export = kept.export_path(records_dir, cell)
        pre_dir = PRETRAIN.run_dir(runs_root, cell.config)
        trains = states[cell.name].startswith("pretraining ")  # the cell runs, from its start
        if not export.exists() and export not in exports and (trains or finished(pre_dir)):
            exports.append(export)
    return exports


def _plan(
    stage: Stage, cell: Cell, records_dir: Path, runs_root: Path, claimed: dict[Path, str]
) -> str:
    """One stage's part of a line of ``plan_cells``: the first cell to need its run directory
    claims it; a kept or parked file of it in the records rebuilds it (``kept.source``)."""
    run_dir = stage.run_dir(runs_root, cell.config)
    if run_dir in claimed:
        return f"{stage.noun} shared with {claimed[run_dir]}"
    source = kept.source(records_dir, cell, run_dir, stage)
    if source is not None:
        from spikessl.checkpoints import load_checkpoint

        saved = load_checkpoint(source)
        kept.check(saved, source, cell, stage)
        claimed[run_dir] = cell.name
        how = "resumes from" if "loop" in saved else "restored from"
        at = f" (step {saved['step']})" if "loop" in saved else ""
        aside = " (the run there moved aside)" * (run_dir / "checkpoint.pt").exists()
        return f"{stage.noun} {how} {source.name}{at}{aside}"
    claimed[run_dir] = cell.name
    if finished(run_dir):
        return f"{stage.noun} done ({run_dir})"
    if (run_dir / "checkpoint.pt").exists():
        return f"{stage.noun} resumes from {run_dir}"
    return f"{stage.noun} to run"


def refused(states: dict[str, str]) -> list[str]:
    """The cells of ``plan_cells`` states that the run would refuse, stopping there."""
    return [name for name, state in states.items() if state.startswith("refused: ")]


def refusal(command: str, names: list[str]) -> ValueError:
    """The dry-run's error where the run itself would stop (its lines above say why)."""
    return ValueError(
        f"{command} would refuse {', '.join(names)} (why: the lines above) and stop; "
        "mend or move the files named, or use another --records folder"
    )
