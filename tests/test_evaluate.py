"""Tests for spikessl.evaluate: weighted kNN against a plain reference, the linear probe
against its optimality conditions, accuracy, batching, prototypes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from spikessl.data import stratified_split
from spikessl.evaluate import (
    PROBE_WEIGHT_DECAYS,
    accuracy,
    batched_outputs,
    class_prototypes,
    fit_logistic,
    knn_predict,
    label_agreement,
    linear_probe,
)

# ------------------------------------------------------------------------------------------
# knn_predict
# ------------------------------------------------------------------------------------------


def reference_knn(
    bank: np.ndarray, labels: np.ndarray, queries: np.ndarray, num_classes: int, k: int, t: float
) -> np.ndarray:
    """Wu et al. (2018), one query at a time, in float64.

    Also checks that the data has no near ties (neither at the k-th neighbour nor between
    the two best classes), so a float32 implementation must give the very same answer.
    """

    def unit(v: np.ndarray) -> np.ndarray:
        norm = np.linalg.norm(v)
        return v / norm if norm > 0 else v

    bank64 = np.stack([unit(b.astype(np.float64)) for b in bank])
    k = min(k, len(bank64))
    preds = []
    for q in queries:
        q = unit(q.astype(np.float64))
        sims = bank64 @ q
        order = sorted(range(len(sims)), key=lambda j: -sims[j])
        if k < len(sims):
            assert sims[order[k - 1]] - sims[order[k]] > 1e-5, "near tie at the k-th neighbour"
        votes = [0.0] * num_classes
        for j in order[:k]:
            votes[int(labels[j])] += float(np.exp(sims[j] / t))
        ranked = sorted(votes, reverse=True)
        assert ranked[0] - ranked[1] > 1e-4 * ranked[0], "near tie between classes"
        preds.append(int(np.argmax(votes)))
    return np.array(preds)


def random_problem(seed: int, n: int = 40, q: int = 13, d: int = 6, classes: int = 4):
    gen = torch.Generator().manual_seed(seed)
    bank = torch.randn(n, d, generator=gen)
    labels = torch.randint(0, classes, (n,), generator=gen)
    queries = torch.randn(q, d, generator=gen)
    return bank, labels, queries, classes


@pytest.mark.parametrize("k", [1, 5, 200])  # 200 > the 40 bank entries
@pytest.mark.parametrize("temperature", [0.07, 0.5, 2.0])
@pytest.mark.parametrize("chunk_size", [4, 13, 100])  # <, =, > the 13 queries
def test_knn_matches_reference(k: int, temperature: float, chunk_size: int) -> None:
    bank, labels, queries, classes = random_problem(seed=0)
    expected = reference_knn(bank.numpy(), labels.numpy(), queries.numpy(), classes, k, temperature)
    got = knn_predict(
        bank, labels, queries, classes, k=k, temperature=temperature, chunk_size=chunk_size
    )
    assert got.shape == (queries.shape[0],)
    assert got.dtype == torch.int64
    assert got.tolist() == expected.tolist()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_knn_matches_reference_other_data(seed: int) -> None:
    bank, labels, queries, classes = random_problem(seed, n=60, q=25, d=10, classes=5)
    expected = reference_knn(bank.numpy(), labels.numpy(), queries.numpy(), classes, 7, 0.1)
    got = knn_predict(bank, labels, queries, classes, k=7, temperature=0.1, chunk_size=8)
    assert got.tolist() == expected.tolist()


def test_knn_non_negative_latents_like_spike_counts() -> None:
    gen = torch.Generator().manual_seed(4)
    bank = torch.randint(0, 9, (50, 8), generator=gen).float() + torch.rand(50, 8, generator=gen)
    labels = torch.randint(0, 3, (50,), generator=gen)
    queries = torch.randint(0, 9, (11, 8), generator=gen).float() + torch.rand(11, 8, generator=gen)
    expected = reference_knn(bank.numpy(), labels.numpy(), queries.numpy(), 3, 5, 0.1)
    assert knn_predict(bank, labels, queries, 3, k=5, temperature=0.1).tolist() == expected.tolist()


def test_knn_is_scale_invariant() -> None:
    bank, labels, queries, classes = random_problem(seed=5)
    a = knn_predict(bank, labels, queries, classes, k=5)
    b = knn_predict(bank * 37.0, labels, queries * 0.01, classes, k=5)
    assert torch.equal(a, b)


def test_knn_well_separated_clusters_are_perfect() -> None:
    gen = torch.Generator().manual_seed(6)
    classes, d = 5, 16
    centres = torch.eye(d)[:classes] * 10.0
    bank_labels = torch.arange(classes).repeat_interleave(30)
    bank = centres[bank_labels] + 0.3 * torch.randn(len(bank_labels), d, generator=gen)
    query_labels = torch.arange(classes).repeat(20)
    queries = centres[query_labels] + 0.3 * torch.randn(len(query_labels), d, generator=gen)
    preds = knn_predict(bank, bank_labels, queries, classes, k=20, temperature=0.1, chunk_size=7)
    assert accuracy(preds, query_labels) == 100.0


def test_knn_zero_vectors_do_not_crash() -> None:
    bank, labels, queries, classes = random_problem(seed=7)
    bank[3] = 0.0
    queries[0] = 0.0
    preds = knn_predict(bank, labels, queries, classes, k=5)
    assert preds.shape == (queries.shape[0],)
    assert ((preds >= 0) & (preds < classes)).all()
    # every other query is unaffected by the zero bank entry (similarity 0 < its top 5)
    expected = reference_knn(bank.numpy(), labels.numpy(), queries[1:].numpy(), classes, 5, 0.1)
    assert preds[1:].tolist() == expected.tolist()


def test_knn_all_zero_bank() -> None:
    preds = knn_predict(
        torch.zeros(6, 3), torch.tensor([2, 2, 2, 1, 1, 0]), torch.zeros(2, 3), num_classes=3, k=6
    )
    assert preds.tolist() == [2, 2]  # every neighbour votes exp(0): the majority wins


def test_knn_k_larger_than_bank_is_a_plain_weighted_vote() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    queries = torch.tensor([[0.0, 1.0], [1.0, 0.2]])
    # k covers the whole bank: query 0 gets two votes exp(~0.1/t) for class 0 against one
    # exp(1/t) for class 1: with a small t class 1 wins, with a large t the count wins.
    assert knn_predict(bank, labels, queries, 2, k=50, temperature=0.1).tolist() == [1, 0]
    assert knn_predict(bank, labels, queries, 2, k=50, temperature=100.0).tolist() == [0, 0]


def test_knn_low_temperature_does_not_overflow() -> None:
    """exp(sim / t) overflows float32 once sim / t > 88.7 (t = 0.01, sim > 0.89).

    Class 1 has the nearer neighbour (cosine 0.999 vs 0.95) and must win; when both
    weights overflow to inf the argmax falls to class 0 instead.
    """
    query = torch.tensor([[1.0, 0.0]])
    angle = torch.tensor([float(np.arccos(0.95)), float(np.arccos(0.999))])
    bank = torch.stack([angle.cos(), angle.sin()], dim=1)
    labels = torch.tensor([0, 1])
    expected = reference_knn(bank.numpy(), labels.numpy(), query.numpy(), 2, 2, 0.01)
    assert expected.tolist() == [1]
    assert knn_predict(bank, labels, query, 2, k=2, temperature=0.01).tolist() == [1]


def test_knn_accepts_float64_latents() -> None:
    bank, labels, queries, classes = random_problem(seed=8)
    a = knn_predict(bank, labels, queries, classes, k=5)
    b = knn_predict(bank.double(), labels, queries.double(), classes, k=5)
    assert torch.equal(a, b)


@pytest.mark.parametrize("k, temperature", [(0, 0.1), (-3, 0.1), (5, 0.0), (5, -0.1)])
def test_knn_bad_parameters(k: int, temperature: float) -> None:
    bank, labels, queries, classes = random_problem(seed=9)
    with pytest.raises(ValueError, match="k >= 1 and temperature > 0"):
        knn_predict(bank, labels, queries, classes, k=k, temperature=temperature)


def test_knn_mismatched_lengths() -> None:
    bank, labels, queries, classes = random_problem(seed=10)
    with pytest.raises(ValueError, match="same length"):
        knn_predict(bank, labels[:-1], queries, classes)


def test_knn_refuses_an_empty_bank_and_a_bad_chunk_size() -> None:
    bank, labels, queries, classes = random_problem(seed=11)
    with pytest.raises(ValueError, match="memory bank"):  # it used to answer class 0 for all
        knn_predict(bank[:0], labels[:0], queries, classes)
    with pytest.raises(ValueError, match="chunk_size=0"):
        knn_predict(bank, labels, queries, classes, chunk_size=0)
    assert knn_predict(bank, labels, queries[:0], classes).shape == (0,)  # no queries: none


# ------------------------------------------------------------------------------------------
# accuracy
# ------------------------------------------------------------------------------------------


def test_accuracy_known_values() -> None:
    assert accuracy(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 3])) == 100.0
    assert accuracy(torch.tensor([0, 1, 2, 3]), torch.tensor([3, 2, 1, 0])) == 0.0
    assert accuracy(torch.tensor([1, 1, 0, 0]), torch.tensor([1, 0, 0, 1])) == 50.0
    assert accuracy(torch.tensor([2, 0, 1]), torch.tensor([2, 0, 0])) == pytest.approx(200 / 3)
    result = accuracy(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 3, 0]))
    assert isinstance(result, float) and result == 75.0


# ------------------------------------------------------------------------------------------
# batched_outputs
# ------------------------------------------------------------------------------------------


class Probe(nn.Module):
    """Deterministic in eval mode (dropout off); records mode and grad state per call."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(12, 5)
        self.dropout = nn.Dropout(0.5)
        self.calls: list[tuple[bool, bool, int]] = []

    def forward(self, x: Tensor, T: int) -> Tensor:
        self.calls.append((self.training, torch.is_grad_enabled(), x.shape[0]))
        return T * self.dropout(self.linear(x.flatten(1))).double()


