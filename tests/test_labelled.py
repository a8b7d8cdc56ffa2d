"""Which labelled images fine-tuning trains and validates on: the label budget, the
validation part, the epochs a small budget needs."""

import pytest
import torch
from tiny import small_config

from spikessl.data import load_data
from spikessl.labelled import finetune_epochs, labelled_split


def test_label_fraction_picks_a_stratified_subset_of_the_labelled_part(tmp_path):
    cfg = small_config(tmp_path, finetune={"label_fraction": 0.05})
    data = load_data(cfg, torch.device("cpu"))
    part, held = labelled_split(data, cfg)
    assert len(held) == 0  # no validation part by default
    assert set(part.tolist()) <= set(data.labelled.tolist())
    assert len(part) == 150  # 5% of 3000, 15 of each of the 10 classes
    assert torch.bincount(data.train_labels[part], minlength=10).tolist() == [15] * 10
    assert torch.equal(part, labelled_split(data, cfg)[0])  # seeded
    full = small_config(tmp_path, finetune={"label_fraction": 1.0})
    assert len(labelled_split(data, full)[0]) == 3000
    default = small_config(tmp_path)
    assert torch.equal(labelled_split(data, default)[0], data.labelled)


def test_val_fraction_holds_a_stratified_part_out_of_every_label_budget(tmp_path):
    cfg = small_config(tmp_path, finetune={"val_fraction": 0.1})
    data = load_data(cfg, torch.device("cpu"))
    held = labelled_split(data, cfg)[1]
    assert torch.bincount(data.train_labels[held], minlength=10).tolist() == [6] * 10
    assert set(held.tolist()) <= set(data.labelled.tolist())  # 10% of the 600 labelled
    # 5%: a quarter of the 54 left in each class, 13.5, rounded to 14
    for fraction, trained in ((0.0, 540), (0.05, 140), (1.0, 2940)):
        part, again = labelled_split(
            data, small_config(tmp_path, finetune={"val_fraction": 0.1, "label_fraction": fraction})
        )
        assert torch.equal(again, held)  # the same images out of every budget
        assert len(part) == trained and not set(part.tolist()) & set(held.tolist())
    assert torch.equal(held, labelled_split(data, cfg)[1])  # seeded
    with pytest.raises(ValueError, match=r"finetune.val_fraction.*\[0, 1\)"):
        small_config(tmp_path, finetune={"val_fraction": 1.0})


def test_a_validation_part_that_takes_a_whole_class_is_refused(tmp_path):
    # 2 images of each class, 1 of them labelled: the validation part takes that one
    cfg = small_config(tmp_path, data={"train_limit": 20}, finetune={"val_fraction": 0.1})
    data = load_data(cfg, torch.device("cpu"))
    with pytest.raises(
        ValueError, match=r"every labelled image of class\(es\) \[0, 1, .*9\]"
    ) as err:
        labelled_split(data, cfg)
    assert "has 1 of the fewest" in str(err.value) and "lower" not in str(err.value)
    # 4 labelled images of each class, three quarters rounded up to all of them: lower it
    many = small_config(tmp_path, data={"train_limit": 200}, finetune={"val_fraction": 0.9})
    with pytest.raises(ValueError, match="has 4 of the fewest.*a lower finetune.val_fraction"):
        labelled_split(load_data(many, torch.device("cpu")), many)
    # with every training label the other image of each class is trained on
    everything = small_config(
        tmp_path, data={"train_limit": 20}, finetune={"val_fraction": 0.1, "label_fraction": 1.0}
    )
    part = labelled_split(data, everything)[0]
    assert torch.bincount(data.train_labels[part], minlength=10).tolist() == [1] * 10


def test_min_steps_repeats_epochs_only_where_the_budget_is_short(tmp_path):
    ft = small_config(tmp_path, finetune={"epochs": 2, "batch_size": 4, "min_steps": 20}).finetune
    assert finetune_epochs(ft, 1000) == 2  # 250 steps an epoch: enough already
    assert finetune_epochs(ft, 10) == 7  # 3 steps an epoch: 7 epochs reach 20
    assert finetune_epochs(ft, 10, processes=2) == 10  # 2 steps an epoch (batch 4 per process)
