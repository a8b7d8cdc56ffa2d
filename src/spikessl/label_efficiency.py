"""The label-efficiency curve beyond the paper: SSL + fine-tune against supervised-only at each
labelled fraction, over seeds, with the margin and the spread that decide whether SSL's lead
is more than seed-to-seed noise. Drawn from sweep records, as markdown, CSV and a PNG."""

from __future__ import annotations

from pathlib import Path

from spikessl.records import DASH, DIVERGED, METHODS, csv_text
from spikessl.seeds import compare_paired, describe, diverged_note, diverged_seeds, mean_range


def label_efficiency_summary(records: list[dict]) -> list[dict]:
    """Per labelled fraction: each method's per-seed accuracies, mean/min/max, the margin.

    ``margin``: SSL mean minus supervised mean; ``spread``: the larger of the two methods'
    max - min over seeds; ``verdict`` compares them (needs two seeds of each). All three use
    the seeds that have both methods' results.
    """
    found: dict[float, dict[str, dict[int, float]]] = {}
    grouped: dict[float, list[dict]] = {}  # the records of each fraction
    steps: dict[float, int] = {}  # fine-tuning optimiser steps (records since min_steps)
    cells: dict[tuple[float, int], str | None] = {}  # (fraction, seed) -> the record's cell
    for record in records:
        config = record["config"]
        fraction = config["finetune"]["label_fraction"] or config["data"]["labelled_fraction"]
        if record.get("finetune_steps"):
            steps[float(fraction)] = record["finetune_steps"]
        ssl_steps, sup_steps = record.get("finetune_steps"), record.get("supervised_steps")
        if None not in (ssl_steps, sup_steps) and ssl_steps != sup_steps:
            raise ValueError(  # the table's steps column says "the same for both methods"
                f"cell {record.get('cell')}: fine-tuning took {ssl_steps} steps, its "
                f"supervised baseline {sup_steps}: not the same budget; delete the record and "
                "rerun the cell with its baseline (--baseline)"
            )
        seed = config["seed"]
        if (float(fraction), int(seed)) in cells:
            raise ValueError(
                f"cells {cells[float(fraction), int(seed)]} and {record.get('cell')} both "
                f"measure {percent(float(fraction))} of the labels with seed {seed}: one "
                "label-efficiency point each"
            )
        cells[float(fraction), int(seed)] = record.get("cell")
        grouped.setdefault(float(fraction), []).append(record)
        methods = found.setdefault(float(fraction), {m: {} for m in METHODS})
        for method, field in METHODS.items():
            if record.get(field) is not None:
                methods[method][int(seed)] = float(record[field])
    summary = []
    for fraction, methods in sorted(found.items()):
        stats = {}
        for method, by_seed in methods.items():
            values = [by_seed[s] for s in sorted(by_seed)]
            stats[method] = {"seeds": sorted(by_seed), "accuracies": values, **describe(values)}
        margin, spread, verdict, paired = compare_paired(*methods.values())
        if paired and any(len(by_seed) > len(paired) for by_seed in methods.values()):
            verdict += f" (seeds with both: {' '.join(map(str, sorted(paired)))})"  # as seeds.md
        entry = {"fraction": fraction, "methods": stats, "margin": margin, "spread": spread}
        entry["diverged"] = diverged_seeds(grouped[fraction])
        summary.append(entry | {"steps": steps.get(fraction), "verdict": verdict})
    return summary


def percent(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def label_efficiency_markdown(summary: list[dict]) -> str:
    lines = [
        "| labels | steps | SSL + fine-tune | supervised only | margin | spread | |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    marked = [f"{percent(s['fraction'])}: {s['diverged']}" for s in summary if s["diverged"]]
    for s in summary:
        ssl, sup = (mean_range(st) or DASH for st in s["methods"].values())
        ssl += f" {DIVERGED}" if s["diverged"] else ""
        margin = DASH if s["margin"] is None else f"{s['margin']:+.2f}"
        spread = DASH if s["spread"] is None else f"{s['spread']:.2f}"
        steps = DASH if s["steps"] is None else str(s["steps"])
        cells = (percent(s["fraction"]), steps, ssl, sup, margin, spread, s["verdict"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + (
        "\n\nTest accuracy, mean over seeds [min, max]. Margin: SSL mean minus supervised mean "
        "(points); spread: the larger of the two methods' max - min over seeds; both over the "
        "seeds that measured both methods (named where a method has more). Steps: "
        "fine-tuning optimiser steps, the same for both methods (fractions below the labelled "
        "part train for as many steps as the labelled part, `finetune.min_steps`).\n"
        + ("\n" + note if (note := diverged_note(marked)) else "")
    )


def label_efficiency_csv(summary: list[dict]) -> str:
    rows = []
    for s in summary:
        for method, st in s["methods"].items():
            listed = {k: " ".join(map(str, st[k])) for k in ("seeds", "accuracies")}
            rows.append({"label_fraction": s["fraction"], "method": method, **s, **st, **listed})
    columns = "label_fraction method n mean min max seeds accuracies margin spread verdict steps"
    diverged = ["diverged"] * any(s["diverged"] for s in summary)  # as tables.csv, seeds.csv
    return csv_text(rows, columns.split() + diverged)


def label_efficiency_png(name: str, summary: list[dict], out: Path) -> bool:
    from spikessl import figures

    if not any(st["n"] for s in summary for st in s["methods"].values()):
        return False
    series = {m: [s["methods"][m]["accuracies"] for s in summary] for m in METHODS}
    title = f"{name}: test accuracy against the labelled fraction"
    figures.label_efficiency([s["fraction"] for s in summary], series, out, title)
    return True
