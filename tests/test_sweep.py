"""Sweeps: shared stages, records that survive interruption, tables, the environment."""

import csv
import json
import re
import shutil
import signal
from pathlib import Path

import pytest
import torch
import yaml
from tiny import forbidden, tiny_base

from spikessl import pipeline
from spikessl.checkpoints import load_checkpoint
from spikessl.config_yaml import to_dict
from spikessl.grid import expand_grid, pretrain_key
from spikessl.machine import cpu_model, speed_probe
from spikessl.resumable import Interrupted
from spikessl.sweep import run_sweep


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (
            ["finetune.lr=1e-3", "time_steps=2,0"],
            "grid cell finetune.lr=1e-3__time_steps=0: time_steps",
        ),
        (["pretrain.lrr=1e-3"], "Did you mean 'lr'"),
        (["time_steps"], "key=v1,v2"),
        (["time_steps=2", "time_steps=3"], "given twice"),
        (["finetune.lr=1e-3,1e-3"], "same cell name"),
        (["pretrain.batch_size=64,many"], "wrong type"),
    ],
)
def test_invalid_grid_fails_before_anything_runs(monkeypatch, tmp_path, grid, message):
    monkeypatch.setattr(pipeline, "pretrain", forbidden)
    with pytest.raises(ValueError, match=re.escape(message)):
        run_sweep(expand_grid(tiny_base(), grid), tmp_path / "records", tmp_path / "runs")
    assert not (tmp_path / "records").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("which", ["records", "runs"])
def test_a_file_given_as_a_folder_fails_before_anything_runs(monkeypatch, tmp_path, which):
    monkeypatch.setattr(pipeline, "pretrain", forbidden)
    (tmp_path / which).write_text("mine")
    option = "--records" if which == "records" else "--run-dir"
    with pytest.raises(ValueError, match=f"{option} .*{which} is a file, not a folder"):
        run_sweep(expand_grid(tiny_base(), []), tmp_path / "records", tmp_path / "runs")
    assert (tmp_path / which).read_text() == "mine"


def test_cells_share_one_pretraining(swept):
    cells, runs = swept["cells"], swept["tmp"] / "runs"
    assert sorted(p.name for p in runs.glob("pretrain-*")) == [
        f"pretrain-{pretrain_key(cells[0].config)}"
    ]
    for cell in cells:
        assert (runs / cell.key / "finetune" / "summary.json").exists()
    # the baseline depends on the fine-tuning lr: one run per cell, added on the rerun only
    assert len(list(runs.glob("supervised-*"))) == 2 == len(swept["supervised_calls"])
    assert all("supervised_test_accuracy" not in r for r in swept["first"])
    assert all("supervised_test_accuracy" in r for r in swept["second"])
    knn = {r["knn_accuracy"] for r in swept["second"]}
    assert len(knn) == 1  # one pretrained encoder behind both cells


