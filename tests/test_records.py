"""Records: unreadable files named, tables formatted as written by hand."""

import pytest

from spikessl.records import (
    accuracy_curve,
    evaluated_epochs,
    load_records,
    pretrain_diverged_epoch,
    replacing,
    write_atomic,
    write_tables,
)


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


def test_a_diverged_pretraining_gets_its_own_column(tmp_path):
    steady = {"grid": {"seed": "0"}, "pretrain_loss_by_epoch": [2.0, 1.2, 0.9, 1.3, 0.8]}
    jumped = {"grid": {"seed": "1"}, "pretrain_loss_by_epoch": [2.7, 1.1, 0.85, 4.74, 4.8]}
    short = {"grid": {"seed": "2"}, "pretrain_loss_by_epoch": [5.0]}
    assert [pretrain_diverged_epoch(r) for r in (steady, jumped, short, {})] == [
        None,
        4,  # 4.74 > 2 x 0.85 and 3.89 above it; 1.3 at epoch 4 of `steady` is neither
        None,
        None,
    ]
    write_tables([steady, jumped], tmp_path / "t.csv", tmp_path / "t.md")
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert "pretrain_diverged_epoch" in lines[0] and lines[2].startswith("1,,,,4")
    write_tables([steady], tmp_path / "s.csv", tmp_path / "s.md")
    assert "diverged" not in (tmp_path / "s.csv").read_text()  # no column when none did


def test_corrupt_record_names_the_file(tmp_path):
    (tmp_path / "cell.json").write_text('{"cell": "cell", "key": ')
    with pytest.raises(ValueError, match=r"cell\.json is unreadable .*delete it"):
        load_records(tmp_path)
    (tmp_path / "cell.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a sweep record"):
        load_records(tmp_path, ["cell"])
    assert load_records(tmp_path, ["other"]) == []


def test_replacing_two_writers_of_one_path_never_share_a_file(tmp_path):
    path = tmp_path / "results.csv"
    write_atomic(path, "old\n")
    with replacing(path) as first, replacing(path) as second:  # e.g. two sweeps, one folder
        first.write(b"first\n")
        second.write(b"second\n")
        assert path.read_text() == "old\n"  # nothing visible before the block ends
    assert path.read_text() == "first\n"  # the last to finish wins, whole
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_replacing_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "summary.json"
    write_atomic(path, "{}\n")
    with pytest.raises(OSError, match="disk full"), replacing(path) as fh:
        fh.write(b'{"half": ')
        raise OSError("disk full")
    assert path.read_text() == "{}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_accuracy_curves_sit_at_the_epochs_that_measured_them():
    # finetune.min_steps stretched 20 planned epochs to 40: test accuracy every 2nd epoch
    record = {
        "config": {"finetune": {"epochs": 20}},
        "finetune_epochs": 40,
        "finetune_accuracy_by_epoch": [float(i) for i in range(20)],
    }
    curve = accuracy_curve(record)
    assert list(curve) == list(range(2, 41, 2)) and curve[40] == 19.0
    assert evaluated_epochs(7, 3) == [3, 6, 7]  # every ceil(7/3) = 3rd and the last
    assert evaluated_epochs(5, 5) == [1, 2, 3, 4, 5]
    assert accuracy_curve(record, "supervised") is None  # no baseline in this record
    with pytest.raises(ValueError, match="20 finetune test accuracies for 41 epochs"):
        accuracy_curve({**record, "finetune_epochs": 41})  # 41 epochs measure 21


def test_an_older_records_epochs_follow_from_its_steps():
    # CIFAR-10 at 1% of the labels: 500 images, 4 steps of 128 an epoch; 1,580 min_steps
    # make 395 epochs (1,580 steps), measured every ceil(395 / 20) = 20th and the last
    finetune = {"epochs": 20, "min_steps": 1580, "batch_size": 128, "label_fraction": 0.01}
    record = {
        "cell": "seed=0",
        "config": {"data": {"name": "cifar10", "labelled_fraction": 0.2}, "finetune": finetune},
        "finetune_steps": 1580,
        "finetune_accuracy_by_epoch": [30.0] * 20,
    }
    assert list(accuracy_curve(record)) == [*range(20, 381, 20), 395]
    with pytest.raises(ValueError, match="does not say at which epochs its 20 finetune"):
        accuracy_curve({**record, "finetune_steps": 1600})  # no epoch count gives these steps
