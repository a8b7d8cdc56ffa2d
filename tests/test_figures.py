"""Figures: cosine top-k against a naive loop, valid PNGs, and Fig. 5 end to end on MNIST."""

import math

import pytest
import torch
from matplotlib.image import imread
from torch import nn

from spikessl import figures, pipeline
from spikessl.checkpoints import load_checkpoint, pretrained_encoder
from spikessl.config import load_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_width=200, min_height=150):
    assert path.is_file() and path.suffix == ".png"
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    height, width = imread(path).shape[:2]
    assert width >= min_width and height >= min_height, (width, height)
    return width, height


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
    idx, sim = figures.topk_cosine(queries, bank, 6, chunk_size=chunk_size)
    ref_idx, ref_sim = naive_topk_cosine(queries, bank, 6)
    assert idx.shape == sim.shape == (7, 6) and idx.dtype == torch.long
    assert torch.equal(idx, ref_idx)
    assert torch.allclose(sim, ref_sim.float(), atol=1e-5)


def test_topk_cosine_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same D"):
        figures.topk_cosine(torch.randn(3, 4), torch.randn(5, 6), 2)
    with pytest.raises(ValueError, match="lower k"):
        figures.topk_cosine(torch.randn(3, 4), torch.randn(5, 4), 6)
    with pytest.raises(ValueError, match="at least one query"):
        figures.topk_cosine(torch.randn(0, 4), torch.randn(5, 4), 2)


class Pixels(nn.Module):
    """Stand-in encoder: the prepared pixels are the latents."""

    def forward(self, images, T):
        return images.flatten(1) * T