def test_record_holds_the_results(swept):
    cells, records = swept["cells"], swept["second"]
    assert [r["cell"] for r in records] == [c.name for c in cells]
    assert [r["grid"] for r in records] == [{"finetune.lr": "1e-3"}, {"finetune.lr": "1e-2"}]
    path = swept["tmp"] / "records" / f"{cells[0].name}.json"
    assert json.loads(path.read_text()) == records[0]
    assert path.stat().st_size < 20_000
    record, cell = records[0], cells[0]
    assert record["key"] == cell.key
    assert "root" not in record["config"]["data"]
    assert record["config"]["finetune"]["lr"] == 1e-3
    pre_dir = swept["tmp"] / "runs" / f"pretrain-{pretrain_key(cell.config)}"
    pre = json.loads((pre_dir / "summary.json").read_text())
    assert record["knn_accuracy"] == pre["knn_accuracy"]
    assert record["knn_accuracy_at_init"] == pre["knn_accuracy_at_init"]
    assert record["firing_rates"] == pre["firing_rates"]
    assert record["knn_by_epoch"] == {"1": pre["knn_accuracy"]}
    assert record["pretrain_loss_by_epoch"] == [round(pre["final_loss"], 5)]
    fin = json.loads((swept["tmp"] / "runs" / cell.key / "finetune" / "summary.json").read_text())
    assert record["finetune_test_accuracy"] == fin["test_accuracy"]
    assert record["finetune_accuracy_by_epoch"] == [fin["test_accuracy"]]
    assert record["finetune_epochs"] == fin["epochs"] == record["supervised_epochs"] == 1
    assert record["supervised_accuracy_by_epoch"] == [record["supervised_test_accuracy"]]
    assert set(record["wall_seconds"]) == {"pretrain", "finetune", "supervised"}
    assert record["environment"]["device"] == "cpu"
    assert record["environment"]["torch"] == torch.__version__
    assert record["environment"]["threads"] == torch.get_num_threads()
    assert record["environment"]["cpu"] == cpu_model() != ""
    assert record["environment"]["speed_probe"] == speed_probe("cpu") > 0


def test_recorded_cells_are_skipped_and_tables_rewritten(swept, monkeypatch):
    records_dir = swept["tmp"] / "records"
    for name in ("results.csv", "results.md"):
        (records_dir / name).unlink()
    monkeypatch.setattr(pipeline, "pretrain", forbidden)
    monkeypatch.setattr(pipeline, "finetune", forbidden)
    logs: list[str] = []
    again = run_sweep(
        swept["cells"], records_dir, swept["tmp"] / "runs", baseline=True, log=logs.append
    )
    assert again == swept["second"]
    assert sum("recorded, skipping" in line for line in logs) == 2
    assert (records_dir / "results.csv").exists() and (records_dir / "results.md").exists()


