"""Handlers of the ``spikessl`` subcommands: what each command does with its parsed arguments.

``spikessl.arguments`` builds the parser, and ``spikessl.cli`` dispatches here. The heavier
modules (checkpoints, pipeline, figures, sweep, reproduce) are imported inside the handlers,
only when one runs.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from spikessl.command_config import DEFAULT_CONFIG, sweep_axes
from spikessl.config import Config


def reproduce(args: argparse.Namespace, progress: bool) -> dict:
    from spikessl.protocol import parse_seeds
    from spikessl.reproduce import reproduce

    seeds = parse_seeds(args.seeds)
    return reproduce(
        args.dataset,
        args.budget,
        args.overrides,
        args.records,
        args.run_dir,
        seeds,
        args.dry_run,
        progress,
        args.data_dir,
        args.device,
        report_only=args.report_only,
        only=[p for p in args.only.split(",") if p],
        keep_pretrained=args.keep_pretrained,
    )


def export(args: argparse.Namespace) -> dict:
    """Write a run's weights as safetensors (beside the checkpoint unless --out says where)."""
    from spikessl import checkpoints

    checkpoint = checkpoints.load_checkpoint(args.run)
    run = Path(args.run)
    out = Path(args.out or (run if run.is_dir() else run.parent))
    if args.out and args.out.endswith(("/", os.sep)):  # a folder, made if need be
        out.mkdir(parents=True, exist_ok=True)
    target = out / "model.safetensors" if out.is_dir() else out
    if target.suffix != ".safetensors":  # never over a run's checkpoint.pt or summary.json
        raise ValueError(
            f"--out {target}: name the export *.safetensors, or pass a folder (a new one "
            "ending in /): the commands that load it (--pretrained) tell an export from a "
            "checkpoint by that suffix"
        )
    if target.exists():
        raise ValueError(
            f"{target} exists and export never replaces a file: remove it first, or pass "
            "another --out"
        )
    path = checkpoints.export_safetensors(
        checkpoint,
        target,
        run if run.is_dir() else None,  # a finished run's summary and metrics go along
    )
    if run.is_dir() and not (run / "summary.json").exists() and "loop" in checkpoint:
        print(
            f"export: {run} is an unfinished run: {path} holds its weights after step "
            f"{checkpoint['loop']['step']}; knn, probe and neighbors read it, and "
            "`finetune --pretrained` refuses it until the run is finished and exported again",
            file=sys.stderr,
        )
    return {"command": "export", "safetensors": str(path)}


def compare(args: argparse.Namespace) -> dict:
    """One PNG of per-epoch test accuracy from run directories and sweep records."""
    from spikessl import figures
    from spikessl.curves import RUN_LABELS, record_curves, run_curve
    from spikessl.runs import RUN_FILES

    curves: list[tuple[str, str, dict[int, float]]] = []  # (label, source, values)
    for run in args.runs:
        if Path(run).name in RUN_FILES:
            raise ValueError(f"{run} is a file of a run: pass the run's folder, {Path(run).parent}")
        if Path(run).is_file():  # a sweep record: one curve per method it holds
            curves += [(label, run, values) for label, values in record_curves(run).items()]
        else:
            command, values = run_curve(run)
            curves.append((RUN_LABELS.get(command, run), run, values))
    if args.labels is not None and len(args.labels) != len(curves):
        raise ValueError(
            f"--labels needs one label per curve ({len(curves)}: one per run directory, "
            "one per method a record holds)"
        )
    if args.labels:
        curves = [(label, run, values) for label, (_, run, values) in zip(args.labels, curves)]
    labels = [label for label, _, _ in curves]
    series = {  # the same method from two runs or records: each named after its source
        (label if labels.count(label) == 1 else f"{label} ({run})"): values
        for label, run, values in curves
    }
    path = figures.curves(series, args.out, args.title or "Test accuracy per epoch")
    final = {k: v[max(v)] for k, v in series.items()}
    return {"command": "compare", "png": str(path), "final": final}


def sweep(args: argparse.Namespace, cfg: Config, progress: bool) -> dict:
    from spikessl import grid
    from spikessl.config_yaml import to_dict
    from spikessl.dryrun import plan_cells, planned_exports, refusal, refused
    from spikessl.sweep import CellsFailed, run_sweep

    axes, fixed = sweep_axes(args.overrides)  # the fixed settings are in cfg already
    axis_keys = {o.partition("=")[0].strip() for o in axes}
    for item in fixed:
        if item.partition("=")[0].strip() in axis_keys:
            print(f"sweep: {item} is replaced by the grid axis of that key", file=sys.stderr)
    cells = grid.expand_grid(to_dict(cfg), axes)
    runs_root = args.run_dir or os.path.join(cfg.out_dir, "sweep")
    if args.records is None:  # beside the runs, wherever out_dir or --run-dir puts them
        args.records = os.path.join(runs_root, "records")
    if args.dry_run:
        states = plan_cells(cells, args.records, runs_root, args.baseline)
        for i, (name, state) in enumerate(states.items(), 1):
            print(f"sweep [{i}/{len(cells)}] {name}: {state}", file=sys.stderr)
        stopped = refused(states)
        if args.keep_pretrained and not stopped:
            for export in planned_exports(cells, args.records, runs_root, states):
                print(f"sweep: --keep-pretrained would write {export}", file=sys.stderr)
        if stopped:
            raise refusal("the sweep", stopped)
        return {
            "command": "sweep",
            "dry_run": True,
            "cells": len(cells),
            "to_run": [n for n, state in states.items() if state != "recorded"],
        }
    try:
        records = run_sweep(
            cells,
            args.records,
            runs_root,
            args.baseline,
            progress,
            keep_pretrained=args.keep_pretrained,
        )
    except CellsFailed as err:  # the README still lists the cells that were recorded
        _sweep_readme(args, axes, len(cells), err.records)
        raise
    _sweep_readme(args, axes, len(cells), records)
    names = {f"{c.name}.json" for c in cells}
    if others := sorted(p.name for p in Path(args.records).glob("*.json") if p.name not in names):
        print(
            f"sweep: {args.records} also holds {len(others)} record(s) of cells not in this grid "
            f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}): its tables and "
            "README now show this grid's cells only; give each grid its own --records folder",
            file=sys.stderr,
        )
    shown = ("cell", "knn_accuracy", "finetune_test_accuracy", "supervised_test_accuracy")
    return {
        "command": "sweep",
        "cells": len(cells),
        "records": args.records,
        "table": os.path.join(args.records, "results.md"),
        "results": [{k: r[k] for k in shown if k in r} for r in records],
    }


