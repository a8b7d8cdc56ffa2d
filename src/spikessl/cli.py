"""Command line: ``spikessl pretrain|finetune|supervised|knn|probe|pipeline --config X k=v``.

The argument parser and the dispatch to the subcommands' handlers in ``spikessl.commands``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from pathlib import Path

from spikessl import commands, named_runs
from spikessl.config_yaml import preset_names

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spikessl",
        description="Self-supervised contrastive pretraining of spiking neural networks "
        "(Bahari & Kheradpisheh). Settings come from --config and key=value overrides, "
        "e.g. time_steps=10 pretrain.epochs=5 augment.views=crop-rotate.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
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
    parser.set_defaults(commands=sub.choices)  # each command's parser, for its own usage line
    return parser


def _reproduce_parser(sub) -> None:
    from spikessl.reproduce import BUDGETS, DATASETS

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
        "before a pretraining finishes, park its checkpoint there (pretrain-<key>.partial.pt) "
        "for a rerun anywhere to resume",
    )


def _claimed(command: str, run_dir: str | None):
    """While a training command writes a run directory the user named, no other process can
    (a second ``spikessl pretrain --run-dir X``, or a sweep stage on X, is refused instead)."""
    from spikessl.runs import claim_run_dir

    writes = command in ("pretrain", "finetune", "supervised", "pipeline")
    if not writes or run_dir is None or not named_runs.rank0():  # torchrun: rank 0 claims
        return contextlib.nullcontext()
    return claim_run_dir(Path(run_dir))


@contextlib.contextmanager
def _short_warnings():
    """spikessl's own warnings (a silent layer, a diverging loss) as one line for a user of
    the command, not Python's header with a line of spikessl's source; others as usual.
    Only their text changes: filters, and a caller's capture of them, stay as they are."""
    original, ours = warnings.formatwarning, Path(__file__).resolve().parent

    def short(message, category, filename, lineno, line=None) -> str:
        if category is RuntimeWarning and Path(filename).resolve().is_relative_to(ours):
            return f"spikessl: warning: {str(message).removeprefix('spikessl: ')}\n"
        return original(message, category, filename, lineno, line)

    warnings.formatwarning = short
    try:
        yield
    finally:
        warnings.formatwarning = original


def _dispatch(args: argparse.Namespace, cfg, run_dir, progress: bool, resume, checkpoint) -> dict:
    from spikessl import pipeline

    command = args.command
    if command == "pretrain":
        return pipeline.pretrain(cfg, run_dir, progress, resume)
    elif command in ("finetune", "supervised"):
        return pipeline.finetune(cfg, checkpoint, run_dir, progress, resume)
    elif command == "knn":
        return pipeline.knn(cfg, checkpoint)
    elif command == "probe":
        return pipeline.probe(cfg, checkpoint)
    elif command == "neighbors":
        return commands.neighbors(args, cfg, checkpoint)
    elif command == "sweep":
        return commands.sweep(args, cfg, progress)
    elif command == "reproduce":
        return commands.reproduce(args, progress)
    else:
        return commands.run_pipeline(cfg, args.run_dir, args.baseline, progress)


# what a user can mend (a bad value, a missing or unwritable path, a diverged run): one line, exit 2
USER_ERRORS = (ValueError, OSError, FloatingPointError)


def _error(command: str, err: Exception) -> int:
    """Print ``err`` as ``spikessl COMMAND: error: ...``: spikessl's own messages as they are,
    the operating system's failed reads and writes (those with an errno) with what to check."""
    text = _os_error(err) if isinstance(err, OSError) and err.errno is not None else err
    print(f"spikessl {command}: error: {text}", file=sys.stderr)
    return 2


