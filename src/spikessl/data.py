"""Dataset loading (MNIST, Fashion-MNIST, CIFAR-10/100) and label splits.

Datasets are read straight from their standard on-disk layouts into uint8 tensors, without
torchvision, so that the loader stays small, fast and easy to audit. The pieces:

* ``spikessl.dataset_catalog``: what each dataset is (``DatasetInfo``, ``DATASETS``), the
  lookup by name (``get_info``) and a config's checks against it before loading
  (``check_encoder_fits``, ``check_pretraining_fills``), all without PyTorch;
* ``spikessl.dataset_formats``: IDX and CIFAR-pickle readers, validated by structure;
* ``spikessl.dataset_downloads``: finding the files, MD5-checked downloads of missing ones.

This module looks a dataset up, loads a split, splits labels and puts a run's data on the
device (``Data``, ``load_data``); it re-exports the names above that callers use
(``DATASETS``, ``DatasetInfo``, ``get_info``, the two checks, ``read_idx``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from spikessl.config import Config
from spikessl.dataset_catalog import (
    DATASETS,
    DatasetInfo,
    check_encoder_fits,
    check_pretraining_fills,
    get_info,
)
from spikessl.dataset_downloads import DOWNLOAD_TIMEOUT_S as DOWNLOAD_TIMEOUT_S
from spikessl.dataset_downloads import ensure_files
from spikessl.dataset_formats import load_cifar, load_idx, read_idx

__all__ = [
    "DATASETS",
    "Data",
    "DatasetInfo",
    "check_encoder_fits",
    "check_pretraining_fills",
    "default_data_root",
    "get_info",
    "load_data",
    "load_dataset",
    "read_idx",
    "stratified_split",
    "subset_per_class",
]


def default_data_root() -> Path:
    """Data folder used when none is given: ``$SPIKESSL_DATA`` if set, else ``./data``."""
    return Path(os.environ.get("SPIKESSL_DATA") or "./data").expanduser()


def load_dataset(
    name: str,
    root: str | Path | None = None,
    train: bool = True,
    download: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a whole split as (images uint8 [N, C, H, W] contiguous, labels int64 [N]).

    Pixels stay uint8 so a dataset costs 1 byte per value in memory; scale and normalise on the
    device, per batch. Nothing is cached: callers that need the data twice should keep it.
    """
    info = get_info(name)
    root = Path(root).expanduser() if root is not None else default_data_root()
    folder = ensure_files(info, root, train, download)
    loader = load_idx if info.format == "idx" else load_cifar
    try:
        images, labels = loader(info, folder, train)
    except ValueError as err:  # every reader error names the file and what is wrong with it
        raise ValueError(
            f"{err}. The {info.name} files in {folder} are damaged or not the dataset's: "
            "delete them and download again, or copy good ones there"
        ) from None
    images = np.ascontiguousarray(images)
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64, copy=False))


# --------------------------------------------------------------------------------------------
# Label splits
# --------------------------------------------------------------------------------------------


def _labels_array(labels: torch.Tensor | np.ndarray) -> np.ndarray:
    array = torch.as_tensor(labels).detach().cpu().numpy()
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"labels must be a 1-D integer tensor, got shape {tuple(array.shape)} "
            f"and dtype {array.dtype}"
        )
    return array


def _as_index_tensor(indices: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.sort(indices).astype(np.int64))