def _sweep_readme(args: argparse.Namespace, axes: list[str], cells: int, records: list) -> None:
    """The records folder's README: the command that remakes it and the table so far."""
    from spikessl.readme import write_sweep_readme

    if not records:
        return
    # the command that remakes the folder (machine-local paths left out)
    preset = args.config or DEFAULT_CONFIG
    parts = ["spikessl", "sweep", "--config", preset, *args.overrides]
    flags = ["--baseline"] * args.baseline + ["--keep-pretrained"] * args.keep_pretrained
    command = shlex.join([*parts, "--records", args.records, *flags])
    over = ", ".join(o.partition("=")[0] for o in axes) or "no axis (one cell)"
    readme = Path(args.records) / "README.md"
    title = f"Sweep of `{preset}` over {over}"
    if not write_sweep_readme(readme, title, command, cells, records):
        print(f"sweep: kept {readme}: written by hand (no spikessl line)", file=sys.stderr)


def neighbors(args: argparse.Namespace, cfg: Config, checkpoint: dict) -> dict:
    from spikessl import checkpoints, figures, neighbours

    pretrained = Path(args.pretrained)
    out = args.out or (pretrained if pretrained.is_dir() else pretrained.parent) / "neighbors.png"
    figures.png_path(out)  # a wrong name fails now, not after encoding the test set
    source = checkpoints.checkpoint_source(pretrained)  # kept in the PNG
    path, agreement = neighbours.neighbours_figure(
        checkpoint, cfg, out, n_queries=args.queries, k=args.k, seed=cfg.seed, source=source
    )
    return {"command": "neighbors", "png": str(path), "top1_label_agreement": agreement}


def run_pipeline(cfg: Config, run_dir: str | None, baseline: bool, progress: bool) -> dict:
    """Pretrain -> kNN -> fine-tune (-> supervised baseline): the paper's protocol.

    Rerun with the same ``--run-dir``, it reuses the stages that finished and resumes the one
    that was interrupted (as ``sweep`` does), if they were run with the same settings.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(
            "pipeline runs in one process: under torchrun, run `spikessl pretrain`, then "
            "`spikessl finetune --pretrained RUN_DIR` (and `spikessl supervised`)"
        )
    from spikessl import pipeline
    from spikessl.runs import default_run_dir, removed_if_unused
    from spikessl.sweep import log_to_stderr, validation

    if run_dir is None:  # a folder of its own, gone again if no stage writes to it
        root = default_run_dir(cfg, "pipeline")
        with removed_if_unused(root):
            return run_pipeline(cfg, str(root), baseline, progress)
    t0, root = time.perf_counter(), Path(run_dir)
    pre_dir, ft_dir, sup_dir = root / "pretrain", root / "finetune", root / "supervised"
    from spikessl.grid import STAGES

    # each stage against the settings it reads: a new fine-tuning setting reuses the pretraining
    for stage in STAGES:
        _check_same_settings(root / stage.command, cfg, stage.unused(cfg))
    pre, fin = pipeline.staged(cfg, pre_dir, ft_dir, progress, log_to_stderr)
    result = {
        "dataset": cfg.data.name,
        "time_steps": cfg.time_steps,
        "knn_accuracy_at_init": pre["knn_accuracy_at_init"],
        "knn_accuracy": pre["knn_accuracy"],
        "finetune_test_accuracy": fin["test_accuracy"],
        **validation(fin, "finetune"),  # with finetune.val_fraction > 0
    }
    if baseline:
        sup = pipeline.staged_supervised(cfg, sup_dir, progress, log_to_stderr)
        result["supervised_test_accuracy"] = sup["test_accuracy"]
        result |= validation(sup, "supervised")
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    result["run_dir"] = str(root)
    return result


def _check_same_settings(run_dir: Path, cfg: Config, unused: tuple[str, ...]) -> None:
    """A stage of an earlier ``pipeline`` in ``run_dir`` is reused or resumed only when it
    was run with ``cfg``'s settings, those in ``unused`` (and device, out_dir and the like)
    aside."""
    import yaml

    from spikessl.config_yaml import load_yaml
    from spikessl.grid import config_changes, listed_changes, relevant_settings

    config_yaml = run_dir / "config.yaml"
    if not config_yaml.exists():
        return
    try:  # read once, with the loader every run's config goes through
        tree = load_yaml(config_yaml.read_text())
        reason = None if isinstance(tree, dict) else "not a config: no settings in it"
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        reason = str(err).splitlines()[0]
    if reason is not None:
        raise ValueError(
            f"{config_yaml} is damaged ({reason}): restore it, or choose another --run-dir"
        )
    changed = config_changes(tree, relevant_settings(cfg, unused), unused)
    if changed:
        raise ValueError(
            f"{run_dir} holds a run with other settings (its config.yaml -> this command: "
            f"{listed_changes(changed)}): rerun with the settings it was started with to "
            "continue it, or choose another --run-dir"
        )
