"""Batched, on-device image augmentations for SimCLR views.

SimCLR learns by pulling together two differently augmented views of the same image, so the
augmentation pipeline defines what the network is taught to ignore. Table III of the paper compares
pairs of augmentations (crop-rotate, crop-gaussian noise, rotate-gaussian noise);
`PAIRS` names them.

Every augmentation draws its random parameters independently per sample and per call
(kornia's ``same_on_batch=False``) from torch's global RNG, so ``torch.manual_seed`` makes a run
reproducible, and the whole batch is transformed at once without per-sample Python loops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import kornia.augmentation as K
import numpy as np
import torch
from torch import nn

from spikessl.config_yaml import did_you_mean

__all__ = [
    "AUGMENTATIONS",
    "PAIRS",
    "AugmentConfig",
    "ViewAugment",
    "build_augment",
    "resolve_views",
    "to_float",
    "two_views",
]

AUGMENTATIONS: tuple[str, ...] = ("rotate", "crop", "blur", "noise", "flip", "jitter")

PAIRS: dict[str, tuple[str, ...]] = {
    "crop-rotate": ("crop", "rotate"),
    "crop-noise": ("crop", "noise"),
    "rotate-noise": ("rotate", "noise"),
    "crop-blur": ("crop", "blur"),
}


def resolve_views(spec: str | Sequence[str]) -> tuple[str, ...]:
    """Turn a user-facing augmentation spec into a tuple of augmentation names.

    Accepts a pair name from `PAIRS` ("rotate-noise"), a "+"-joined string ("crop+rotate+flip")
    or a sequence of names. Pair names may appear as items too and are expanded, so configs and
    command lines can use whichever form is handiest.
    """
    tokens = [t.strip() for t in spec.split("+")] if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for token in tokens:
        if isinstance(token, str) and token in PAIRS:
            names.extend(PAIRS[token])
        elif isinstance(token, str) and token in AUGMENTATIONS:
            names.append(token)
        else:
            valid = (*AUGMENTATIONS, *PAIRS)
            raise ValueError(
                f"views: unknown augmentation {token!r}.{did_you_mean(str(token), valid)} "
                f"Valid names: {', '.join(AUGMENTATIONS)}; pairs: {', '.join(PAIRS)}; "
                "or join names with '+', e.g. 'crop+rotate'."
            )
    if not names:
        raise ValueError(
            f"views: got an empty spec {spec!r}; give at least one of {', '.join(AUGMENTATIONS)} "
            f"or a pair such as {next(iter(PAIRS))!r}."
        )
    return tuple(names)


def _as_floats(name: str, value: Sequence[float]) -> tuple[float, ...]:
    """Store sequences as float tuples so configs loaded from YAML lists stay hashable."""
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is invalid; give a sequence of numbers.") from None


def _check_prob(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r} is not a probability; use a value in [0, 1].")


def _check_range(name: str, value: tuple[float, ...], low: float, high: float) -> None:
    """Check finite (min, max) with low < min <= max <= high: kornia samples uniformly in it."""
    if (
        len(value) != 2
        or not all(map(math.isfinite, value))
        or not low < value[0] <= value[1] <= high
    ):
        bound = f" <= {high}" if math.isfinite(high) else ", both finite"
        raise ValueError(
            f"{name}={value!r} is invalid; use (min, max) with {low} < min <= max{bound}."
        )


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations make a view, and their parameters.

    `views` may be given as any form `resolve_views` accepts; it is stored as a tuple of names.
    `p` is the per-sample probability of each augmentation in `views`, except flip and jitter,
    which use `flip_p` and `jitter_p`.
    """

    views: tuple[str, ...] = ("rotate", "noise")
    rotation_degrees: float = 15.0
    crop_scale: tuple[float, float] = (0.6, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 1.3333)
    blur_kernel: int = 3
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    noise_std: float = 0.1
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    p: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "views", resolve_views(self.views))
        for name in ("crop_scale", "crop_ratio", "blur_sigma", "jitter"):
            object.__setattr__(self, name, _as_floats(name, getattr(self, name)))

        if not 0.0 <= self.rotation_degrees <= 180.0:
            raise ValueError(
                f"rotation_degrees={self.rotation_degrees!r} is invalid; use a value in [0, 180] "
                "(angles are drawn uniformly from [-degrees, +degrees])."
            )
        _check_range("crop_scale", self.crop_scale, 0.0, 1.0)
        _check_range("crop_ratio", self.crop_ratio, 0.0, math.inf)
        if (
            isinstance(self.blur_kernel, bool)
            or not isinstance(self.blur_kernel, int)
            or (self.blur_kernel < 3 or self.blur_kernel % 2 == 0)
        ):
            raise ValueError(
                f"blur_kernel={self.blur_kernel!r} is invalid; use an odd integer >= 3 "
                "(e.g. 3 or 5) so the kernel has a centre pixel."
            )
        _check_range("blur_sigma", self.blur_sigma, 0.0, math.inf)
        if not (math.isfinite(self.noise_std) and self.noise_std >= 0.0):
            raise ValueError(
                f"noise_std={self.noise_std!r} is invalid; use a finite value >= 0 "
                "(0 disables the noise)."
            )
        _check_prob("flip_p", self.flip_p)
        _check_prob("jitter_p", self.jitter_p)
        _check_prob("p", self.p)
        if (
            len(self.jitter) != 4
            or not all(map(math.isfinite, self.jitter))
            or min(self.jitter) < 0.0
            or self.jitter[3] > 0.5
        ):
            raise ValueError(
                f"jitter={self.jitter!r} is invalid; use (brightness, contrast, saturation, hue) "
                "with all values >= 0 and hue <= 0.5."
            )


