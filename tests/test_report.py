"""``spikessl.report``: Tables I-IV and Figs. 6-7, from hand-made records (the label-efficiency
math: ``test_label_efficiency.py``; the files it writes: ``test_reproduce.py``'s end-to-end run)."""

from __future__ import annotations

from spikessl.paper import BEST
from spikessl.protocol import base_config, paper_rows, table_titles
from spikessl.report import (
    curves_png,
    table_rows,
    tables_markdown,
)


def test_tables_compare_with_the_paper_and_show_missing_cells_as_dashes() -> None:
    base = base_config("mnist", "paper")
    records = {
        "time_steps=30": {
            "finetune_test_accuracy": 95.0,
            "knn_accuracy": 90.5,
            "supervised_test_accuracy": 93.0,
        },
        "time_steps=10": {"finetune_test_accuracy": 80.0, "knn_accuracy": 70.0},
        "augment.views=crop-noise": {
            "finetune_test_accuracy": 92.0,
            "knn_accuracy": 88.0,
            "pretrain_loss_by_epoch": [2.6, 1.6, 0.9, 4.7, 4.8],  # jumps at epoch 4
        },
    }
    layout = paper_rows("mnist", base)
    rows = {(r["table"], r["setting"]): r for r in table_rows(layout, records)}
    assert rows["I", "10"] == {
        "table": "I",
        "setting": "10",
        "cell": "time_steps=10",
        "paper": 78.21,
        "ours": 80.0,
        "knn": 70.0,
        "difference": 1.79,
        "pretrain_diverged_epoch": None,
    }
    assert (rows["I", "20"]["paper"], rows["I", "20"]["ours"], rows["I", "20"]["difference"]) == (
        91.54,
        None,
        None,
    )
    for key in (("I", "30"), ("II", "256"), ("III", "rotate-noise")):  # all the best cell
        assert (rows[key]["cell"], rows[key]["ours"], rows[key]["difference"]) == (
            "time_steps=30",
            95.0,
            0.77,
        )
    assert rows["III", "crop-noise"]["difference"] == -1.86
    assert rows["II", "64"]["ours"] is None
    best = rows["IV", "SSL SNN + fine-tuning (best cell)"]
    assert (best["paper"], best["ours"], best["knn"]) == (BEST[0], 95.0, 90.5)
    supervised = rows["IV", "supervised-only SNN, same labels"]
    assert (supervised["paper"], supervised["ours"], supervised["knn"]) == (None, 93.0, None)
    assert rows["IV", "[21] spiking self-supervised (cited)"]["paper"] == 93.06
    assert rows["IV", "[22] SimCLR ANN (cited)"]["paper"] is None
    assert len(rows) == 13  # 3 + 3 + 3 + 4: no extra "this run's base" rows

    md = tables_markdown("MNIST", table_titles(), list(rows.values()))
    assert "| 10 | 78.21% | 80.00% | 70.00% | +1.79 |" in md
    assert "| 20 | 91.54% | — | — | — |" in md
    assert rows["III", "crop-noise"]["pretrain_diverged_epoch"] == 4
    assert "| crop-noise | 93.86% | 92.00% † | 88.00% † | -1.86 |" in md
    assert "diverged (its loss jumped" in md and "in augment.views=crop-noise at epoch 4;" in md
    assert "†" not in tables_markdown("MNIST", table_titles(), [rows["I", "10"]])
    assert "| [22] SimCLR ANN (cited) | — | — | — | — |" in md
    assert md.count("### Table") == 4
    assert "fine-tuning on the labelled 20% (final epoch)" in md
    thirty = tables_markdown("MNIST", table_titles(), list(rows.values()), labelled="30%")
    assert "fine-tuning on the labelled 30% (final epoch)" in thirty  # data.labelled_fraction

    cifar = table_rows(paper_rows("cifar10", base), records)
    cifar = {(r["table"], r["setting"]): r for r in cifar}
    assert cifar["I", "10"]["paper"] == 51.63 and cifar["I", "10"]["difference"] == 28.37
    assert cifar["IV", "[22] SimCLR ANN (cited)"]["paper"] == 60.1
    assert cifar["IV", "[21] spiking self-supervised (cited)"]["paper"] is None


def test_figs_6_7_are_skipped_with_a_reason_for_a_record_that_does_not_say_its_epochs(tmp_path):
    # a record from before finetune_steps: min_steps stretched its fine-tuning, by how much
    # it does not say; the figure is left out and the rest of the report still written
    finetune = {"epochs": 20, "min_steps": 1880, "batch_size": 128}
    old = {"config": {"data": {"name": "mnist"}, "finetune": finetune}}
    old["finetune_accuracy_by_epoch"] = [90.0] * 20
    said = []
    assert not curves_png("MNIST", old, tmp_path / "fig6.png", said.append)
    assert "no fig6.png: record ? does not say at which epochs its 20 finetune" in said[0]
    assert not (tmp_path / "fig6.png").exists()
