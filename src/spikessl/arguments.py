"""The ``spikessl`` command's argument parser: its subcommands, their options and help.

Free of PyTorch, as is ``spikessl.cli`` until a command runs: ``spikessl --help`` and a
mistyped option answer at once.
"""

from __future__ import annotations

import argparse

from spikessl.config_yaml import preset_names
from spikessl.paper import BUDGETS, DATASETS

DEVICE_HELP = "auto|cpu|cuda|mps (default: the config's device, auto: a GPU if there is one)"

COMMANDS = {
    "pretrain": "SimCLR pretraining on the unlabelled part (80%), then kNN accuracy",
    "finetune": "classifier on the labelled part (20%) on top of a pretrained encoder",
    "supervised": "baseline: the same network trained on the labelled part alone",
    "knn": "kNN accuracy of a pretrained (or freshly initialised) encoder's latents",
    "probe": "linear-probe accuracy of an encoder's latents: logistic regression on the "
    "frozen spike counts of the labelled images (finetune.label_fraction)",
    "pipeline": "pretrain, then kNN and fine-tune, optionally the supervised baseline",
    "sweep": "a grid of pipeline runs (key=v1,v2 ...), resumable, recorded, tabulated",
    "neighbors": "PNG grid of test images and their nearest neighbours in latent space (Fig. 5)",
}
RUN_DIR_HELP = {  # the commands that write runs
    **dict.fromkeys(
        ("pretrain", "finetune", "supervised"),
        "where to write the run (default: a new folder in out_dir)",
    ),
    "pipeline": "folder for its pretrain/, finetune/ (and supervised/) runs (default: a new "
    "folder in out_dir)",
    "sweep": "root of the cells' run directories, shared by cells and reused on a rerun "
    "(default: <out_dir>/sweep)",
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="spikessl",
        description="Self-supervised contrastive pretraining of spiking neural networks "
        "(Bahari & Kheradpisheh). Settings come from --config and key=value overrides, "
        "e.g. time_steps=10 pretrain.epochs=5 augment.views=crop-rotate.",
    )
    sub = top.add_subparsers(dest="command", required=True)
    export = sub.add_parser(
        "export",
        help="write a run's model weights as safetensors",
        description="Write a run's model weights as a safetensors file (no pickle; the "
        "resolved config goes into the file's metadata).",
    )
    export.add_argument("run", help="run directory or checkpoint.pt")
    export.add_argument(
        "--out", default=None, help="file or folder (default: <run>/model.safetensors)"
    )
    compare = sub.add_parser(
        "compare",
        help="PNG of per-epoch test accuracy of runs, e.g. SSL + fine-tune vs supervised",
        description="Plot the per-epoch test accuracy of finetune/supervised runs (or kNN "
        "accuracy of pretraining runs) in one figure (Figs. 6-7). A sweep record (a .json in "
        "a --records folder) gives its SSL + fine-tune curve and, where it holds one, its "
        "supervised baseline's.",
    )
    compare.add_argument(
        "runs", nargs="+", help="run directories (their metrics.jsonl) or sweep records (.json)"
    )
    compare.add_argument("--out", required=True, help="PNG to write")
    compare.add_argument("--labels", nargs="+", default=None, help="one legend label per run")
    compare.add_argument("--title", default=None)
    for name, text in COMMANDS.items():
        p = sub.add_parser(name, help=text.replace("%", "%%"), description=text)
        p.add_argument(
            "overrides",
            nargs="*",
            metavar="key=value",
            help="config overrides, dotted for sections: pretrain.lr=3e-4"
            + (
                "; several comma-separated values make a grid axis: time_steps=10,30"
                if name == "sweep"
                else ""
            ),
        )
        reuses = name in ("finetune", "knn", "probe", "neighbors")
        p.add_argument(
            "--config",
            default=None,
            help=f"preset ({', '.join(preset_names())}) or YAML file; default "
            + ("the pretrained run's own config, else paper-mnist" if reuses else "paper-mnist"),
        )
        p.add_argument(
            "--data-dir", default=None, help="dataset root (default $SPIKESSL_DATA, else ./data)"
        )
        p.add_argument("--device", default=None, help=DEVICE_HELP)
        if name in RUN_DIR_HELP:  # knn, probe and neighbors write no run
            p.add_argument("--run-dir", default=None, help=RUN_DIR_HELP[name])
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        if name == "neighbors":
            p.add_argument("--out", default=None, help="PNG (default <pretrained>/neighbors.png)")
            p.add_argument("--queries", type=int, default=10, help="rows: random test images")
            p.add_argument("-k", type=int, default=8, help="neighbours per row")
        if name in ("finetune", "knn", "probe", "neighbors"):
            p.add_argument(
                "--pretrained",
                default=None,
                help="pretraining run directory, checkpoint.pt, or a .safetensors file from "
                "`spikessl export`",
            )
        if name in ("pretrain", "finetune", "supervised"):
            p.add_argument(
                "--resume",
                default=None,
                metavar="RUN_DIR",
                help="continue an interrupted run from its last checkpoint, with its own "
                "config; the result equals an uninterrupted run",
            )
        if name == "sweep":
            p.add_argument(
                "--records",
                default=None,
                help="one JSON record per finished cell, plus results.csv, results.md and a "
                "README.md; cells recorded here are skipped (commit it to resume on another "
                "machine); default <run-dir>/records (<out_dir>/sweep/records without --run-dir)",
            )
        if name == "sweep":
            _keep_pretrained_option(p)
            p.add_argument(
                "--dry-run",
                action="store_true",
                help="list the cells and what each would do: skipped (recorded), refused, or "
                "per stage done, resumed, restored from a kept pretraining, shared with "
                "another cell, or run; train and write nothing",
            )
        if name in ("pipeline", "sweep"):
            p.add_argument(
                "--baseline",
                action="store_true",
                help="also train the supervised-only baseline on the same labels",
            )
    _reproduce_parser(sub)
    top.set_defaults(commands=sub.choices)  # each command's parser, for its own usage line
    return top