def _make(name: str, cfg: AugmentConfig, image_size: int) -> nn.Module:
    """Build one kornia augmentation; `same_on_batch=False` gives per-sample parameters."""
    if name == "rotate":
        return K.RandomRotation(cfg.rotation_degrees, same_on_batch=False, p=cfg.p)
    if name == "crop":
        # "resample" crops the whole batch with one warp; the default "slice" mode loops over
        # samples and measured ~3x slower on 512 MNIST images.
        return K.RandomResizedCrop(
            (image_size, image_size),
            scale=cfg.crop_scale,
            ratio=cfg.crop_ratio,
            same_on_batch=False,
            p=cfg.p,
            cropping_mode="resample",
        )
    if name == "blur":
        return K.RandomGaussianBlur(
            (cfg.blur_kernel, cfg.blur_kernel), cfg.blur_sigma, same_on_batch=False, p=cfg.p
        )
    if name == "noise":
        return K.RandomGaussianNoise(mean=0.0, std=cfg.noise_std, same_on_batch=False, p=cfg.p)
    if name == "flip":
        return K.RandomHorizontalFlip(same_on_batch=False, p=cfg.flip_p)
    if name == "jitter":
        return K.ColorJitter(*cfg.jitter, same_on_batch=False, p=cfg.jitter_p)
    raise ValueError(f"unknown augmentation {name!r}; valid names: {', '.join(AUGMENTATIONS)}.")


class ViewAugment(nn.Module):
    """Makes one augmented view of a batch of [0, 1] images; output is clamped back to [0, 1].

    Small per-sample parameters (angles, crop boxes) are drawn on the CPU, kornia's default,
    while the image-sized Gaussian noise is drawn on the input's device so it is never copied
    from host to accelerator.
    """

    def __init__(
        self, names: tuple[str, ...], pipeline: nn.Sequential, image_size: int, channels: int
    ) -> None:
        super().__init__()
        self.names = names
        self.pipeline = pipeline
        self.image_size = image_size
        self.channels = channels

    def extra_repr(self) -> str:
        return f"views={self.names}, image_size={self.image_size}, channels={self.channels}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"expected images of shape [B, {', '.join(map(str, expected))}], got "
                f"{list(x.shape)}; build the augmentation with the data's image_size and channels."
            )
        if not x.is_floating_point():
            raise ValueError(
                f"expected float images in [0, 1], got dtype {x.dtype}; convert with to_float()."
            )
        for module in self.pipeline:
            if isinstance(module, K.RandomGaussianNoise) and (
                module.device != x.device or module.dtype != x.dtype
            ):
                module.set_rng_device_and_dtype(x.device, x.dtype)
        # Out-of-place: with p < 1 kornia may hand back the caller's own tensor.
        return self.pipeline(x).clamp(0.0, 1.0)


def build_augment(cfg: AugmentConfig, image_size: int, channels: int) -> ViewAugment:
    """Build the module that makes one view: the `cfg.views` augmentations applied in order."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size={image_size!r} is invalid; use a positive integer (e.g. 28).")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels={channels!r} is invalid; use a positive integer (1 or 3).")
    if "jitter" in cfg.views and channels != 3:
        raise ValueError(
            f"'jitter' (colour jitter) needs 3-channel RGB images, got channels={channels}; "
            f"remove 'jitter' from views {cfg.views}."
        )
    if "blur" in cfg.views and cfg.blur_kernel // 2 >= image_size:
        raise ValueError(
            f"blur_kernel={cfg.blur_kernel} is too large for image_size={image_size}; "
            f"use an odd kernel <= {2 * image_size - 1}."
        )
    pipeline = nn.Sequential(*(_make(name, cfg, image_size) for name in cfg.views))
    return ViewAugment(cfg.views, pipeline, image_size, channels)


def two_views(
    augment: nn.Module, x: torch.Tensor, concat: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return two independently augmented views of the batch `x`.

    With `concat=True` both views come from one call on the stacked [2B] batch, which halves
    kornia's per-call Python overhead (expected to win on accelerators, where that overhead
    dominates); on a 2-core CPU two separate calls measured as fast or faster (up to ~1.7x for
    crop-rotate at B=512), so the default (`None`) concatenates only off-CPU.
    Either way every sample of every view gets its own random parameters.
    """
    if concat is None:
        concat = x.device.type != "cpu"
    if concat:
        first, second = augment(torch.cat((x, x))).chunk(2)
        return first, second
    return augment(x), augment(x)


def to_float(images_uint8: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Convert uint8 images (0..255) to float32 in [0, 1], keeping shape and device.

    Augmentations and the spike encoder expect [0, 1] floats; datasets are usually stored as uint8.
    """
    images = torch.as_tensor(images_uint8)
    if images.dtype != torch.uint8:
        raise ValueError(
            f"to_float expects uint8 images (0..255), got dtype {images.dtype}; "
            "float images should already be in [0, 1] and need no conversion."
        )
    return images.to(torch.float32).div_(255.0)
