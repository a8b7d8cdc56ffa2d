"""``spikessl.health``: the warnings for silent or saturated layers and a diverging loss
(what stops a run, ``Stopped`` and ``Diverged``, is tested through ``fit`` in test_train.py)."""

from __future__ import annotations

import pytest
import torch

from spikessl.health import check_divergence, check_rates

# ------------------------------------------------------------------------------------------
# check_divergence
# ------------------------------------------------------------------------------------------


def epochs_of(*losses: float) -> list[dict]:
    return [{"epoch": i + 1, "loss": v} for i, v in enumerate(losses)]


def test_check_divergence_the_measured_jump() -> None:
    # the 32-channel MNIST pretraining's NT-Xent, epochs 8-11
    msg = check_divergence(epochs_of(0.996, 0.947, 0.918), 2.23, "pretrain epoch 4")
    assert msg is not None
    assert "pretrain epoch 4: loss 2.23, up from 0.918 at epoch 3" in msg
    assert "lower learning rate" in msg


@pytest.mark.parametrize(
    "history, loss",
    [
        ([], 9.0),  # nothing to compare with
        (epochs_of(3.0, 2.0, 1.0), 1.9),  # under twice the lowest
        (epochs_of(0.01, 0.005), 0.03),  # six times, but only 0.025 nats: fine-tuning noise
        (epochs_of(1.0), 2.0),  # exactly twice is not more than twice
        (epochs_of(1.0), float("nan")),  # on_nonfinite handles these
    ],
)
def test_check_divergence_quiet(history: list[dict], loss: float) -> None:
    assert check_divergence(history, loss, "x") is None


def test_check_divergence_compares_with_the_lowest_epoch() -> None:
    msg = check_divergence(epochs_of(2.0, 0.4, 0.9), 1.0, "x")  # 2.5x the lowest (epoch 2)
    assert msg is not None and "up from 0.4 at epoch 2" in msg
    assert check_divergence(epochs_of(2.0, 0.6, 0.9), 1.0, "x") is None


# ------------------------------------------------------------------------------------------
# check_rates
# ------------------------------------------------------------------------------------------


def test_check_rates_silent_layer() -> None:
    msg = check_rates(torch.tensor([0.2, 0.0, 0.3]), "pretrain step 7")
    assert msg is not None
    assert "pretrain step 7" in msg and "layer 1 silent" in msg
    assert "layer 0" not in msg and "layer 2" not in msg


def test_check_rates_saturated_layer() -> None:
    msg = check_rates(torch.tensor([0.2, 0.5, 1.0]), "finetune step 1")
    assert msg is not None
    assert "finetune step 1" in msg and "layer 2 saturated" in msg
    assert "layer 0" not in msg and "layer 1" not in msg


def test_check_rates_names_every_bad_layer() -> None:
    msg = check_rates(torch.tensor([0.0, 0.5, 1.0]), "x")
    assert msg is not None and "layer 0 silent" in msg and "layer 2 saturated" in msg


@pytest.mark.parametrize("rates", [[0.1, 0.5, 0.9], [1e-3], [2e-4, 0.98], []])
def test_check_rates_healthy(rates: list[float]) -> None:
    assert check_rates(torch.tensor(rates), "x") is None