def test_tables_list_the_grid_in_order(swept):
    records_dir, records = swept["tmp"] / "records", swept["second"]
    with open(records_dir / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == [
        "finetune.lr",
        "seed",
        "knn_accuracy_at_init",
        "knn_accuracy",
        "finetune_test_accuracy",
        "supervised_test_accuracy",
        "pretrain_minutes",
        "finetune_minutes",
        "supervised_minutes",
    ]
    assert [r["finetune.lr"] for r in rows] == ["1e-3", "1e-2"]
    for row, record in zip(rows, records):
        assert float(row["finetune_test_accuracy"]) == record["finetune_test_accuracy"]
        assert float(row["supervised_test_accuracy"]) == record["supervised_test_accuracy"]
        assert float(row["pretrain_minutes"]) == round(record["wall_seconds"]["pretrain"] / 60, 2)
        assert row["seed"] == "0"
    md = (records_dir / "results.md").read_text().splitlines()
    assert len(md) == 4 and md[0].startswith("| finetune.lr | seed |")
    assert f"| {records[1]['finetune_test_accuracy']:.2f}% |" in md[3]
    assert md[3].startswith("| 1e-2 | 0 |")


def test_stale_record_is_refused_before_anything_runs(swept, tmp_path, monkeypatch):
    records_dir = tmp_path / "records"
    shutil.copytree(swept["tmp"] / "records", records_dir)
    first, second = swept["cells"]
    (records_dir / f"{first.name}.json").unlink()  # this cell would run first...
    stale = json.loads((records_dir / f"{second.name}.json").read_text())
    stale["key"] = "0123456789ab"  # ...but the second cell's record is from other settings
    stale["config"]["pretrain"]["lr"] = 0.5
    (records_dir / f"{second.name}.json").write_text(json.dumps(stale))
    monkeypatch.setattr(pipeline, "pretrain", forbidden)
    with pytest.raises(ValueError, match="another --records directory, or delete"):
        run_sweep(swept["cells"], records_dir, swept["tmp"] / "runs", log=lambda _: None)


def _as_if_older(config_yaml, renamed, new_name: str) -> None:
    """Make a stage look written by a spikessl before ``grad_clip``: its config without the
    two fields, its directory ``renamed`` (itself or its parent) under another key."""
    tree = yaml.safe_load(config_yaml.read_text())
    del tree["pretrain"]["grad_clip"], tree["finetune"]["grad_clip"]
    config_yaml.write_text(yaml.safe_dump(tree))
    renamed.rename(renamed.parent / new_name)


def test_run_dirs_from_before_a_new_config_field_are_reused(swept, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    shutil.copytree(swept["tmp"] / "runs", runs)
    for i, stage in enumerate(sorted(runs.glob("*-*"))):  # pretrain-KEY, supervised-KEY
        _as_if_older(stage / "config.yaml", stage, f"{stage.name.split('-')[0]}-old{i}")
    for i, cell in enumerate(swept["cells"]):  # KEY/finetune
        _as_if_older(runs / cell.key / "finetune" / "config.yaml", runs / cell.key, f"old{i}")
    assert len(list(runs.glob("old*/finetune"))) == 2 and len(list(runs.glob("*-old*"))) == 3
    monkeypatch.setattr(pipeline, "pretrain", forbidden)
    monkeypatch.setattr(pipeline, "finetune", forbidden)
    logs: list[str] = []
    again = run_sweep(swept["cells"], tmp_path / "records", runs, baseline=True, log=logs.append)
    assert sum("finished earlier, reusing" in line and "old" in line for line in logs) == 6
    for what in ("finetune_test_accuracy", "supervised_test_accuracy", "knn_accuracy"):
        assert [r[what] for r in again] == [r[what] for r in swept["second"]]


def test_run_dir_with_other_settings_is_never_reused(swept, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    pre = swept["tmp"] / "runs" / f"pretrain-{pretrain_key(swept['cells'][0].config)}"
    shutil.copytree(pre, runs / "pretrain-0123456789ab")
    tree = yaml.safe_load((runs / "pretrain-0123456789ab" / "config.yaml").read_text())
    tree["pretrain"]["lr"] = 0.5  # an old setting changed: another pretraining
    (runs / "pretrain-0123456789ab" / "config.yaml").write_text(yaml.safe_dump(tree))
    (runs / "pretrain-broken").mkdir()  # not YAML: skipped, not an error
    (runs / "pretrain-broken" / "config.yaml").write_text("{: [")
    monkeypatch.setattr(pipeline, "pretrain", forbidden)
    with pytest.raises(AssertionError, match="nothing should train"):
        run_sweep(swept["cells"][:1], tmp_path / "records", runs, log=lambda _: None)


def test_interrupted_pretraining_resumes_to_the_same_result(swept, tmp_path, monkeypatch):
    cells = expand_grid(tiny_base(), ["finetune.lr=1e-3"])  # the fixture's first cell
    assert cells[0].key == swept["cells"][0].key
    runs, records_dir = tmp_path / "runs", tmp_path / "records"
    real_nt_xent, steps = pipeline.nt_xent, []

    def stop_at_step_3(*args, **kwargs):
        steps.append(1)
        if len(steps) == 3:  # what `kill` does: the loop checkpoints after this step
            signal.raise_signal(signal.SIGTERM)
        return real_nt_xent(*args, **kwargs)

    monkeypatch.setattr(pipeline, "nt_xent", stop_at_step_3)
    with pytest.raises(Interrupted):
        run_sweep(cells, records_dir, runs, progress=False, log=lambda _: None)
    monkeypatch.undo()
    pre_dir = runs / f"pretrain-{pretrain_key(cells[0].config)}"
    assert load_checkpoint(pre_dir)["step"] == 3
    assert not (pre_dir / "summary.json").exists() and not records_dir.exists()

    resumed, real_pretrain = [], pipeline.pretrain

    def spy(cfg, run_dir, progress, resume=None):
        resumed.append(resume is not None)
        return real_pretrain(cfg, run_dir, progress, resume=resume)

    monkeypatch.setattr(pipeline, "pretrain", spy)
    logs: list[str] = []
    (record,) = run_sweep(cells, records_dir, runs, progress=False, log=logs.append)
    assert resumed == [True] and any("resuming" in line for line in logs)
    reference = swept["tmp"] / "runs" / pre_dir.name  # the fixture's uninterrupted run
    a, b = load_checkpoint(pre_dir), load_checkpoint(reference)
    for key in b["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    expected, a_knn = swept["second"][0], record["knn_accuracy"]
    for field in ("knn_accuracy", "pretrain_loss_by_epoch", "finetune_test_accuracy"):
        assert record[field] == expected[field], field
    assert json.loads((pre_dir / "summary.json").read_text())["resumed"] is True
    # killed while writing summary.json: the final checkpoint finishes it again
    (pre_dir / "summary.json").write_text('{"command": "pre')
    (records_dir / f"{cells[0].name}.json").unlink()
    (again,) = run_sweep(cells, records_dir, runs, progress=False, log=lambda _: None)
    assert again["pretrain_loss_by_epoch"] == record["pretrain_loss_by_epoch"]
    assert json.loads((pre_dir / "summary.json").read_text())["knn_accuracy"] == a_knn


def test_run_killed_before_its_first_checkpoint_starts_afresh(tmp_path, monkeypatch):
    (cell,) = expand_grid(tiny_base(), [])
    pre_dir = tmp_path / "runs" / f"pretrain-{pretrain_key(cell.config)}"
    pre_dir.mkdir(parents=True)
    (pre_dir / "config.yaml").write_text("seed: 0\n")
    (pre_dir / "metrics.jsonl").write_text("")
    seen = []

    def fake_pretrain(cfg, run_dir, progress, resume=None):
        seen.append((resume, run_dir.exists()))
        raise RuntimeError("stop here")

    monkeypatch.setattr(pipeline, "pretrain", fake_pretrain)
    with pytest.raises(RuntimeError, match="stop here"):
        run_sweep([cell], tmp_path / "records", tmp_path / "runs", log=lambda _: None)
    assert seen == [(None, False)]


def fake_record(cell, accuracy: float) -> dict:
    """What ``sweep._run_cell`` returns, with only a fine-tuned accuracy measured."""
    return {
        "cell": cell.name,
        "key": cell.key,
        "grid": dict(cell.overrides),
        "config": to_dict(cell.config),
        "finetune_test_accuracy": accuracy,
    }


def test_seeds_are_summarised_when_the_grid_varies_them(tmp_path, monkeypatch):
    from spikessl import sweep

    def fake_cell(cell, runs_root, records_dir, progress, log):
        return fake_record(cell, 90.0 + cell.config.seed + 100 * cell.config.finetune.lr)

    monkeypatch.setattr(sweep, "_run_cell", fake_cell)
    cells = expand_grid(tiny_base(), ["seed=0,1", "finetune.lr=0.01,0.02"])
    run_sweep(cells, tmp_path / "records", tmp_path / "runs", progress=False, log=print)
    lines = (tmp_path / "records" / "seeds.md").read_text().splitlines()
    assert lines[2].startswith("| 0.01 | 0 1 |  | 91.50% [91.00, 92.00] (n=2) |")
    assert lines[3].startswith("| 0.02 | 0 1 |  | 92.50% [92.00, 93.00] (n=2) |")
    one_seed = expand_grid(tiny_base(), ["finetune.lr=0.01,0.02"])
    run_sweep(one_seed, tmp_path / "one", tmp_path / "runs", progress=False, log=print)
    assert not (tmp_path / "one" / "seeds.md").exists()


def test_a_cell_that_stops_on_its_numbers_does_not_stop_the_others(tmp_path, monkeypatch):
    from spikessl import sweep
    from spikessl.health import Diverged

    def fake_cell(cell, runs_root, records_dir, progress, log):
        if cell.config.finetune.lr == 0.02:
            raise Diverged("finetune", "finetune: its loss diverged at epoch 3 (5.1): stopped")
        return fake_record(cell, 90.0)

    monkeypatch.setattr(sweep, "_run_cell", fake_cell)
    lines: list[str] = []
    cells = expand_grid(tiny_base(), ["finetune.lr=0.01,0.02,0.03"])
    stopped = r"1 cell\(s\) stopped: finetune\.lr=0\.02 \(why: the log above; the grid"
    with pytest.raises(FloatingPointError, match=stopped):
        run_sweep(cells, tmp_path / "records", tmp_path / "runs", progress=False, log=lines.append)
    assert any("finetune.lr=0.02: stopped" in line and "epoch 3" in line for line in lines)
    recorded = sorted(p.name for p in (tmp_path / "records").glob("*.json"))
    assert recorded == ["finetune.lr=0.01.json", "finetune.lr=0.03.json"]
    assert "0.03" in (tmp_path / "records" / "results.md").read_text()


def test_a_baseline_that_stops_keeps_the_cells_ssl_record(tmp_path, monkeypatch):
    from spikessl import sweep

    def fake_cell(cell, runs_root, records_dir, progress, log):
        return fake_record(cell, 90.0)

    def diverging_baseline(*args):
        raise FloatingPointError("supervised: loss is nan at epoch 1, step 2")

    monkeypatch.setattr(sweep, "_run_cell", fake_cell)
    monkeypatch.setattr(sweep, "_add_supervised", diverging_baseline)
    cells = expand_grid(tiny_base(), ["finetune.lr=0.01"])
    with pytest.raises(
        sweep.CellsFailed, match=r"stopped: finetune\.lr=0\.01 \(its supervised baseline\) \(why"
    ):
        run_sweep(cells, tmp_path / "records", tmp_path / "runs", baseline=True, log=print)
    record = json.loads((tmp_path / "records" / "finetune.lr=0.01.json").read_text())
    assert record["finetune_test_accuracy"] == 90.0 and "supervised_test_accuracy" not in record
    monkeypatch.setattr(sweep, "_run_cell", forbidden)  # a rerun only retries the baseline
    with pytest.raises(sweep.CellsFailed):
        run_sweep(cells, tmp_path / "records", tmp_path / "runs", baseline=True, log=print)


def test_a_fine_tuning_that_stops_still_keeps_its_finished_pretraining(tmp_path, monkeypatch):
    from spikessl import sweep
    from spikessl.health import Stopped

    finished, kept = set(), []

    def fake_cell(cell, runs_root, records_dir, progress, log):
        finished.add(cell.name)  # the pretraining is done, then the fine-tuning stops
        raise Stopped("finetune", "finetune: loss is nan at epoch 1, step 1")

    def keep(cell, runs_root, records_dir, log):  # kept.keep: only a finished run
        kept.extend([cell.name] if cell.name in finished and cell.name not in kept else [])

    monkeypatch.setattr(sweep, "_run_cell", fake_cell)
    monkeypatch.setattr(sweep.kept, "keep", keep)
    cells = expand_grid(tiny_base(), ["finetune.lr=0.01"])
    with pytest.raises(sweep.CellsFailed):
        run_sweep(cells, tmp_path / "r", tmp_path / "runs", log=print, keep_pretrained=True)
    assert kept == ["finetune.lr=0.01"]


def test_cells_that_share_a_stopped_pretraining_are_not_run_again(tmp_path, monkeypatch):
    from spikessl import sweep
    from spikessl.health import Stopped

    ran, lines = [], []

    def fake_cell(cell, runs_root, records_dir, progress, log):
        ran.append(cell.name)
        if cell.config.pretrain.epochs == 1:
            raise Stopped("pretrain", "pretrain: loss is nan at epoch 1, step 3")
        if cell.config.finetune.lr == 0.03:  # a fine-tuning that stops: its pretraining is fine
            raise Stopped("finetune", "finetune: loss is nan at epoch 1, step 1")
        return fake_record(cell, 90.0)

    monkeypatch.setattr(sweep, "_run_cell", fake_cell)
    cells = expand_grid(tiny_base(), ["pretrain.epochs=1,2", "finetune.lr=0.01,0.02,0.03"])
    with pytest.raises(sweep.CellsFailed, match=r"4 cell\(s\) stopped"):
        run_sweep(cells, tmp_path / "records", tmp_path / "runs", log=lines.append)
    one = "pretrain.epochs=1__finetune.lr="
    assert ran == [f"{one}0.01", *(f"pretrain.epochs=2__finetune.lr=0.0{i}" for i in (1, 2, 3))]
    for lr in ("0.02", "0.03"):
        said = f"{one}{lr}: skipped: it shares the pretraining that stopped in {one}0.01"
        assert any(line.endswith(said) for line in lines), lines


def test_cells_with_one_name_are_refused_before_anything_runs(tmp_path):
    from spikessl.dryrun import plan_cells

    cell = expand_grid(tiny_base(), [])[0]
    for call in (run_sweep, plan_cells):
        with pytest.raises(ValueError, match="two cells of the grid have the same name"):
            call([cell, cell], tmp_path / "records", tmp_path / "runs")
    assert not any(tmp_path.iterdir())


def test_a_sweep_over_val_fraction_shares_one_pretraining_and_records_validation(tmp_path):
    # tiny: 40 labelled images, 4 of each class; a quarter of them (1 each) held out
    cells = expand_grid(tiny_base("finetune.epochs=3"), ["finetune.val_fraction=0,0.25"])
    records = run_sweep(
        cells, tmp_path / "records", tmp_path / "runs", baseline=True, progress=False
    )
    assert len(list((tmp_path / "runs").glob("pretrain-*"))) == 1  # validation: fine-tuning's
    plain, held = records
    assert not [k for k in plain if "val_" in k]
    for stage in ("finetune", "supervised"):
        run_dir = Path(held["run_dirs"][stage])
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["val_images"] == 10 and summary["labelled_images"] == 30
        epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
        assert (
            held[f"{stage}_val_accuracy"] == summary["val_accuracy"] == epochs[-1]["val_accuracy"]
        )
        best = max(epochs, key=lambda r: r["val_accuracy"])  # the first of equals
        assert held[f"{stage}_best_val_epoch"] == best["epoch"]
        assert held[f"{stage}_best_val_accuracy"] == best["val_accuracy"]
        assert held[f"{stage}_test_accuracy_at_best_val"] == best["test_accuracy"]
        assert held[f"{stage}_val_accuracy"] in {10.0 * n for n in range(11)}  # of 10 images
    with open(tmp_path / "records" / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [c for c in rows[0] if "accuracy" in c][2:] == [
        "finetune_test_accuracy",
        "finetune_val_accuracy",
        "supervised_test_accuracy",
        "supervised_val_accuracy",
    ]
    assert rows[0]["finetune_val_accuracy"] == "" != rows[1]["finetune_val_accuracy"]
    table = (tmp_path / "records" / "results.md").read_text().splitlines()
    assert (
        "| finetune_test_accuracy | finetune_val_accuracy | supervised_test_accuracy |"
        in (table[0])
    )
    assert f"| {held['finetune_val_accuracy']:.2f}% |" in table[3]


def test_a_records_validation_numbers_come_from_the_stage_summary():
    from spikessl.sweep import validation

    summary = {"test_accuracy": 90.0, "val_accuracy": 88.5, "best_val_epoch": 3}
    assert validation(summary, "supervised") == {
        "supervised_val_accuracy": 88.5,
        "supervised_best_val_epoch": 3,
    }
    assert validation({"test_accuracy": 90.0}, "finetune") == {}  # no validation part
