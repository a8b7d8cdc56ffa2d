"""What one SimCLR training step keeps for backward, tensor by tensor.

    python benchmarks/saved_tensors.py                       # paper-mnist, T=30, batch 256
    python benchmarks/saved_tensors.py --preset paper-cifar10 --T 10 --batch 64

Runs the forward pass and NT-Xent of 2B images (as benchmarks/train_step.py does), then walks
the autograd graph from the loss and lists every saved tensor: the backward node that holds
it, its shape, dtype and size. Tensors that share storage are counted once in the total.
"""

from __future__ import annotations

import argparse

import torch

from spikessl.config import load_config
from spikessl.encoders import SpikingEncoder
from spikessl.losses import nt_xent


def saved_tensors(fn) -> list[tuple[str, str, torch.Tensor]]:
    """(node, slot, tensor) for every tensor saved by the graph below ``fn``."""
    out, seen, stack = [], set(), [fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        name = type(node).__name__
        for attr in dir(node):
            if not attr.startswith("_saved_"):
                continue
            try:
                value = getattr(node, attr)
            except RuntimeError:  # already freed or not a tensor
                continue
            values = value if isinstance(value, (tuple, list)) else [value]
            out += [(name, attr[7:], t) for t in values if torch.is_tensor(t)]
        if hasattr(node, "saved_tensors"):  # custom autograd.Function
            out += [(name, f"saved[{i}]", t) for i, t in enumerate(node.saved_tensors)]
        stack += [nxt for nxt, _ in node.next_functions]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="paper-mnist")
    p.add_argument("--T", type=int, default=30)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--min-mb", type=float, default=0.1, help="list tensors from this size on")
    args = p.parse_args()
    c = load_config(args.preset).encoder
    torch.manual_seed(0)
    enc = SpikingEncoder(c)
    B = args.batch
    views = torch.rand(2 * B, c.in_channels, c.image_size, c.image_size)
    z = enc(views, args.T)
    loss = nt_xent(z[:B], z[B:], 0.1)
    storages: dict[int, str] = {}
    total = 0
    print(f"{'backward node':28} {'slot':8} {'shape':22} {'dtype':8} {'MB':>8}")
    for node, slot, t in saved_tensors(loss.grad_fn):
        storage = t.untyped_storage()
        mb = storage.nbytes() / 2**20
        key = storage.data_ptr()
        shared = storages.get(key)
        if shared is None:
            storages[key] = f"{node}.{slot}"
            total += mb
        if mb >= args.min_mb:
            note = f"  (storage of {shared})" if shared else ""
            shape = str(tuple(t.shape))
            dtype = str(t.dtype).removeprefix("torch.")
            print(f"{node:28} {slot:8} {shape:22} {dtype:8} {mb:8.1f}{note}")
    print(f"total, each storage once: {total:.1f} MB")


if __name__ == "__main__":
    main()
