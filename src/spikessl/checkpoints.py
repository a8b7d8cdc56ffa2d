"""Checkpoint files: reading them safely, exporting weights, loading a pretrained encoder.

A checkpoint is the dict ``train.fit`` saves as ``checkpoint.pt``: ``model`` (a state dict),
``config`` (the resolved config as a dict), ``command``, and the optimizer and loop state that
``--resume`` continues from. ``spikessl export`` writes its weights as a ``.safetensors`` file
(config, command and a digest of the labelled split in the metadata), which loads back as a
checkpoint with no training state: enough to fine-tune, kNN, probe or draw neighbours from.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from spikessl.config import Config
from spikessl.config_yaml import from_dict, to_dict
from spikessl.encoders import EncoderConfig, SpikingEncoder
from spikessl.records import replacing


def checkpoint_source(path: str | Path) -> str:
    """What a figure drawn from the checkpoint at ``path`` (a file or a run directory) keeps
    in its PNG to name it: the file's sha256."""
    path = Path(path)
    path = path / "checkpoint.pt" if path.is_dir() else path
    return f"spikessl checkpoint sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}"


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint file, a run directory holding ``checkpoint.pt``, or a ``.safetensors``
    export (never runs code)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return load_export(path)
    where = f"no such file or folder as {path}"
    if path.is_dir():
        stages = [s for s in ("pretrain", "finetune", "supervised") if (path / s).is_dir()]
        if stages and not (path / "checkpoint.pt").exists():  # a pipeline's folder
            raise FileNotFoundError(
                f"{path} is a pipeline's folder, its runs are in {', '.join(stages)}: pass "
                f"one of them, e.g. {path / stages[0]}"
            )
        where, path = f"no checkpoint.pt in {path}", path / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{where}: pass a run directory, a .pt file or a .safetensors export"
        )
    if path.suffix.lower() in (".yaml", ".yml", ".json", ".jsonl", ".png", ".md", ".csv"):
        raise ValueError(
            f"{path} is a {path.suffix[1:]} file, not a checkpoint: pass the run's folder, "
            f"{path.parent}, or its checkpoint.pt"
        )
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive, its index at the end
        raise ValueError(
            f"cannot read checkpoint {path}: not a PyTorch checkpoint (no complete zip archive: "
            "the file is truncated, overwritten or of another kind); take the run's other "
            "checkpoint (checkpoint-before-divergence.pt, if there is one) or rerun the stage"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):  # not a refused class: damaged pickled data
            raise ValueError(
                f"cannot read checkpoint {path}: the archive is damaged (its pickled data does "
                "not parse); take the run's other checkpoint or rerun the stage"
            ) from None
        raise ValueError(  # weights_only refused an object that would run code
            f"cannot read checkpoint {path}: it holds objects other than tensors and plain "
            "containers, which spikessl never writes; it is not loaded, since that could run "
            "code from the file (export the model's state_dict with torch.save to use it)"
        ) from None
    except Exception as err:  # damaged inside the archive
        text = str(err).strip()
        reason = text.splitlines()[0].split(". ")[0] if text else type(err).__name__
        raise ValueError(
            f"cannot read checkpoint {path}: the archive is damaged ({reason}); take the "
            "run's other checkpoint or rerun the stage"
        ) from None
    if not (
        isinstance(checkpoint, dict)
        and isinstance(checkpoint.get("model"), dict)
        and isinstance(checkpoint.get("config"), dict)
    ):
        raise ValueError(
            f"{path} is not a spikessl checkpoint: expected a dict with 'model' and 'config' "
            "(written by spikessl pretrain/finetune)"
        )
    return checkpoint


def split_digest(indices: torch.Tensor) -> str:
    """sha256 of a split's image indices (int64, little-endian): an export's record of the
    labelled part its pretraining left out, without the indices themselves."""
    data = indices.detach().cpu().to(torch.int64).numpy().astype("<i8").tobytes()
    return hashlib.sha256(data).hexdigest()


def export_safetensors(checkpoint: dict, path: str | Path, run_dir: Path | None = None) -> Path:
    """The checkpoint's model weights as a safetensors file; its metadata holds the config,
    the command and, where the checkpoint has one, the digest of the labelled split. With the
    folder of a finished run, also its ``summary.json`` and ``metrics.jsonl``: enough to
    rebuild the run's folder elsewhere (``restore.restore_run``)."""
    from safetensors.torch import save

    path = Path(path)
    tensors = {k: v.contiguous() for k, v in checkpoint["model"].items()}
    meta = {
        "format": "pt",
        "spikessl_config": json.dumps(checkpoint["config"]),
        "command": str(checkpoint.get("command", "")),
    }
    labelled = checkpoint.get("split", {}).get("labelled")
    if labelled is not None:
        meta["split_labelled_sha256"] = split_digest(labelled)
    elif "split_labelled_sha256" in checkpoint:  # a restored run, or an export exported again
        meta["split_labelled_sha256"] = checkpoint["split_labelled_sha256"]
    if run_dir is not None:
        summary, metrics = run_dir / "summary.json", run_dir / "metrics.jsonl"
        meta["finished"] = "true" if summary.exists() else "false"
        if summary.exists() and metrics.exists():  # what rebuilds the run elsewhere
            meta["summary"], meta["metrics"] = _run_texts(summary, metrics)
    path.parent.mkdir(parents=True, exist_ok=True)
    # bytes, written as any other file (umask, never half a file); save_file makes it 0600
    with replacing(path) as fh:
        fh.write(save(tensors, metadata=meta))
    return path


