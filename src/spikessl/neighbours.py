"""Nearest neighbours in spike-count latent space: chunked cosine top-k, how often a
neighbour shares its query's label, and the paper's Fig. 5 for a pretraining checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spikessl import distributed
from spikessl.checkpoints import pretrained_encoder
from spikessl.config import Config
from spikessl.data import load_data
from spikessl.dataset_catalog import class_names
from spikessl.evaluate import batched_outputs, label_agreement, precision
from spikessl.figures import neighbours_grid


@torch.no_grad()
def topk_cosine(
    queries: Tensor, bank: Tensor, k: int, chunk_size: int = 1024
) -> tuple[Tensor, Tensor]:
    """The ``k`` bank rows most cosine-similar to each query: ``(indices, similarities)``.

    ``queries [Q, D]``, ``bank [N, D]`` -> both ``[Q, k]``, most similar first. Runs over
    chunks of queries, so memory is ``chunk_size * N`` floats for any ``Q``. An all-zero row
    (a silent encoder) has similarity 0 to everything.
    """
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(
            f"expected latents [Q, D] and [N, D] with the same D, got {tuple(queries.shape)} "
            f"and {tuple(bank.shape)}"
        )
    if queries.shape[0] == 0 or not 1 <= k <= bank.shape[0]:
        raise ValueError(
            f"need at least one query and 1 <= k <= bank size, got {queries.shape[0]} queries, "
            f"k={k}, bank of {bank.shape[0]}: lower k or use a larger bank"
        )
    bank = F.normalize(bank.float(), dim=1)  # (N, D)
    indices, sims = [], []
    for start in range(0, queries.shape[0], chunk_size):
        q = F.normalize(queries[start : start + chunk_size].float(), dim=1)  # (q, D)
        sim, idx = (q @ bank.T).topk(k, dim=1)  # (q, k)
        indices.append(idx)
        sims.append(sim)
    return torch.cat(indices), torch.cat(sims)


def nearest_neighbours(
    encoder: nn.Module,
    queries_x: Tensor,
    bank_x: Tensor,
    T: int,
    prepare: Callable[[Tensor], Tensor],
    k: int = 8,
    batch_size: int = 512,
) -> tuple[Tensor, Tensor]:
    """Indices ``[Q, k]`` into ``bank_x`` (and cosine similarities) of each query's neighbours.

    Latents are the encoder's spike counts over ``T`` steps of ``prepare(images)``. Queries
    and bank are separate sets (e.g. test images against training images); when they overlap
    each image finds itself first.
    """
    bank = batched_outputs(encoder, bank_x, T, prepare, batch_size)  # (N, D)
    queries = batched_outputs(encoder, queries_x, T, prepare, batch_size)  # (Q, D)
    return topk_cosine(queries, bank, k)


def neighbours_figure(
    checkpoint: dict,
    cfg: Config,
    out: str | Path,
    n_queries: int = 10,
    k: int = 8,
    seed: int = 0,
    source: str | None = None,
) -> tuple[Path, float]:
    """Fig. 5 for a pretraining checkpoint: random test images and their nearest neighbours.

    The bank is the labelled part of the training set (as for the kNN accuracy). Returns the
    PNG and the top-1 label agreement over all test images in percent (2 decimals): how often
    a test image's nearest bank neighbour has its label, i.e. the 1-NN accuracy.
    """
    if n_queries < 1 or k < 1:
        raise ValueError(
            f"need at least one query and one neighbour, got --queries {n_queries} -k {k}: "
            "pass --queries N -k K with N, K >= 1"
        )
    device = distributed.resolve_device(cfg.device)
    data = load_data(cfg, device)
    encoder = pretrained_encoder(checkpoint, cfg).to(device)
    bank_x, bank_y = data.train_images[data.labelled], data.train_labels[data.labelled]
    n_test = data.test_images.shape[0]
    if n_queries > n_test or k > bank_x.shape[0]:
        raise ValueError(
            f"asked for {n_queries} queries and k={k} but there are {n_test} test and "
            f"{bank_x.shape[0]} labelled training images: lower them or raise data.*_limit"
        )
    T, bs = cfg.time_steps, cfg.eval_batch_size
    with precision(cfg, device):  # the encoder only: similarities stay float32
        bank = batched_outputs(encoder, bank_x, T, data.prepare, bs)
        queries = batched_outputs(encoder, data.test_images, T, data.prepare, bs)
    idx, _ = topk_cosine(queries, bank, k)  # (n_test, k)
    agreement = round(label_agreement(data.test_labels, bank_y[idx[:, :1]]), 2)
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randperm(n_test, generator=generator)[:n_queries].to(device)
    title = (
        f"{cfg.data.name}: {k} nearest labelled training images in spike-count latent space\n"
        f"(nearest one shares the label for {agreement:.2f}% of all {n_test} test images)"
    )
    path = neighbours_grid(
        data.test_images[pick],
        data.test_labels[pick],
        bank_x[idx[pick]],  # (n_queries, k, C, H, W)
        bank_y[idx[pick]],
        class_names(cfg.data.name, data.num_classes),
        out,
        title,
        source,
    )
    return path, agreement
