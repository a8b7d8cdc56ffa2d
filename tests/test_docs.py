"""The committed documentation and results: links resolve, every results folder is listed,
every folder's command makes its records' cells, its tables are what those records give,
and every kept pretraining or parked run is the one its folder's sweep would look for."""

import argparse
import re
import shlex
from pathlib import Path

import pytest

from spikessl import arguments, command_config, grid, kept, report
from spikessl.checkpoints import load_checkpoint
from spikessl.config import Config
from spikessl.config_yaml import from_dict, to_dict
from spikessl.grid import Cell, pretrained_with
from spikessl.label_efficiency import (
    label_efficiency_csv,
    label_efficiency_markdown,
    label_efficiency_summary,
)
from spikessl.protocol import base_config, parse_seeds, plan
from spikessl.records import csv_text, load_records, write_tables
from spikessl.reproduce import cell_states, report_contents
from spikessl.seeds import write_seed_tables

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
TABLED = sorted(p.parent for p in RESULTS.glob("*/results.csv"))
KEPT = sorted(RESULTS.glob("*/pretrain-*.safetensors"))
PARKED = sorted(RESULTS.glob("*/*.partial.pt"))
REPRODUCED = sorted(p.parent for p in RESULTS.glob("*/tables.md"))
SWEPT = [p for p in TABLED if p not in REPRODUCED]
SWEEP_COMMAND = re.compile(r"^    ((?:OMP_NUM_THREADS=\d+ )?spikessl sweep (?:.*\\\n)*.*)$", re.M)
REPRODUCE_COMMAND = re.compile(r"^    (spikessl reproduce .*)$", re.M)
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def relative_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(page.read_text()) if not re.match(r"[a-z]+:", t)]


