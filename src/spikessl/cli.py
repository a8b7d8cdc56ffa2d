"""Command line: ``spikessl pretrain|finetune|supervised|knn|probe|pipeline --config X k=v``.

Parses the arguments (``spikessl.arguments``), dispatches to the subcommands' handlers in
``spikessl.commands``, and turns what stops a command into one line and an exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from pathlib import Path

from spikessl import named_runs
from spikessl.arguments import parser


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
    from spikessl import commands, pipeline

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
    args, extra = parser().parse_known_args(argv)
    no_config = args.command in ("export", "compare")  # every argument is an option
    unknown = extra if no_config else [a for a in extra if a.startswith("-") or "=" not in a]
    if unknown:
        args.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    if not no_config:
        args.overrides = [*args.overrides, *extra]
    try:  # no PyTorch yet: a typo in the config fails at once
        from spikessl import command_config, commands

        if no_config:  # export, compare: PyTorch loads inside
            result = getattr(commands, args.command)(args)
            print(json.dumps(result))
            return 0
        cfg = command_config.config_first(args)
        # PyTorch loads here, after --help, a usage error or a config typo has answered
        from spikessl import checkpoints, distributed
        from spikessl.resumable import Interrupted
    except USER_ERRORS as err:  # a bad value, a missing config file, export's missing run
        return _error(args.command, err)
    except KeyboardInterrupt:
        if no_config:
            print(f"spikessl {args.command}: {_interrupted(args.command, None)}", file=sys.stderr)
        else:
            print("spikessl: interrupted (Ctrl-C) while starting; nothing was run", file=sys.stderr)
        return 130

    run_dir = getattr(args, "run_dir", None) or getattr(args, "resume", None)
    try:
        resume = named_runs.resume_checkpoint(args, checkpoints)
        pretrained = getattr(args, "pretrained", None)  # finetune's: checked by config_first
        checkpoint = checkpoints.load_checkpoint(pretrained) if pretrained else None
        if checkpoint is not None:
            named_runs.check_pretrained(args, checkpoint)
        if cfg is None and args.command != "reproduce":  # the config saved in the run
            cfg = command_config.config(args, resume or checkpoint)
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
