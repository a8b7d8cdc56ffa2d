"""The reports of ``spikessl reproduce``: tables, label efficiency, figures and README (its
text: ``spikessl.readme``).

Everything here is drawn from sweep records; ``reproduce`` decides what to show (which cell
measures which row of the paper's tables, which cells make the label-efficiency curve) and
hands it over as a ``Contents``, so this module imports nothing of it. A cell not run yet
shows as "—".
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from spikessl import grid
from spikessl.label_efficiency import (
    label_efficiency_csv,
    label_efficiency_markdown,
    label_efficiency_png,
    label_efficiency_summary,
    percent,
)
from spikessl.readme import GENERATED_BY_REPRODUCE, readme, write_generated
from spikessl.records import (
    DASH,
    DIVERGED,
    METHODS,
    accuracy_curve,
    csv_text,
    load_records,
    pretrain_diverged_epoch,
    write_atomic,
    write_tables,
)
from spikessl.seeds import diverged_note

TABLE_COLUMNS = [
    *("table", "setting", "cell", "paper", "ours", "knn", "difference"),
    "pretrain_diverged_epoch",
]


@dataclass(frozen=True)
class Contents:
    """What a records folder reports, as ``reproduce`` planned it."""

    dataset: str  # "mnist" or "cifar10": in the name of Fig. 6 or 7
    name: str  # the dataset as the paper writes it: "MNIST"
    budget: str
    overrides: tuple[str, ...]
    settings: str  # the README's paragraph on every cell's settings
    titles: Mapping[str, str]  # table number -> what it varies
    layout: tuple[dict, ...]  # Tables I-IV's rows, before the records: see ``table_rows``
    best: grid.Cell  # the best setting: Table IV, Figs. 5-7
    cells: tuple[str, ...]  # every planned cell
    label_cells: tuple[str, ...]  # the label-efficiency curve's cells


# --- tables -----------------------------------------------------------------------------


def table_rows(layout: Sequence[dict], records: dict[str, dict]) -> list[dict]:
    """Tables I-IV's ``layout`` filled in from ``records``: ours (test and kNN), ours - paper.

    ``layout``: one dict per row with the row's ``table``, ``setting``, ``paper`` accuracy,
    the ``cell`` measuring it (None: nothing does) and the record's ``metric`` to compare.
    """
    rows = []
    for r in layout:
        record = records.get(r["cell"], {}) if r["cell"] else {}
        ours = record.get(r["metric"])
        pretrained = r["metric"] == METHODS["SSL + fine-tune"]  # knn and divergence apply
        diff = None if ours is None or r["paper"] is None else round(ours - r["paper"], 2)
        row = {k: r[k] for k in ("table", "setting", "cell", "paper")}
        rows.append(
            row
            | {
                "ours": ours,
                "knn": record.get("knn_accuracy") if pretrained else None,
                "difference": diff,
                "pretrain_diverged_epoch": pretrain_diverged_epoch(record) if pretrained else None,
            }
        )
    return rows


def _pct(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}%"


def tables_markdown(
    name: str, titles: Mapping[str, str], rows: list[dict], labelled: str = "20%"
) -> str:
    """Tables I-IV as GitHub tables under ``###`` headings, "—" where nothing is known.

    ``name``: the dataset as the paper writes it; ``titles``: table number -> what it varies;
    ``labelled``: the labelled part of the training set (``data.labelled_fraction``).
    """
    parts = []
    for number, title in titles.items():
        parts.append(f"### Table {number}: {title} ({name})\n")
        parts.append("| setting | paper | ours: test accuracy | ours: kNN | ours − paper |")
        parts.append("|---|---:|---:|---:|---:|")
        for r in (r for r in rows if r["table"] == number):
            diff = DASH if r["difference"] is None else f"{r['difference']:+.2f}"
            mark = f" {DIVERGED}" if r.get("pretrain_diverged_epoch") else ""
            ours, knn = _pct(r["ours"]) + mark, _pct(r["knn"]) + (mark if r["knn"] else "")
            parts.append(
                "| " + " | ".join((r["setting"], _pct(r["paper"]), ours, knn, diff)) + " |"
            )
        parts.append("")
    diverged = sorted(
        {
            (r["cell"], r["pretrain_diverged_epoch"])
            for r in rows
            if r.get("pretrain_diverged_epoch")
        }
    )
    parts.append(
        f"Test accuracy: SSL pretraining, then fine-tuning on the labelled {labelled} (final "
        "epoch); "
        "Table IV's supervised row: the same network trained on those labels alone. kNN: the "
        f"pretrained encoder's spike counts, before fine-tuning. {DASH}: not run yet, or not "
        "in the paper."
        + (
            " " + diverged_note([f"{cell} at epoch {epoch}" for cell, epoch in diverged]).rstrip()
            if diverged
            else ""
        )
    )
    return "\n".join(parts) + "\n"


# --- figures -------------------------------------------------------------------------------


def neighbours_png(record: dict, cell: grid.Cell, out: Path, log: Callable[[str], None]) -> bool:
    """Fig. 5 from the best cell's pretraining checkpoint; whether ``out`` exists after."""
    run_dir = Path(record["run_dirs"]["pretrain"])
    checkpoint = run_dir / "checkpoint.pt"
    if not checkpoint.exists():
        if out.exists():
            log(f"reproduce: keeping {out}: the pretraining run {run_dir} is not on this machine")
        else:
            log(f"reproduce: {out.name} needs the best cell's pretraining run {run_dir}: not here")
        return out.exists()
    from spikessl import checkpoints, figures, neighbours

    # the figure names its checkpoint: one drawn from another machine's run is redrawn
    source = checkpoints.checkpoint_source(checkpoint)
    if out.exists() and figures.png_source(out) == source:
        return True  # drawn from this very checkpoint: encoding the data again changes nothing
    try:
        checkpoint = checkpoints.load_checkpoint(run_dir)
        neighbours.neighbours_figure(
            checkpoint, cell.config, out, seed=cell.config.seed, source=source
        )
    except ValueError as err:  # e.g. fewer test images than rows: the tables still stand
        log(f"reproduce: no {out.name}: {err}")
    return out.exists()


