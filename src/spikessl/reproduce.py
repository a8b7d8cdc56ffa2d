"""``spikessl reproduce``: the paper's Tables I-IV and Figs. 5-7, plus label efficiency.

Bahari & Kheradpisheh vary one setting at a time around their best one (T=30, pretraining
batch 256, rotation + Gaussian noise views: the ``paper-<dataset>`` preset) and report the
test accuracy after fine-tuning on 20% of the labels. This runs that protocol as resumable
``sweep`` grids recorded in one folder:

1. tables: the best cell (named ``time_steps=<base T>``, with the supervised baseline of
   Figs. 6-7), then T=10,20, batch 64,128 and the views crop-rotate, crop-noise;
2. label efficiency: fine-tuning and the supervised baseline with 1/5/10/20/100% of the
   training labels for the first seed, 1% and 10% for the others. The first seed's cells reuse
   the best cell's pretraining (``finetune.*`` is not part of the pretraining key).

Then it writes next to the records ``tables.{md,csv}``, ``label-efficiency.{md,csv,png}``,
``fig5-neighbors.png``, ``fig6-mnist-...png`` or ``fig7-cifar10-...png`` and ``README.md``.
Every number there comes from the records; a cell not run yet shows as "—".
"""

from __future__ import annotations

import csv
import io
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from spikessl import sweep
from spikessl.config import load_config, parse_overrides, to_dict

DATASETS = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
BUDGETS = ("quick", "paper")
# budget "quick": the preset plus these (a first look in minutes, not the paper's numbers)
QUICK = {
    "mnist": ["pretrain.epochs=1", "finetune.epochs=3"],
    "cifar10": ["pretrain.epochs=1", "finetune.epochs=3"],
}
FRACTIONS = (0.01, 0.05, 0.1, 0.2, 1.0)  # label efficiency, first seed
SEED_FRACTIONS = (0.01, 0.1)  # every other seed: where a margin over the baseline matters most
DEFAULT_SEEDS = (0, 1, 2)
DASH = "—"
TABLE_COLUMNS = ["table", "setting", "cell", "paper", "ours", "knn", "difference"]

# The paper's accuracies in %, (MNIST, CIFAR-10). Tables I-III: setting -> accuracy.
BEST = (94.23, 62.24)  # T=30, batch 256, rotate-noise: "Ours" in Table IV
TABLES = {
    ("I", "time steps", "time_steps"): {"10": (78.21, 51.63), "20": (91.54, 57.84), "30": BEST},
    ("II", "pretraining batch size", "pretrain.batch_size"): {
        "64": (87.45, 52.76),
        "128": (90.87, 57.58),
        "256": BEST,
    },
    ("III", "augmentations", "augment.views"): {
        "crop-rotate": (92.43, 61.21),
        "crop-noise": (93.86, 60.12),
        "rotate-noise": BEST,
    },
}
CITED = {"[21] spiking self-supervised": (93.06, None), "[22] SimCLR ANN": (None, 60.1)}
METHODS = {
    "SSL + fine-tune": "finetune_test_accuracy",
    "supervised only": "supervised_test_accuracy",
}


@dataclass(frozen=True)
class Step:
    """One ``sweep.run_sweep`` call of the plan."""

    what: str  # "tables" or "label efficiency"
    cells: tuple[sweep.Cell, ...]
    baseline: bool


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def base_config(
    dataset: str,
    budget: str,
    overrides: Sequence[str] = (),
    data_dir: str | None = None,
    device: str | None = None,
) -> dict:
    """``paper-<dataset>``, the budget's overrides, then the user's: every cell's base."""
    if dataset not in DATASETS or budget not in BUDGETS:
        raise ValueError(f"choose --dataset from {list(DATASETS)} and --budget from {BUDGETS}")
    tree = parse_overrides([*(QUICK[dataset] if budget == "quick" else []), *overrides])
    if data_dir:  # taken literally, as in the other commands
        tree.setdefault("data", {})["root"] = data_dir
    if device:
        tree["device"] = device
    cfg = load_config(f"paper-{dataset}", tree)
    if cfg.data.name != dataset:
        raise ValueError(f"data.name={cfg.data.name} contradicts --dataset {dataset}: drop it")
    return to_dict(cfg)


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``: the first seed gets every labelled fraction."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected integers such as 0,1,2") from None
    if len(set(seeds)) < len(seeds) or min(seeds) < 0:
        raise ValueError(f"--seeds {text!r}: list distinct seeds >= 0, e.g. 0,1,2")
    return seeds


