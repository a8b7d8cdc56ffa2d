"""A grid over seeds, summarised: each setting's mean, min and max over its seeds, and
whether SSL's margin over the supervised baseline exceeds the seed-to-seed spread.

``describe`` and ``compare`` are the statistics; ``seed_summary`` groups a sweep's records by
their grid values other than ``seed``; ``write_seed_tables`` writes ``seeds.csv`` and
``seeds.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from spikessl.records import (
    ACCURACIES,
    DIVERGED,
    SSL,
    SUPERVISED,
    csv_text,
    pretrain_diverged_epoch,
    write_atomic,
)


def describe(values: Sequence[float]) -> dict:
    """``n``, and when there are values their ``mean`` (to 2 decimals), ``min`` and ``max``."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "mean": round(sum(values) / len(values), 2),
        "min": min(values),
        "max": max(values),
    }


def mean_range(stat: dict) -> str:
    """A ``describe`` result as table text: ``"95.00% [94.00, 96.00] (n=3)"``, "" for none."""
    if not stat["n"]:
        return ""
    return f"{stat['mean']:.2f}% [{stat['min']:.2f}, {stat['max']:.2f}] (n={stat['n']})"


def compare(ssl: dict, supervised: dict) -> tuple[float | None, ...]:
    """``(margin, spread, verdict)`` of SSL against the baseline, each a ``describe`` result.

    Margin: SSL mean minus supervised mean (points, of the rounded means the tables show);
    spread: the larger of the two methods' max - min over seeds. The verdict says whether the
    margin exceeds the spread, which needs at least two seeds of each; with none of one side
    it names the side that is missing.
    """
    if not (ssl["n"] and supervised["n"]):
        return None, None, "no SSL result" if not ssl["n"] else "no baseline run"
    margin = round(ssl["mean"] - supervised["mean"], 2)
    spread = round(max(ssl["max"] - ssl["min"], supervised["max"] - supervised["min"]), 2)
    if min(ssl["n"], supervised["n"]) < 2:
        verdict = "one seed: no spread"
    elif abs(margin) <= spread:
        verdict = "margin within spread"
    else:
        verdict = "margin > spread" if margin > 0 else "supervised ahead by > spread"
    return margin, spread, verdict


def compare_paired(ssl: dict, supervised: dict) -> tuple:
    """``compare`` of per-seed accuracies (``{seed: accuracy}``) over the seeds that have both,
    in ``ssl``'s order: a seed whose baseline is not run yet would otherwise weigh on one side
    only. Returns margin, spread, verdict and those seeds. With none paired, each side is
    described by its own seeds, so ``compare`` names the one that is missing."""
    paired = [seed for seed in ssl if seed in supervised]
    if ssl and supervised and not paired:
        return None, None, "no seed has both", paired
    return (*compare(*(describe([m[s] for s in paired or m]) for m in (ssl, supervised))), paired)


def seed_summary(records: list[dict]) -> list[dict]:
    """Records grouped by their grid values other than ``seed``, in first-seen order.

    Each group: ``setting`` (those grid values), ``seeds``, and per accuracy in ``ACCURACIES``
    its per-seed values with n, mean, min and max; then ``compare``'s margin, spread and verdict
    of fine-tuning against the supervised baseline, over the seeds that have both (a seed
    whose baseline is not run yet would otherwise weigh on one side only).
    """
    groups: dict[tuple, dict] = {}
    for record in records:
        setting = {k: v for k, v in record.get("grid", {}).items() if k != "seed"}
        group = groups.setdefault(tuple(setting.items()), {"setting": setting, "records": []})
        group["records"].append(record)
    summary = []
    for group in groups.values():
        entry = {
            "setting": group["setting"],
            "seeds": [r["config"]["seed"] for r in group["records"]],
        }
        for field in ACCURACIES:
            values = [float(r[field]) for r in group["records"] if r.get(field) is not None]
            entry[field] = {"values": values, **describe(values)}
        ssl, supervised = (
            {r["config"]["seed"]: float(r[f]) for r in group["records"] if r.get(f) is not None}
            for f in (SSL, SUPERVISED)
        )
        margin, spread, verdict, paired = compare_paired(ssl, supervised)
        if paired and len(paired) < len(group["records"]):
            verdict += f" (seeds with both: {' '.join(map(str, sorted(paired)))})"
        entry["diverged"] = diverged_seeds(group["records"])
        summary.append(entry | {"margin": margin, "spread": spread, "verdict": verdict})
    return summary


