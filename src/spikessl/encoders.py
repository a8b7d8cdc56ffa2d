"""Convolutional spiking encoders (paper section IV) and the spiking classifier head.

    image -> conv -> [norm] -> LIF -> maxpool -> ... -> fc -> [norm] -> LIF -> spike count

The image drives the first layer as a constant current (direct encoding), so the first
convolution runs once per image and its LIF integrates that current for T steps. Later
layers see spike trains ``[T, B, ...]``; their convolutions run on all time steps folded
into the batch (``[T*B, C, H, W]``), and normalisation layers (``norm="batch"``) pool their
statistics over time and batch. Max-pooling acts on spikes: a pooled unit spikes when any
afferent does. The latent is the spike count of each output neuron over the T steps.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from spikessl.architecture import EncoderConfig
from spikessl.neurons import LIF
from spikessl.pooling import lif_maxpool


class SpikeTrace(NamedTuple):
    spikes: Tensor  # (T, B, D) output spike trains
    rates: Tensor  # (layers,) mean firing rate of each spiking layer, detached


def _norm(kind: str, channels: int, dims: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)


def conv_norm(conv: nn.Conv2d, norm: nn.Module, x: Tensor) -> Tensor:
    """``norm(conv(x))``; with batch norm in eval mode, one convolution instead.

    Eval-mode batch norm is a fixed per-channel affine, ``y = a * z + b`` with
    ``a = gamma / sqrt(running_var + eps)``, ``b = beta - a * running_mean``, so it folds into
    the convolution: weights ``a * W``, bias ``a * bias + b``. That skips a pass over the
    largest tensor of the network (the second layer's current over all T*B maps): inference
    1.17-1.19x faster (``benchmarks/eval_forward.py``).
    """
    plain = not isinstance(norm, nn.BatchNorm2d) or norm.training or conv.padding_mode != "zeros"
    if plain or norm.running_var is None:
        return norm(conv(x))
    a = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        a = a * norm.weight
    b = -a * norm.running_mean
    if norm.bias is not None:
        b = b + norm.bias
    if conv.bias is not None:
        b = b + a * conv.bias
    weight = conv.weight * a[:, None, None, None]
    return nn.functional.conv2d(x, weight, b, conv.stride, conv.padding, conv.dilation, conv.groups)


def _lif(cfg: EncoderConfig) -> LIF:
    return LIF(cfg.beta, cfg.threshold, cfg.slope, cfg.detach_reset, cfg.learn_beta)


class SpikingEncoder(nn.Module):
    """``forward(images [B, C, H, W], T) -> spike counts [B, D]`` (float)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        chans = (cfg.in_channels, *cfg.conv_channels)
        bias = cfg.norm == "none"  # batch norm's shift replaces the bias (and its gradient)
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, k, bias=bias)
            for c_in, c_out, k in zip(chans, chans[1:], cfg.kernel_sizes)
        )
        self.conv_norms = nn.ModuleList(_norm(cfg.norm, c, 2) for c in cfg.conv_channels)
        self.conv_lifs = nn.ModuleList(_lif(cfg) for _ in cfg.conv_channels)
        sizes = (chans[-1] * cfg.feature_map_size() ** 2, *cfg.fc_sizes)
        self.fcs = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(sizes, sizes[1:]))
        self.fc_norms = nn.ModuleList(_norm(cfg.norm, d, 1) for d in cfg.fc_sizes)
        self.fc_lifs = nn.ModuleList(_lif(cfg) for _ in cfg.fc_sizes)
        self.convs.to(memory_format=torch.channels_last)  # matches the channels-last input

    @property
    def latent_dim(self) -> int:
        return self.cfg.latent_dim

    def trace(self, images: Tensor, T: int) -> SpikeTrace:
        """Output spike trains and per-layer firing rates for ``images`` over ``T`` steps."""
        if T < 1:
            raise ValueError(f"T={T}: the number of time steps must be >= 1")
        c = self.cfg
        if images.dim() != 4 or tuple(images.shape[1:]) != (
            c.in_channels,
            c.image_size,
            c.image_size,
        ):
            raise ValueError(
                f"images of shape {list(images.shape)} do not fit this encoder: it takes "
                f"[B, {c.in_channels}, {c.image_size}, {c.image_size}] (encoder.in_channels, "
                "encoder.image_size); build it with the dataset's settings"
            )
        B = images.shape[0]
        rates = []
        # Direct encoding: constant current, so conv + norm run once, the LIF T times.
        # Channels-last: measured ~1.7x faster convolutions on CPU (oneDNN) than NCHW.
        images = images.contiguous(memory_format=torch.channels_last)
        # The last pooled map comes out NCHW: it flattens for the fc layer without a copy.
        n = len(self.convs)
        fmts = [torch.contiguous_format if i == n - 1 else None for i in range(n)]
        current = conv_norm(self.convs[0], self.conv_norms[0], images)  # (B, C, H, W)
        spikes, rate = lif_maxpool(
            self.conv_lifs[0], current, self.cfg.pool, T, constant=True, memory_format=fmts[0]
        )
        rates.append(rate)  # spikes: (T*B, C, H', W') pooled, time folded into the batch
        layers = zip(self.convs[1:], self.conv_norms[1:], self.conv_lifs[1:], fmts[1:])
        for conv, norm, lif, fmt in layers:
            current = conv_norm(conv, norm, spikes)  # (T*B, C, H, W): all T in one call
            # Nothing else reads the current (batch norm's backward uses its input): the
            # LIF kernel keeps its membranes in the current's memory.
            spikes, rate = lif_maxpool(
                lif, current, self.cfg.pool, T, overwrite=True, memory_format=fmt
            )
            del current
            rates.append(rate)
        spikes = spikes.unflatten(0, (T, B)).flatten(2)  # (T, B, C*H'*W')
        for fc, norm, lif in zip(self.fcs, self.fc_norms, self.fc_lifs):
            current = norm(fc(spikes).flatten(0, 1)).unflatten(0, (T, B))  # (T, B, D)
            spikes = lif(current)
            rates.append(spikes.detach().mean())
        return SpikeTrace(spikes, torch.stack(rates))

    def forward(self, images: Tensor, T: int) -> Tensor:
        return self.trace(images, T).spikes.float().sum(0)  # (B, D) spike counts, exact in float32


