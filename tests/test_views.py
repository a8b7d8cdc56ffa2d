"""Tests for spikessl.views: the augmentation names, the paper's pairs, and AugmentConfig's
checks of a user's values."""

from __future__ import annotations

import pytest

from spikessl.views import AugmentConfig, resolve_views


def test_resolve_views_forms() -> None:
    assert resolve_views("rotate-noise") == ("rotate", "noise")
    assert resolve_views("crop+rotate+flip") == ("crop", "rotate", "flip")
    assert resolve_views(["blur", "noise"]) == ("blur", "noise")
    assert resolve_views("crop-blur+flip") == ("crop", "blur", "flip")
    assert resolve_views("noise") == ("noise",)


def test_config_normalises_lists_and_pair_names() -> None:
    cfg = AugmentConfig(views="crop-noise", crop_scale=[0.5, 1], jitter=[0.1, 0.1, 0.1, 0.1])
    assert cfg.views == ("crop", "noise")
    assert cfg.crop_scale == (0.5, 1.0)
    assert isinstance(cfg.jitter, tuple)
    hash(cfg)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"views": ("rotat", "noise")}, r"'rotat'.*Did you mean 'rotate'"),
        ({"views": "crop-rotat"}, r"Did you mean 'crop-rotate'"),
        ({"views": ()}, "empty"),
        ({"views": ("crop", 3)}, "unknown augmentation 3"),
        ({"blur_kernel": 4}, r"blur_kernel=4.*odd"),
        ({"blur_kernel": 1}, r"blur_kernel=1"),
        ({"noise_std": -0.1}, r"noise_std=-0\.1.*>= 0"),
        ({"noise_std": float("nan")}, "noise_std"),
        ({"crop_scale": (0.5, 1.2)}, r"crop_scale=\(0\.5, 1\.2\).*0\.0 < min <= max <= 1\.0"),
        ({"crop_scale": (0.0, 1.0)}, "crop_scale"),
        ({"crop_scale": (0.9, 0.5)}, "crop_scale"),
        ({"crop_ratio": (0.0, 1.0)}, "crop_ratio"),
        ({"crop_ratio": (0.5, float("inf"))}, r"crop_ratio=.*both finite"),
        ({"blur_sigma": (float("nan"), 1.0)}, "blur_sigma"),
        ({"jitter": (float("nan"), 0.4, 0.4, 0.1)}, "jitter"),
        ({"blur_sigma": (0.0, 1.0)}, "blur_sigma"),
        ({"rotation_degrees": -1.0}, r"rotation_degrees=-1\.0.*\[0, 180\]"),
        ({"flip_p": 1.5}, r"flip_p=1\.5.*\[0, 1\]"),
        ({"jitter_p": -0.1}, "jitter_p"),
        ({"gray_p": 1.5}, "gray_p"),
        ({"p": 2.0}, r"p=2\.0"),
        ({"jitter": (0.4, 0.4, 0.4, 0.6)}, r"jitter=.*hue <= 0\.5"),
        ({"jitter": (0.4, 0.4, 0.4)}, "jitter"),
        ({"crop_scale": 0.5}, r"crop_scale=0\.5.*sequence"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AugmentConfig(**kwargs)
