"""Time one SimCLR training step: spikessl vs the same network in snntorch and SpikingJelly.

    python benchmarks/train_step.py                      # full grid, both presets
    python benchmarks/train_step.py --T 30 --batch 256   # the headline cells only

A step is: two pre-augmented views of B images -> forward (2B images, T steps) -> NT-Xent
on spike counts -> backward -> Adam step. Augmentation (kornia, the same for everyone) is
timed separately. Each cell runs in its own process (clean peak-memory reading); times are
medians over --reps steps after --warmup steps. Peak memory is the peak resident set size
(CPU) or peak CUDA allocation during the steps, above what the process held before them.
Achieved FLOP/s counts the convolutions and matmuls each implementation executes
(torch.utils.flop_counter) against this machine's matmul peak, measured in the same run.

Peers (benchmark-only): snntorch (snn.Leaky stepped in a Python loop, as the paper did;
batch norm per step) and SpikingJelly 2.0 multi-step LIFNode (convolutions folded over
T*B, batch norm over T*B as in spikessl). Install: pip install snntorch; pip install
--no-deps spikingjelly==2.0.0 loguru.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

IMPLS = ("spikessl", "snntorch", "spikingjelly")


# --- the same network, three ways ---------------------------------------------------------


def build_spikessl(cfg):
    from spikessl.encoders import SpikingEncoder

    return SpikingEncoder(cfg.encoder)


class SnntorchNet(nn.Module):
    """The preset's network with snn.Leaky neurons stepped one time step at a time."""

    def __init__(self, enc) -> None:
        import snntorch as snn
        from snntorch import surrogate

        super().__init__()
        c = enc.cfg
        self.enc, self.pool = enc, c.pool
        grad = surrogate.sigmoid(slope=c.slope)
        n_layers = len(enc.convs) + len(enc.fcs)
        self.lifs = nn.ModuleList(
            snn.Leaky(beta=c.beta, threshold=c.threshold, spike_grad=grad) for _ in range(n_layers)
        )

    def forward(self, x, T):
        e = self.enc
        mems = [lif.init_leaky() for lif in self.lifs]
        counts = 0
        for _ in range(T):
            h = x
            for i, (conv, norm) in enumerate(zip(e.convs, e.conv_norms)):
                spk, mems[i] = self.lifs[i](norm(conv(h)), mems[i])  # conv1 every step
                h = F.max_pool2d(spk, self.pool)
            h = h.flatten(1)
            for j, (fc, norm) in enumerate(zip(e.fcs, e.fc_norms)):
                k = len(e.convs) + j
                h, mems[k] = self.lifs[k](norm(fc(h)), mems[k])
            counts = counts + h
        return counts


class SpikingJellyNet(nn.Module):
    """The preset's network with SpikingJelly's multi-step LIFNode (soft reset)."""

    def __init__(self, enc) -> None:
        from spikingjelly.activation_based import layer, neuron, surrogate

        super().__init__()
        c = enc.cfg
        self.enc, self.pool = enc, c.pool

        def lif():  # H = (1 - 1/tau) V + X with decay_input=False: beta = 1 - 1/tau
            return neuron.LIFNode(
                tau=1.0 / (1.0 - c.beta),
                decay_input=False,
                v_threshold=c.threshold,
                v_reset=None,
                surrogate_function=surrogate.Sigmoid(alpha=c.slope),
                detach_reset=True,
                step_mode="m",
            )

        self.blocks = nn.ModuleList(
            layer.SeqToANNContainer(conv, norm) for conv, norm in zip(enc.convs, enc.conv_norms)
        )
        self.fcs = nn.ModuleList(
            layer.SeqToANNContainer(fc, norm) for fc, norm in zip(enc.fcs, enc.fc_norms)
        )
        self.lifs = nn.ModuleList(lif() for _ in range(len(self.blocks) + len(self.fcs)))

    def forward(self, x, T):
        from spikingjelly.activation_based import functional

        functional.reset_net(self)
        h = x.unsqueeze(0).repeat(T, 1, 1, 1, 1)  # (T, B, C, H, W) direct encoding
        for i, block in enumerate(self.blocks):
            s = self.lifs[i](block(h))
            h = F.max_pool2d(s.flatten(0, 1), self.pool).unflatten(0, s.shape[:2])
        h = h.flatten(2)
        for j, fc in enumerate(self.fcs):
            h = self.lifs[len(self.blocks) + j](fc(h))
        return h.sum(0)


# --- one cell, in a child process --------------------------------------------------------