def best_name(base: dict) -> str:
    return f"time_steps={base['time_steps']}"


def row_cell(base: dict, key: str, setting: str) -> str:
    """The cell measuring ``key=setting``: the best cell where that is the base's own value."""
    if load_config(base, parse_overrides([f"{key}={setting}"])) == load_config(base):
        return best_name(base)
    return sweep.cell_name(((key, setting),))


def plan(base: dict, seeds: Sequence[int]) -> list[Step]:
    """The sweeps to run, in order; every cell's config is built and checked here."""
    if not seeds:
        raise ValueError("--seeds: give at least one seed, e.g. 0,1,2")
    best = sweep.expand_grid(base, [f"time_steps={base['time_steps']}"])
    steps = [Step("tables", tuple(best), True)]
    for (_, _, key), paper in TABLES.items():
        values = [
            v for v, acc in paper.items() if acc != BEST and row_cell(base, key, v) != best[0].name
        ]
        if values:
            cells = sweep.expand_grid(base, [f"{key}={','.join(values)}"])
            steps.append(Step("tables", tuple(cells), False))
    # the best cell already fine-tunes on the labelled part: it is that fraction's point
    own = base["data"]["labelled_fraction"]
    first = tuple(f for f in FRACTIONS if not (f == own and seeds[0] == base["seed"]))
    grids = [(seeds[:1], first), (seeds[1:], SEED_FRACTIONS)]
    for group, fractions in (g for g in grids if g[0]):
        grid = [
            f"seed={','.join(map(str, group))}",
            f"finetune.label_fraction={','.join(map(str, fractions))}",
        ]
        steps.append(Step("label efficiency", tuple(sweep.expand_grid(base, grid)), True))
    return steps


def cell_states(steps: list[Step], records_dir: Path) -> dict[str, str]:
    """Each planned cell: "recorded", "needs the supervised baseline", "to run" or "conflict"."""
    states = {}
    for step in steps:
        for cell in step.cells:
            found = sweep.load_records(records_dir, [cell.name])
            if not found:
                states[cell.name] = "to run"
            elif found[0]["key"] != cell.key:
                states[cell.name] = "conflict"
            elif step.baseline and "supervised_test_accuracy" not in found[0]:
                states[cell.name] = "needs the supervised baseline"
            else:
                states[cell.name] = "recorded"
    return states


# --- tables and label efficiency, from records ---------------------------------------------


def table_rows(dataset: str, base: dict, records: dict[str, dict]) -> list[dict]:
    """Rows of Tables I-IV: the paper's accuracy, ours (test and kNN), ours minus paper."""
    column, best = list(DATASETS).index(dataset), best_name(base)

    def row(table: str, setting: str, cell: str | None, paper, metric=METHODS["SSL + fine-tune"]):
        record = records.get(cell, {}) if cell else {}
        ours = record.get(metric)
        knn = record.get("knn_accuracy") if metric == METHODS["SSL + fine-tune"] else None
        diff = None if ours is None or paper is None else round(ours - paper, 2)
        keys = ("table", "setting", "cell", "paper", "ours", "knn", "difference")
        return dict(zip(keys, (table, setting, cell, paper, ours, knn, diff)))

    rows = []
    for (number, _, key), paper in TABLES.items():
        cells = [row_cell(base, key, setting) for setting in paper]
        rows += [row(number, s, c, acc[column]) for (s, acc), c in zip(paper.items(), cells)]
        if best not in cells:  # an override moved the base off the paper's rows
            value = base
            for part in key.split("."):
                value = value[part]
            text = "+".join(map(str, value)) if isinstance(value, list) else str(value)
            rows.append(row(number, f"{text} (this run's base)", best, None))
    rows.append(row("IV", "SSL SNN + fine-tuning (best cell)", best, BEST[column]))
    rows.append(
        row("IV", "supervised-only SNN, same labels", best, None, METHODS["supervised only"])
    )
    rows += [row("IV", f"{name} (cited)", None, acc[column]) for name, acc in CITED.items()]
    return rows


