"""Where a real SimCLR step's time goes: real images, their augmentations, forward, backward.

    SPIKESSL_DATA=../shared/datasets python benchmarks/pretrain_step.py --preset paper-mnist

`train_step.py` times the network alone on random, pre-augmented images against snntorch and
SpikingJelly, and counts both views (2 x batch images per step). This times the step that
`spikessl pretrain` runs, phase by phase, on the preset's real training images: indexing the
uint8 batch, two augmented views (kornia), normalisation, forward over T steps (with the
firing rates), NT-Xent, backward, Adam, and the host syncs of the loop (`loss.item()`).
It prints the median of each phase over the timed steps and the step's training images per
second, the unit of `metrics.jsonl`'s `images_per_s` (half of `train_step.py`'s, which counts
views).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from spikessl import _native, distributed
from spikessl.augment import build_augment, two_views
from spikessl.config import load_config
from spikessl.data import load_data
from spikessl.encoders import SimCLR, SpikingEncoder
from spikessl.losses import nt_xent

PHASES = ("index", "augment", "normalise", "forward", "loss", "backward", "adam", "sync")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="paper-mnist")
    p.add_argument("--steps", type=int, default=5, help="timed steps (medians are printed)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", help="also write the medians as JSON here")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. time_steps=10")
    args = p.parse_args()
    cfg = load_config(args.preset, args.overrides)
    _native.keep_freed_memory()  # as spikessl's training loop does
    torch.manual_seed(cfg.seed)
    data = load_data(cfg, torch.device("cpu"))
    pre = cfg.pretrain
    model = SimCLR(SpikingEncoder(cfg.encoder), pre.projection_dim, pre.center)
    net = distributed.Traced(model.encoder, model.projector)
    augment = build_augment(cfg.augment, cfg.encoder.image_size, cfg.encoder.in_channels)
    optimizer = torch.optim.Adam(model.parameters(), pre.lr)
    images = data.train_images[data.unlabelled]
    T, B = cfg.time_steps, pre.batch_size
    order = torch.randperm(len(images))
    times: dict[str, list[float]] = {k: [] for k in PHASES}
    for i in range(args.warmup + args.steps):
        t = [time.perf_counter()]
        batch = images[order[i * B : (i + 1) * B]]  # (B, C, H, W) uint8
        t.append(time.perf_counter())
        v1, v2 = two_views(augment, batch.float() / 255.0)
        t.append(time.perf_counter())
        views = data.normalize(torch.cat([v1, v2]))  # (2B, C, H, W)
        t.append(time.perf_counter())
        z, rates = net(views, T)  # (2B, D) spike counts, per-layer rates
        t.append(time.perf_counter())
        loss = nt_xent(z[:B], z[B:], pre.temperature)
        t.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t.append(time.perf_counter())
        optimizer.step()
        t.append(time.perf_counter())
        loss.item(), rates.tolist()
        t.append(time.perf_counter())
        if i >= args.warmup:
            for phase, start, end in zip(PHASES, t, t[1:]):
                times[phase].append(end - start)
    medians = {k: statistics.median(v) for k, v in times.items()}
    step = sum(medians.values())
    print(
        f"# {args.preset} {' '.join(args.overrides)}: T={T}, batch {B}, real images, "
        f"{torch.get_num_threads()} threads; medians of {args.steps} steps after {args.warmup}"
    )
    for phase, seconds in medians.items():
        print(f"{phase:10s} {1e3 * seconds:8.1f} ms  {100 * seconds / step:5.1f}%")
    print(
        f"{'step':10s} {1e3 * step:8.1f} ms  {B / step:.0f} training images/s "
        f"({2 * B / step:.0f} views/s)"
    )
    if args.out:
        result = {
            "preset": args.preset,
            "overrides": args.overrides,
            "T": T,
            "batch": B,
            "threads": torch.get_num_threads(),
            "median_s": medians,
            "step_s": step,
        }
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
