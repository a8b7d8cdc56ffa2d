"""The dry-run: what a sweep would do with each cell, said before it does it."""

import json
import shutil

import pytest
from tiny import forbidden, tiny_base

from spikessl import pipeline
from spikessl.checkpoints import load_checkpoint
from spikessl.dryrun import plan_cells, planned_exports
from spikessl.grid import expand_grid, pretrain_key
from spikessl.kept import export_path
from spikessl.sweep import run_sweep


def test_plan_cells_says_what_a_sweep_would_do_and_writes_nothing(swept, tmp_path, monkeypatch):
    from spikessl.checkpoints import export_safetensors

    monkeypatch.setattr(pipeline, "pretrain", forbidden)
    monkeypatch.setattr(pipeline, "finetune", forbidden)
    cells, records, runs = swept["cells"], swept["tmp"] / "records", swept["tmp"] / "runs"
    pre = runs / f"pretrain-{pretrain_key(cells[0].config)}"
    a, b = (c.name for c in cells)
    recorded = plan_cells(cells, records, runs, baseline=True)
    assert recorded == {a: "recorded", b: "recorded"}
    # --keep-pretrained would export the one finished pretraining the two cells share
    assert planned_exports(cells, records, runs, recorded) == [export_path(records, cells[0])]
    # the runs are there, the records are not: both stages of each cell done
    done = plan_cells(cells, tmp_path / "records", runs)
    assert done == {
        a: f"pretraining done ({pre}), fine-tuning done ({runs / cells[0].key / 'finetune'})",
        b: f"pretraining shared with {a}, fine-tuning done ({runs / cells[1].key / 'finetune'})",
    }
    # another fine-tuning setting: the pretraining is reused, the fine-tuning runs
    other = expand_grid(tiny_base(), ["finetune.lr=1e-1"])
    assert plan_cells(other, records, runs) == {
        "finetune.lr=1e-1": f"pretraining done ({pre}), fine-tuning to run"
    }
    # a fresh machine: the first cell pretrains, or restores the kept export; the second shares
    fresh = tmp_path / "fresh"
    assert plan_cells(cells, fresh / "records", fresh / "runs") == {
        a: "pretraining to run, fine-tuning to run",
        b: f"pretraining shared with {a}, fine-tuning to run",
    }
    (fresh / "records").mkdir(parents=True)
    export = export_path(fresh / "records", cells[0])
    export_safetensors(load_checkpoint(pre), export, pre)
    restored = plan_cells(cells, fresh / "records", fresh / "runs")
    assert restored == {
        a: f"pretraining restored from {export.name}, fine-tuning to run",
        b: f"pretraining shared with {a}, fine-tuning to run",
    }
    assert planned_exports(cells, fresh / "records", fresh / "runs", restored) == []
    # an export of another pretraining, under this grid's name, is refused as the sweep would
    lr = expand_grid(tiny_base(), ["pretrain.lr=1e-4"])
    shutil.copy(export, export_path(fresh / "records", lr[0]))
    assert plan_cells(lr, fresh / "records", fresh / "runs")["pretrain.lr=1e-4"].startswith(
        f"refused: {export_path(fresh / 'records', lr[0])} holds a pretrain run with other"
    )
    export_path(fresh / "records", lr[0]).unlink()
    # an interrupted pretraining resumes (then is shared); a recorded cell lacks its baseline
    (fresh / "runs" / pre.name).mkdir(parents=True)
    shutil.copy(pre / "checkpoint.pt", fresh / "runs" / pre.name)
    assert plan_cells(cells, fresh / "records", fresh / "runs")[a].startswith(
        f"pretraining restored from {export.name} (the run there moved aside)"  # finished wins
    )
    export.unlink()
    assert plan_cells(cells, fresh / "records", fresh / "runs") == {
        a: f"pretraining resumes from {fresh / 'runs' / pre.name}, fine-tuning to run",
        b: f"pretraining shared with {a}, fine-tuning to run",
    }
    shutil.copy(records / f"{a}.json", fresh / "records")
    record = json.loads((fresh / "records" / f"{a}.json").read_text())
    del record["supervised_test_accuracy"]
    (fresh / "records" / f"{a}.json").write_text(json.dumps(record))
    assert plan_cells(cells, fresh / "records", fresh / "runs", baseline=True)[a] == (
        "recorded; supervised baseline to run"
    )
    # a record made with other settings: refused, as the sweep would refuse the grid
    record["config"]["pretrain"]["epochs"] += 1
    (fresh / "records" / f"{a}.json").write_text(json.dumps(record | {"key": "0" * 12}))
    assert plan_cells(cells, fresh / "records", fresh / "runs")[a].startswith(
        "refused: " + str(fresh / "records" / f"{a}.json") + " was recorded with other settings"
    )
    assert sorted(p.name for p in fresh.rglob("*")) == sorted(
        [*("records", "runs", pre.name, "checkpoint.pt", f"{a}.json")]  # the export unlinked
    )
    assert not (tmp_path / "records").exists()


def test_plan_cells_shares_a_baseline_across_pretraining_settings(tmp_path):

    cells = expand_grid(tiny_base(), ["pretrain.lr=1e-3,1e-2"])
    a, b = (c.name for c in cells)
    assert plan_cells(cells, tmp_path / "records", tmp_path / "runs", baseline=True) == {
        a: "pretraining to run, fine-tuning to run, supervised baseline to run",
        b: f"pretraining to run, fine-tuning to run, supervised baseline shared with {a}",
    }
    assert not any(tmp_path.iterdir())


def test_a_pretraining_without_its_checkpoint_is_refused_as_the_sweep_refuses_it(
    swept, tmp_path, monkeypatch
):
    monkeypatch.setattr(pipeline, "pretrain", forbidden)
    monkeypatch.setattr(pipeline, "finetune", forbidden)
    cells, runs, records = swept["cells"], tmp_path / "runs", tmp_path / "records"
    pre = runs / f"pretrain-{pretrain_key(cells[0].config)}"
    shutil.copytree(swept["tmp"] / "runs" / pre.name, pre)
    (pre / "checkpoint.pt").unlink()  # deleted to save space, say
    said = f"refused: {pre} holds a finished pretraining without its checkpoint.pt"
    assert all(state.startswith(said) for state in plan_cells(cells, records, runs).values())
    with pytest.raises(ValueError, match="no weights to start from: put the file back"):
        run_sweep(cells, records, runs, progress=False)
    # a finished fine-tuning needs no pretrained weights: that cell is reused
    shutil.copytree(swept["tmp"] / "runs" / cells[0].key, runs / cells[0].key)
    plans = plan_cells(cells, records, runs)
    ft = runs / cells[0].key / "finetune"
    assert plans[cells[0].name] == f"pretraining done ({pre}), fine-tuning done ({ft})"
    assert plans[cells[1].name].startswith(said)
    assert not records.exists()
