"""Tests for spikessl.architecture: EncoderConfig's checks and the sizes it derives."""

from __future__ import annotations

import pytest

from spikessl.architecture import EncoderConfig


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(conv_channels=(12,), kernel_sizes=(5, 5)), "one entry per"),
        (dict(image_size=8), "too small"),
        (dict(norm="layer"), "norm"),
        (dict(fc_sizes=()), "fc_sizes"),
    ],
)
def test_bad_architecture_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EncoderConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "size"),
    [
        ({}, 4),  # 28 -> conv5 24 -> pool 12 -> conv5 8 -> pool 4: the MNIST CSNN
        ({"image_size": 32, "in_channels": 3}, 5),  # 32 -> 28 -> 14 -> 10 -> 5: CIFAR-10
        ({"kernel_sizes": (3, 3), "pool": 1}, 24),  # 28 -> 26 -> 24, no pooling
    ],
)
def test_feature_map_size_follows_convolutions_and_pooling(kwargs, size):
    cfg = EncoderConfig(**kwargs)
    assert cfg.feature_map_size() == size
    assert cfg.latent_dim == cfg.fc_sizes[-1] == 128
