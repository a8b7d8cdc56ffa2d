"""A records folder's README: how to regenerate it, its wall time and environment, then its
results; rewritten by ``spikessl sweep`` or ``reproduce`` only while its first line says so
(a README written or edited by hand is kept)."""

from __future__ import annotations

from pathlib import Path

from spikessl.records import write_atomic


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


def _cells(probes: list) -> str:
    """``3 cell(s), speed probe 610-655 images/s`` (the probes that were recorded)."""
    measured = [p for p in probes if p is not None]
    if not measured:
        return f"{len(probes)} cell(s)"
    low, high = min(measured), max(measured)
    span = f"{low:g}" if low == high else f"{low:g}-{high:g}"
    return f"{len(probes)} cell(s), speed probe {span} images/s (`spikessl.machine.speed_probe`)"


def _subsets(records: list[dict]) -> str:
    """A warning sentence when records trained or tested on a class-balanced subset
    (``data.train_limit``, ``data.test_limit``): their accuracies are not the whole test set's."""
    used = [
        {k: data[k] for k in ("train_limit", "test_limit") if data.get(k)}
        for data in (r.get("config", {}).get("data", {}) for r in records)
    ]
    limits = sorted({f"data.{k}={v}" for u in used for k, v in u.items()})
    if not limits:
        return ""
    where = "in every cell" if all(used) else f"in {sum(map(bool, used))} of {len(used)} cells"
    sets = " or ".join(
        name
        for name, key in (("training", "train_limit"), ("test", "test_limit"))
        if any(key in u for u in used)
    )
    return (
        f" **Subsets:** {', '.join(limits)} {where}: those accuracies come from a "
        f"class-balanced part of the {sets} set, not the whole, and do not compare with the "
        "paper's."
    )


def readme(title: str, command: str, settings: str, records: list[dict], sections: dict) -> str:
    """The records folder's README: how to regenerate it, cost, environment, results."""
    environments: dict[str, list] = {}  # environment -> one speed probe (or None) per cell
    for r in records:
        env = dict(r.get("environment", {}))
        probe = env.pop("speed_probe", None)  # differs run to run: shown as a range
        text = ", ".join(f"{k} {v}" for k, v in env.items() if v is not None) or "not recorded"
        environments.setdefault(text, []).append(probe)
    minutes = wall_minutes(records)
    lines = [
        f"# {title}",
        "",
        "Regenerate (recorded cells are skipped, an interrupted one resumes):",
        "",
        f"    {command}",
        "",
        settings + _subsets(records),
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
        *(f"- {env}: {_cells(probes)}" for env, probes in environments.items()),
    ]
    for heading, text in sections.items():
        lines += ["", f"## {heading}", "", text.rstrip()]
    return "\n".join(lines) + "\n"


# the first line of a README that ``spikessl sweep`` (or ``reproduce``) wrote and may rewrite
GENERATED = "<!-- written by spikessl sweep, which rewrites it: delete this line to edit it -->"
GENERATED_BY_REPRODUCE = GENERATED.replace("spikessl sweep", "spikessl reproduce")


def write_generated(path: Path, marker: str, text: str) -> bool:
    """Write ``marker`` (a first line saying who rewrites the file) and ``text`` to ``path``,
    unless ``path`` exists without that first line: written or edited by hand, it is kept
    (returns False)."""
    if path.exists() and path.read_text().partition("\n")[0] != marker:
        return False
    write_atomic(path, marker + "\n" + text)
    return True


def write_sweep_readme(
    path: Path, title: str, command: str, cells: int, records: list[dict]
) -> bool:
    """A sweep records folder's ``README.md``: the command, epochs, wall time, environment and
    the results tables from ``results.md`` (and ``seeds.md``, when ``records`` span seeds)
    beside it. A README without the ``GENERATED`` first line (written or edited by hand) is
    kept: returns False."""
    budgets = {
        (r["config"]["pretrain"]["epochs"], r["config"]["finetune"]["epochs"])
        for r in records
        if "config" in r
    }
    epochs = "; ".join(
        f"{pre} pretraining and {fin} fine-tuning epoch{'s' * (fin != 1)}"
        for pre, fin in sorted(budgets)
    )
    settings = f"{len(records)} of {cells} cells recorded (one JSON each here)."
    settings += f" {epochs}." if epochs else ""
    sections = {"Results": (path.parent / "results.md").read_text()}
    seeds = {r["config"]["seed"] for r in records if "config" in r}
    if len(seeds) > 1 and (path.parent / "seeds.md").exists():  # not one left by another grid
        sections["Over seeds"] = (path.parent / "seeds.md").read_text()
    return write_generated(path, GENERATED, readme(title, command, settings, records, sections))
