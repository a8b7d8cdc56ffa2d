"""Command line: ``spikessl pretrain|finetune|supervised|knn|pipeline --config X key=value``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from spikessl.config import Config, load_config, parse_overrides, preset_names

COMMANDS = {
    "pretrain": "SimCLR pretraining on the unlabelled part (80%), then kNN accuracy",
    "finetune": "classifier on the labelled part (20%) on top of a pretrained encoder",
    "supervised": "baseline: the same network trained on the labelled part alone",
    "knn": "kNN accuracy of a pretrained (or freshly initialised) encoder's latents",
    "pipeline": "pretrain, then kNN and fine-tune, optionally the supervised baseline",
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
    export.add_argument("--out", default=None, help="default: <run>/model.safetensors")
    for name, text in COMMANDS.items():
        p = sub.add_parser(name, help=text.replace("%", "%%"), description=text)
        p.add_argument(
            "overrides",
            nargs="*",
            metavar="key=value",
            help="config overrides, dotted for sections: pretrain.lr=3e-4",
        )
        p.add_argument(
            "--config",
            default=None,
            help=f"preset ({', '.join(preset_names())}) or YAML file; default "
            "paper-mnist, or the pretrained run's own config",
        )
        p.add_argument(
            "--data-dir", default=None, help="dataset root (default $SPIKESSL_DATA, else ./data)"
        )
        p.add_argument("--device", default=None, help="auto|cpu|cuda|mps")
        p.add_argument(
            "--run-dir",
            default=None,
            help="where to write the run (default: a new folder in out_dir)",
        )
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        if name in ("finetune", "knn"):
            p.add_argument(
                "--pretrained", default=None, help="pretraining run directory or checkpoint.pt"
            )
        if name in ("pretrain", "finetune", "supervised"):
            p.add_argument(
                "--resume",
                default=None,
                metavar="RUN_DIR",
                help="continue an interrupted run from its last checkpoint, with its own "
                "config; the result equals an uninterrupted run",
            )
        if name == "pipeline":
            p.add_argument(
                "--baseline",
                action="store_true",
                help="also train the supervised-only baseline on the same labels",
            )
    return parser


def _config(args: argparse.Namespace, checkpoint: dict | None) -> Config:
    overrides = parse_overrides(args.overrides)
    if args.data_dir:  # taken literally, not parsed as YAML
        overrides.setdefault("data", {})["root"] = args.data_dir
    if args.device:
        overrides["device"] = args.device
    if args.config is None and checkpoint is not None:
        # Fine-tuning defaults to the pretraining run's own settings: same split, same net.
        return load_config(checkpoint["config"], overrides)
    return load_config(args.config or "paper-mnist", overrides)


def _export(args: argparse.Namespace, extra: list[str], parser) -> int:
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from pathlib import Path

    from spikessl import pipeline

    try:
        checkpoint = pipeline.load_checkpoint(args.run)
        run = Path(args.run)
        out = args.out or (run if run.is_dir() else run.parent) / "model.safetensors"
        path = pipeline.export_safetensors(checkpoint, out)
    except (ValueError, FileNotFoundError) as err:
        print(f"spikessl export: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"command": "export", "safetensors": str(path)}))
    return 0


def _resume_checkpoint(args: argparse.Namespace, pipeline) -> dict | None:
    """The unfinished run's checkpoint for --resume, checked to belong to this command."""
    if getattr(args, "resume", None) is None:
        return None
    if args.overrides or args.config:
        raise ValueError(
            "--resume continues with the run's own config: drop --config and "
            "key=value overrides (they would make the result differ)"
        )
    checkpoint = pipeline.load_checkpoint(args.resume)
    if "loop" not in checkpoint:
        raise ValueError(f"{args.resume} has no resumable training state")
    command = checkpoint.get("command", "pretrain")
    if command != args.command:
        raise ValueError(f"{args.resume} is a {command} run: use spikessl {command} --resume")
    return checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "export":
        return _export(args, extra, parser)  # overrides may also follow the options
    unknown = [a for a in extra if a.startswith("-") or "=" not in a]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = [*args.overrides, *extra]
    from spikessl import distributed, pipeline  # after parsing: --help stays instant
    from spikessl.train import Interrupted

    try:
        resume = _resume_checkpoint(args, pipeline)
        pretrained = getattr(args, "pretrained", None)
        if args.command == "finetune" and pretrained is None and resume is None:
            raise ValueError("finetune needs --pretrained RUN_DIR (a pretraining run)")
        checkpoint = pipeline.load_checkpoint(pretrained) if pretrained else None
        cfg = _config(args, resume or checkpoint)
        progress = not args.no_progress and sys.stderr.isatty()
        run_dir = args.run_dir or (getattr(args, "resume", None))
        if args.command == "pretrain":
            result = pipeline.pretrain(cfg, run_dir, progress, resume)
        elif args.command in ("finetune", "supervised"):
            result = pipeline.finetune(cfg, checkpoint, run_dir, progress, resume)
        elif args.command == "knn":
            result = pipeline.knn(cfg, checkpoint)
        else:
            result = run_pipeline(cfg, args.run_dir, args.baseline, progress)
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError) as err:
        print(f"spikessl {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        distributed.shutdown()
        where = str(stop).rsplit("checkpoint saved in ", 1)[-1]
        print(
            f"spikessl {args.command}: {stop}. Continue with: spikessl {args.command} "
            f"--resume {where}",
            file=sys.stderr,
        )
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


def run_pipeline(cfg: Config, run_dir: str | None, baseline: bool, progress: bool) -> dict:
    """Pretrain -> kNN -> fine-tune (-> supervised baseline): the paper's protocol."""
    from spikessl import pipeline

    t0 = time.perf_counter()
    root = run_dir or str(pipeline.default_run_dir(cfg, "pipeline"))
    pre = pipeline.pretrain(cfg, os.path.join(root, "pretrain"), progress)
    ckpt = pipeline.load_checkpoint(pre["run_dir"])
    fin = pipeline.finetune(cfg, ckpt, os.path.join(root, "finetune"), progress)
    result = {
        "dataset": cfg.data.name,
        "time_steps": cfg.time_steps,
        "knn_accuracy_at_init": pre["knn_accuracy_at_init"],
        "knn_accuracy": pre["knn_accuracy"],
        "finetune_test_accuracy": fin["test_accuracy"],
    }
    if baseline:
        sup = pipeline.finetune(cfg, None, os.path.join(root, "supervised"), progress)
        result["supervised_test_accuracy"] = sup["test_accuracy"]
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    result["run_dir"] = root
    return result


if __name__ == "__main__":
    sys.exit(main())
