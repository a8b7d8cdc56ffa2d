"""Nearest neighbours: cosine top-k against a naive loop, and Fig. 5 end to end on MNIST."""

import math

import pytest
import torch
from test_figures import assert_png
from torch import nn

from spikessl import neighbours, pipeline
from spikessl.checkpoints import load_checkpoint, pretrained_encoder
from spikessl.config import load_config


def naive_topk_cosine(queries, bank, k):
    """Loop over every pair, cosine from its definition, sort descending."""
    indices, sims = [], []
    for q in queries.tolist():
        scores = []
        for j, b in enumerate(bank.tolist()):
            dot = sum(x * y for x, y in zip(q, b))
            norm = math.sqrt(sum(x * x for x in q)) * math.sqrt(sum(y * y for y in b))
            scores.append((dot / norm, j))
        scores.sort(reverse=True)
        indices.append([j for _, j in scores[:k]])
        sims.append([s for s, _ in scores[:k]])
    return torch.tensor(indices), torch.tensor(sims)


@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_topk_cosine_matches_a_naive_loop(chunk_size):
    gen = torch.Generator().manual_seed(0)
    # varied norms: a dot-product ranking would differ from the cosine one
    queries = torch.randn(7, 5, generator=gen) * torch.rand(7, 1, generator=gen) * 10
    bank = torch.randn(40, 5, generator=gen) * torch.rand(40, 1, generator=gen) * 10
    idx, sim = neighbours.topk_cosine(queries, bank, 6, chunk_size=chunk_size)
    ref_idx, ref_sim = naive_topk_cosine(queries, bank, 6)
    assert idx.shape == sim.shape == (7, 6) and idx.dtype == torch.long
    assert torch.equal(idx, ref_idx)
    assert torch.allclose(sim, ref_sim.float(), atol=1e-5)


def test_topk_cosine_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same D"):
        neighbours.topk_cosine(torch.randn(3, 4), torch.randn(5, 6), 2)
    with pytest.raises(ValueError, match="lower k"):
        neighbours.topk_cosine(torch.randn(3, 4), torch.randn(5, 4), 6)
    with pytest.raises(ValueError, match="at least one query"):
        neighbours.topk_cosine(torch.randn(0, 4), torch.randn(5, 4), 2)


class Pixels(nn.Module):
    """Stand-in encoder: the prepared pixels are the latents."""

    def forward(self, images, T):
        return images.flatten(1) * T


def test_nearest_neighbours_finds_each_querys_copy_in_the_bank():
    gen = torch.Generator().manual_seed(1)
    bank_x = torch.randint(0, 256, (30, 1, 6, 6), dtype=torch.uint8, generator=gen)
    queries_x = bank_x[[4, 17, 29]]
    idx, sim = neighbours.nearest_neighbours(
        Pixels(),
        queries_x,
        bank_x,
        T=2,
        prepare=lambda x: x.float() / 255 - 0.5,
        k=3,
        batch_size=4,
    )
    assert idx.shape == (3, 3)
    assert idx[:, 0].tolist() == [4, 17, 29]
    assert torch.allclose(sim[:, 0], torch.ones(3), atol=1e-5)
    assert (sim[:, 1:] < 0.999).all()


@pytest.fixture(scope="module")
def tiny_pretrained(tmp_path_factory):
    """One pretraining epoch of a tiny encoder on 200 MNIST images (40 labelled)."""
    tmp = tmp_path_factory.mktemp("figures")
    cfg = load_config(
        "mnist-quick",
        {
            "time_steps": 2,
            "device": "cpu",
            "out_dir": str(tmp),
            "data": {"train_limit": 200, "test_limit": 100},
            "encoder": {"conv_channels": [4, 8], "fc_sizes": [32]},
            "pretrain": {"epochs": 1, "batch_size": 32},
            "knn": {"k": 5},
        },
    )
    pipeline.pretrain(cfg, tmp / "pretrain", progress=False)
    return cfg, load_checkpoint(tmp / "pretrain"), tmp


def test_neighbours_figure_end_to_end(tiny_pretrained):
    cfg, checkpoint, tmp = tiny_pretrained
    path, agreement = neighbours.neighbours_figure(checkpoint, cfg, tmp / "fig5.png", 4, k=5)
    assert_png(path)
    assert agreement == round(agreement, 2)
    # naive 1-NN agreement; ties among integer spike counts may go either way
    data = pipeline.load_data(cfg, torch.device("cpu"))
    encoder = pretrained_encoder(checkpoint, cfg).eval()
    with torch.no_grad():
        bank = encoder(data.prepare(data.train_images[data.labelled]), cfg.time_steps)
        test = encoder(data.prepare(data.test_images), cfg.time_steps)
    bank_y = data.train_labels[data.labelled]
    sims = torch.stack([nn.functional.cosine_similarity(t[None], bank, eps=1e-12) for t in test])
    best = sims >= sims.max(1, keepdim=True).values - 1e-6  # (n_test, N) the tied nearest
    same = bank_y[None, :] == data.test_labels[:, None]
    low = 100 * (best & ~same).sum(1).eq(0).double().mean().item()  # all tied ones agree
    high = 100 * (best & same).any(1).double().mean().item()  # some tied one agrees
    assert low - 0.01 <= agreement <= high + 0.01, (low, agreement, high)


def test_neighbours_figure_rejects_impossible_requests(tiny_pretrained):
    cfg, checkpoint, tmp = tiny_pretrained
    with pytest.raises(ValueError, match="got --queries 0 -k"):
        neighbours.neighbours_figure(checkpoint, cfg, tmp / "x.png", n_queries=0)
    with pytest.raises(ValueError, match="labelled training images"):
        neighbours.neighbours_figure(checkpoint, cfg, tmp / "x.png", k=1000)
