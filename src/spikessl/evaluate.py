"""Evaluation: spike-count latents, weighted kNN, linear probe, accuracy; ``Pixels``.

The kNN is the one of Wu et al. (2018) used across the SSL literature (lightly, DINO):
cosine similarity, the k most similar training latents vote for their label with weight
exp(sim / t). It runs in chunks of queries so memory stays bounded for any dataset size.
The linear probe is the other standard read-out of frozen latents: a multinomial logistic
regression on the standardised latents, its weight decay chosen on held-out labels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spikessl.data import stratified_split

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
    if train_features.shape[0] == 0:
        raise ValueError("kNN needs a memory bank: the training latents are empty")
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}: queries per chunk must be >= 1")
    k = min(k, train_features.shape[0])
    if query_features.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=query_features.device)
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


# the probe's weight-decay grid (on standardised latents, per-sample mean loss)
PROBE_WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@torch.enable_grad()
def fit_logistic(
    features: Tensor, labels: Tensor, num_classes: int, weight_decay: float, max_iter: int = 500
) -> nn.Linear:
    """Multinomial logistic regression on ``features [N, D]``, by full-batch L-BFGS:

        min_{W, b}  mean_i CE(W z_i + b, y_i) + weight_decay / 2 * ||W||^2,
        z = (x - mean) / std  (the training features' statistics; the bias is not penalised)

    Convex, with one minimum for ``weight_decay > 0``, reached from zero weights, so the result
    is deterministic. The standardisation is folded into the returned layer, which takes raw x.
    """
    if weight_decay <= 0:
        raise ValueError(f"weight_decay must be > 0 for a unique probe, got {weight_decay}")
    # float64: in float32 L-BFGS can stop where the loss no longer changes in its last digits,
    # short of the minimum (the mean gradient of the bias left at ~1e-4 on some CPUs)
    x = features.detach().double()
    if not torch.isfinite(x).all():
        raise ValueError(
            "the linear probe got non-finite latents (NaN or inf): the encoder's weights have "
            "probably diverged; probe an earlier checkpoint or retrain with pretrain.grad_clip"
        )
    mean, std = x.mean(0), x.std(0, correction=0).clamp_min(1e-6)  # constant columns: W -> 0
    z = (x - mean) / std
    layer = nn.Linear(x.shape[1], num_classes, device=x.device, dtype=torch.float64)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    optimiser = torch.optim.LBFGS(
        layer.parameters(), max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(layer(z), labels) + 0.5 * weight_decay * layer.weight.square().sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():  # W z + b = (W / std) x + (b - (W / std) mean)
        layer.weight.div_(std)
        layer.bias.sub_(layer.weight @ mean)
    return layer.float().requires_grad_(False)


@torch.no_grad()
def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    num_classes: int,
    weight_decays: tuple[float, ...] = PROBE_WEIGHT_DECAYS,
    seed: int = 0,
) -> tuple[Tensor, float, dict[float, float]]:
    """Linear-probe class predictions ``[Q]`` for query latents ``[Q, D]``.

    Each weight decay is fitted on a seeded, class-stratified 80% of the training latents and
    scored on the other 20%; the best (the largest among ties) is refitted on all of them.
    Returns the predictions, the chosen weight decay and the held-out accuracy of each.
    """
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError("train_features and train_labels must have the same length")
    if train_features.shape[0] < 2:
        raise ValueError("a linear probe needs at least 2 labelled latents")
    if not weight_decays:
        raise ValueError("give at least one weight decay for the linear probe")
    fit, held = (i.to(train_labels.device) for i in stratified_split(train_labels, 0.2, seed))
    if fit.numel() == 0:  # every class has one latent: they all went to the held-out part
        fit = held
    held_out = {}
    for wd in weight_decays:
        layer = fit_logistic(train_features[fit], train_labels[fit], num_classes, wd)
        held_out[wd] = accuracy(layer(train_features[held].float()).argmax(1), train_labels[held])
    best = max(held_out.items(), key=lambda item: (item[1], item[0]))[0]
    layer = fit_logistic(train_features, train_labels, num_classes, best)
    return layer(query_features.float()).argmax(1), best, held_out


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


def train_and_test_outputs(
    model: nn.Module, data: Data, cfg: Config, train_index: Tensor | slice
) -> tuple[Tensor, Tensor]:
    """``model``'s outputs for the training images ``train_index`` and for every test image,
    in eval mode, under ``cfg.precision``: a kNN bank or a probe's data, and its queries."""
    T, bs = cfg.time_steps, cfg.eval_batch_size
    with precision(cfg, data.test_images.device):
        train = batched_outputs(model, data.train_images[train_index], T, data.prepare, bs)
        test = batched_outputs(model, data.test_images, T, data.prepare, bs)
    return train, test


def knn_voters(data: Data, cfg: Config) -> Tensor | slice:
    """The training images whose latents vote in the kNN: the labelled part
    (``knn.bank=labelled``) or every one (``knn.bank=train``)."""
    return data.labelled if cfg.knn.bank == "labelled" else slice(None)


def knn_accuracy(encoder: SpikingEncoder, data: Data, cfg: Config) -> float:
    """Weighted kNN: test latents as queries, the ``knn_voters``' latents the bank."""
    voters = knn_voters(data, cfg)
    bank, queries = train_and_test_outputs(encoder, data, cfg, voters)
    preds = knn_predict(
        bank,
        data.train_labels[voters],
        queries,
        data.num_classes,
        cfg.knn.k,
        cfg.knn.temperature,
    )
    return round(accuracy(preds, data.test_labels), 2)


def probe_accuracy(
    model: nn.Module, data: Data, cfg: Config, train_index: Tensor
) -> tuple[float, float, dict[float, float]]:
    """Linear probe of ``model``'s outputs, fitted on the training images ``train_index`` and
    their labels, scored on the test set: (accuracy, chosen weight decay, held-out accuracy
    of each weight decay)."""
    train, test = train_and_test_outputs(model, data, cfg, train_index)
    preds, weight_decay, held_out = linear_probe(
        train, data.train_labels[train_index], test, data.num_classes, seed=cfg.seed
    )
    return round(accuracy(preds, data.test_labels), 2), weight_decay, held_out


def test_accuracy(model: SpikingClassifier, data: Data, cfg: Config) -> float:
    return images_accuracy(model, data.test_images, data.test_labels, data, cfg)


def images_accuracy(
    model: SpikingClassifier, images: Tensor, labels: Tensor, data: Data, cfg: Config
) -> float:
    """Percent of ``images`` (uint8, e.g. the test set or a validation part) classified as
    ``labels`` by the output neuron with the most spikes, rounded to 0.01."""
    with precision(cfg, images.device):
        counts = batched_outputs(model, images, cfg.time_steps, data.prepare, cfg.eval_batch_size)
    return round(accuracy(counts.argmax(1), labels), 2)


class Pixels(nn.Module):
    """``forward(images, T) -> images [B, C*H*W]``: the input itself as a kNN latent."""

    def forward(self, images: Tensor, _T: int) -> Tensor:
        return images.flatten(1)


def label_agreement(query_labels: Tensor, neighbour_labels: Tensor) -> float:
    """Percentage of neighbours ``[Q, k]`` whose label equals their query's ``[Q]``."""
    if neighbour_labels.ndim != 2 or neighbour_labels.shape[0] != query_labels.shape[0]:
        raise ValueError(
            f"expected neighbour labels [Q, k] for {query_labels.shape[0]} queries, got "
            f"{tuple(neighbour_labels.shape)}"
        )
    if neighbour_labels.numel() == 0:
        raise ValueError("no neighbours to compare: pass at least one query and k >= 1")
    same = neighbour_labels.cpu() == query_labels.cpu()[:, None]  # (Q, k)
    return 100.0 * same.double().mean().item()
