"""Kept pretrainings: exported beside the records, they rebuild the run on another machine."""

import json
import shutil

import pytest
from tiny import forbidden, tiny_base

from spikessl import pipeline
from spikessl.checkpoints import load_checkpoint
from spikessl.dryrun import planned_exports
from spikessl.grid import expand_grid, pretrain_key
from spikessl.kept import export_path
from spikessl.sweep import run_sweep


def test_a_kept_pretraining_stands_in_for_its_run_on_another_machine(swept, tmp_path, monkeypatch):

    cells = swept["cells"]
    here = tmp_path / "here"
    shutil.copytree(swept["tmp"] / "records", here / "records")
    shutil.copytree(swept["tmp"] / "runs", here / "runs")
    monkeypatch.setattr(pipeline, "pretrain", forbidden)
    monkeypatch.setattr(pipeline, "finetune", forbidden)
    logs: list[str] = []

    def sweep(where, records="records", keep=False):
        return run_sweep(
            cells,
            where / records,
            where / "runs",
            progress=False,
            log=logs.append,
            keep_pretrained=keep,
        )

    planned = planned_exports(
        cells, here / "records", here / "runs", {c.name: "recorded" for c in cells}
    )
    sweep(here, keep=True)  # recorded cells: nothing trains, their one pretraining is exported
    export = export_path(here / "records", cells[0])
    assert planned == [export] and export.exists()  # as the dry-run said
    assert export == export_path(here / "records", cells[1])
    assert export.name == f"pretrain-{pretrain_key(cells[0].config)}.safetensors"
    assert sum("kept as" in line for line in logs) == 1
    # another machine: no run directories, the records folder holds only the export
    there = tmp_path / "there"
    (there / "records").mkdir(parents=True)
    shutil.copy(export, there / "records")
    monkeypatch.undo()
    monkeypatch.setattr(pipeline, "pretrain", forbidden)
    logs.clear()
    records = sweep(there)
    assert sum("restored" in line for line in logs) == 1  # the second cell reuses it
    for new, old in zip(records, swept["first"], strict=True):
        for key in ("knn_accuracy", "knn_accuracy_at_init", "knn_by_epoch", "firing_rates"):
            assert new[key] == old[key], key
        assert new["pretrain_loss_by_epoch"] == old["pretrain_loss_by_epoch"]
        assert new["wall_seconds"]["pretrain"] == old["wall_seconds"]["pretrain"]
        # fine-tuned from the same weights on the same labelled images: the same result
        assert new["finetune_test_accuracy"] == old["finetune_test_accuracy"]
        assert new["finetune_accuracy_by_epoch"] == old["finetune_accuracy_by_epoch"]
    assert [r["pretrain_restored_from"] for r in records] == [export.name] * 2
    restored = there / "runs" / f"pretrain-{pretrain_key(cells[0].config)}"
    summary = json.loads((restored / "summary.json").read_text())
    assert summary["restored_from"] == str(there / "records" / export.name)
    assert "loop" not in load_checkpoint(restored)  # weights only: finished, never resumed
    # kept again from there, the export still holds the split's digest
    sweep(there, "again", keep=True)
    again = load_checkpoint(export_path(there / "again", cells[0]))
    assert again["split_labelled_sha256"] == load_checkpoint(export)["split_labelled_sha256"]


def test_an_export_of_another_pretraining_is_refused(swept, tmp_path, monkeypatch):
    from spikessl.checkpoints import export_safetensors

    monkeypatch.setattr(pipeline, "pretrain", forbidden)
    source = swept["tmp"] / "runs" / f"pretrain-{pretrain_key(swept['cells'][0].config)}"
    other = expand_grid(tiny_base("pretrain.lr=5e-4"), [])
    wrong = export_path(tmp_path / "records", other[0])  # named for the other cell
    export_safetensors(load_checkpoint(source), wrong, source)
    with pytest.raises(ValueError, match="with other settings than cell .* move it out"):
        run_sweep(other, tmp_path / "records", tmp_path / "runs", progress=False)
    assert not list((tmp_path / "runs").glob("pretrain-*"))


def test_an_export_without_its_runs_summary_cannot_rebuild_the_run(swept, tmp_path):
    from spikessl.checkpoints import export_safetensors
    from spikessl.runs import restore_run

    pre_dir = swept["tmp"] / "runs" / f"pretrain-{pretrain_key(swept['cells'][0].config)}"
    bare = export_safetensors(load_checkpoint(pre_dir), tmp_path / "bare.safetensors")
    with pytest.raises(ValueError, match="not its run's summary.*spikessl export RUN_DIR"):
        restore_run(load_checkpoint(bare), bare, tmp_path / "run")
    assert not (tmp_path / "run").exists()