def prepare(images: Tensor) -> Tensor:
    return images.float() / 255.0


def images_uint8(n: int) -> Tensor:
    return torch.randint(
        0, 256, (n, 3, 2, 2), generator=torch.Generator().manual_seed(n), dtype=torch.uint8
    )


@pytest.mark.parametrize("batch_size", [1, 3, 10, 64])
def test_batched_outputs_equals_one_full_batch(batch_size: int) -> None:
    model, images = Probe(), images_uint8(10)
    model.eval()
    with torch.no_grad():
        full = model(prepare(images), 4).float()
    model.calls.clear()
    out = batched_outputs(model, images, 4, prepare, batch_size=batch_size)
    assert out.dtype == torch.float32
    assert out.shape == (10, 5)
    torch.testing.assert_close(out, full, rtol=1e-6, atol=1e-6)
    sizes = [c[2] for c in model.calls]
    assert sum(sizes) == 10 and max(sizes) <= batch_size
    assert len(sizes) == -(-10 // batch_size)


def test_batched_outputs_runs_in_eval_mode_and_restores_training() -> None:
    model, images = Probe(), images_uint8(7)
    model.train()
    out1 = batched_outputs(model, images, 2, prepare, batch_size=3)
    out2 = batched_outputs(model, images, 2, prepare, batch_size=3)
    assert torch.equal(out1, out2)  # dropout was off
    assert all(not training for training, _, _ in model.calls)
    assert model.training and model.dropout.training


def test_batched_outputs_keeps_eval_mode() -> None:
    model = Probe().eval()
    batched_outputs(model, images_uint8(4), 2, prepare, batch_size=3)
    assert not model.training and not model.dropout.training


def test_batched_outputs_restores_training_after_an_error() -> None:
    model = Probe().train()

    def broken(_images: Tensor) -> Tensor:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        batched_outputs(model, images_uint8(4), 2, broken)
    assert model.training


def test_batched_outputs_runs_without_grad() -> None:
    model = Probe()
    out = batched_outputs(model, images_uint8(5), 2, prepare, batch_size=2)
    assert all(not grad for _, grad, _ in model.calls)
    assert not out.requires_grad
    assert torch.is_grad_enabled()  # switched back on afterwards


# ------------------------------------------------------------------------------------------
# class_prototypes
# ------------------------------------------------------------------------------------------


def test_class_prototypes_are_the_unit_mean_of_unit_latents() -> None:
    gen = torch.Generator().manual_seed(3)
    latents = torch.rand(50, 7, generator=gen) * 20  # counts-like, different lengths
    labels = torch.arange(50) % 4
    protos = class_prototypes(latents, labels, 4).numpy()
    x, y = latents.double().numpy(), labels.numpy()
    for c in range(4):
        members = [row / np.linalg.norm(row) for row in x[y == c]]
        mean = np.mean(members, axis=0)
        np.testing.assert_allclose(protos[c], mean / np.linalg.norm(mean), rtol=1e-5)


def test_class_prototypes_classify_separated_clusters_perfectly() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.eye(5) * 10
    labels = torch.randint(0, 5, (200,), generator=gen)
    latents = centres[labels] + torch.rand(200, 5, generator=gen)
    protos = class_prototypes(latents, labels, 5)
    assert torch.equal((latents @ protos.T).argmax(1), labels)


def test_class_prototypes_need_every_class() -> None:
    with pytest.raises(ValueError, match=r"classes \[2\] have no labelled image"):
        class_prototypes(torch.ones(4, 3), torch.tensor([0, 1, 1, 0]), 3)


# ------------------------------------------------------------------------------------------
# fit_logistic, linear_probe
# ------------------------------------------------------------------------------------------


def counts_problem(seed: int, n: int = 90, d: int = 6, classes: int = 3):
    """Spike-count-like latents: non-negative integers whose means depend on the class."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    rates = torch.rand(classes, d, generator=gen) * 8
    latents = torch.poisson(rates[labels], generator=gen)
    return latents, labels, classes


@pytest.mark.parametrize("weight_decay", [1e-3, 0.1, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_fit_logistic_meets_the_optimality_conditions(weight_decay: float, seed: int) -> None:
    """At the minimum of mean CE + wd/2 ||W||^2 on z = (x - mean) / std, the gradient,
    written out by hand in float64, vanishes: (P - Y)^T Z / N + wd W = 0 and mean(P - Y) = 0."""
    latents, labels, classes = counts_problem(seed)
    layer = fit_logistic(latents, labels, classes, weight_decay)
    x = latents.double().numpy()
    mean, std = x.mean(0), x.std(0)
    z = (x - mean) / std
    w_raw, b_raw = layer.weight.double().numpy(), layer.bias.double().numpy()
    w = w_raw * std  # undo the folding: W z + b = W_raw x + b_raw
    b = b_raw + w_raw @ mean
    logits = z @ w.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.eye(classes)[labels.numpy()]
    grad_w = (p - y).T @ z / len(z) + weight_decay * w
    grad_b = (p - y).mean(0)
    assert np.abs(grad_w).max() < 1e-4 and np.abs(grad_b).max() < 1e-4
    assert np.abs(w).max() > 1e-3  # a real fit, not the zero start
    # the folded layer on raw latents predicts what the fit on standardised ones does
    assert np.array_equal(layer(latents).argmax(1).numpy(), logits.argmax(1))


def test_fit_logistic_constant_feature_stays_finite() -> None:
    latents, labels, classes = counts_problem(2)
    latents[:, 0] = 3.0  # a neuron that fires the same in every image
    layer = fit_logistic(latents, labels, classes, 1e-2)
    assert torch.isfinite(layer.weight).all() and torch.isfinite(layer.bias).all()
    assert not layer.weight.requires_grad


def test_fit_logistic_needs_positive_weight_decay() -> None:
    latents, labels, classes = counts_problem(0)
    with pytest.raises(ValueError, match="weight_decay must be > 0"):
        fit_logistic(latents, labels, classes, 0.0)


def test_fit_logistic_rejects_non_finite_latents() -> None:
    latents, labels, classes = counts_problem(0)
    latents[3, 2] = float("nan")
    with pytest.raises(ValueError, match="non-finite latents"):
        fit_logistic(latents, labels, classes, 1e-2)


def test_linear_probe_separates_clusters() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.eye(4) * 10
    labels = torch.arange(120) % 4
    latents = centres[labels] + torch.rand(120, 4, generator=gen)
    queries = centres.repeat(5, 1) + torch.rand(20, 4, generator=gen)
    preds, _, held_out = linear_probe(latents, labels, queries, 4)
    assert torch.equal(preds, torch.arange(20) % 4)
    assert set(held_out) == set(PROBE_WEIGHT_DECAYS)


def test_linear_probe_chooses_by_held_out_accuracy_and_refits_on_all() -> None:
    latents, labels, classes = counts_problem(1, n=150)
    queries = latents[:30] + 0.5
    preds, chosen, held_out = linear_probe(latents, labels, queries, classes, (1e-4, 1e-2, 1.0))
    best = max(held_out.values())
    assert held_out[chosen] == best
    assert chosen == max(wd for wd, acc in held_out.items() if acc == best)  # ties: strongest
    refit = fit_logistic(latents, labels, classes, chosen)
    assert torch.equal(preds, refit(queries).argmax(1))
    again = linear_probe(latents, labels, queries, classes, (1e-4, 1e-2, 1.0))
    assert torch.equal(again[0], preds) and again[1:] == (chosen, held_out)
    # each held-out accuracy is the score, on the seeded stratified 20%, of a fit on the 80%
    fit, held = stratified_split(labels, 0.2, 0)
    for wd, acc in held_out.items():
        layer = fit_logistic(latents[fit], labels[fit], classes, wd)
        assert acc == accuracy(layer(latents[held].float()).argmax(1), labels[held])


def test_linear_probe_bad_inputs() -> None:
    latents, labels, classes = counts_problem(0)
    with pytest.raises(ValueError, match="same length"):
        linear_probe(latents, labels[:-1], latents, classes)
    with pytest.raises(ValueError, match="at least one weight decay"):
        linear_probe(latents, labels, latents, classes, ())
    with pytest.raises(ValueError, match="at least 2"):
        linear_probe(latents[:1], labels[:1], latents, classes)


def test_label_agreement_counts_matching_neighbours():
    queries = torch.tensor([0, 1])
    neighbours = torch.tensor([[0, 0, 2], [1, 3, 3]])
    assert label_agreement(queries, neighbours) == pytest.approx(100 * 3 / 6)
    with pytest.raises(ValueError, match=r"\[Q, k\]"):
        label_agreement(queries, torch.tensor([0, 1]))