def _reproduce_parser(sub) -> None:
    p = sub.add_parser(
        "reproduce",
        help="the paper's Tables I-IV and Figs. 5-7 (+ label efficiency): sweeps, then reports",
        description="Run the paper's grids around its best setting (preset paper-<dataset>), "
        "resumably, then write tables, figures and a README from the records.",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="applied to every cell on top of the budget, e.g. data.train_limit=400 for a "
        "smoke test (recorded in the outputs)",
    )
    p.add_argument("--dataset", required=True, choices=list(DATASETS))
    p.add_argument(
        "--budget",
        required=True,
        choices=BUDGETS,
        help="paper: the preset's epochs; quick: a few epochs per cell, for a first look",
    )
    p.add_argument(
        "--records",
        default=None,
        help="records and outputs (default docs/results/<dataset>-<budget>); commit it to "
        "resume elsewhere",
    )
    p.add_argument(
        "--run-dir",
        default=None,
        help="root of the cells' run directories (default runs/reproduce/<dataset>-<budget>)",
    )
    p.add_argument(
        "--seeds",
        default="0,1,2",
        help="label-efficiency seeds: the first at every fraction, the others at 1%% and 10%%",
    )
    p.add_argument(
        "--only",
        default="",
        help="run only the cells whose names match these comma-separated shell patterns "
        "(e.g. time_steps=10,'seed=0__*'), to finish a long grid in the order you choose",
    )
    _keep_pretrained_option(p)
    what = p.add_mutually_exclusive_group()  # one writes nothing, the other writes reports
    what.add_argument("--dry-run", action="store_true", help="list the cells and their state")
    what.add_argument(
        "--report-only",
        action="store_true",
        help="write the tables, figures and README from the cells recorded so far; run nothing",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--data-dir", default=None, help="dataset root (default $SPIKESSL_DATA, else ./data)"
    )
    p.add_argument("--device", default=None, help=DEVICE_HELP)


def _keep_pretrained_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--keep-pretrained",
        action="store_true",
        help="also export each finished pretraining to the records folder "
        "(pretrain-<key>.safetensors, under 1 MB for the paper presets); a rerun anywhere "
        "that finds one there fine-tunes from it instead of pretraining again. Stopped "
        "inside a cell, park its unfinished run's checkpoint there (pretrain-, finetune- or "
        "supervised-<key>.partial.pt) for a rerun anywhere to resume",
    )