def _run_files(summary: str, metrics: str) -> tuple[dict, list[dict]] | None:
    """A run's ``summary.json`` and ``metrics.jsonl`` texts as (summary, rows); None when
    either is damaged (not JSON, not an object, no rows): what an export carries and reads."""
    try:
        data = json.loads(summary)
        rows = [json.loads(row) for row in metrics.splitlines() if row.strip()]
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not rows or not all(isinstance(r, dict) for r in rows):
        return None
    return data, rows


def _run_texts(summary: Path, metrics: Path) -> tuple[str, str]:
    """The run's two files, refused when damaged: an export carrying them would be refused
    by every command that reads it back."""
    try:
        texts = summary.read_text(), metrics.read_text()
    except UnicodeDecodeError:
        texts = None
    if texts is None or _run_files(*texts) is None:
        raise ValueError(
            f"{summary} or {metrics} is damaged (not the JSON a finished run writes): an "
            "export would carry it; restore the run's files, or export its checkpoint alone "
            f"({summary.parent / 'checkpoint.pt'})"
        )
    return texts


def load_export(path: Path) -> dict:
    """A ``spikessl export`` file as a checkpoint dict: ``model``, ``config``, ``command``,
    ``split_labelled_sha256`` and, from a finished run's folder, ``summary`` and ``metrics``
    (no optimizer or loop state, so nothing to resume)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise FileNotFoundError(
            f"no safetensors file at {path}: pass a file `spikessl export` wrote"
        )
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
            model = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"cannot read {path}: not a complete safetensors file ({err}); export it again "
            "with `spikessl export RUN_DIR --out FILE`"
        ) from None
    try:
        config = json.loads(meta["spikessl_config"])
    except (KeyError, json.JSONDecodeError):
        config = None
    if not isinstance(config, dict):
        raise ValueError(
            f"{path} is a safetensors file without spikessl's config in its metadata, so the "
            "network it belongs to is unknown: pass a file written by `spikessl export`"
        )
    checkpoint = {"model": model, "config": config}
    if meta.get("command"):
        checkpoint["command"] = meta["command"]
    if "split_labelled_sha256" in meta:
        checkpoint["split_labelled_sha256"] = meta["split_labelled_sha256"]
    if "finished" in meta:  # exported from a run's folder: was the run finished?
        checkpoint["finished"] = meta["finished"] == "true"
    if "summary" in meta:  # exported from a finished run's folder
        run = _run_files(meta["summary"], meta.get("metrics", ""))
        if run is None:
            raise ValueError(
                f"cannot read {path}: the run summary or metrics in its metadata are "
                "damaged; export the run again with `spikessl export RUN_DIR --out FILE`"
            )
        checkpoint["summary"], checkpoint["metrics"] = run
    return checkpoint


def pretrained_encoder(checkpoint: dict, cfg: Config) -> SpikingEncoder:
    """The encoder of a pretraining checkpoint, checked against ``cfg.encoder``."""
    if not isinstance(checkpoint["config"].get("encoder"), dict):
        raise ValueError(
            "the checkpoint's config has no 'encoder' settings, so its weights cannot be placed "
            "in a network: pass a checkpoint written by spikessl pretrain (its run directory)"
        )
    saved = from_dict(EncoderConfig, checkpoint["config"]["encoder"], "encoder")
    if saved != cfg.encoder:
        diff = [
            f"{k}: checkpoint {getattr(saved, k)!r} vs config {getattr(cfg.encoder, k)!r}"
            for k in to_dict(saved)
            if getattr(saved, k) != getattr(cfg.encoder, k)
        ]
        raise ValueError(
            "the checkpoint's encoder differs from the config's: "
            + "; ".join(diff)
            + ". Drop --config and the encoder.* overrides (the pretraining run's own config is "
            "the default), or set them to the checkpoint's values"
        )
    encoder = SpikingEncoder(saved)
    state = {
        k[len("encoder.") :]: v for k, v in checkpoint["model"].items() if k.startswith("encoder.")
    }
    load_weights(encoder, state, "the checkpoint's encoder")
    return encoder


def load_weights(module: nn.Module, state: dict, what: str) -> None:
    """``load_state_dict`` with a ValueError that lists every mismatch, not a traceback."""
    own = module.state_dict()
    problems = [f"missing {k}" for k in own if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in own]
    problems += [
        f"{k}: shape {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if problems:
        raise ValueError(
            f"{what} does not fit this spikessl network (another architecture or "
            f"version?): " + "; ".join(problems[:12])
        )
    module.load_state_dict(state)
