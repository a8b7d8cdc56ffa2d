"""Curves for ``spikessl compare``: read back from a run's folder and from a sweep record."""

import json

import pytest

from spikessl.curves import record_curves, run_curve


def test_a_runs_curve_is_its_test_accuracy_or_for_a_pretraining_its_knn(tmp_path):
    rows = [
        {"epoch": 1, "loss": 2.0, "knn_accuracy": 50.0, "test_accuracy": 10.0},
        {"epoch": 2, "loss": 1.0},  # not evaluated this epoch
        {"epoch": 3, "loss": 0.5, "knn_accuracy": 60.0, "test_accuracy": 20.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "summary.json").write_text(json.dumps({"command": "pretrain"}))
    assert run_curve(str(tmp_path)) == ("pretrain", {1: 50.0, 3: 60.0})
    (tmp_path / "summary.json").write_text(json.dumps({"command": "finetune"}))
    assert run_curve(str(tmp_path)) == ("finetune", {1: 10.0, 3: 20.0})
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "lo')
    with pytest.raises(ValueError, match="metrics.jsonl is corrupt"):
        run_curve(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pass a spikessl run directory"):
        run_curve(str(tmp_path / "nowhere"))
    for stage in ("pretrain", "finetune", "supervised"):
        (tmp_path / "pipe" / stage).mkdir(parents=True)
    finetune, supervised = tmp_path / "pipe" / "finetune", tmp_path / "pipe" / "supervised"
    with pytest.raises(FileNotFoundError, match=f"pipeline's folder.*e.g. {finetune} {supervised}"):
        run_curve(str(tmp_path / "pipe"))
    (tmp_path / "pre" / "pretrain").mkdir(parents=True)  # a pipeline stopped in its pretraining
    with pytest.raises(FileNotFoundError, match=f"e.g. {tmp_path / 'pre' / 'pretrain'}$"):
        run_curve(str(tmp_path / "pre"))


def test_a_records_curves_are_each_method_it_holds_at_its_epochs(tmp_path):
    record = {
        "cell": "base",
        "config": {"finetune": {"epochs": 4}},
        "finetune_epochs": 4,
        "finetune_accuracy_by_epoch": [50.0, 60.0, 65.0, 70.0],
    }
    path = tmp_path / "base.json"
    path.write_text(json.dumps(record))
    assert record_curves(str(path)) == {"SSL pretrained + fine-tuned": {1: 50, 2: 60, 3: 65, 4: 70}}
    record |= {"supervised_epochs": 4, "supervised_accuracy_by_epoch": [40.0, 45.0, 50.0, 55.0]}
    path.write_text(json.dumps(record))
    assert record_curves(str(path))["supervised only"] == {1: 40, 2: 45, 3: 50, 4: 55}
    path.write_text(json.dumps({"cell": "base"}))
    with pytest.raises(ValueError, match="holds no finetune_accuracy_by_epoch or supervised"):
        record_curves(str(path))
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="is not a sweep record"):
        record_curves(str(path))