class PeakRSS:
    """Polls the resident set size in a thread: the peak above the level at start."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self.page

    def __enter__(self):
        self.base, self.peak, self.stop = self.rss(), 0, False
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()
        return self

    def poll(self) -> None:
        while not self.stop:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        self.stop = True
        self.thread.join()
        self.peak = max(self.peak, self.rss())


def run_cell(
    impl: str,
    preset: str,
    T: int,
    B: int,
    reps: int,
    warmup: int,
    device: str,
    precision: str,
    malloc_tuning: bool,
) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from spikessl import _native
    from spikessl.augment import build_augment, two_views
    from spikessl.config import load_config
    from spikessl.losses import nt_xent

    cfg = load_config(preset)
    if malloc_tuning:  # the same process setting for every implementation (see _native)
        _native.keep_freed_memory()
    torch.manual_seed(0)
    dev = torch.device(device)
    enc = build_spikessl(cfg)
    model = {
        "spikessl": lambda: enc,
        "snntorch": lambda: SnntorchNet(enc),
        "spikingjelly": lambda: SpikingJellyNet(enc),
    }[impl]().to(dev)
    c = cfg.encoder
    images = torch.rand(B, c.in_channels, c.image_size, c.image_size, device=dev)
    augment = build_augment(cfg.augment, c.image_size, c.in_channels)
    aug_times = []
    for _ in range(warmup + reps):
        t0 = time.perf_counter()
        v1, v2 = two_views(augment, images)
        sync(dev)
        aug_times.append(time.perf_counter() - t0)
    views = torch.cat([v1, v2])  # (2B, C, H, W)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    amp = precision == "bf16"

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            z = model(views, T)
            loss = nt_xent(z[:B].float(), z[B:].float(), 0.5)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    times = []
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with PeakRSS() as mem:  # from before the first step: allocator caches count too
        for _ in range(warmup):
            step()
        sync(dev)
        for _ in range(reps):
            t0 = time.perf_counter()
            step()
            sync(dev)
            times.append(time.perf_counter() - t0)
    with FlopCounterMode(display=False) as counter:
        step()
    median = statistics.median(times)
    result = {
        "impl": impl,
        "preset": preset,
        "T": T,
        "batch": B,
        "precision": precision,
        "step_s": median,
        "images_per_s": 2 * B / median,
        "augment_s": statistics.median(aug_times[warmup:]),
        "peak_rss_gb": (mem.peak - mem.base) / 1e9,
        "flops": counter.get_total_flops(),
    }
    if dev.type == "cuda":
        result["cuda_peak_gb"] = (torch.cuda.max_memory_allocated() - base) / 1e9
    return result


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


# --- the grid, in the parent -------------------------------------------------------------


def matmul_peak(device: str, dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(torch.device(device))
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        sync(torch.device(device))
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def machine() -> str:
    from spikessl.machine import cpu_model

    cpu = cpu_model()
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads{gpu}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["paper-mnist", "paper-cifar10"])
    p.add_argument("--T", nargs="+", type=int, default=[10, 20, 30])
    p.add_argument("--batch", nargs="+", type=int, default=[64, 128, 256])
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument(
        "--warmup", type=int, default=2, help="untimed steps first (2: the allocator settles)"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="write all results as JSON here")
    p.add_argument(
        "--no-malloc-tuning",
        action="store_true",
        help="leave glibc's malloc as it is (spikessl's training loop tunes it)",
    )
    p.add_argument("--cell", nargs=4, metavar=("IMPL", "PRESET", "T", "B"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.cell:
        impl, preset, T, B = args.cell
        print(
            json.dumps(
                run_cell(
                    impl,
                    preset,
                    int(T),
                    int(B),
                    args.reps,
                    args.warmup,
                    args.device,
                    args.precision[0],
                    not args.no_malloc_tuning,
                )
            )
        )
        return
    peak32 = matmul_peak(args.device, torch.float32)
    peak16 = matmul_peak(args.device, torch.bfloat16)
    tuning = "off" if args.no_malloc_tuning else "on, for every implementation"
    print(f"# {machine()}; glibc malloc tuning {tuning}", flush=True)
    print(f"# matmul peak: fp32 {peak32 / 1e9:.0f} GFLOP/s, bf16 {peak16 / 1e9:.0f} GFLOP/s")
    rows = []
    header = (
        f"{'preset':14} {'T':>3} {'B':>4} {'impl':13} {'prec':5} {'img/s':>7} "
        f"{'step s':>7} {'aug ms':>7} {'peak GB':>8} {'%peak':>6} {'x snntorch':>10} "
        f"{'x SJ':>6}"
    )
    print(header, flush=True)
    for preset in args.presets:
        for T in args.T:
            for B in args.batch:
                cell = {}
                for precision in args.precision:
                    for impl in args.impls:
                        if impl != "spikessl" and precision != "fp32":
                            continue  # peers are timed in fp32: the baseline of the ratios
                        cmd = [
                            sys.executable,
                            __file__,
                            "--cell",
                            impl,
                            preset,
                            str(T),
                            str(B),
                            "--reps",
                            str(args.reps),
                            "--warmup",
                            str(args.warmup),
                            "--device",
                            args.device,
                            "--precision",
                            precision,
                        ]
                        cmd += ["--no-malloc-tuning"] if args.no_malloc_tuning else []
                        out = subprocess.run(cmd, capture_output=True, text=True)
                        if out.returncode != 0:
                            print(f"{preset} T={T} B={B} {impl}: failed\n{out.stderr[-800:]}")
                            continue
                        r = json.loads(out.stdout.strip().splitlines()[-1])
                        peak = peak16 if precision == "bf16" else peak32
                        r["fraction_of_peak"] = r["flops"] / r["step_s"] / peak
                        cell[(impl, precision)] = r
                        rows.append(r)
                for (impl, precision), r in cell.items():
                    base = cell.get(("snntorch", "fp32"))
                    sj = cell.get(("spikingjelly", "fp32"))
                    r["x_snntorch"] = r["images_per_s"] / base["images_per_s"] if base else None
                    r["x_spikingjelly"] = r["images_per_s"] / sj["images_per_s"] if sj else None
                    mem = r.get("cuda_peak_gb", r["peak_rss_gb"])
                    print(
                        f"{preset:14} {T:>3} {B:>4} {impl:13} {precision:5} "
                        f"{r['images_per_s']:>7.0f} {r['step_s']:>7.2f} "
                        f"{1e3 * r['augment_s']:>7.1f} {mem:>8.2f} "
                        f"{100 * r['fraction_of_peak']:>5.1f}% "
                        f"{_ratio(r['x_snntorch']):>10} {_ratio(r['x_spikingjelly']):>6}",
                        flush=True,
                    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "matmul_peak_fp32": peak32,
                    "matmul_peak_bf16": peak16,
                    "rows": rows,
                },
                indent=1,
            )
        )


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


if __name__ == "__main__":
    main()
