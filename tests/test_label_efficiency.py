"""``spikessl.label_efficiency``: per-fraction means, spreads, margins and verdicts over seeds,
from hand-made records, as markdown and CSV."""

from __future__ import annotations

import csv
import io

import pytest

from spikessl.label_efficiency import (
    label_efficiency_csv,
    label_efficiency_markdown,
    label_efficiency_summary,
)


def record(fraction: float, seed: int, ssl: float | None, sup: float | None, steps=None) -> dict:
    r = {"config": {"seed": seed, "finetune": {"label_fraction": fraction}}}
    if steps is not None:
        r["finetune_steps"] = steps
    if ssl is not None:
        r["finetune_test_accuracy"] = ssl
    if sup is not None:
        r["supervised_test_accuracy"] = sup
    return r


def test_two_records_of_one_fraction_and_seed_are_refused_not_overwritten() -> None:
    a, b = record(0.1, 0, 80.0, 79.0), record(0.1, 0, 70.0, 79.0)
    a["cell"], b["cell"] = "base", "seed=0__finetune.label_fraction=0.1"
    with pytest.raises(ValueError, match=r"cells base and seed=0__.* both measure 10% .* seed 0"):
        label_efficiency_summary([a, b])


def test_a_baseline_with_other_steps_than_its_fine_tuning_is_refused() -> None:
    same = record(0.01, 0, 50.0, 40.0) | {"finetune_steps": 282, "supervised_steps": 282}
    assert label_efficiency_summary([same])[0]["steps"] == 282
    other = same | {"cell": "seed=0", "supervised_steps": 94}
    with pytest.raises(ValueError, match="cell seed=0: fine-tuning took 282 steps, its supervised"):
        label_efficiency_summary([other])
    # a record older than finetune_steps, its baseline added later: nothing to compare
    older = record(0.01, 0, 50.0, 40.0) | {"supervised_steps": 282}
    assert label_efficiency_summary([older])[0]["steps"] is None


def test_label_efficiency_margin_pairs_the_seeds_that_have_both_methods() -> None:
    records = [
        record(0.01, 0, 50.0, 40.0),
        record(0.01, 1, 54.0, 44.0),
        record(0.01, 2, 90.0, None),  # its baseline not run yet
    ]
    (one,) = label_efficiency_summary(records)
    assert one["methods"]["SSL + fine-tune"]["n"] == 3  # every seed is shown
    assert (one["margin"], one["spread"]) == (10.0, 4.0)  # seeds 0 and 1 only: 52 - 42
    # the means shown differ by 64.67 - 42 = 22.67: the verdict says which seeds it compares
    assert one["verdict"] == "margin > spread (seeds with both: 0 1)"
    assert "| +10.00 | 4.00 | margin > spread (seeds with both: 0 1) |" in (
        label_efficiency_markdown([one])
    )


def test_label_efficiency_marks_a_fraction_whose_pretraining_diverged() -> None:
    jumped = record(0.01, 1, 54.0, 44.0) | {"pretrain_loss_by_epoch": [2.7, 1.1, 0.85, 4.74]}
    summary = label_efficiency_summary([record(0.01, 0, 50.0, 40.0), jumped])
    assert summary[0]["diverged"] == "seed 1 at epoch 4"
    md = label_efficiency_markdown(summary)
    assert "| 1% | — | 52.00% [50.00, 54.00] (n=2) † | 42.00% [40.00, 44.00] (n=2) |" in md
    assert md.endswith(
        "†: the SimCLR pretraining diverged (its loss jumped far above its lowest"
        " so far: the training loop's divergence warning) in 1%: seed 1 at epoch"
        " 4; the numbers are as measured, after all its epochs.\n"
    )
    assert "†" not in label_efficiency_markdown(label_efficiency_summary([record(0.01, 0, 1, 2)]))
    rows = list(csv.DictReader(io.StringIO(label_efficiency_csv(summary))))
    assert [r["diverged"] for r in rows] == ["seed 1 at epoch 4"] * 2  # both methods' rows
    assert "diverged" not in label_efficiency_csv(label_efficiency_summary([record(0.01, 0, 1, 2)]))


def test_label_efficiency_summary_math() -> None:
    records = [
        record(0.1, 0, 80.0, 79.0),
        record(0.01, 2, 52.0, 45.0, steps=282),
        record(0.01, 0, 50.0, 40.0, steps=282),
        record(0.01, 1, 54.0, 41.0, steps=282),
        record(0.1, 1, 81.0, 83.0),
        record(1.0, 0, 97.0, 96.0),
        record(0.05, 0, 60.0, None),
    ]
    summary = {s["fraction"]: s for s in label_efficiency_summary(records)}
    assert list(summary) == [0.01, 0.05, 0.1, 1.0]
    one = summary[0.01]
    ssl, sup = one["methods"]["SSL + fine-tune"], one["methods"]["supervised only"]
    assert (ssl["n"], ssl["mean"], ssl["min"], ssl["max"]) == (3, 52.0, 50.0, 54.0)
    assert ssl["seeds"] == [0, 1, 2] and ssl["accuracies"] == [50.0, 54.0, 52.0]
    assert (sup["n"], sup["mean"], sup["min"], sup["max"]) == (3, 42.0, 40.0, 45.0)
    # margin 52 - 42 = 10 against a spread of max(54 - 50, 45 - 40) = 5
    assert (one["margin"], one["spread"], one["verdict"]) == (10.0, 5.0, "margin > spread")
    ten = summary[0.1]  # 80.5 vs 81: -0.5 within a spread of 4
    assert (ten["margin"], ten["spread"], ten["verdict"]) == (-0.5, 4.0, "margin within spread")
    assert summary[1.0]["verdict"] == "one seed: no spread"
    assert summary[1.0]["margin"] == 1.0
    assert summary[0.05]["verdict"] == "no baseline run" and summary[0.05]["margin"] is None

    md = label_efficiency_markdown(list(summary.values()))
    assert (
        "| 1% | 282 | 52.00% [50.00, 54.00] (n=3) | 42.00% [40.00, 45.00] (n=3) | +10.00 | 5.00 "
        "| margin > spread |" in md
    )
    assert "| 5% | — | 60.00% [60.00, 60.00] (n=1) | — | — | — | no baseline run |" in md
    rows = list(csv.DictReader(io.StringIO(label_efficiency_csv(list(summary.values())))))
    assert len(rows) == 8
    assert rows[1] == {
        "label_fraction": "0.01",
        "method": "supervised only",
        "n": "3",
        "mean": "42.0",
        "min": "40.0",
        "max": "45.0",
        "seeds": "0 1 2",
        "accuracies": "40.0 41.0 45.0",
        "margin": "10.0",
        "spread": "5.0",
        "verdict": "margin > spread",
        "steps": "282",
    }