def diverged_seeds(records: list[dict]) -> str:
    """``"seed 1 at epoch 11, ..."`` for the records whose pretraining diverged, or ``""``."""
    found = ((r["config"]["seed"], pretrain_diverged_epoch(r)) for r in records)
    return ", ".join(f"seed {seed} at epoch {epoch}" for seed, epoch in found if epoch)


def diverged_note(where: list[str]) -> str:
    """The footnote of a table whose rows ``where`` (each "setting: seeds") are marked."""
    if not where:
        return ""
    return (
        f"{DIVERGED}: the SimCLR pretraining diverged (its loss jumped far above its lowest "
        f"so far: the training loop's divergence warning) in {'; '.join(where)}; the numbers "
        "are as measured, after all its epochs.\n"
    )


def _setting(setting: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in setting.items()) or "every cell"


def write_seed_tables(records: list[dict], csv_path: str | Path, md_path: str | Path) -> None:
    """``seed_summary`` as CSV (one row per setting) and a GitHub table, mean [min, max] (n)."""
    summary = seed_summary(records)
    keys = list(dict.fromkeys(k for s in summary for k in s["setting"]))
    rows = []
    for s in summary:
        row = {**s["setting"], "seeds": " ".join(map(str, s["seeds"]))}
        for field in ACCURACIES:
            row |= {f"{field}_{k}": s[field].get(k) for k in ("n", "mean", "min", "max")}
        rows.append(row | {k: s[k] for k in ("margin", "spread", "verdict", "diverged")})
    stats = [f"{f}_{k}" for f in ACCURACIES for k in ("n", "mean", "min", "max")]
    columns = [*keys, "seeds", *stats, "margin", "spread", "verdict"]
    diverged = [s for s in summary if s["diverged"]]
    write_atomic(Path(csv_path), csv_text(rows, columns + ["diverged"] * bool(diverged)))

    header = [*keys, "seeds", "kNN", "SSL + fine-tune", "supervised only", "margin", "spread", ""]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * (len(keys) + 1) + "---:|" * 5 + "---|",
    ]
    for s in summary:
        margin = "" if s["margin"] is None else f"{s['margin']:+.2f}"
        spread = "" if s["spread"] is None else f"{s['spread']:.2f}"
        cells = [str(s["setting"].get(k, "")) for k in keys] + [" ".join(map(str, s["seeds"]))]
        knn, ssl, sup = (mean_range(s[f]) for f in ACCURACIES)
        if s["diverged"]:  # kNN too: it measures the same pretraining
            knn, ssl = (f"{v} {DIVERGED}" if v else v for v in (knn, ssl))
        cells += [knn, ssl, sup, margin, spread, s["verdict"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines.append(
        "\nTest accuracy over seeds: mean [min, max] (n). Margin: SSL + fine-tune mean minus "
        "supervised-only mean (points) and spread: the larger of the two methods' max - min, "
        "both over the seeds that have both. kNN: the pretrained encoder's spike counts, voted "
        "by the bank `knn.bank` names (the whole labelled part by default), whatever "
        "`finetune.label_fraction` is."
    )
    where = [f"{_setting(s['setting'])}: {s['diverged']}" for s in diverged]
    if where:
        lines.append("\n" + diverged_note(where).rstrip())
    write_atomic(Path(md_path), "\n".join(lines) + "\n")