class SpikingClassifier(nn.Module):
    """Encoder plus one spiking fully-connected layer of ``num_classes`` output neurons.

    ``forward(images, T) -> spike counts [B, classes]``; the prediction is their argmax and
    the training loss is cross-entropy with the counts as logits (paper section VI).
    """

    def __init__(self, encoder: SpikingEncoder, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.latent_dim, num_classes, bias=encoder.cfg.norm == "none")
        self.head_norm = _norm(encoder.cfg.norm, num_classes, 1)
        self.head_lif = _lif(encoder.cfg)

    def trace(self, images: Tensor, T: int) -> SpikeTrace:
        hidden = self.encoder.trace(images, T)
        B = images.shape[0]
        current = self.head_norm(self.head(hidden.spikes).flatten(0, 1)).unflatten(0, (T, B))
        spikes = self.head_lif(current)  # (T, B, classes)
        return SpikeTrace(spikes, torch.cat([hidden.rates, spikes.detach().mean()[None]]))

    def forward(self, images: Tensor, T: int) -> Tensor:
        return self.trace(images, T).spikes.float().sum(0)  # bf16 would round counts above 256


class ProjectionHead(nn.Module):
    """SimCLR's MLP on the spike counts (optional; the paper applies NT-Xent to the counts)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
        )

    def forward(self, counts: Tensor) -> Tensor:
        return self.mlp(counts)


class SimCLR(nn.Module):
    """Pretraining's model: the encoder and what maps its spike counts to the latents NT-Xent
    compares (the counts themselves, batch-standardised counts or a projection head); the
    pretraining step runs the two through ``distributed.Traced``."""

    def __init__(self, encoder: SpikingEncoder, projection_dim: int = 0, center: bool = False):
        super().__init__()
        self.encoder = encoder
        d = encoder.latent_dim
        if center:  # per-count batch statistics, no parameters: (z - mean) / std
            self.projector = nn.BatchNorm1d(d, affine=False)
        elif projection_dim:
            self.projector = ProjectionHead(d, d, projection_dim)
        else:
            self.projector = nn.Identity()


def build_encoder(spec: str | EncoderConfig | dict) -> SpikingEncoder:
    """An encoder from a preset name (``"paper-mnist"``), an ``EncoderConfig`` or a dict."""
    if isinstance(spec, str):
        from spikessl.config import load_config  # presets live in the YAML files

        spec = load_config(spec).encoder
    elif isinstance(spec, dict):
        from spikessl.config_yaml import from_dict

        spec = from_dict(EncoderConfig, spec, "encoder")
    return SpikingEncoder(spec)
