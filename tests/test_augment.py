"""Tests for spikessl.augment: shapes, ranges, per-sample randomness, seeding, the checks of
sizes and inputs (a config's own checks: test_views)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spikessl.augment import (
    AUGMENTATIONS,
    PAIRS,
    AugmentConfig,
    build_augment,
    resolve_views,
    to_float,
    two_views,
)

SIZE = 16
BATCH = 16

# Every named pair from Table III plus each augmentation on its own.
SPECS = [*PAIRS, *AUGMENTATIONS]


def channels_for(spec: str) -> int:
    return 3 if {"jitter", "gray"} & set(resolve_views(spec)) else 1


def square_image(channels: int = 1) -> torch.Tensor:
    """A bright, off-centre square on a dark background: asymmetric, so flips and rotations show."""
    img = torch.full((channels, SIZE, SIZE), 0.1)
    img[:, 2:8, 3:10] = 0.9
    if channels == 3:  # give it colour so jitter's saturation and hue have something to change
        img[0, 2:8, 3:10] = 0.8
        img[1, 2:8, 3:10] = 0.3
        img[2, 2:8, 3:10] = 0.5
    return img


def copies(channels: int = 1, batch: int = BATCH) -> torch.Tensor:
    return square_image(channels).expand(batch, -1, -1, -1).contiguous()


def make(spec: str, **overrides: object):
    cfg = AugmentConfig(views=resolve_views(spec), **overrides)
    return build_augment(cfg, image_size=SIZE, channels=channels_for(spec))


@pytest.mark.parametrize("spec", SPECS)
def test_shape_dtype_range(spec: str) -> None:
    torch.manual_seed(0)
    x = copies(channels_for(spec))
    y = make(spec)(x)
    assert y.shape == x.shape
    assert y.dtype == x.dtype
    assert torch.isfinite(y).all()
    assert y.min() >= 0.0 and y.max() <= 1.0


@pytest.mark.parametrize("spec", ["rotate-noise", "crop-rotate"])
def test_float64_kept(spec: str) -> None:
    x = copies(channels_for(spec)).double()
    y = make(spec)(x)
    assert y.dtype == torch.float64 and y.shape == x.shape


@pytest.mark.parametrize("spec", SPECS)
def test_parameters_drawn_per_sample(spec: str) -> None:
    torch.manual_seed(1)
    even = {"gray_p": 0.5} if spec == "gray" else {}  # a fair coin, as flip's
    y = make(spec, **even)(copies(channels_for(spec))).flatten(1)
    distinct = (torch.cdist(y, y) > 1e-6)[~torch.eye(BATCH, dtype=torch.bool)]
    if spec in ("flip", "gray"):  # a coin per sample: both outcomes must appear in 16 draws
        assert distinct.any()
    elif spec == "crop":  # kornia draws integer crop boxes, so on 16x16 a few pairs may collide
        assert distinct.float().mean() > 0.9
    else:  # continuous parameters: every pair of samples differs
        assert distinct.all()


@pytest.mark.parametrize("concat", [False, True])
@pytest.mark.parametrize("spec", SPECS)
def test_two_views_differ(spec: str, concat: bool) -> None:
    torch.manual_seed(2)
    x = copies(channels_for(spec))
    a, b = two_views(make(spec, **({"gray_p": 0.5} if spec == "gray" else {})), x, concat=concat)
    assert a.shape == b.shape == x.shape
    per_sample_diff = (a - b).flatten(1).abs().amax(dim=1)
    if spec in ("flip", "gray"):
        assert (per_sample_diff > 0).any()
    elif spec == "crop":  # integer crop boxes: the two views of a sample may coincide by chance
        assert (per_sample_diff > 1e-6).float().mean() > 0.75
    else:
        assert (per_sample_diff > 1e-6).all()


@pytest.mark.parametrize("spec", SPECS)
def test_seed_reproduces(spec: str) -> None:
    augment = make(spec)
    x = copies(channels_for(spec))
    torch.manual_seed(3)
    first = two_views(augment, x)
    torch.manual_seed(3)
    again = two_views(augment, x)
    torch.manual_seed(4)
    other = two_views(augment, x)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_rotation_moves_mass() -> None:
    torch.manual_seed(5)
    x = copies()
    y = make("rotate", rotation_degrees=90.0)(x)
    coords = torch.arange(SIZE, dtype=torch.float32)

    def centroid(img: torch.Tensor) -> torch.Tensor:
        w = img[:, 0] - 0.1
        w = w.clamp(min=0)
        total = w.sum(dim=(1, 2))
        return torch.stack(
            [(w.sum(2) * coords).sum(1) / total, (w.sum(1) * coords).sum(1) / total], dim=1
        )

    shift = (centroid(y) - centroid(x)).norm(dim=1)
    assert shift.mean() > 2.0  # pixels; the square sits ~4 px from the centre
    # total brightness is roughly kept: the square rotates rather than vanishing
    assert torch.allclose(y.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)), rtol=0.25)


def test_noise_std_controls_change() -> None:
    x = torch.full((BATCH, 1, SIZE, SIZE), 0.5)  # mid-grey so clamping does not bite
    torch.manual_seed(6)
    assert torch.equal(make("noise", noise_std=0.0)(x), x)
    diff = make("noise", noise_std=0.1)(x) - x
    assert 0.08 < diff.std().item() < 0.12
    assert abs(diff.mean().item()) < 0.01


def test_noise_is_clamped() -> None:
    x = copies()
    y = make("noise", noise_std=1.0)(x)
    assert y.min() == 0.0 and y.max() == 1.0


def test_full_crop_is_identity() -> None:
    x = copies()
    y = make("crop", crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))(x)
    assert torch.allclose(y, x, atol=1e-4)


@pytest.mark.parametrize("spec", ["rotate", "crop", "blur", "noise"])
def test_p_zero_is_identity(spec: str) -> None:
    x = copies()
    assert torch.allclose(make(spec, p=0.0)(x), x)


def test_partial_p_mixes_applied_and_skipped_samples() -> None:
    torch.manual_seed(7)
    x = copies()
    y = make("crop-rotate", p=0.5)(x)
    unchanged = (y - x).flatten(1).abs().amax(dim=1) < 1e-6
    assert y.shape == x.shape
    assert unchanged.any() and not unchanged.all()


def test_jitter_changes_colour() -> None:
    torch.manual_seed(8)
    x = copies(3)
    y = make("jitter", jitter_p=1.0)(x)
    assert (y - x).abs().flatten(1).amax(dim=1).min() > 1e-3


def test_gray_is_the_luma_of_the_colours() -> None:
    """Hand-computed: the square's colour (0.8, 0.3, 0.5) becomes 0.299 * 0.8 + 0.587 * 0.3 +
    0.114 * 0.5 = 0.4723 in every channel (ITU-R BT.601 luma), the grey background stays 0.1."""
    x = copies(3)
    y = make("gray", gray_p=1.0)(x)
    expected = torch.full((3, SIZE, SIZE), 0.1)
    expected[:, 2:8, 3:10] = 0.4723
    torch.testing.assert_close(y, expected.expand_as(y), atol=1e-4, rtol=0)


def test_gray_p_is_its_own_probability() -> None:
    torch.manual_seed(9)
    y = make("gray", gray_p=0.5)(copies(3, batch=64))
    grey = (y.amax(dim=1) - y.amin(dim=1)).flatten(1).amax(dim=1) < 1e-6
    assert 10 < int(grey.sum()) < 54  # about half the images, each whole or not at all
    assert not make("gray", gray_p=0.0)(copies(3)).eq(make("gray", gray_p=1.0)(copies(3))).all()


def test_uses_kornia_per_sample_mode() -> None:
    augment = make("crop-rotate")
    assert all(not m.same_on_batch for m in augment.pipeline)


@pytest.mark.parametrize("name", ["jitter", "gray"])
def test_colour_augmentations_need_rgb(name: str) -> None:
    cfg = AugmentConfig(views=("rotate", name))
    with pytest.raises(ValueError, match=rf"'{name}'.*channels=1.*remove '{name}'"):
        build_augment(cfg, image_size=SIZE, channels=1)
    build_augment(cfg, image_size=SIZE, channels=3)


def test_build_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="image_size"):
        build_augment(AugmentConfig(), image_size=0, channels=1)
    with pytest.raises(ValueError, match="channels"):
        build_augment(AugmentConfig(), image_size=SIZE, channels=0)
    with pytest.raises(ValueError, match="blur_kernel"):
        build_augment(AugmentConfig(views=("blur",), blur_kernel=9), image_size=4, channels=1)


def test_forward_rejects_wrong_input() -> None:
    augment = make("crop-rotate")
    with pytest.raises(ValueError, match=r"shape \[B, 1, 16, 16\]"):
        augment(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="to_float"):
        augment(torch.zeros(2, 1, SIZE, SIZE, dtype=torch.uint8))


def test_to_float() -> None:
    raw = np.array([[0, 128, 255]], dtype=np.uint8)
    out = to_float(raw)
    assert out.dtype == torch.float32 and out.shape == (1, 3)
    assert torch.allclose(out, torch.tensor([[0.0, 128 / 255, 1.0]]))
    assert torch.equal(to_float(torch.from_numpy(raw)), out)
    with pytest.raises(ValueError, match="uint8"):
        to_float(torch.rand(2, 2))
