"""The paper's figures as PNGs: a grid of nearest neighbours (Fig. 5; found by
``neighbours.py``), accuracy curves (Figs. 6-7) and the label-efficiency curve.

Plots use ``matplotlib.figure.Figure`` with the Agg canvas, never ``pyplot``: no display,
no global state, safe in tests and on headless servers. Each plotting function writes one
PNG (parent folders created) and returns its path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from spikessl.evaluate import label_agreement
from spikessl.records import replacing

DPI = 120


def png_path(out: str | Path) -> Path:
    """``out`` as a Path, or a ValueError if it is not named *.png (check before the work)."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"figures are written as PNG: name the output *.png, got {out}")
    return out


def _save(fig: Figure, out: str | Path, source: str | None = None) -> Path:
    """``fig`` as ``out`` (PNG), atomically: a kill mid-write leaves the previous file or none,
    never a truncated one that a rerun would take for a finished figure. ``source``, if given,
    is kept in the PNG's "Source" text field (see ``png_source``)."""
    out = png_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    with replacing(out) as fh:
        fig.savefig(fh, dpi=DPI, format="png", metadata={"Source": source} if source else None)
    return out


def png_source(path: str | Path) -> str | None:
    """The "Source" text field a figure was saved with, or None (none, or not a readable PNG)."""
    from PIL import Image, UnidentifiedImageError  # Pillow: a dependency of matplotlib

    try:
        with Image.open(path) as image:
            return getattr(image, "text", {}).get("Source")
    except (OSError, UnidentifiedImageError, ValueError):
        return None


def _show(ax, image: Tensor) -> None:
    """One uint8 ``[C, H, W]`` image on ``ax``, frame kept (it carries the match colour)."""
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(image.permute(1, 2, 0).numpy())  # (H, W, 3)
    ax.set_xticks([])
    ax.set_yticks([])


def _frame(ax, colour: str, width: float) -> None:
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)


def _check_images(images: Tensor, what: str, dims: int) -> None:
    if images.dtype != torch.uint8 or images.ndim != dims or images.shape[dims - 3] not in (1, 3):
        lead = "Q" if dims == 4 else "Q, k"
        raise ValueError(
            f"{what}: expected uint8 images [{lead}, C, H, W] with C = 1 or 3, got "
            f"{images.dtype} {tuple(images.shape)}: pass the raw dataset images, not currents"
        )


def neighbours_grid(
    query_images: Tensor,
    query_labels: Tensor,
    neighbour_images: Tensor,
    neighbour_labels: Tensor,
    class_names: Sequence[str],
    out: str | Path,
    title: str,
    source: str | None = None,
) -> Path:
    """Fig. 5: one row per query, the query (blue frame) then its neighbours, closest first.

    ``query_images [Q, C, H, W]`` and ``neighbour_images [Q, k, C, H, W]`` are uint8;
    labels ``[Q]`` and ``[Q, k]``. Neighbours of the query's class are framed and titled
    in green, others in red. ``source`` (e.g. the checkpoint's digest) is kept in the PNG.
    """
    query_images, neighbour_images = query_images.cpu(), neighbour_images.cpu()
    query_labels, neighbour_labels = query_labels.cpu(), neighbour_labels.cpu()
    _check_images(query_images, "query_images", 4)
    _check_images(neighbour_images, "neighbour_images", 5)
    Q, k = neighbour_images.shape[:2]
    if Q == 0 or k == 0 or query_images.shape[0] != Q:
        raise ValueError(
            f"expected neighbours [Q, k, ...] for the {query_images.shape[0]} queries with "
            f"k >= 1, got {tuple(neighbour_images.shape[:2])}"
        )
    if query_labels.shape != (Q,) or neighbour_labels.shape != (Q, k):
        raise ValueError(
            f"expected query labels [{Q}] and neighbour labels [{Q}, {k}], got "
            f"{tuple(query_labels.shape)} and {tuple(neighbour_labels.shape)}"
        )
    top = max(query_labels.max().item(), neighbour_labels.max().item())
    if top >= len(class_names):
        raise ValueError(f"label {top} has no name: pass one class name per class")
    agree = label_agreement(query_labels, neighbour_labels)
    fig = Figure(figsize=(1.15 * (k + 1), 1.25 * Q + 1.0), layout="constrained")
    axes = fig.subplots(Q, k + 1, squeeze=False)
    for row in range(Q):
        label = int(query_labels[row])
        _show(axes[row, 0], query_images[row])
        _frame(axes[row, 0], "tab:blue", 3.0)
        axes[row, 0].set_title(f"query: {class_names[label]}", fontsize=8, weight="bold")
        for j in range(k):
            ax, other = axes[row, j + 1], int(neighbour_labels[row, j])
            colour = "tab:green" if other == label else "tab:red"
            _show(ax, neighbour_images[row, j])
            _frame(ax, colour, 2.0)
            rank = f"#{j + 1} " if row == 0 else ""
            ax.set_title(f"{rank}{class_names[other]}", fontsize=8, color=colour)
    fig.suptitle(
        f"{title}\n{agree:.0f}% of the neighbours shown share the query's class "
        "(green: same class, red: other class; #1 = nearest)",
        fontsize=9,
    )
    return _save(fig, out, source)


