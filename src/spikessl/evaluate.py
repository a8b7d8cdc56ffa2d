"""Evaluation: spike-count latents, weighted kNN, accuracy; a run's kNN/test accuracy, ``Pixels``.

The kNN is the one of Wu et al. (2018) used across the SSL literature (lightly, DINO):
cosine similarity, the k most similar training latents vote for their label with weight
exp(sim / t). It runs in chunks of queries so memory stays bounded for any dataset size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:  # annotations only: no import cycles through config or pipeline
    from spikessl.config import Config
    from spikessl.data import Data
    from spikessl.encoders import SpikingClassifier, SpikingEncoder


@torch.no_grad()
def batched_outputs(
    model: nn.Module,
    images: Tensor,
    T: int,
    prepare: Callable[[Tensor], Tensor],
    batch_size: int = 512,
) -> Tensor:
    """``model(prepare(images[i:i+b]), T)`` over all images, in eval mode, concatenated."""
    was_training = model.training
    model.eval()
    try:
        outs = [
            model(prepare(images[i : i + batch_size]), T).float()
            for i in range(0, images.shape[0], batch_size)
        ]
    finally:
        model.train(was_training)
    if not outs:
        raise ValueError("no images to evaluate: the image tensor is empty")
    return torch.cat(outs)


@torch.no_grad()
def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> Tensor:
    """Weighted-kNN class predictions ``[Q]`` for query latents ``[Q, D]``."""
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError("train_features and train_labels must have the same length")
    if temperature <= 0 or k < 1:
        raise ValueError(f"kNN needs k >= 1 and temperature > 0, got k={k}, t={temperature}")
    k = min(k, train_features.shape[0])
    if query_features.shape[0] == 0 or k == 0:
        return torch.zeros(query_features.shape[0], dtype=torch.long, device=query_features.device)
    bank = F.normalize(train_features.float(), dim=1)  # (N, D)
    preds = []
    for start in range(0, query_features.shape[0], chunk_size):
        q = F.normalize(query_features[start : start + chunk_size].float(), dim=1)  # (q, D)
        sim, idx = (q @ bank.T).topk(k, dim=1)  # (q, k)
        votes = torch.zeros(q.shape[0], num_classes, device=q.device)
        # shift by each row's best similarity: same argmax, no overflow at small t
        votes.scatter_add_(1, train_labels[idx], ((sim - sim[:, :1]) / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def class_prototypes(latents: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """``[classes, D]``: each class's mean direction, the unit-length mean of its members'
    unit-length latents (a nearest-class-mean classifier under cosine similarity)."""
    if latents.shape[0] != labels.shape[0]:
        raise ValueError("latents and labels must have the same length")
    missing = sorted(set(range(num_classes)) - set(labels.unique().tolist()))
    if missing:
        raise ValueError(
            f"classes {missing} have no labelled image, so they have no prototype: "
            "use more labels (finetune.label_fraction) or finetune.head_init=random"
        )
    sums = torch.zeros(num_classes, latents.shape[1], device=latents.device)
    sums.index_add_(0, labels, F.normalize(latents.float(), dim=1))
    return F.normalize(sums, dim=1)


def accuracy(predictions: Tensor, labels: Tensor) -> float:
    """Percentage of correct predictions."""
    return 100.0 * (predictions.cpu() == labels.cpu()).double().mean().item()


def precision(cfg: Config, device: torch.device):
    """bf16 autocast (convolutions and matmuls in bfloat16; membranes stay float32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")


def knn_accuracy(encoder: SpikingEncoder, data: Data, cfg: Config) -> float:
    """Weighted kNN: test latents as queries; the bank is the labelled part's latents
    (``knn.bank=labelled``) or every training image's (``knn.bank=train``)."""
    T, bs = cfg.time_steps, cfg.eval_batch_size
    voters = data.labelled if cfg.knn.bank == "labelled" else slice(None)
    with precision(cfg, data.test_images.device):
        bank = batched_outputs(encoder, data.train_images[voters], T, data.prepare, bs)
        queries = batched_outputs(encoder, data.test_images, T, data.prepare, bs)
    preds = knn_predict(
        bank,
        data.train_labels[voters],
        queries,
        data.num_classes,
        cfg.knn.k,
        cfg.knn.temperature,
    )
    return round(accuracy(preds, data.test_labels), 2)


def test_accuracy(model: SpikingClassifier, data: Data, cfg: Config) -> float:
    with precision(cfg, data.test_images.device):
        counts = batched_outputs(
            model, data.test_images, cfg.time_steps, data.prepare, cfg.eval_batch_size
        )
    return round(accuracy(counts.argmax(1), data.test_labels), 2)


class Pixels(nn.Module):
    """``forward(images, T) -> images [B, C*H*W]``: the input itself as a kNN latent."""

    def forward(self, images: Tensor, _T: int) -> Tensor:
        return images.flatten(1)