def _pct(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}%"


def tables_markdown(dataset: str, rows: list[dict]) -> str:
    """Tables I-IV as GitHub tables under ``###`` headings, "—" where nothing is known."""
    titles = {number: title for number, title, _ in TABLES} | {"IV": "the best setting"}
    parts = []
    for number, title in titles.items():
        parts.append(f"### Table {number}: {title} ({DATASETS[dataset]})\n")
        parts.append("| setting | paper | ours: test accuracy | ours: kNN | ours − paper |")
        parts.append("|---|---:|---:|---:|---:|")
        for r in (r for r in rows if r["table"] == number):
            diff = DASH if r["difference"] is None else f"{r['difference']:+.2f}"
            cells = (r["setting"], _pct(r["paper"]), _pct(r["ours"]), _pct(r["knn"]), diff)
            parts.append("| " + " | ".join(cells) + " |")
        parts.append("")
    parts.append(
        "Test accuracy: SSL pretraining, then fine-tuning on the labelled 20% (final epoch); "
        "Table IV's supervised row: the same network trained on those labels alone. kNN: the "
        f"pretrained encoder's spike counts, before fine-tuning. {DASH}: not run yet, or not "
        "in the paper."
    )
    return "\n".join(parts) + "\n"


def _csv(rows: list[dict], columns: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: "" if r.get(k) is None else r[k] for k in columns} for r in rows)
    return out.getvalue()


def label_efficiency_summary(records: list[dict]) -> list[dict]:
    """Per labelled fraction: each method's per-seed accuracies, mean/min/max, the margin.

    ``margin``: SSL mean minus supervised mean; ``spread``: the larger of the two methods'
    max - min over seeds; ``verdict`` compares them (needs two seeds of each).
    """
    found: dict[float, dict[str, dict[int, float]]] = {}
    for record in records:
        config = record["config"]
        fraction = config["finetune"]["label_fraction"] or config["data"]["labelled_fraction"]
        seed = config["seed"]
        methods = found.setdefault(float(fraction), {m: {} for m in METHODS})
        for method, field in METHODS.items():
            if record.get(field) is not None:
                methods[method][int(seed)] = float(record[field])
    summary = []
    for fraction, methods in sorted(found.items()):
        stats = {}
        for method, by_seed in methods.items():
            values = [by_seed[s] for s in sorted(by_seed)]
            stats[method] = {"n": len(values), "seeds": sorted(by_seed), "accuracies": values}
            if values:
                mean = round(sum(values) / len(values), 2)
                stats[method] |= {"mean": mean, "min": min(values), "max": max(values)}
        ssl, sup = stats.values()
        margin = spread = None
        verdict = "incomplete"
        if ssl["n"] and sup["n"]:
            margin = round(ssl["mean"] - sup["mean"], 2)
            spread = round(max(ssl["max"] - ssl["min"], sup["max"] - sup["min"]), 2)
            if min(ssl["n"], sup["n"]) < 2:
                verdict = "one seed: no spread"
            elif abs(margin) <= spread:
                verdict = "margin within spread"
            else:
                verdict = "margin > spread" if margin > 0 else "supervised ahead by > spread"
        entry = {"fraction": fraction, "methods": stats, "margin": margin, "spread": spread}
        summary.append(entry | {"verdict": verdict})
    return summary


