"""Inference speed: eval-mode forward with batch norm folded into the convolutions vs not.

    python benchmarks/eval_forward.py --preset paper-mnist --T 30 --batch 512 --reps 5

The two variants run interleaved (A, B, A, B, ...) so that a machine whose speed drifts
(another process on the cores) slows both alike; prints the best images/s of each and the
fraction of output spike counts on which they differ (float rounding near the threshold).
"""

from __future__ import annotations

import argparse
import time

import torch

from spikessl import encoders
from spikessl.config import load_config
from spikessl.encoders import SpikingClassifier, SpikingEncoder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="paper-mnist")
    p.add_argument("--T", type=int, default=30)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    torch.manual_seed(0)
    cfg = load_config(args.preset)
    if cfg.encoder.norm != "batch":
        raise SystemExit(f"{args.preset} has no batch norm (encoder.norm={cfg.encoder.norm})")
    e = cfg.encoder
    model = SpikingClassifier(SpikingEncoder(e), 10)
    shape = (args.batch, e.in_channels, e.image_size, e.image_size)
    variants = {
        "folded": encoders.conv_norm,
        "unfolded": lambda conv, norm, x: norm(conv(x)),
    }
    best = dict.fromkeys(variants, float("inf"))
    outputs = {}
    with torch.no_grad():
        model(torch.rand(shape), args.T)  # train mode: running statistics move off 0 and 1
        model.eval()
        images = torch.rand(shape)
        for _ in range(args.reps + 1):  # the first round warms up
            for name, fn in variants.items():
                encoders.conv_norm = fn
                t0 = time.perf_counter()
                outputs[name] = model(images, args.T)
                best[name] = min(best[name], time.perf_counter() - t0)
    encoders.conv_norm = variants["folded"]
    for name, seconds in best.items():
        print(f"{name}: {args.batch / seconds:.0f} images/s")
    print(f"speed-up {best['unfolded'] / best['folded']:.2f}x")
    differ = (outputs["folded"] != outputs["unfolded"]).float().mean().item()
    print(f"spike counts that differ: {differ:.2e}")


if __name__ == "__main__":
    main()
