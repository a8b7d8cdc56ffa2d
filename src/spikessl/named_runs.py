"""The runs a command is pointed at, checked before any work: ``--pretrained``'s
pretraining (``check_pretrained``) and ``--resume``'s unfinished run (``resume_checkpoint``,
then ``say_resuming`` once the run is claimed)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def check_pretrained(args: argparse.Namespace, checkpoint: dict) -> None:
    """Fine-tuning starts from a finished pretraining run, or from a checkpoint file named
    on purpose (e.g. ``checkpoint-before-divergence.pt``): its result is reported as SSL."""
    from spikessl.runs import finished

    run = Path(args.pretrained)
    if args.command != "finetune":  # knn, probe, neighbors may read any encoder, but say so
        unfinished = checkpoint.get("finished") is False or (run.is_dir() and not finished(run))
        if unfinished:
            print(
                f"{args.command}: {run} is an unfinished run (saved after step "
                f"{checkpoint.get('step', '?')}): this reads its last saved weights",
                file=sys.stderr,
            )
        return
    command = checkpoint.get("command", "pretrain")
    if command != "pretrain":
        raise ValueError(
            f"{run} is a {command} run, not a pretraining run: pass the directory that "
            "`spikessl pretrain` wrote (fine-tuning's result is reported as SSL + fine-tune)"
        )
    if checkpoint.get("finished") is False:  # an export of an unfinished run's folder
        raise ValueError(
            f"{run} was exported from an unfinished pretraining run: finish that run "
            "(`spikessl pretrain --resume RUN_DIR`) and export it again"
        )
    if run.is_dir() and not finished(run):
        epochs = checkpoint["config"].get("pretrain", {}).get("epochs", "?")
        raise ValueError(
            f"{run} is an unfinished pretraining run (epoch {checkpoint.get('epoch', '?')} of "
            f"{epochs}): finish it with `spikessl pretrain --resume {run}`, or pass "
            f"{run / 'checkpoint.pt'} to fine-tune from its last saved epoch anyway"
        )


def resume_checkpoint(args: argparse.Namespace, checkpoints) -> dict | None:
    """The unfinished run's checkpoint for --resume, checked to belong to this command."""
    if getattr(args, "resume", None) is None:
        return None
    from spikessl.grid import IGNORED

    keys = [o.partition("=")[0].strip() for o in args.overrides]
    if args.config or any(k not in IGNORED for k in keys):
        raise ValueError(
            "--resume continues with the run's own config: drop --config and key=value "
            "overrides (they would make the result differ), except those of settings that "
            f"leave it as it is: {', '.join(IGNORED)}"
        )
    from spikessl.runs import finished

    run = Path(args.resume)
    if not run.exists():
        raise FileNotFoundError(
            f"--resume {run}: no such folder; pass the folder of an interrupted run (the one "
            "that holds its checkpoint.pt)"
        )
    if args.run_dir and Path(args.run_dir).resolve() != run.resolve():
        raise ValueError(
            f"--resume continues {run} in its own directory: drop --run-dir {args.run_dir} "
            "(it would write the resumed run over another one)"
        )
    if getattr(args, "pretrained", None) is not None:
        raise ValueError(
            f"--resume continues {run} from its own checkpoint, which holds the weights it "
            f"started from: drop --pretrained {args.pretrained}"
        )
    if run.is_file():
        from spikessl.runs import RUN_FILES

        fix = f": spikessl {args.command} --resume {run.parent}" if run.name in RUN_FILES else ""
        raise ValueError(f"--resume takes a run's folder, not a file{fix}")
    if not (run / "checkpoint.pt").exists():
        raise FileNotFoundError(
            f"--resume {run}: no checkpoint.pt in it, so nothing to resume (a run killed "
            "before its first checkpoint: start it again)"
        )
    checkpoint = checkpoints.load_checkpoint(run)
    if "loop" not in checkpoint:
        raise ValueError(f"{args.resume} has no resumable training state")
    command = checkpoint.get("command", "pretrain")
    if command != args.command:
        raise ValueError(f"{args.resume} is a {command} run: use spikessl {command} --resume")
    if finished(run):
        raise ValueError(
            f"{run} is a finished run (its result is in {run / 'summary.json'}): nothing to "
            "resume; to train again, choose a new --run-dir"
        )
    return checkpoint


def say_resuming(args: argparse.Namespace, checkpoint: dict) -> None:
    """What --resume continues (``resume_checkpoint``'s run), said once the run is claimed:
    the step, and a config.yaml edited since (the checkpoint's settings are what resume)."""
    if not rank0():
        return
    run, loop = Path(args.resume), checkpoint["loop"]
    print(
        f"{args.command}: resuming {run} after step {loop['step']} (epoch {loop['epoch']} done)",
        file=sys.stderr,
    )
    if edited := _edited_config(run, checkpoint["config"]):
        print(
            f"{args.command}: {run / 'config.yaml'} is not the config the run trains with "
            f"({edited}): --resume continues with its checkpoint's settings and writes "
            "them back to config.yaml; to train with others, start a new run",
            file=sys.stderr,
        )


def _edited_config(run: Path, config: dict) -> str | None:
    """How the run's ``config.yaml`` differs from ``config``, its checkpoint's; None if not."""
    import yaml

    from spikessl.config_yaml import load_yaml
    from spikessl.grid import changed_settings, listed_changes

    try:
        tree = load_yaml((run / "config.yaml").read_text())
    except FileNotFoundError:
        return "it is missing"
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return "it is damaged"
    if not isinstance(tree, dict):
        return "it holds no settings"
    changed = changed_settings(tree, config)
    return f"config.yaml -> checkpoint: {listed_changes(changed)}" if changed else None


def rank0() -> bool:
    """Whether this process says what all say alike: the one process, or torchrun's rank 0
    (known from its environment, before the process group exists)."""
    return os.environ.get("RANK", "0") == "0"