def _os_error(err: OSError) -> str:
    """A failed read or write of a path, with what to check."""
    where = f": {err.filename}" if err.filename else ""
    if isinstance(err, FileNotFoundError):
        return f"{err.strerror or err}{where}; check the path (a typo? a folder not made yet?)"
    if isinstance(err, (FileExistsError, NotADirectoryError)):
        why = "a file where a folder belongs?"
    elif isinstance(err, IsADirectoryError):
        why = "a folder where a file belongs?"
    else:
        why = "no permission? a full disk?"
    fix = "fix the path, or choose another --out / --run-dir / --records"
    return f"{err.strerror or err}{where} ({why}); {fix}"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in ("export", "compare"):  # no config: every argument is an option
        if extra:
            args.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
        try:
            result = getattr(commands, args.command)(args)
        except USER_ERRORS as err:
            return _error(args.command, err)
        print(json.dumps(result))
        return 0
    unknown = [a for a in extra if a.startswith("-") or "=" not in a]
    if unknown:
        args.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = [*args.overrides, *extra]
    from spikessl import checkpoints, distributed  # only for a command that runs
    from spikessl.resumable import Interrupted

    run_dir = getattr(args, "run_dir", None) or getattr(args, "resume", None)
    try:
        resume = named_runs.resume_checkpoint(args, checkpoints)
        pretrained = getattr(args, "pretrained", None)
        if args.command in ("finetune", "neighbors") and pretrained is None and resume is None:
            raise ValueError(f"{args.command} needs --pretrained RUN_DIR (a pretraining run)")
        checkpoint = checkpoints.load_checkpoint(pretrained) if pretrained else None
        if checkpoint is not None:
            named_runs.check_pretrained(args, checkpoint)
        cfg = None if args.command == "reproduce" else commands.config(args, resume or checkpoint)
        progress = not args.no_progress and sys.stderr.isatty()
        with _claimed(args.command, run_dir), _short_warnings():
            if resume is not None:  # read again now that the run is ours: it may have moved on
                resume = named_runs.resume_checkpoint(args, checkpoints)
                named_runs.say_resuming(args, resume)
            result = _dispatch(args, cfg, run_dir, progress, resume, checkpoint)
    except USER_ERRORS as err:
        # a FloatingPointError (NaN, divergence) stops every torchrun process at the same step
        together, main_process = isinstance(err, FloatingPointError), distributed.is_main_process()
        distributed.shutdown(barrier=together)
        if together and not main_process:
            return 2  # the main process says why
        return _error(args.command, err)
    except KeyboardInterrupt as stop:  # outside fit's steps: loading data, kNN, evaluation
        distributed.shutdown(barrier=False)  # the other processes may be anywhere
        signum = getattr(stop, "signum", 2)  # a sweep's SIGTERM (runs.Stopped), else Ctrl-C
        text = _interrupted(args.command, run_dir, "Ctrl-C" if signum == 2 else "SIGTERM")
        print(f"spikessl {args.command}: {text}", file=sys.stderr)
        return 128 + signum
    except Interrupted as stop:
        distributed.shutdown()
        where = str(stop).rsplit("checkpoint saved in ", 1)[-1]
        stage = str(stop).split(":", 1)[0]  # the interrupted stage: pretrain, finetune, ...
        again = f"spikessl {stage} --resume {where}"
        if args.command in ("sweep", "reproduce"):
            again = f"spikessl {args.command} with the same arguments (finished cells are "
            again += "skipped, this one resumes)"
        if args.command == "pipeline":
            again = "spikessl pipeline with the same arguments and --run-dir "
            again += f"{Path(where).parent} (finished stages are reused, this one resumes)"
        print(f"spikessl {args.command}: {stop}. Continue with: {again}", file=sys.stderr)
        return 128 + int(stop.signum)
    distributed.shutdown()
    if not result:  # a torchrun worker other than rank 0: rank 0 reports
        return 0
    print(json.dumps(result, indent=2))
    if args.command == "pipeline":
        line = (
            f"{cfg.data.name}, T={cfg.time_steps}: kNN on spike counts "
            f"{result['knn_accuracy']:.2f}% (at initialisation "
            f"{result['knn_accuracy_at_init']:.2f}%), SSL + fine-tune test accuracy "
            f"{result['finetune_test_accuracy']:.2f}%"
        )
        if "supervised_test_accuracy" in result:
            line += f", supervised-only {result['supervised_test_accuracy']:.2f}%"
        print(line, file=sys.stderr)
    return 0


def _interrupted(command: str, run_dir: str | None, by: str = "Ctrl-C") -> str:
    """What a Ctrl-C (or a sweep's SIGTERM) outside a training step (loading data, a kNN
    or test pass) leaves."""
    if command in ("knn", "probe", "neighbors", "export", "compare"):
        return f"interrupted ({by}); nothing was written. Run it again"
    what = f"interrupted ({by}) outside a training step (loading data or evaluating)"
    if command in ("sweep", "reproduce"):
        again = "the same arguments: recorded cells are skipped, an interrupted run resumes"
    elif command == "pipeline":
        root = run_dir or "the folder that holds the stage folders printed above"
        again = f"the same arguments and --run-dir {root}: finished stages are reused"
    else:  # pretrain, finetune, supervised: stopped before fit's first step or after its last
        again = "the same command, or --resume RUN_DIR if its run folder holds a checkpoint.pt"
    return f"{what}; finished runs are kept. Continue with {again}"


if __name__ == "__main__":
    sys.exit(main())
