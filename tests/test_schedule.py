"""Tests for spikessl.schedule: the learning-rate schedule and the sizes of an epoch."""

from __future__ import annotations

import itertools
import math

import pytest

from spikessl.schedule import epoch_sizes, lr_factor
from spikessl.train import LoopSettings


def test_lr_factor_cosine() -> None:
    assert lr_factor("cosine", 0, 100) == pytest.approx(1.0)
    assert lr_factor("cosine", 50, 100) == pytest.approx(0.5)
    assert lr_factor("cosine", 100, 100) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor("cosine", 25, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    values = [lr_factor("cosine", s, 40) for s in range(41)]
    assert all(a > b for a, b in itertools.pairwise(values))  # strictly decreasing
    assert all(0.0 <= v <= 1.0 for v in values)
    assert lr_factor("cosine", 0, 0) == pytest.approx(1.0)  # no division by zero


def test_lr_factor_constant() -> None:
    assert all(lr_factor("constant", s, 10) == 1.0 for s in range(11))


def test_lr_factor_warmup() -> None:
    # 4 warm-up steps of 12: a quarter more of the rate each step, then cosine over the 8 left
    assert [lr_factor("cosine", s, 12, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor("cosine", 4, 12, 4) == pytest.approx(1.0)
    assert lr_factor("cosine", 8, 12, 4) == pytest.approx(0.5)
    assert lr_factor("cosine", 6, 12, 4) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor("cosine", 12, 12, 4) == pytest.approx(0.0, abs=1e-12)
    assert [lr_factor("constant", s, 12, 4) for s in (0, 1, 3, 4, 11)] == [0.25, 0.5, 1, 1, 1]
    assert lr_factor("cosine", 7, 20, 0) == lr_factor("cosine", 7, 20)  # 0: no warm-up


def test_lr_factor_unknown_schedule() -> None:
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        lr_factor("linear", 0, 10, 2)


@pytest.mark.parametrize(
    ("n", "processes", "expected"),
    [
        (257, 1, (2, 6, 257)),  # a last batch of one image: kept
        (257, 2, (1, 3, 256)),  # one image for two processes: one would get none, dropped
        (258, 2, (2, 6, 258)),  # one each: kept
        (256, 2, (1, 3, 256)),
    ],
)
def test_a_partial_last_batch_is_kept_only_if_every_process_gets_an_image(
    n: int, processes: int, expected: tuple[int, int, int]
) -> None:
    loop = LoopSettings(epochs=3, batch_size=256, drop_last=False)
    assert epoch_sizes("toy", n, 256, loop, processes) == expected