def test_nearest_neighbours_finds_each_querys_copy_in_the_bank():
    gen = torch.Generator().manual_seed(1)
    bank_x = torch.randint(0, 256, (30, 1, 6, 6), dtype=torch.uint8, generator=gen)
    queries_x = bank_x[[4, 17, 29]]
    idx, sim = figures.nearest_neighbours(
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


def test_label_agreement_counts_matching_neighbours():
    queries = torch.tensor([0, 1])
    neighbours = torch.tensor([[0, 0, 2], [1, 3, 3]])
    assert figures.label_agreement(queries, neighbours) == pytest.approx(100 * 3 / 6)
    with pytest.raises(ValueError, match=r"\[Q, k\]"):
        figures.label_agreement(queries, torch.tensor([0, 1]))


def test_class_names_known_and_fallback():
    assert figures.class_names("cifar10", 10)[3] == "cat"
    assert figures.class_names("MNIST", 10)[7] == "7"
    assert figures.class_names("fashion-mnist", 10)[9] == "ankle boot"
    assert figures.class_names("cifar100", 100)[42] == "42"


@pytest.mark.parametrize("channels", [1, 3])
def test_neighbours_grid_writes_a_png(tmp_path, channels):
    gen = torch.Generator().manual_seed(channels)
    q, k = 3, 4
    queries = torch.randint(0, 256, (q, channels, 8, 8), dtype=torch.uint8, generator=gen)
    neighbours = torch.randint(0, 256, (q, k, channels, 8, 8), dtype=torch.uint8, generator=gen)
    labels = torch.tensor([0, 1, 2])
    neighbour_labels = torch.tensor([[0, 0, 1, 2], [1, 1, 1, 1], [0, 1, 2, 2]])
    out = tmp_path / "deep" / "fig5.png"  # parent folders are created
    path = figures.neighbours_grid(
        queries, labels, neighbours, neighbour_labels, ["a", "b", "c"], out, "test grid"
    )
    assert path == out
    width, height = assert_png(path)
    assert width > height  # k + 1 = 5 columns, 3 rows
    assert figures.png_source(path) is None  # no source given, none kept
    figures.neighbours_grid(
        queries, labels, neighbours, neighbour_labels, ["a", "b", "c"], out, "test", "run 7"
    )
    assert figures.png_source(out) == "run 7"


def test_png_source_of_a_file_that_is_no_png_is_none(tmp_path):
    (tmp_path / "fig.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert figures.png_source(tmp_path / "fig.png") is None
    assert figures.png_source(tmp_path / "missing.png") is None


def test_neighbours_grid_rejects_bad_inputs(tmp_path):
    images = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    neighbours = torch.zeros(2, 3, 1, 8, 8, dtype=torch.uint8)
    labels, neighbour_labels = torch.zeros(2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)
    out = tmp_path / "x.png"
    with pytest.raises(ValueError, match="uint8"):
        figures.neighbours_grid(images.float(), labels, neighbours, neighbour_labels, "ab", out, "")
    with pytest.raises(ValueError, match="C = 1 or 3"):
        figures.neighbours_grid(
            torch.zeros(2, 2, 8, 8, dtype=torch.uint8),
            labels,
            neighbours,
            neighbour_labels,
            "ab",
            out,
            "",
        )
    with pytest.raises(ValueError, match="neighbours"):
        figures.neighbours_grid(images, labels, neighbours[:1], neighbour_labels, "ab", out, "")
    with pytest.raises(ValueError, match="neighbour labels"):
        figures.neighbours_grid(images, labels, neighbours, labels, "ab", out, "")
    with pytest.raises(ValueError, match="class name"):
        figures.neighbours_grid(images, labels + 5, neighbours, neighbour_labels, "ab", out, "")
    with pytest.raises(ValueError, match=r"\*\.png"):
        figures.neighbours_grid(
            images, labels, neighbours, neighbour_labels, "ab", tmp_path / "x.pdf", ""
        )
    assert not out.exists()


def test_curves_writes_a_png(tmp_path):
    series = {"SSL + fine-tune": [90.1, 95.3, 97.0], "supervised only": [85.0, 91.2, 94.4]}
    path = figures.curves(series, tmp_path / "fig6.png", "MNIST, 20% labels")
    assert_png(path)
    with pytest.raises(ValueError, match="at least one value"):
        figures.curves({"a": []}, tmp_path / "bad.png", "t")
    with pytest.raises(ValueError, match="at least one value"):
        figures.curves({}, tmp_path / "bad.png", "t")


def test_a_figure_interrupted_mid_write_leaves_the_previous_file(tmp_path, monkeypatch):
    out = tmp_path / "fig6.png"
    figures.curves({"a": [1.0, 2.0]}, out, "first")
    before = out.read_bytes()

    def killed(self, fh, **_):
        fh.write(b"\x89PNG half")  # a partial file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(figures.Figure, "savefig", killed)
    with pytest.raises(KeyboardInterrupt):
        figures.curves({"a": [3.0, 4.0]}, out, "second")
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["fig6.png"]  # no temporary file left


def test_summarise_seeds_skips_empty_entries():
    points = figures.summarise_seeds([0.01, 0.05, 0.1], [[90.0, 92.0, 97.0], [], [95.0]])
    assert points == [(1.0, 93.0, 90.0, 97.0), (10.0, 95.0, 95.0, 95.0)]
    with pytest.raises(ValueError, match="one list of per-seed results per fraction"):
        figures.summarise_seeds([0.01, 0.05], [[90.0]])


def test_label_efficiency_writes_a_png_with_gaps(tmp_path):
    fractions = [0.01, 0.05, 0.2]
    series = {
        "SSL + fine-tune": [[80.0, 82.5], [], [95.0, 96.0, 95.5]],
        "supervised only": [[60.0], [85.0, 86.0], []],
        "not run": [[], [], []],
    }
    assert_png(figures.label_efficiency(fractions, series, tmp_path / "eff.png", "efficiency"))
    with pytest.raises(ValueError, match="every method"):
        figures.label_efficiency(fractions, {"a": [[], [], []]}, tmp_path / "e.png", "t")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        figures.label_efficiency([1, 5], {"a": [[1.0], [2.0]]}, tmp_path / "e.png", "t")


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
    path, agreement = figures.neighbours_figure(checkpoint, cfg, tmp / "fig5.png", 4, k=5)
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
        figures.neighbours_figure(checkpoint, cfg, tmp / "x.png", n_queries=0)
    with pytest.raises(ValueError, match="labelled training images"):
        figures.neighbours_figure(checkpoint, cfg, tmp / "x.png", k=1000)
