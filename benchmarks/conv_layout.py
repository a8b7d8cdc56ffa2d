"""How to run the second convolution over T time steps: folded, per step, chunks; NCHW vs NHWC.

    python benchmarks/conv_layout.py

Forward + backward of conv2 of paper-mnist (12 -> 64 channels, 5x5) on binary spike maps of
512 images x 30 steps; best of 3 after a warm-up.
"""

import time

import torch


def best_of(fn, reps: int = 3) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(layout: str, T: int = 30, B: int = 512) -> None:
    conv = torch.nn.Conv2d(12, 64, 5)
    x = (torch.rand(T, B, 12, 12, 12) < 0.3).float()
    if layout == "channels_last":
        conv = conv.to(memory_format=torch.channels_last)
    x = x.requires_grad_()

    def folded():
        inp = x.flatten(0, 1)
        if layout == "channels_last":
            inp = inp.contiguous(memory_format=torch.channels_last)
        conv(inp).sum().backward()

    def per_step():
        torch.stack([conv(x[t]) for t in range(T)]).sum().backward()

    def chunks(c: int):
        def run():
            outs = [conv(x[t : t + c].flatten(0, 1)) for t in range(0, T, c)]
            torch.cat(outs).sum().backward()

        return run

    for name, fn in (
        ("folded", folded),
        ("per step", per_step),
        ("chunks of 5", chunks(5)),
        ("chunks of 10", chunks(10)),
    ):
        print(f"{layout:14} {name:13} {best_of(fn):.3f} s", flush=True)


def main() -> None:
    torch.manual_seed(0)
    for layout in ("nchw", "channels_last"):
        measure(layout)


if __name__ == "__main__":
    main()
