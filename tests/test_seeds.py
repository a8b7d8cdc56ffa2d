"""Seed statistics: mean, min and max by hand, the margin against the spread, the tables."""

from spikessl.seeds import compare, compare_paired, describe, seed_summary, write_seed_tables


def _record(seed: int, fraction: str, ssl: float, supervised: float | None, knn: float) -> dict:
    record = {"grid": {"seed": str(seed), "finetune.label_fraction": fraction}}
    record |= {"config": {"seed": seed}, "knn_accuracy": knn, "finetune_test_accuracy": ssl}
    return record | ({} if supervised is None else {"supervised_test_accuracy": supervised})


def test_the_seed_table_marks_a_setting_whose_pretraining_diverged(tmp_path):
    def cell(seed: int, losses: list[float]) -> dict:
        grid = {"time_steps": "10", "seed": str(seed)}
        accuracies = {"knn_accuracy": 90.0, "finetune_test_accuracy": 95.0 + seed}
        return {
            "grid": grid,
            "config": {"seed": seed},
            "pretrain_loss_by_epoch": losses,
            **accuracies,
        }

    records = [cell(0, [2.0, 1.0, 0.9]), cell(1, [2.7, 1.1, 0.85, 4.74])]
    write_seed_tables(records, tmp_path / "s.csv", tmp_path / "s.md")
    md = (tmp_path / "s.md").read_text()
    assert "| 10 | 0 1 | 90.00% [90.00, 90.00] (n=2) † | 95.50% [95.00, 96.00] (n=2) † |  |" in md
    assert "diverged (its loss jumped" in md and "in time_steps=10: seed 1 at epoch 4;" in md
    assert (tmp_path / "s.csv").read_text().splitlines()[1].endswith(",seed 1 at epoch 4")
    write_seed_tables(records[:1], tmp_path / "s.csv", tmp_path / "s.md")
    assert "†" not in (tmp_path / "s.md").read_text()
    assert "diverged" not in (tmp_path / "s.csv").read_text()  # no column when none did


def test_seed_summary_by_hand(tmp_path):
    records = [
        _record(0, "0.01", 95.0, 92.0, 90.0),
        _record(0, "0.1", 97.0, 97.5, 90.0),
        _record(1, "0.01", 96.0, 93.0, 91.0),
        _record(1, "0.1", 98.0, 96.5, 91.0),
        _record(2, "0.01", 94.0, 91.0, 92.0),
        _record(2, "0.1", 90.0, None, 92.0),  # its baseline not run yet
    ]
    one, ten = seed_summary(records)
    assert one["setting"] == {"finetune.label_fraction": "0.01"} and one["seeds"] == [0, 1, 2]
    assert one["finetune_test_accuracy"] == {
        "values": [95.0, 96.0, 94.0],
        "n": 3,
        "mean": 95.0,
        "min": 94.0,
        "max": 96.0,
    }
    assert one["supervised_test_accuracy"]["mean"] == 92.0
    assert one["knn_accuracy"]["mean"] == 91.0
    # margin 95 - 92 = 3 points; spread max(96 - 94, 93 - 91) = 2
    assert (one["margin"], one["spread"], one["verdict"]) == (3.0, 2.0, "margin > spread")
    # over seeds 0 and 1, the two with a baseline: margin 97.5 - 97 = 0.5, spread max(1, 1) = 1
    # (with seed 2's 90.0 the SSL mean would be 95.0, 2 points behind instead of 0.5 ahead)
    assert ten["finetune_test_accuracy"]["n"] == 3 and ten["supervised_test_accuracy"]["n"] == 2
    assert (ten["margin"], ten["spread"]) == (0.5, 1.0)
    assert ten["verdict"] == "margin within spread (seeds with both: 0 1)"
    write_seed_tables(records, tmp_path / "s.csv", tmp_path / "s.md")
    md = (tmp_path / "s.md").read_text().splitlines()
    assert md[0] == (
        "| finetune.label_fraction | seeds | kNN | SSL + fine-tune | supervised only | margin "
        "| spread |  |"
    )
    assert md[2] == (
        "| 0.01 | 0 1 2 | 91.00% [90.00, 92.00] (n=3) | 95.00% [94.00, 96.00] (n=3) "
        "| 92.00% [91.00, 93.00] (n=3) | +3.00 | 2.00 | margin > spread |"
    )
    rows = (tmp_path / "s.csv").read_text().splitlines()
    assert rows[0].startswith("finetune.label_fraction,seeds,knn_accuracy_n,knn_accuracy_mean,")
    assert rows[2] == (
        "0.1,0 1 2,3,91.0,90.0,92.0,3,95.0,90.0,98.0,2,97.0,96.5,97.5,"
        "0.5,1.0,margin within spread (seeds with both: 0 1)"
    )


def test_compare_needs_two_seeds_of_each():
    assert compare(describe([95.0]), describe([92.0])) == (3.0, 0.0, "one seed: no spread")
    assert compare(describe([95.0, 96.0]), describe([])) == (None, None, "no baseline run")
    assert compare(describe([]), describe([92.0])) == (None, None, "no SSL result")
    # supervised ahead: margin -3 beyond a spread of 1
    assert compare(describe([90.0, 91.0]), describe([93.0, 94.0])) == (
        -3.0,
        1.0,
        "supervised ahead by > spread",
    )
    # the margin is that of the rounded means the tables show: 95.33 - 92.67
    assert compare(describe([95.0, 95.0, 96.0]), describe([92.0, 93.0, 93.0]))[0] == 2.66


def test_compare_paired_names_the_missing_side():
    """With no seed that has both results the verdict says what is missing: a table row of a
    sweep run without ``--baseline`` must not read as a run left unfinished."""
    ssl, supervised = {0: 95.0, 1: 96.0}, {2: 92.0}
    assert compare_paired(ssl, {}) == (None, None, "no baseline run", [])
    assert compare_paired({}, supervised) == (None, None, "no SSL result", [])
    assert compare_paired(ssl, supervised) == (None, None, "no seed has both", [])
    # seed 1 has no baseline yet: compared over seed 0 alone
    assert compare_paired(ssl, {0: 92.0}) == (3.0, 0.0, "one seed: no spread", [0])