def test_link_pattern_finds_relative_targets_only():
    page = "see [a](x/README.md#top), [b](https://example.org) and [c](../y.png)"
    assert [t for t in LINK.findall(page) if not re.match(r"[a-z]+:", t)] == [
        "x/README.md",
        "../y.png",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    missing = [t for t in relative_links(page) if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_every_results_folder_is_listed():
    linked = {Path(t).parts[0] for t in relative_links(RESULTS / "README.md")}
    folders = {p.name for p in RESULTS.iterdir() if p.is_dir()}
    assert folders - linked == set(), "results folders missing from docs/results/README.md"


# --- sweep folders: the README's command ---------------------------------------------------


def sweep_cells(command: str) -> tuple[dict[str, grid.Cell], argparse.Namespace]:
    """The cells ``spikessl sweep ...`` (one shell command, ``\\`` continuations allowed)
    runs, by name in grid order, and its parsed arguments: what ``cli.main`` does first."""
    tokens = shlex.split(command.replace("\\\n", " "))
    args, extra = arguments.parser().parse_known_args(tokens[tokens.index("spikessl") + 1 :])
    args.overrides = [*args.overrides, *extra]
    axes, _ = command_config.sweep_axes(args.overrides)
    cells = grid.expand_grid(to_dict(command_config.config(args, None)), axes)
    return {c.name: c for c in cells}, args


def folder_sweep(folder: Path) -> tuple[dict[str, grid.Cell], argparse.Namespace]:
    found = SWEEP_COMMAND.search((folder / "README.md").read_text())
    assert found, f"{folder.name}/README.md has no indented `spikessl sweep` command"
    return sweep_cells(found[1])


def test_sweep_command_pattern_joins_continued_lines():
    text = "Run:\n\n    spikessl sweep --config paper-mnist \\\n        seed=1,2 --records x\n"
    cells, args = sweep_cells(SWEEP_COMMAND.search(text)[1])
    assert list(cells) == ["seed=1", "seed=2"] and args.records == "x"


@pytest.mark.parametrize("folder", SWEPT, ids=lambda p: p.name)
def test_sweep_folder_command_makes_its_records(folder):
    """The first ``spikessl sweep`` command in the folder's README (indented as a code block)
    names that folder as ``--records`` and has a cell, with the same settings, for each record
    there (with the baseline where it asks for one): rerunning it skips them all."""
    cells, args = folder_sweep(folder)
    assert Path(args.records) == folder.relative_to(ROOT)
    for record in load_records(folder):
        cell = cells.get(record["cell"])
        assert cell is not None, f"{record['cell']} is not a cell of the command"
        assert grid.record_matches(record, cell), f"{record['cell']}: other settings"
        assert not args.baseline or "supervised_test_accuracy" in record, record["cell"]


# --- reproduce folders: the tables' heading -------------------------------------------------


def folder_reproduce(folder: Path) -> tuple[report.Contents, list]:
    """What ``reproduce`` reports in ``folder``: the plan of the first indented ``spikessl
    reproduce`` command in its README, which names the folder (or is the default one), with
    the same overrides as the ``tables.md`` heading; no record conflicts with it."""
    found = REPRODUCE_COMMAND.search((folder / "README.md").read_text())
    assert found, f"{folder.name}/README.md has no indented `spikessl reproduce` command"
    tokens = shlex.split(found[1])
    args, unparsed = arguments.parser().parse_known_args(tokens[1:])
    overrides = [*args.overrides, *unparsed]
    records = args.records or f"docs/results/{args.dataset}-{args.budget}"
    assert Path(records) == folder.relative_to(ROOT), f"{folder.name}: --records {records}"
    base = base_config(args.dataset, args.budget, overrides)
    steps = plan(base, parse_seeds(args.seeds))
    assert "conflict" not in cell_states(steps, folder).values()
    contents = report_contents(args.dataset, args.budget, overrides, base, steps)
    heading = (folder / "tables.md").read_text().partition("\n")[0]
    extra = f", overrides `{' '.join(overrides)}`" if overrides else ""
    wanted = f"# {contents.name}, budget `{args.budget}`{extra}"
    assert heading == wanted, f"{folder.name}: the README's command is not the tables' heading"
    return contents, base


@pytest.mark.parametrize("folder", REPRODUCED, ids=lambda p: p.name)
def test_reproduce_tables_match_their_records(folder):
    """Tables I-IV and the label-efficiency table, as ``reproduce`` writes them from the
    folder's records."""
    contents, base = folder_reproduce(folder)
    records = {r["cell"]: r for r in load_records(folder, list(contents.cells))}
    rows = report.table_rows(contents.layout, records)
    heading = (folder / "tables.md").read_text().partition("\n")[0] + "\n\n"
    labelled = f"{100 * base['data']['labelled_fraction']:g}%"
    tables = report.tables_markdown(contents.name, contents.titles, rows, labelled)
    assert (folder / "tables.md").read_text() == heading + tables
    assert (folder / "tables.csv").read_text() == csv_text(rows, report.TABLE_COLUMNS)
    efficiency = label_efficiency_summary(
        [records[n] for n in contents.label_cells if n in records]
    )
    markdown = heading + label_efficiency_markdown(efficiency)
    assert (folder / "label-efficiency.md").read_text() == markdown
    assert (folder / "label-efficiency.csv").read_text() == label_efficiency_csv(efficiency)


# --- every records folder --------------------------------------------------------------------


def grid_order(folder: Path) -> list[str]:
    """The folder's cells in the order its command runs them, as its tables list them."""
    if folder in REPRODUCED:
        return list(folder_reproduce(folder)[0].cells)
    return list(folder_sweep(folder)[0])


def tables(records: list[dict], where: Path, seeds: bool) -> dict[str, str]:
    write_tables(records, where / "results.csv", where / "results.md")
    if seeds:
        write_seed_tables(records, where / "seeds.csv", where / "seeds.md")
    return {p.name: p.read_text() for p in sorted(where.iterdir())}


@pytest.mark.parametrize("folder", TABLED, ids=lambda p: p.name)
def test_committed_tables_match_their_records(folder, tmp_path):
    """results.csv and results.md (and seeds.csv, seeds.md where the grid has seeds) are
    what the folder's records give, in its command's order."""
    records = load_records(folder, grid_order(folder))
    assert len(records) == len(list(folder.glob("*.json")))
    made = tables(records, tmp_path, (folder / "seeds.csv").exists())
    assert {name: (folder / name).read_text() for name in made} == made


def test_table_check_sees_a_changed_accuracy(tmp_path):
    folder = SWEPT[0]
    records = load_records(folder, grid_order(folder))
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    before = tables(records, tmp_path / "a", seeds=True)
    records[0] = records[0] | {"finetune_test_accuracy": 1.0 + records[0]["finetune_test_accuracy"]}
    after = tables(records, tmp_path / "b", seeds=True)
    assert len(before) == 4 and all(before[name] != after[name] for name in before)


@pytest.mark.parametrize("export", KEPT, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_kept_pretraining_is_found_for_a_cell_of_its_folder(export):
    """``sweep`` restores ``pretrain-<key>.safetensors`` for the cells that find it
    (``kept.export_path``: the key of their pretraining settings, or a file an earlier
    spikessl kept for the same settings): one of the folder's records must, or, before its
    fine-tuning is recorded, a cell of the folder's command; the file's settings must be
    theirs."""
    config = load_checkpoint(export)["config"]
    cells = [
        Cell((), from_dict(Config, r["config"]), r["cell"], r["key"])
        for r in load_records(export.parent)
    ]

    def finding(cells) -> list[Config]:
        return [c.config for c in cells if kept.export_path(export.parent, c) == export]

    # no record yet: a sweep stopped in the fine-tuning of the file's first cell
    matching = finding(cells) or finding(folder_sweep(export.parent)[0].values())
    assert matching, f"no record or cell of {export.parent.name} pretrains as {export.name} holds"
    assert all(pretrained_with(config, cfg) for cfg in matching)


@pytest.mark.parametrize("parked", PARKED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_parked_run_belongs_to_a_cell_of_its_folders_sweep(parked):
    """``sweep`` resumes ``<stage>-<key>.partial.pt`` for the cells that find it
    (``kept.parked_path``): a cell of the folder's command (its run unfinished, it may have
    no record yet) must, and run that stage with the file's settings."""
    saved = load_checkpoint(parked)
    stage = {s.command: s for s in grid.STAGES}.get(parked.name.split("-")[0])
    assert stage is not None, f"{parked.name} is named for no stage a sweep parks"
    cells, _ = folder_sweep(parked.parent)
    matching = [c for c in cells.values() if kept.parked_path(parked.parent, c, stage) == parked]
    assert matching, f"no cell of {parked.parent.name}'s command runs {parked.name}'s {stage.noun}"
    assert all(stage.ran(saved["config"], c.config) for c in matching)
    assert saved["command"] == stage.command and "loop" in saved, "no training state to resume"
    if stage is not grid.PRETRAIN:  # a record of its result supersedes it: the sweep drops it
        result = f"{stage.command}_test_accuracy"
        records = {r["cell"]: r for r in load_records(parked.parent)}
        unrecorded = [c for c in matching if result not in records.get(c.name, {})]
        assert unrecorded, f"{parked.name}'s result is recorded: delete the file"
