"""Records: unreadable files named, tables formatted as written by hand."""

import pytest

from spikessl.records import load_records, write_tables


def test_write_tables_formats_by_hand(tmp_path):
    records = [
        {
            "grid": {"time_steps": "10"},
            "config": {"seed": 3, "pretrain": {"lr": 0.001}},
            "knn_accuracy_at_init": 88.5,
            "knn_accuracy": 98.76,
            "finetune_test_accuracy": 99.1,
            "wall_seconds": {"pretrain": 120.0, "finetune": 30.0},
        },
        {
            "grid": {"time_steps": "30"},
            "config": {"seed": 3, "pretrain": {"lr": 0.001}},
            "knn_accuracy": 97.0,
            "wall_seconds": {"pretrain": 90.0, "finetune": 6.0},
        },
    ]
    write_tables(records, tmp_path / "t.csv", tmp_path / "t.md")
    assert (tmp_path / "t.csv").read_text().splitlines() == [
        "time_steps,seed,knn_accuracy_at_init,knn_accuracy,finetune_test_accuracy,"
        "pretrain_minutes,finetune_minutes",
        "10,3,88.5,98.76,99.1,2.0,0.5",
        "30,3,,97.0,,1.5,0.1",
    ]
    assert (tmp_path / "t.md").read_text().splitlines() == [
        "| time_steps | seed | knn_accuracy_at_init | knn_accuracy | finetune_test_accuracy | "
        "pretrain_minutes | finetune_minutes |",
        "|---|---:|---:|---:|---:|---:|---:|",
        "| 10 | 3 | 88.50% | 98.76% | 99.10% | 2.0 | 0.5 |",
        "| 30 | 3 |  | 97.00% |  | 1.5 | 0.1 |",
    ]
    write_tables(records, tmp_path / "c.csv", tmp_path / "c.md", ["pretrain.lr", "knn_accuracy"])
    assert (tmp_path / "c.csv").read_text().splitlines()[1] == "0.001,98.76"


def test_corrupt_record_names_the_file(tmp_path):
    (tmp_path / "cell.json").write_text('{"cell": "cell", "key": ')
    with pytest.raises(ValueError, match=r"cell\.json is unreadable .*delete it"):
        load_records(tmp_path)
    (tmp_path / "cell.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a sweep record"):
        load_records(tmp_path, ["cell"])
    assert load_records(tmp_path, ["other"]) == []
