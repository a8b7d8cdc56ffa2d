"""``spikessl.protocol``: the paper's grids around its best setting as sweep cells, and the rows
of Tables I-IV that measure them (the command: ``test_reproduce.py``)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from spikessl.config import load_config
from spikessl.config_yaml import parse_overrides
from spikessl.grid import pretrain_key
from spikessl.paper import QUICK
from spikessl.protocol import base_config, labelled_steps, paper_rows, parse_seeds, plan, select


def names(steps) -> list[list[str]]:
    return [[cell.name for cell in step.cells] for step in steps]


# ------------------------------------------------------------------------------------------
# The plan
# ------------------------------------------------------------------------------------------


def test_plan_is_the_papers_grid_around_the_best_setting() -> None:
    base = base_config("mnist", "paper")
    steps = plan(base, [0, 1, 2])
    fractions = ["0.01", "0.05", "0.1", "1.0"]  # 0.2: the best cell's own fine-tuning
    assert names(steps) == [
        ["time_steps=30"],
        ["time_steps=10", "time_steps=20"],
        ["pretrain.batch_size=64", "pretrain.batch_size=128"],
        ["augment.views=crop-rotate", "augment.views=crop-noise"],
        [f"seed=0__finetune.label_fraction={f}" for f in fractions],
        [f"seed={s}__finetune.label_fraction={f}" for s in (1, 2) for f in ("0.01", "0.1")],
    ]
    assert [s.baseline for s in steps] == [True, False, False, False, True, True]
    assert [s.what for s in steps] == ["tables"] * 4 + ["label efficiency"] * 2
    best = steps[0].cells[0]
    assert best.config == load_config("paper-mnist")  # the paper budget is the preset as is
    # the first seed's label-efficiency cells fine-tune the best cell's pretrained encoder
    shared = {pretrain_key(c.config) for c in steps[4].cells}
    assert shared == {pretrain_key(best.config)}
    others = {pretrain_key(c.config) for step in steps[1:4] for c in step.cells}
    assert len(others) == 6 and pretrain_key(best.config) not in others
    seeds = {c.name.split("__")[0]: pretrain_key(c.config) for c in steps[5].cells}
    assert len(set(seeds.values())) == 2 and not set(seeds.values()) & shared
    # a subset of the labelled part (12,000 images, 94 batches of 128) gets its 20 epochs' steps
    for cell in [*steps[4].cells, *steps[5].cells]:
        subset = cell.config.finetune.label_fraction < 0.2
        assert cell.config.finetune.min_steps == (94 * 20 if subset else 0)
        assert replace(cell.config.finetune, min_steps=0) == replace(
            best.config.finetune, label_fraction=cell.config.finetune.label_fraction
        )


def test_quick_budget_and_overrides_apply_to_every_cell() -> None:
    base = base_config("cifar10", "quick", ["time_steps=12", "pretrain.batch_size=64"])
    quick = load_config("paper-cifar10", parse_overrides(QUICK["cifar10"]))
    steps = plan(base, [3])
    assert names(steps)[:3] == [
        ["time_steps=12"],  # the best cell is named after the base's own T
        ["time_steps=10", "time_steps=20", "time_steps=30"],  # 30: the paper's, not the base
        ["pretrain.batch_size=128", "pretrain.batch_size=256"],  # 64: the best cell
    ]
    assert names(steps)[-1][0] == "seed=3__finetune.label_fraction=0.01"
    for cell in (c for step in steps for c in step.cells):
        cfg = cell.config
        assert (cfg.pretrain.epochs, cfg.finetune.epochs) == (
            quick.pretrain.epochs,
            quick.finetune.epochs,
        )
        assert cfg.data.name == "cifar10"
    rows = paper_rows("cifar10", base)
    batch = {r["setting"]: r["cell"] for r in rows if r["table"] == "II"}
    assert batch == {
        "64": "time_steps=12",
        "128": "pretrain.batch_size=128",
        "256": "pretrain.batch_size=256",
    }
    planned = {c.name for step in steps for c in step.cells}
    cells = {r["cell"] for r in rows if r["table"] in ("I", "II", "III")}
    assert cells <= planned  # every row of Tables I-III gets measured
    time_rows = [r["setting"] for r in rows if r["table"] == "I"]
    assert time_rows == ["10", "20", "30", "12 (this run's base)"]


def test_fewer_labels_train_as_many_steps_as_the_labelled_part_less_its_validation_share():
    # MNIST, paper budget: 12,000 labelled images, batches of 128, 20 epochs
    assert labelled_steps(base_config("mnist", "paper")) == 94 * 20
    held = base_config("mnist", "paper", ["finetune.val_fraction=0.5"])  # 6,000 train on
    assert labelled_steps(held) == 47 * 20


def test_an_override_on_a_table_axis_still_measures_the_papers_rows() -> None:
    base = base_config("mnist", "paper", ["augment.views=crop-rotate"])
    steps = plan(base, [0])
    assert names(steps)[:4] == [
        ["time_steps=30"],  # the best cell now pretrains on crop-rotate: Table III's first row
        ["time_steps=10", "time_steps=20"],
        ["pretrain.batch_size=64", "pretrain.batch_size=128"],
        ["augment.views=crop-noise", "augment.views=rotate-noise"],  # the paper's best pair
    ]
    views = {r["setting"]: r["cell"] for r in paper_rows("mnist", base) if r["table"] == "III"}
    assert views == {
        "crop-rotate": "time_steps=30",
        "crop-noise": "augment.views=crop-noise",
        "rotate-noise": "augment.views=rotate-noise",
    }


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: base_config("mnist", "quick", ["data.name=cifar10"]), "--dataset"),
        (lambda: base_config("svhn", "quick"), "--dataset"),
        (lambda: base_config("mnist", "slow"), "--budget"),
        (lambda: base_config("mnist", "quick", ["finetune.label_fraction=0.1"]), "varies it"),
        (lambda: parse_seeds("0,x"), "integers"),
        (lambda: parse_seeds("1,1"), "distinct"),
    ],
)
def test_bad_arguments_raise_value_errors(call, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        call()


def test_only_selects_cells_by_shell_pattern_and_names_the_choices_when_none_match() -> None:
    steps = plan(base_config("mnist", "paper"), [0, 1, 2])
    picked = select(steps, ["time_steps=10", "seed=0__*0.1"])
    assert picked == {"time_steps=10", "seed=0__finetune.label_fraction=0.1"}
    assert len(select(steps, [])) == 15
    with pytest.raises(ValueError, match=r"--only time_step=10 matches no cell.*time_steps=20"):
        select(steps, ["time_steps=10", "time_step=10"])
