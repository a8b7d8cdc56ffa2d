"""A command's config: ``--config`` (a preset or a YAML file) and ``key=value`` overrides,
``--data-dir`` and ``--device``, or the settings saved in the run it reads.

No PyTorch here: ``config_first`` builds the config, and a sweep's grid, before PyTorch
loads, so a typo fails at once.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from spikessl.config import Config, load_config
from spikessl.config_yaml import parse_overrides, set_data_root
from spikessl.named_runs import rank0

DEFAULT_CONFIG = "paper-mnist"  # the preset when --config is not given


def config(args: argparse.Namespace, checkpoint: dict | None) -> Config:
    if args.config == "":
        raise ValueError("--config is empty: name a preset (e.g. paper-mnist) or a YAML file")
    # a sweep's axes (key=v1,v2) are parsed and checked by grid.expand_grid
    fixed = sweep_axes(args.overrides)[1] if args.command == "sweep" else args.overrides
    overrides = parse_overrides(fixed)
    keys = [item.partition("=")[0].strip() for item in fixed]
    last = dict(zip(keys, fixed))  # the last of a key's settings wins, as before
    for key, times in Counter(keys).items():
        if times > 1 and rank0():
            print(f"{args.command}: {key} is set {times} times: {last[key]} wins", file=sys.stderr)
    if args.data_dir:  # taken literally, not parsed as YAML; wins over data.root=
        set_data_root(overrides, args.data_dir)
    if args.device:  # wins over device=
        overrides["device"] = args.device
    if args.config is None and checkpoint is not None:
        # Fine-tuning defaults to the pretraining run's own settings: same split, same net.
        try:
            return load_config(checkpoint["config"], overrides)
        except ValueError:
            try:  # whose fault: the saved settings, or the overrides (their message stands)?
                load_config(checkpoint["config"])
            except ValueError as err:
                run = getattr(args, "pretrained", None) or getattr(args, "resume", None)
                raise ValueError(
                    f"the config saved in {run} does not load in this spikessl version ({err}); "
                    "pass --config with the run's settings, or use the version that wrote it"
                ) from None
            raise
    return load_config(args.config or DEFAULT_CONFIG, overrides)


def config_first(args: argparse.Namespace) -> Config | None:
    """The config, with a sweep's grid, built before PyTorch loads, so a typo fails at once;
    None when it comes from a checkpoint (``--resume``, or ``--pretrained`` without
    ``--config``) or from ``reproduce``'s plan, and is built once the checkpoint is read.
    A ``finetune`` or ``neighbors`` without the run to start from is refused first."""
    if args.command == "reproduce":  # no --config: its cells' configs come from its plan
        return None
    resume, pretrained = getattr(args, "resume", None), getattr(args, "pretrained", None)
    if args.command in ("finetune", "neighbors") and pretrained is None and resume is None:
        raise ValueError(f"{args.command} needs --pretrained RUN_DIR (a pretraining run)")
    if resume is not None or (args.config is None and pretrained is not None):
        return None
    from spikessl import dataset_catalog, grid
    from spikessl.config_yaml import to_dict

    cfg = config(args, None)
    if args.command == "sweep":  # every cell's config; commands.sweep builds them again
        grid.expand_grid(to_dict(cfg), sweep_axes(args.overrides)[0])
        return cfg
    dataset_catalog.check_encoder_fits(cfg)  # as loading the data would, seconds later
    if args.command in ("pretrain", "pipeline"):
        dataset_catalog.check_pretraining_fills(cfg)
    return cfg


def sweep_axes(overrides: list[str]) -> tuple[list[str], list[str]]:
    """A sweep's ``key=value`` items split into grid axes (several comma-separated values;
    cells are named after these) and settings of every cell (one value)."""
    from spikessl import grid
    from spikessl.config_yaml import preset_names

    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or not text.strip():
            hint = f": --config {item}" if item in preset_names() else ", e.g. time_steps=10,30"
            raise ValueError(f"sweep argument {item!r} must look like key=value or key=v1,v2{hint}")
    axes = [o for o in overrides if len(grid.split_values(o.partition("=")[2])) > 1]
    return axes, [o for o in overrides if o not in axes]