def curves_png(name: str, record: dict, out: Path, log: Callable[[str], None] = print) -> bool:
    """Figs. 6-7: the best cell's test accuracy per epoch, SSL + fine-tune vs supervised."""
    from spikessl import figures

    try:
        series = {
            "SSL pretrained + fine-tuned": accuracy_curve(record, "finetune"),
            "supervised only": accuracy_curve(record, "supervised"),
        }
    except ValueError as err:  # an old record that does not say its epochs: the rest stands
        log(f"reproduce: no {out.name}: {err}")
        return False
    series = {label: values for label, values in series.items() if values}
    if not series:
        return False
    cfg = record["config"]
    try:  # the count is in the fine-tuning run's summary; records keep only the fraction
        summary = json.loads((Path(record["run_dirs"]["finetune"]) / "summary.json").read_text())
        labels = f"{summary['labelled_images']} labelled images"
    except (OSError, KeyError, ValueError):
        labels = f"{percent(cfg['data']['labelled_fraction'])} of the training labels"
    title = f"{name}: SSL + fine-tune vs supervised only"
    title += f"\n(T={cfg['time_steps']}, {labels})"
    figures.curves(series, out, title)
    return True


# --- the records folder --------------------------------------------------------------------


def write_outputs(
    contents: Contents, records_dir: Path, command: str, log: Callable[[str], None]
) -> dict:
    """Tables, figures and README from the records of ``contents.cells`` in ``records_dir``."""
    name, budget, cells, best_cell = contents.name, contents.budget, contents.cells, contents.best
    found = load_records(records_dir, list(cells))
    if found:  # each run_sweep call tabulated only its own grid
        write_tables(found, records_dir / "results.csv", records_dir / "results.md")
    records = {r["cell"]: r for r in found}
    rows = table_rows(contents.layout, records)
    efficiency = label_efficiency_summary(
        [records[n] for n in contents.label_cells if n in records]
    )
    extra = f", overrides `{' '.join(contents.overrides)}`" if contents.overrides else ""
    heading = f"# {name}, budget `{budget}`{extra}\n\n"
    labelled = percent(best_cell.config.data.labelled_fraction)
    texts = {
        "tables.md": heading + tables_markdown(name, contents.titles, rows, labelled),
        "tables.csv": csv_text(rows, TABLE_COLUMNS),
        "label-efficiency.md": heading + label_efficiency_markdown(efficiency),
        "label-efficiency.csv": label_efficiency_csv(efficiency),
    }
    records_dir.mkdir(parents=True, exist_ok=True)
    for file, text in texts.items():
        write_atomic(records_dir / file, text)

    best = records.get(best_cell.name)
    fig = "6" if contents.dataset == "mnist" else "7"
    draw = {  # caption -> (file, how to draw it: whether it exists after)
        "Fig. 5: nearest neighbours in spike-count latent space": (
            "fig5-neighbors.png",
            lambda out: best is not None and neighbours_png(best, best_cell, out, log),
        ),
        f"Fig. {fig}: SSL + fine-tune vs supervised only": (
            f"fig{fig}-{contents.dataset}-ssl-vs-supervised.png",
            lambda out: best is not None and curves_png(name, best, out, log),
        ),
        "Label efficiency": (
            "label-efficiency.png",
            lambda out: label_efficiency_png(name, efficiency, out),
        ),
    }
    pngs = {
        caption: file if make(records_dir / file) else None
        for caption, (file, make) in draw.items()
    }
    settings = (
        f"{contents.settings} {len(found)} of {len(cells)} cells recorded (one JSON each "
        "here, all in results.md)."
    )
    figures = "\n\n".join(f"![{c}]({p})" if p else f"{c}: not drawn yet." for c, p in pngs.items())
    sections = {
        "Tables": tables_markdown(name, contents.titles, rows, labelled),
        "Figures": figures,
        "Label efficiency": label_efficiency_markdown(efficiency),
    }
    title = f"{name}: the paper's Tables I-IV and Figs. 5-7, budget `{budget}`"
    written = [*texts, *(p for p in pngs.values() if p)]
    readme_path = records_dir / "README.md"
    text = readme(title, command, settings, found, sections)
    if write_generated(readme_path, GENERATED_BY_REPRODUCE, text):
        written.append("README.md")
    else:
        log(f"reproduce: kept {readme_path}: written by hand (delete it to have it rewritten)")
    written += ["results.csv", "results.md"] if found else []
    keys = ("finetune_test_accuracy", "knn_accuracy", "supervised_test_accuracy")
    return {
        "cells": len(cells),
        "recorded": len(found),
        # the paper's best setting (Table IV's row), whether or not it scores best here
        "table_iv": {"cell": best_cell.name, **{k: (best or {}).get(k) for k in keys}},
        "outputs": [str(records_dir / file) for file in written],
    }
