"""How many SimCLR views does an encoder leave silent (all-zero spike counts)?

    python benchmarks/silent_views.py --preset paper-cifar10 time_steps=10 \
        augment.views=crop+flip+jitter [--checkpoint RUN_DIR_OR_EXPORT] [--images 1024]

Two augmented views of the first ``--images`` unlabelled images of the seed's split, through
the encoder in training mode (batch statistics, as in pretraining): the fraction of views
with no output spike at all, and the smallest and median spike totals. NT-Xent's cosine
similarity is undefined for a silent view (``spikessl.losses``). Without ``--checkpoint``,
the preset's initialisation.
"""

from __future__ import annotations

import argparse

import torch

from spikessl.augment import build_augment, two_views
from spikessl.checkpoints import load_checkpoint, pretrained_encoder
from spikessl.config import load_config
from spikessl.data import load_data
from spikessl.encoders import SpikingEncoder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="paper-mnist")
    p.add_argument("--checkpoint", help="a pretraining run directory or .safetensors export")
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("overrides", nargs="*", help="key=value settings, as on the command line")
    args = p.parse_args()
    cfg = load_config(args.preset, args.overrides)
    torch.manual_seed(cfg.seed)
    data = load_data(cfg, torch.device("cpu"))
    if args.checkpoint:
        encoder = pretrained_encoder(load_checkpoint(args.checkpoint), cfg)
    else:
        encoder = SpikingEncoder(cfg.encoder)
    encoder.train()  # batch statistics, as pretraining sees them
    augment = build_augment(cfg.augment, cfg.encoder.image_size, cfg.encoder.in_channels)
    chosen = data.unlabelled[: args.images]
    totals = []
    with torch.no_grad():
        for start in range(0, len(chosen), args.batch):
            x = data.train_images[chosen[start : start + args.batch]].float() / 255.0
            views = data.normalize(torch.cat(two_views(augment, x)))
            totals.append(encoder(views, cfg.time_steps).sum(1))  # (2B,) spikes per view
    total = torch.cat(totals)
    silent = (total == 0).float().mean().item()
    print(
        f"{len(total)} views: {100 * silent:.2f}% silent; spikes per view: "
        f"min {total.min().item():.0f}, median {total.median().item():.0f}"
    )


if __name__ == "__main__":
    main()
