"""Which augmentations make a SimCLR view, and their parameters: names, the paper's pairs and
``AugmentConfig``, checked when a config is built. No PyTorch here, so a config with a typo
fails before PyTorch loads; ``spikessl.augment`` builds the augmentations themselves.

Table III of the paper compares pairs of augmentations (crop-rotate, crop-gaussian noise,
rotate-gaussian noise); `PAIRS` names them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from spikessl.config_yaml import did_you_mean

__all__ = ["AUGMENTATIONS", "COLOUR_ONLY", "PAIRS", "AugmentConfig", "resolve_views"]

AUGMENTATIONS: tuple[str, ...] = ("rotate", "crop", "blur", "noise", "flip", "jitter", "gray")
COLOUR_ONLY = {"jitter": "colour jitter", "gray": "random grayscale"}  # RGB images only

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
    `p` is the per-sample probability of each augmentation in `views`, except flip, jitter and
    gray (SimCLR's random grayscale), which use `flip_p`, `jitter_p` and `gray_p`.
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
    gray_p: float = 0.2
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
        _check_prob("gray_p", self.gray_p)
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
