"""Grids: values split at top-level commas, cells in order, safe names, stable keys."""

import hashlib
import json
import re

import pytest
from tiny import tiny_base

from spikessl.config import load_config
from spikessl.config_yaml import to_dict
from spikessl.grid import (
    cell_key,
    cell_name,
    expand_grid,
    pretrain_key,
    record_matches,
    split_values,
    supervised_key,
)


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("10,30", ["10", "30"]),
        (" 1e-3 , 1e-2", ["1e-3", "1e-2"]),
        ("crop-rotate", ["crop-rotate"]),
        ("[32,64],[64,128]", ["[32,64]", "[64,128]"]),
        ("[[1,2],[3]],4", ["[[1,2],[3]]", "4"]),
        ("{a: 1, b: 2},{a: 3}", ["{a: 1, b: 2}", "{a: 3}"]),
        ("'a,b',\"c,[d\",e", ["'a,b'", '"c,[d"', "e"]),
    ],
)
def test_split_values_splits_top_level_commas_only(text, values):
    assert split_values(text) == values


@pytest.mark.parametrize("text", ["", "1,,2", "1,", "[1,2", "1]", "'a,b"])
def test_split_values_rejects_empty_and_unbalanced(text):
    with pytest.raises(ValueError, match="grid values"):
        split_values(text)


def test_a_dataset_the_encoder_does_not_fit_fails_when_the_grid_expands():
    # the mnist preset's 1x28px encoder: the cifar10 cell would fail only after mnist trained
    with pytest.raises(ValueError, match=r"grid cell data.name=cifar10: encoder expects 1x28px"):
        expand_grid(tiny_base(), ["data.name=mnist,cifar10"])


@pytest.mark.parametrize(
    ("override", "said"),
    [
        ("augment.views=crop+jitter", r"augment.views=crop\+jitter: colour jitter needs RGB"),
        ("augment.views=gray+jitter", r"augment.views=gray\+jitter: random grayscale and col"),
        ("finetune.augment=flip+gray", r"finetune.augment=flip\+gray: .*remove 'gray' from fine"),
    ],
)
def test_colour_augmentations_of_grey_images_fail_when_the_grid_expands(override, said):
    # before any cell trains: in fine-tuning it would fail only after the pretraining
    with pytest.raises(ValueError, match=rf"grid cell data.name=mnist: {said}"):
        expand_grid(tiny_base(override), ["data.name=mnist"])


def test_expand_grid_is_the_cartesian_product_first_key_slowest():
    cells = expand_grid(tiny_base(), ["time_steps=2,3", "finetune.lr=1e-3,1e-2,0.1"])
    assert [c.overrides for c in cells] == [
        (("time_steps", t), ("finetune.lr", lr))
        for t in ("2", "3")
        for lr in ("1e-3", "1e-2", "0.1")
    ]
    assert [(c.config.time_steps, c.config.finetune.lr) for c in cells[:4]] == [
        (2, 1e-3),
        (2, 1e-2),
        (2, 0.1),
        (3, 1e-3),
    ]
    assert cells[0].name == "time_steps=2__finetune.lr=1e-3"
    assert len({c.key for c in cells}) == 6
    assert cells[0].config.encoder.conv_channels == (4, 8)  # the base is kept


def test_list_values_and_safe_names():
    cells = expand_grid(tiny_base(), ["encoder.conv_channels=[4,8],[8,16]"])
    assert [c.config.encoder.conv_channels for c in cells] == [(4, 8), (8, 16)]
    assert [c.name for c in cells] == [
        "encoder.conv_channels=4-8",
        "encoder.conv_channels=8-16",
    ]
    assert cell_name((("data.root", "/a/b c"),)) == "data.root=-a-bc"
    assert expand_grid(tiny_base(), [])[0].name == "base"
    long = cell_name(tuple((f"k{i}", "x" * 30) for i in range(10)))
    assert len(long) <= 150 and re.fullmatch(r"[A-Za-z0-9._+=-]+", long)


def test_keys_are_stable_and_ignore_local_settings():
    base = tiny_base()
    (cell,) = expand_grid(base, ["time_steps=2"])
    local = {
        **base,
        "device": "auto",
        "out_dir": "elsewhere",
        "eval_batch_size": 7,
        "checkpoint_every": 3,
        "on_divergence": "stop",  # a run it lets finish is the same run
        "data": {**base["data"], "root": "/mnt/data"},
    }
    assert expand_grid(local, ["time_steps=2"])[0].key == cell.key
    # independent reference: sha256 of the sorted, compact JSON without the ignored fields
    tree = to_dict(cell.config)
    for name in ("device", "out_dir", "eval_batch_size", "checkpoint_every", "on_divergence"):
        del tree[name]
    del tree["data"]["root"]
    text = json.dumps(tree, sort_keys=True, separators=(",", ":"))
    assert cell.key == hashlib.sha256(text.encode()).hexdigest()[:12]
    assert expand_grid(base, ["time_steps=3"])[0].key != cell.key
    assert expand_grid(base, ["seed=1"])[0].key != expand_grid(base, ["seed=0"])[0].key