def _percent(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def label_efficiency_markdown(summary: list[dict]) -> str:
    def cell(s: dict) -> str:
        return f"{s['mean']:.2f}% [{s['min']:.2f}, {s['max']:.2f}] (n={s['n']})" if s["n"] else DASH

    lines = [
        "| labels | SSL + fine-tune | supervised only | margin | spread | |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for s in summary:
        ssl, sup = (cell(st) for st in s["methods"].values())
        margin = DASH if s["margin"] is None else f"{s['margin']:+.2f}"
        spread = DASH if s["spread"] is None else f"{s['spread']:.2f}"
        cells = (_percent(s["fraction"]), ssl, sup, margin, spread, s["verdict"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + (
        "\n\nTest accuracy, mean over seeds [min, max]. Margin: SSL mean minus supervised mean "
        "(points); spread: the larger of the two methods' max - min over seeds.\n"
    )


def label_efficiency_csv(summary: list[dict]) -> str:
    rows = []
    for s in summary:
        for method, st in s["methods"].items():
            listed = {k: " ".join(map(str, st[k])) for k in ("seeds", "accuracies")}
            rows.append({"label_fraction": s["fraction"], "method": method, **s, **st, **listed})
    columns = "label_fraction method n mean min max seeds accuracies margin spread verdict"
    return _csv(rows, columns.split())


# --- figures -------------------------------------------------------------------------------


def neighbours_png(record: dict, cell: sweep.Cell, out: Path, log: Callable[[str], None]) -> bool:
    """Fig. 5 from the best cell's pretraining checkpoint; whether ``out`` exists after."""
    run_dir = Path(record["run_dirs"]["pretrain"])
    checkpoint = run_dir / "checkpoint.pt"
    if not checkpoint.exists():
        if out.exists():
            log(f"reproduce: keeping {out}: the pretraining run {run_dir} is not on this machine")
        else:
            log(f"reproduce: {out.name} needs the best cell's pretraining run {run_dir}: not here")
        return out.exists()
    if out.exists() and out.stat().st_mtime >= checkpoint.stat().st_mtime:
        return True  # drawn from this very checkpoint: encoding the data again changes nothing
    from spikessl import figures, pipeline

    try:
        checkpoint = pipeline.load_checkpoint(run_dir)
        figures.neighbours_figure(checkpoint, cell.config, out, seed=cell.config.seed)
    except ValueError as err:  # e.g. fewer test images than rows: the tables still stand
        log(f"reproduce: no {out.name}: {err}")
    return out.exists()


def curves_png(dataset: str, record: dict, out: Path) -> bool:
    """Figs. 6-7: the best cell's test accuracy per epoch, SSL + fine-tune vs supervised."""
    from spikessl import figures

    series = {
        "SSL pretrained + fine-tuned": record.get("finetune_accuracy_by_epoch"),
        "supervised only": record.get("supervised_accuracy_by_epoch"),
    }
    series = {label: values for label, values in series.items() if values}
    if not series:
        return False
    cfg = record["config"]
    try:  # the count is in the fine-tuning run's summary; records keep only the fraction
        summary = json.loads((Path(record["run_dirs"]["finetune"]) / "summary.json").read_text())
        labels = f"{summary['labelled_images']} labelled images"
    except (OSError, KeyError, ValueError):
        labels = f"{_percent(cfg['data']['labelled_fraction'])} of the training labels"
    title = f"{DATASETS[dataset]}: SSL + fine-tune vs supervised only"
    title += f"\n(T={cfg['time_steps']}, {labels})"
    figures.curves(series, out, title)
    return True


def label_efficiency_png(dataset: str, summary: list[dict], out: Path) -> bool:
    from spikessl import figures

    if not any(st["n"] for s in summary for st in s["methods"].values()):
        return False
    series = {m: [s["methods"][m]["accuracies"] for s in summary] for m in METHODS}
    title = f"{DATASETS[dataset]}: test accuracy against the labelled fraction"
    figures.label_efficiency([s["fraction"] for s in summary], series, out, title)
    return True


# --- README --------------------------------------------------------------------------------


def wall_minutes(records: list[dict]) -> dict[str, tuple[int, float]]:
    """Per stage: (runs, minutes), each run directory counted once (cells share them)."""
    seconds = {}
    for r in records:
        for stage, value in r.get("wall_seconds", {}).items():
            seconds[stage, r.get("run_dirs", {}).get(stage, f"{r['cell']}/{stage}")] = value
    totals: dict[str, tuple[int, float]] = {}
    for (stage, _), value in seconds.items():
        n, minutes = totals.get(stage, (0, 0.0))
        totals[stage] = (n + 1, minutes + value / 60)
    return totals


def readme(title: str, command: str, settings: str, records: list[dict], sections: dict) -> str:
    """The records folder's README: how to regenerate it, cost, environment, results."""
    environments: dict[str, int] = {}
    for r in records:
        env = ", ".join(f"{k} {v}" for k, v in r.get("environment", {}).items() if v is not None)
        environments[env or "not recorded"] = environments.get(env or "not recorded", 0) + 1
    minutes = wall_minutes(records)
    lines = [
        f"# {title}",
        "",
        "Regenerate (recorded cells are skipped, an interrupted one resumes):",
        "",
        f"    {command}",
        "",
        settings,
        "",
        "## Wall time",
        "",
        "Summed over the records; a run shared by several cells counts once.",
        "",
        "| stage | runs | minutes |",
        "|---|---:|---:|",
        *(f"| {s} | {n} | {m:.1f} |" for s, (n, m) in minutes.items()),
        f"| total | {sum(n for n, _ in minutes.values())} | "
        f"{sum(m for _, m in minutes.values()):.1f} |",
        "",
        "## Environment",
        "",
        *(f"- {env}: {n} cell(s)" for env, n in environments.items()),
    ]
    for heading, text in sections.items():
        lines += ["", f"## {heading}", "", text.rstrip()]
    return "\n".join(lines) + "\n"


# --- the command ---------------------------------------------------------------------------


def command_line(
    dataset: str,
    budget: str,
    overrides: Sequence[str],
    seeds: Sequence[int],
    records: str | None,
    runs: str | None,
) -> str:
    """The command that makes these outputs (machine-local --data-dir/--device left out)."""
    parts = ["spikessl", "reproduce", "--dataset", dataset, "--budget", budget, *overrides]
    if list(seeds) != list(DEFAULT_SEEDS):
        parts += ["--seeds", ",".join(map(str, seeds))]
    parts += ["--records", records] if records else []
    parts += ["--run-dir", runs] if runs else []
    return shlex.join(parts)


def reproduce(
    dataset: str,
    budget: str,
    overrides: Sequence[str] = (),
    records: str | None = None,
    runs: str | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    dry_run: bool = False,
    progress: bool = True,
    data_dir: str | None = None,
    device: str | None = None,
    log: Callable[[str], None] = _stderr,
) -> dict:
    """Run every unrecorded cell (or, with ``dry_run``, list them), then write the outputs."""
    base = base_config(dataset, budget, overrides, data_dir, device)
    records_dir = Path(records or f"docs/results/{dataset}-{budget}")
    runs_root = Path(runs or f"runs/reproduce/{dataset}-{budget}")
    steps = plan(base, seeds)
    states = cell_states(steps, records_dir)
    result = {"command": "reproduce", "dataset": dataset, "budget": budget}
    result |= {"overrides": list(overrides), "records": str(records_dir)}
    if dry_run:
        cells = [(step.what, cell.name) for step in steps for cell in step.cells]
        for i, (what, name) in enumerate(cells, 1):
            log(f"reproduce [{i}/{len(cells)}] {what}: {name}: {states[name]}")
        todo = [name for name, state in states.items() if state != "recorded"]
        return result | {"dry_run": True, "cells": len(cells), "to_run": todo}
    conflicts = [name for name, state in states.items() if state == "conflict"]
    if conflicts:
        raise ValueError(
            f"{records_dir} holds records of {', '.join(conflicts)} made with other settings: "
            "use another --records directory, or delete those records to rerun them"
        )
    for step in steps:
        sweep.run_sweep(list(step.cells), records_dir, runs_root, step.baseline, progress, log)
    command = command_line(dataset, budget, overrides, seeds, records, runs)
    return result | write_outputs(
        dataset, budget, overrides, base, steps, records_dir, command, log
    )


def write_outputs(
    dataset: str,
    budget: str,
    overrides: Sequence[str],
    base: dict,
    steps: list[Step],
    records_dir: Path,
    command: str,
    log: Callable[[str], None] = _stderr,
) -> dict:
    """Tables, figures and README from the records of ``steps`` in ``records_dir``."""
    names = [cell.name for step in steps for cell in step.cells]
    found = sweep.load_records(records_dir, names)
    if found:  # each run_sweep call tabulated only its own grid
        sweep.write_tables(found, records_dir / "results.csv", records_dir / "results.md")
    records = {r["cell"]: r for r in found}
    rows = table_rows(dataset, base, records)
    label_cells = [c.name for s in steps if s.what == "label efficiency" for c in s.cells]
    label_cells.insert(0, best_name(base))  # the labelled part's own point (fraction 0.2)
    efficiency = label_efficiency_summary([records[n] for n in label_cells if n in records])
    extra = f", overrides `{' '.join(overrides)}`" if overrides else ""
    heading = f"# {DATASETS[dataset]}, budget `{budget}`{extra}\n\n"
    texts = {
        "tables.md": heading + tables_markdown(dataset, rows),
        "tables.csv": _csv(rows, TABLE_COLUMNS),
        "label-efficiency.md": heading + label_efficiency_markdown(efficiency),
        "label-efficiency.csv": label_efficiency_csv(efficiency),
    }
    records_dir.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (records_dir / name).write_text(text)

    best = records.get(best_name(base))
    fig = "6" if dataset == "mnist" else "7"
    draw = {  # caption -> (file, how to draw it: whether it exists after)
        "Fig. 5: nearest neighbours in spike-count latent space": (
            "fig5-neighbors.png",
            lambda out: best is not None and neighbours_png(best, steps[0].cells[0], out, log),
        ),
        f"Fig. {fig}: SSL + fine-tune vs supervised only": (
            f"fig{fig}-{dataset}-ssl-vs-supervised.png",
            lambda out: best is not None and curves_png(dataset, best, out),
        ),
        "Label efficiency": (
            "label-efficiency.png",
            lambda out: label_efficiency_png(dataset, efficiency, out),
        ),
    }
    pngs = {
        caption: name if make(records_dir / name) else None
        for caption, (name, make) in draw.items()
    }
    pre, ft = base["pretrain"], base["finetune"]
    settings = (
        f"Every cell: preset `paper-{dataset}`, budget `{budget}` "
        f"({' '.join(QUICK[dataset]) if budget == 'quick' else 'the preset as is'}), extra "
        f"overrides: {' '.join(overrides) or 'none'}. Best setting: T={base['time_steps']}, "
        f"pretraining batch {pre['batch_size']}, views {'+'.join(base['augment']['views'])}; "
        f"{pre['epochs']} pretraining and {ft['epochs']} fine-tuning epochs (batch "
        f"{ft['batch_size']}). {len(found)} of {len(names)} cells recorded (one JSON each "
        "here, all in results.md)."
    )
    figures = "\n\n".join(f"![{c}]({p})" if p else f"{c}: not drawn yet." for c, p in pngs.items())
    sections = {
        "Tables": tables_markdown(dataset, rows),
        "Figures": figures,
        "Label efficiency": label_efficiency_markdown(efficiency),
    }
    title = f"{DATASETS[dataset]}: the paper's Tables I-IV and Figs. 5-7, budget `{budget}`"
    (records_dir / "README.md").write_text(readme(title, command, settings, found, sections))
    written = [*texts, *(p for p in pngs.values() if p), "README.md"]
    written += ["results.csv", "results.md"] if found else []
    keys = ("finetune_test_accuracy", "knn_accuracy", "supervised_test_accuracy")
    return {
        "cells": len(names),
        "recorded": len(found),
        "best": {"cell": best_name(base), **{k: (best or {}).get(k) for k in keys}},
        "outputs": [str(records_dir / name) for name in written],
    }