def curves(
    series: Mapping[str, Sequence[float] | Mapping[int, float]],
    out: str | Path,
    title: str,
    xlabel: str = "epoch",
    ylabel: str = "test accuracy (%)",
) -> Path:
    """Figs. 6-7: one line per method, ``series[label]`` its values at epochs 1, 2, ...
    (or a mapping epoch -> value, for metrics measured every few epochs).

    The final value is written at the end of each line.
    """
    if not series or any(len(values) == 0 for values in series.values()):
        raise ValueError(
            "expected a mapping label -> per-epoch values with at least one value each, e.g. "
            "{'SSL + fine-tune': [91.0, 95.2], 'supervised only': [88.3, 93.1]}"
        )
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    for label, points in series.items():
        if isinstance(points, Mapping):
            epochs, values = [int(e) for e in points], [float(v) for v in points.values()]
        else:
            epochs, values = list(range(1, len(points) + 1)), [float(v) for v in points]
        (line,) = ax.plot(epochs, values, marker="o", label=label)
        ax.annotate(
            f"{values[-1]:.1f}",
            (epochs[-1], values[-1]),
            xytext=(5, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
            color=line.get_color(),
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.margins(x=0.08)
    ax.grid(alpha=0.3)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.legend()
    return _save(fig, out)


def summarise_seeds(
    fractions: Sequence[float], per_seed: Sequence[Sequence[float]]
) -> list[tuple[float, float, float, float]]:
    """``(percent, mean, min, max)`` at each fraction that has results; empty ones skipped."""
    if len(per_seed) != len(fractions):
        raise ValueError(
            f"expected one list of per-seed results per fraction ({len(fractions)}), got "
            f"{len(per_seed)}: use [] where a fraction was not run"
        )
    points = []
    for fraction, values in zip(fractions, per_seed):
        if len(values) > 0:
            values = [float(v) for v in values]
            mean = sum(values) / len(values)
            points.append((100.0 * fraction, mean, min(values), max(values)))
    return points


def label_efficiency(
    fractions: Sequence[float],
    series: Mapping[str, Sequence[Sequence[float]]],
    out: str | Path,
    title: str,
    ylabel: str = "test accuracy (%)",
) -> Path:
    """Accuracy against the labelled fraction (log axis): mean over seeds, min-max bars.

    ``series[method][i]`` holds the per-seed accuracies at ``fractions[i]`` (0.01 = 1%);
    an empty list skips that point.
    """
    if not fractions or not all(0.0 < f <= 1.0 for f in fractions):
        raise ValueError(
            f"fractions must be non-empty and in (0, 1], e.g. [0.01, 0.05, 0.2], got {fractions}"
        )
    summaries = {method: summarise_seeds(fractions, runs) for method, runs in series.items()}
    if not any(summaries.values()):
        raise ValueError("no results to plot: every method's per-seed lists are empty")
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    for method, points in summaries.items():
        if not points:
            continue
        x, mean, lo, hi = (list(column) for column in zip(*points))
        bars = [[m - a for m, a in zip(mean, lo)], [b - m for m, b in zip(mean, hi)]]
        ax.errorbar(x, mean, yerr=bars, marker="o", capsize=4, label=method)
    percents = sorted({100.0 * f for f in fractions})
    ax.set_xscale("log")
    ax.set_xticks(percents, [f"{p:g}%" for p in percents])
    ax.minorticks_off()
    lo_x, hi_x = percents[0], percents[-1]
    pad = 1.25 if lo_x == hi_x else math.exp(0.06 * math.log(hi_x / lo_x))
    ax.set_xlim(lo_x / pad, hi_x * pad)
    ax.grid(alpha=0.3)
    ax.set(title=title, xlabel="labelled fraction of the training set", ylabel=ylabel)
    ax.legend(title="mean over seeds; bars: min-max", fontsize=8, title_fontsize=8)
    return _save(fig, out)