def test_stage_keys_ignore_settings_the_stage_never_reads():
    def cfg(*items):
        return load_config(tiny_base(), list(items))

    assert pretrain_key(cfg("finetune.lr=0.1")) == pretrain_key(cfg("finetune.lr=0.2"))
    assert pretrain_key(cfg("seed=1")) != pretrain_key(cfg("seed=2"))
    assert pretrain_key(cfg("knn.k=3")) != pretrain_key(cfg("knn.k=4"))
    assert cell_key(cfg("finetune.lr=0.1")) != cell_key(cfg("finetune.lr=0.2"))
    same = ("pretrain.temperature=0.2", "pretrain.temperature=0.9", "knn.k=3", "augment.p=0.5")
    assert len({supervised_key(cfg(s)) for s in same}) == 1
    # settings of the pretrained encoder's fine-tuning: the baseline has no pretrained encoder
    pretrained_only = ("finetune.head_init=prototypes", "finetune.encoder_lr_factor=0.5")
    assert {supervised_key(cfg(s)) for s in pretrained_only} == {supervised_key(cfg())}
    assert cell_key(cfg("finetune.head_init=prototypes")) != cell_key(cfg())
    assert supervised_key(cfg("finetune.lr=0.1")) != supervised_key(cfg("finetune.lr=0.2"))
    assert supervised_key(cfg("seed=1")) != supervised_key(cfg("seed=2"))
    # augmenting the labelled images reuses the augment section's strengths
    noisy = ("finetune.augment=[noise]",)
    assert supervised_key(cfg(*noisy, "augment.noise_std=0.1")) != supervised_key(
        cfg(*noisy, "augment.noise_std=0.3")
    )


def test_record_from_before_a_new_config_field_still_counts():
    (cell,) = expand_grid(tiny_base(), ["time_steps=2"])
    record = {"key": "0123456789ab", "config": json.loads(json.dumps(to_dict(cell.config)))}
    del record["config"]["finetune"]["logit_scale"]  # a field spikessl did not have yet
    assert record_matches(record, cell)
    (scaled,) = expand_grid(tiny_base("finetune.logit_scale=10"), ["time_steps=2"])
    assert not record_matches(record, scaled)  # the new field away from its default
    record["config"]["pretrain"]["lr"] = 0.5
    assert not record_matches(record, cell)  # an old setting changed
    assert record_matches({"key": cell.key}, cell)


def test_made_with_reads_a_runs_config_and_never_matches_an_unreadable_one(tmp_path):
    from spikessl.config_yaml import dump_yaml
    from spikessl.grid import made_with

    cfg = load_config(tiny_base())
    (tmp_path / "config.yaml").write_text(dump_yaml(cfg))
    assert made_with(tmp_path, to_dict(cfg))
    assert not made_with(tmp_path, to_dict(load_config(tiny_base("seed=1"))))
    assert made_with(tmp_path, to_dict(load_config(tiny_base("device=auto"))))  # ignored
    (tmp_path / "config.yaml").write_text("seed: [unclosed\n")
    assert not made_with(tmp_path, to_dict(cfg))
    assert not made_with(tmp_path / "missing", to_dict(cfg))


def test_changed_settings_names_each_differing_setting():
    from spikessl.grid import changed_settings, listed_changes

    old = to_dict(load_config("mnist-quick", ["pretrain.lr=1e-3", "device=cpu"]))
    new = to_dict(load_config("mnist-quick", ["pretrain.lr=5e-4", "time_steps=7"]))
    changed = changed_settings(old, new)  # device is no setting of the result's
    assert changed == ["time_steps: 10 -> 7", "pretrain.lr: 0.001 -> 0.0005"]
    del old["knn"]["bank"]  # a field added since old was written, left at its default: the same
    assert changed_settings(old, new) == changed
    del old["pretrain"]["temperature"]  # the preset's 0.1, not the default: a change
    assert changed_settings(old, new)[-1] == "pretrain.temperature: absent -> 0.1"
    assert listed_changes(["a", "b", "c"], most=2) == "a; b; and 1 more"


def test_a_cell_whose_unlabelled_images_cannot_fill_a_batch_fails_at_expansion():
    base = to_dict(load_config("mnist-quick", ["pretrain.batch_size=256"]))
    with pytest.raises(ValueError, match=r"grid cell data.train_limit=200: .*train_limit=320"):
        expand_grid(base, ["data.train_limit=4000,200"])
