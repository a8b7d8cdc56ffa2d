"""The encoder's architecture and neuron parameters (``EncoderConfig``), checked when a config
is built. No PyTorch here, so a config with a typo fails before PyTorch loads;
``spikessl.encoders`` builds the network from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from spikessl.config_yaml import did_you_mean

NORMS = ("none", "batch")


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture and neuron parameters; the defaults are snntorch's tutorial CSNN."""

    in_channels: int = 1
    image_size: int = 28
    conv_channels: tuple[int, ...] = (12, 64)
    kernel_sizes: tuple[int, ...] = (5, 5)
    pool: int = 2
    fc_sizes: tuple[int, ...] = (128,)  # the last one is the latent size D
    beta: float = 0.9
    threshold: float = 1.0
    slope: float = 25.0
    detach_reset: bool = True
    learn_beta: bool = False
    norm: str = "none"  # "batch": BatchNorm of each layer's current, keeps layers firing

    def __post_init__(self) -> None:
        if len(self.conv_channels) != len(self.kernel_sizes):
            raise ValueError(
                f"encoder.conv_channels {self.conv_channels} and encoder.kernel_sizes "
                f"{self.kernel_sizes} must have one entry per convolution layer"
            )
        if not self.fc_sizes:
            raise ValueError("encoder.fc_sizes must name at least the latent size, e.g. [128]")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"encoder.beta={self.beta} must be in [0, 1], e.g. 0.9")
        if not (self.threshold > 0 and self.slope > 0):
            raise ValueError(
                f"encoder.threshold={self.threshold} and encoder.slope={self.slope} must be > 0"
            )
        if self.norm not in NORMS:
            hint = did_you_mean(self.norm, NORMS)
            raise ValueError(
                f"encoder.norm={self.norm!r}; choose one of {NORMS}{'.' * bool(hint)}{hint}"
            )
        if min(self.conv_channels + self.kernel_sizes + self.fc_sizes, default=1) < 1:
            raise ValueError(
                "encoder.conv_channels, encoder.kernel_sizes and encoder.fc_sizes must all be >= 1"
            )
        if self.pool < 1 or self.in_channels < 1:
            raise ValueError(
                f"encoder.pool={self.pool} and encoder.in_channels={self.in_channels} must be >= 1"
            )
        if self.feature_map_size() < 1:
            raise ValueError(
                f"encoder.image_size={self.image_size} is too small for kernels "
                f"{self.kernel_sizes} and pool {self.pool}: the last feature map would be empty"
            )

    def feature_map_size(self) -> int:
        size = self.image_size
        for k in self.kernel_sizes:
            size = (size - k + 1) // self.pool
        return size

    @property
    def latent_dim(self) -> int:
        return self.fc_sizes[-1]