def stratified_split(
    labels: torch.Tensor,
    labelled_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (unlabelled, labelled), keeping class proportions in the labelled part.

    Semi-supervised runs compare label budgets, so every class gets ``round(fraction * count)``
    labelled samples (at least one), chosen by a seeded permutation for reproducibility. Both
    outputs are sorted int64 and together cover every index exactly once.
    """
    if not 0.0 < labelled_fraction <= 1.0:  # also rejects NaN
        raise ValueError(
            f"labelled_fraction must be in (0, 1], got {labelled_fraction}; "
            "use e.g. 0.1 for 10% labelled samples"
        )
    array = _labels_array(labels)
    rng = np.random.default_rng(seed)
    chosen = [np.empty(0, dtype=np.int64)]
    for cls in np.unique(array):
        members = np.flatnonzero(array == cls)
        count = max(1, round(labelled_fraction * members.size))
        chosen.append(rng.permutation(members)[:count])
    labelled = np.concatenate(chosen)
    is_unlabelled = np.ones(array.size, dtype=bool)
    is_unlabelled[labelled] = False
    return _as_index_tensor(np.flatnonzero(is_unlabelled)), _as_index_tensor(labelled)


def _limited(labels: Tensor, limit: int, key: str, cfg: Config, info: DatasetInfo) -> Tensor:
    """``subset_per_class`` for ``data.train_limit``/``test_limit``, in the user's terms."""
    counts = np.bincount(_labels_array(labels), minlength=info.num_classes)
    per_class = max(limit // len(counts), 1)
    if per_class > counts.min():
        raise ValueError(
            f"{key}={limit} asks for {per_class} images of each of {len(counts)} classes, but "
            f"this split of {cfg.data.name} has {counts.min()} of class {counts.argmin()}: set "
            f"{key} <= {counts.min() * len(counts)}, or {key}=0 for the whole split"
        )
    return subset_per_class(labels, per_class, cfg.seed)


def subset_per_class(labels: torch.Tensor, n_per_class: int, seed: int = 0) -> torch.Tensor:
    """Sorted int64 indices of ``n_per_class`` random samples from every class.

    Balanced subsets keep small tests and label-efficiency sweeps comparable across classes.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    array = _labels_array(labels)
    rng = np.random.default_rng(seed)
    chosen = [np.empty(0, dtype=np.int64)]
    for cls in np.unique(array):
        members = np.flatnonzero(array == cls)
        if members.size < n_per_class:
            raise ValueError(
                f"class {cls} has only {members.size} samples, fewer than n_per_class="
                f"{n_per_class}; lower n_per_class"
            )
        chosen.append(rng.permutation(members)[:n_per_class])
    return _as_index_tensor(np.concatenate(chosen))


# --------------------------------------------------------------------------------------------
# A run's data
# --------------------------------------------------------------------------------------------


@dataclass
class Data:
    """Whole dataset in memory as uint8 on the device, plus the paper's 80/20 split."""

    train_images: Tensor  # (N, C, H, W) uint8
    train_labels: Tensor  # (N,) int64
    test_images: Tensor
    test_labels: Tensor
    unlabelled: Tensor  # indices into train_*, labels never used
    labelled: Tensor  # disjoint from unlabelled
    num_classes: int
    mean: Tensor  # (1, C, 1, 1)
    std: Tensor

    def normalize(self, x: Tensor) -> Tensor:
        """Float images in [0, 1] -> standardised input currents."""
        return (x - self.mean) / self.std

    def prepare(self, images: Tensor) -> Tensor:
        return self.normalize(images.float() / 255.0)


def load_data(cfg: Config, device: torch.device) -> Data:
    check_encoder_fits(cfg)
    info = get_info(cfg.data.name)
    x_tr, y_tr = load_dataset(cfg.data.name, cfg.data.root, train=True)
    x_te, y_te = load_dataset(cfg.data.name, cfg.data.root, train=False)
    if cfg.data.train_limit:
        keep = _limited(y_tr, cfg.data.train_limit, "data.train_limit", cfg, info)
        x_tr, y_tr = x_tr[keep], y_tr[keep]
    if cfg.data.test_limit:
        keep = _limited(y_te, cfg.data.test_limit, "data.test_limit", cfg, info)
        x_te, y_te = x_te[keep], y_te[keep]
    unlabelled, labelled = stratified_split(y_tr, cfg.data.labelled_fraction, cfg.seed)
    shape = (1, info.channels, 1, 1)
    return Data(
        x_tr.to(device),
        y_tr.to(device),
        x_te.to(device),
        y_te.to(device),
        unlabelled.to(device),
        labelled.to(device),
        info.num_classes,
        torch.tensor(info.mean, device=device).view(shape),
        torch.tensor(info.std, device=device).view(shape),
    )
