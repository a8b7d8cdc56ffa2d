"""Tests for spikessl.config: presets, ``key=value`` overrides, validation, round trips.

Every bad setting must fail at load time with a ``ValueError`` (``FileNotFoundError`` for a
missing file) whose message names the offending key, never later inside training and never
as a ``TypeError``/``KeyError``/``AttributeError`` from deep inside the code.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import string
import tempfile
import types
import typing

import hypothesis
import pytest

from spikessl.architecture import EncoderConfig
from spikessl.config import (
    Config,
    DataConfig,
    FinetuneConfig,
    KNNConfig,
    PretrainConfig,
    load_config,
)
from spikessl.config_yaml import (
    dump_yaml,
    from_dict,
    load_yaml,
    parse_overrides,
    preset_names,
    to_dict,
)
from spikessl.views import AugmentConfig

PRESETS = preset_names()
SECTIONS = {
    "data": DataConfig,
    "encoder": EncoderConfig,
    "augment": AugmentConfig,
    "pretrain": PretrainConfig,
    "finetune": FinetuneConfig,
    "knn": KNNConfig,
}


def load_error(overrides: list[str] | dict, spec: str | dict = "paper-mnist") -> str:
    with pytest.raises(ValueError) as info:
        load_config(spec, overrides)
    return str(info.value)


def _matches(value: object, hint: object) -> bool:
    """Whether ``value`` has exactly the type ``hint`` (tuples, not lists; float, not int)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is tuple:
        if type(value) is not tuple:
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    return type(value) is hint


def assert_typed(obj: object, prefix: str = "") -> None:
    """Every field of a (nested) config dataclass has its annotated type, and it is frozen."""
    cls = type(obj)
    assert dataclasses.is_dataclass(obj) and cls.__dataclass_params__.frozen, cls
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, value, hint = f"{prefix}{f.name}", getattr(obj, f.name), hints[f.name]
        if dataclasses.is_dataclass(hint):
            assert type(value) is hint, key
            assert_typed(value, f"{key}.")
        else:
            assert _matches(value, hint), f"{key}={value!r} ({type(value).__name__}) is not {hint}"


def dotted_keys(cls: type = Config, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys += dotted_keys(hint, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


# ------------------------------------------------------------------------------------------
# Presets
# ------------------------------------------------------------------------------------------


def test_paper_preset_is_shipped_and_default() -> None:
    assert "paper-mnist" in PRESETS
    assert load_config() == load_config("paper-mnist")


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_into_typed_frozen_dataclasses(name: str) -> None:
    cfg = load_config(name)
    assert type(cfg) is Config
    for section, cls in SECTIONS.items():
        assert type(getattr(cfg, section)) is cls
    assert_typed(cfg)
    hash(cfg)  # tuples, not lists, all the way down


def test_paper_mnist_values() -> None:
    cfg = load_config("paper-mnist")
    assert cfg.time_steps == 30
    assert cfg.data.name == "mnist" and cfg.data.labelled_fraction == 0.2
    assert cfg.encoder.conv_channels == (12, 64) and cfg.encoder.kernel_sizes == (5, 5)
    assert cfg.encoder.fc_sizes == (128,)
    assert cfg.augment.views == ("rotate", "noise")  # "rotate-noise" in the YAML
    assert cfg.augment.rotation_degrees == 20.0
    assert type(cfg.augment.rotation_degrees) is float  # YAML int 20 -> float field
    assert cfg.pretrain.batch_size == 256 and cfg.pretrain.temperature == 0.1
    assert cfg.pretrain.lr == 1e-3 and type(cfg.pretrain.lr) is float


def test_defaults_are_valid_and_typed() -> None:
    cfg = Config()
    assert_typed(cfg)
    assert load_config({}) == cfg
    for cls in SECTIONS.values():
        assert_typed(cls())


# ------------------------------------------------------------------------------------------
# Overrides
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key", "expected"),
    [
        (["time_steps=5"], "time_steps", 5),
        (["pretrain.epochs=3"], "pretrain.epochs", 3),
        # YAML 1.1 reads 1e-3 (no dot) as a string; float fields must still get a float
        (["pretrain.lr=1e-3"], "pretrain.lr", 1e-3),
        (["pretrain.lr=3e-4"], "pretrain.lr", 3e-4),
        (["finetune.lr=1E-2"], "finetune.lr", 1e-2),
        (["knn.temperature=5e-2"], "knn.temperature", 0.05),
        (["pretrain.lr=1"], "pretrain.lr", 1.0),  # int for a float field
        (["pretrain.weight_decay=0"], "pretrain.weight_decay", 0.0),
        (["augment.crop_scale=[0.5, 1]"], "augment.crop_scale", (0.5, 1.0)),
        (["augment.blur_sigma=[1e-1, 2]"], "augment.blur_sigma", (0.1, 2.0)),
        (["augment.blur_sigma=1e+0,2"], "augment.blur_sigma", (1.0, 2.0)),  # "+" of a number
        (["encoder.conv_channels=[8,16]"], "encoder.conv_channels", (8, 16)),
        (["encoder.conv_channels=[8]", "encoder.kernel_sizes=[3]"], "encoder.kernel_sizes", (3,)),
        (["encoder.fc_sizes=[256, 64]"], "encoder.fc_sizes", (256, 64)),
        (["augment.views=crop-rotate"], "augment.views", ("crop", "rotate")),
        (["augment.views=crop-noise"], "augment.views", ("crop", "noise")),
        (["augment.views=crop+rotate"], "augment.views", ("crop", "rotate")),
        (["augment.views=crop+rotate+noise"], "augment.views", ("crop", "rotate", "noise")),
        (["augment.views=[crop, blur]"], "augment.views", ("crop", "blur")),
        (["augment.views=[crop-rotate, noise]"], "augment.views", ("crop", "rotate", "noise")),
        (["augment.views=rotate"], "augment.views", ("rotate",)),
        (["finetune.augment=crop"], "finetune.augment", ("crop",)),
        (["finetune.augment=crop-rotate"], "finetune.augment", ("crop", "rotate")),
        (["finetune.augment=[]"], "finetune.augment", ()),
        (["finetune.linear_probe=true"], "finetune.linear_probe", True),
        (["data.root=/some/where"], "data.root", "/some/where"),
        (["data.root=null"], "data.root", None),
        (["data.root=/a=b"], "data.root", "/a=b"),  # only the first '=' splits
        (["device=cpu"], "device", "cpu"),
        (["time_steps=3", "time_steps=4"], "time_steps", 4),  # the last one wins
    ],
)
def test_overrides(overrides: list[str], key: str, expected: object) -> None:
    cfg = load_config("paper-mnist", overrides)
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    assert value == expected
    assert type(value) is type(expected)
    assert_typed(cfg)


def test_comma_separated_int_list_override() -> None:
    # Strings for tuple fields are split on ',' and '+', so this form is meant to work (it
    # does for floats: augment.crop_scale=0.5,1); for ints the pieces stay strings ('8') and
    # fail the int check.
    cfg = load_config("paper-mnist", ["encoder.conv_channels=8,16", "encoder.kernel_sizes=3,3"])
    assert cfg.encoder.conv_channels == (8, 16)
    assert cfg.encoder.kernel_sizes == (3, 3)


def test_override_keeps_the_rest_of_the_section() -> None:
    base = load_config("paper-mnist")
    cfg = load_config("paper-mnist", ["pretrain.lr=0.01", "encoder.norm=none"])
    assert cfg.pretrain == dataclasses.replace(base.pretrain, lr=0.01)
    assert cfg.encoder == dataclasses.replace(base.encoder, norm="none")
    assert cfg.data == base.data and cfg.augment == base.augment


def test_overrides_as_dict() -> None:
    cfg = load_config("paper-mnist", {"pretrain": {"lr": 0.01}, "time_steps": 7})
    assert cfg.pretrain.lr == 0.01 and cfg.time_steps == 7
    assert cfg.pretrain.batch_size == load_config().pretrain.batch_size


def test_parse_overrides() -> None:
    assert parse_overrides(["a.b.c=1", "x=[1, 2]", "y=crop-rotate", "z=1e-3"]) == {
        "a": {"b": {"c": 1}},
        "x": [1, 2],
        "y": "crop-rotate",
        "z": 0.001,  # YAML 1.2 (PyYAML alone reads 1.1: the text "1e-3")
    }
    assert parse_overrides(["data.root=/a", "data.name=mnist"]) == {
        "data": {"root": "/a", "name": "mnist"}
    }


@pytest.mark.parametrize("item", ["time_steps", "=3", ""])
def test_malformed_override(item: str) -> None:
    assert "key=value" in load_error([item])


def test_load_config_does_not_mutate_its_inputs() -> None:
    raw = to_dict(load_config())
    before = copy.deepcopy(raw)
    extra = {"pretrain": {"lr": 0.5}}
    load_config(raw, extra)
    load_config(raw, ["pretrain.epochs=2", "augment.views=crop"])
    assert raw == before and extra == {"pretrain": {"lr": 0.5}}


# ------------------------------------------------------------------------------------------
# Unknown keys, wrong types, out-of-range values
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "bad", "suggestion"),
    [
        ("tim_steps=3", "tim_steps", "time_steps"),
        ("timesteps=3", "timesteps", "time_steps"),
        ("pretrian.lr=0.1", "pretrian", "pretrain"),
        ("pretrain.epoch=3", "pretrain.epoch", "epochs"),
        ("pretrain.learning_rat=3", "pretrain.learning_rat", None),
        ("augment.view=crop", "augment.view", "views"),
        ("encoder.conv_channel=[8]", "encoder.conv_channel", "conv_channels"),
        ("finetune.linear_prob=true", "finetune.linear_prob", "linear_probe"),
        ("data.labeled_fraction=0.1", "data.labeled_fraction", "labelled_fraction"),
        ("knn.temprature=0.1", "knn.temprature", "temperature"),
    ],
)
def test_unknown_key_did_you_mean(override: str, bad: str, suggestion: str | None) -> None:
    msg = load_error([override])
    assert repr(bad) in msg
    if suggestion:
        assert f"Did you mean {suggestion!r}?" in msg


def test_unknown_key_in_yaml_file_and_dict(tmp_path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("pretrain:\n  batch_sise: 64\n")
    assert "Did you mean 'batch_size'?" in load_error([], str(path))
    assert "Did you mean 'encoder'?" in load_error([], {"encodr": {}})


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("time_steps=abc", "time_steps"),
        ("time_steps=2.5", "time_steps"),
        ("time_steps=true", "time_steps"),  # bool is not an int here
        ("time_steps=1e3", "time_steps"),
        ("pretrain.batch_size=2.5", "pretrain.batch_size"),
        ("pretrain.lr=fast", "pretrain.lr"),
        ("pretrain.lr=[1]", "pretrain.lr"),
        ("pretrain.lr=true", "pretrain.lr"),
        ("finetune.linear_probe=1", "finetune.linear_probe"),
        ("device=3", "device"),
        ("encoder.conv_channels=[8, x]", "encoder.conv_channels"),
        ("encoder.conv_channels={a: 1}", "encoder.conv_channels"),
        ("encoder.fc_sizes=64", "encoder.fc_sizes"),
        ("augment.crop_scale=[0.5]", "augment.crop_scale"),
        ("augment.views=[1, 2]", "augment.views"),
        ("data=3", "data"),
        ("encoder=[1, 2]", "encoder"),
        ("knn=null", "knn"),
    ],
)
def test_wrong_type_names_the_key(override: str, key: str) -> None:
    assert key in load_error([override])


def test_section_given_a_scalar_then_a_subkey() -> None:
    assert "data" in load_error(["data=3", "data.root=/x"])
    assert "data" in load_error(["data.root=/x", "data=3"])
    assert "encoder" in load_error({"encoder": 5})


@pytest.mark.parametrize(
    ("overrides", "keys"),
    [
        (["time_steps=0"], ["time_steps"]),
        (["time_steps=-3"], ["time_steps"]),
        (["eval_batch_size=0"], ["eval_batch_size"]),
        (["device=gpu"], ["device"]),
        (["data.labelled_fraction=0"], ["data.labelled_fraction"]),
        (["data.labelled_fraction=1"], ["data.labelled_fraction"]),
        (["data.labelled_fraction=1.5"], ["data.labelled_fraction"]),
        (["data.labelled_fraction=-0.2"], ["data.labelled_fraction"]),
        (["data.train_limit=-1"], ["data.train_limit"]),
        (["pretrain.batch_size=1"], ["pretrain.batch_size", ">= 2: NT-Xent needs"]),
        (["pretrain.batch_size=0"], ["pretrain.batch_size", ">= 2: NT-Xent needs"]),
        (["pretrain.epochs=0"], ["pretrain.epochs"]),
        (["pretrain.lr=0"], ["pretrain.lr"]),
        (["pretrain.lr=-1e-3"], ["pretrain.lr"]),
        (["pretrain.lr=1e38"], ["pretrain.lr", "(0, 1]"]),  # overflowed inside Adam
        (["finetune.lr=2"], ["finetune.lr", "(0, 1]"]),
        (["finetune.lr=0.1", "finetune.encoder_lr_factor=20"], ["encoder_lr_factor", "1 / "]),
        (["pretrain.weight_decay=-1"], ["pretrain.weight_decay"]),
        (["pretrain.grad_clip=-1"], ["pretrain.grad_clip", "0: no clipping"]),
        (["finetune.grad_clip=-0.5"], ["finetune.grad_clip"]),
        (["pretrain.warmup_steps=-1"], ["pretrain.warmup_steps", "0: no warm-up"]),
        (["finetune.warmup_steps=-10"], ["finetune.warmup_steps"]),
        (["pretrain.temperature=0"], ["pretrain.temperature"]),
        (["pretrain.temperature=-0.5"], ["pretrain.temperature"]),
        (["pretrain.projection_dim=-1"], ["pretrain.projection_dim"]),
        (["pretrain.center=true", "pretrain.projection_dim=64"], ["pretrain.center", "MLP"]),
        (["pretrain.schedule=linear"], ["pretrain.schedule"]),
        (["finetune.schedule=step"], ["finetune.schedule"]),
        (["finetune.batch_size=0"], ["finetune.batch_size"]),
        (["finetune.encoder_lr_factor=-0.1"], ["finetune.encoder_lr_factor"]),
        (["knn.k=0"], ["knn.k"]),
        (["knn.temperature=0"], ["knn.temperature"]),
        (["knn.every=-1"], ["knn.every"]),
        (["knn.bank=all"], ["knn.bank", "labelled", "train"]),
        (["encoder.norm=foo"], ["encoder.norm"]),
        (["encoder.pool=0"], ["encoder.pool"]),
        (["encoder.kernel_sizes=[5]"], ["encoder.conv_channels", "encoder.kernel_sizes"]),
        (["encoder.conv_channels=[8, 16, 32]"], ["encoder.conv_channels", "encoder.kernel_sizes"]),
        (["encoder.fc_sizes=[]"], ["encoder.fc_sizes"]),
        (["augment.views=crop-rotat"], ["views", "crop-rotate"]),  # did-you-mean the pair
        (["augment.views=rotat"], ["views", "rotate"]),
        (["finetune.augment=flipp"], ["views", "flip"]),
        (["augment.rotation_degrees=500"], ["rotation_degrees"]),
        (["augment.noise_std=-1"], ["noise_std"]),
        (["augment.blur_kernel=4"], ["blur_kernel"]),
        (["augment.p=2"], ["p="]),
        (["on_divergence=halt"], ["on_divergence", "'warn'", "'stop'"]),
        (["on_nonfinite=warn"], ["on_nonfinite", "'skip'"]),
        (["pretrain.schedule=cosin"], ["Did you mean 'cosine'?"]),  # did-you-mean on values
        (["encoder.norm=Batch"], ["Did you mean 'batch'?"]),
        (["finetune.head_init=proto"], ["Did you mean 'prototypes'?"]),
        (["knn.bank=trian"], ["Did you mean 'train'?"]),
        (["on_divergence=Warn"], ["Did you mean 'warn'?"]),
        (["device=gpu"], ["for a GPU: cuda (NVIDIA) or mps"]),
    ],
)
def test_out_of_range_names_the_key(overrides: list[str], keys: list[str]) -> None:
    msg = load_error(overrides)
    for key in keys:
        assert key in msg


@pytest.mark.parametrize(
    "overrides",
    [
        ["encoder.image_size=8"],  # too small for two 5x5 kernels with pooling
        ["encoder.image_size=12", "encoder.kernel_sizes=[7, 5]"],
        ["encoder.conv_channels=[0, 16]"],
        ["augment.rotation_degrees=500"],
        ["augment.noise_std=-1"],
        ["augment.crop_scale=[0.9, 0.5]"],
    ],
    ids=lambda overrides: overrides[0],
)
def test_section_errors_name_section_and_key(overrides: list[str]) -> None:
    # A user who typed encoder.image_size=8 must be able to find the key from the message:
    # "image_size=8 is too small" alone does not say which section it lives in.
    msg = load_error(overrides)
    section, leaf = overrides[0].split("=")[0].split(".")
    assert section in msg and leaf in msg, msg


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("pretrain.lr=inf", "pretrain.lr"),
        ("pretrain.lr=.inf", "pretrain.lr"),
        ("finetune.lr=1e999", "finetune.lr"),
        ("pretrain.temperature=inf", "pretrain.temperature"),
        ("pretrain.weight_decay=inf", "pretrain.weight_decay"),
        ("knn.temperature=.inf", "knn.temperature"),
        ("encoder.beta=.nan", "encoder.beta"),
        ("encoder.threshold=inf", "encoder.threshold"),
    ],
)
def test_non_finite_floats_rejected(override: str, key: str) -> None:
    assert key in load_error([override])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("encoder.beta=1.5", "encoder.beta"),
        ("encoder.beta=-0.1", "encoder.beta"),
        ("encoder.threshold=0", "encoder.threshold"),
        ("encoder.slope=-5", "encoder.slope"),
        ("encoder.in_channels=0", "encoder.in_channels"),
    ],
)
def test_neuron_parameters_checked_at_load_time(override: str, key: str) -> None:
    # LIF() rejects these, but only once the encoder is built, after the data has loaded,
    # and with a message ("beta=1.5 is outside [0, 1]") that does not name encoder.beta.
    assert key in load_error([override])


def test_seed_must_be_non_negative() -> None:
    # numpy's default_rng(-1) fails later, inside the data split, without naming the key.
    assert "seed" in load_error(["seed=-1"])


def test_unknown_dataset_fails_at_load_time() -> None:
    msg = load_error(["data.name=mnsit"])
    assert "data.name" in msg and "mnist" in msg


def test_huge_numbers_are_value_errors() -> None:
    # YAML reads 1 followed by 400 zeros as an int; float() of it raises OverflowError.
    assert "pretrain.lr" in load_error(["pretrain.lr=1" + "0" * 400])
    assert "augment.rotation_degrees" in load_error({"augment": {"rotation_degrees": 10**400}})


# ------------------------------------------------------------------------------------------
# Config files
# ------------------------------------------------------------------------------------------


def test_unknown_preset_did_you_mean() -> None:
    msg = load_error([], "paper-mnst")
    assert "Did you mean 'paper-mnist'?" in msg
    for name in PRESETS:
        assert name in msg
    assert "paper-mnist" in load_error([], "no-such-thing")  # lists what exists


@pytest.mark.parametrize("name", ["missing.yaml", "missing.yml", "sub/dir/missing.yaml"])
def test_missing_yaml_file(tmp_path, name: str) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        load_config(str(tmp_path / name))


def test_directory_is_not_a_config_file(tmp_path) -> None:
    with pytest.raises(ValueError, match="is a directory"):
        load_config(str(tmp_path))


def test_overlong_config_name_is_not_an_oserror() -> None:
    # Path("x" * 5000).exists() raises OSError(ENAMETOOLONG) instead of returning False.
    with pytest.raises((ValueError, FileNotFoundError)):
        load_config("x" * 5000)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("time_steps: [1, 2\n", "not valid YAML"),
        ("a: b: c\n", "not valid YAML"),
        ("- time_steps: 3\n- seed: 1\n", "mapping"),
        ("42\n", "mapping"),
        ("just a string\n", "mapping"),
    ],
)
def test_bad_yaml_file(tmp_path, text: str, match: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        load_config(str(path))
    assert str(path) in str(info.value)


def test_empty_yaml_file_gives_defaults(tmp_path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing set\n")
    assert load_config(str(path)) == Config()


def test_yaml_file_with_overrides(tmp_path) -> None:
    path = tmp_path / "mine.yml"
    path.write_text(
        "time_steps: 4\npretrain:\n  lr: 1e-3\n  epochs: 2\naugment:\n  views: crop+rotate\n"
    )
    cfg = load_config(str(path), ["pretrain.epochs=5"])
    assert cfg.time_steps == 4 and cfg.pretrain.epochs == 5
    assert cfg.pretrain.lr == 1e-3 and type(cfg.pretrain.lr) is float
    assert cfg.augment.views == ("crop", "rotate")
    assert cfg.encoder == EncoderConfig()  # unset sections take the dataclass defaults


# ------------------------------------------------------------------------------------------
# Round trips and immutability
# ------------------------------------------------------------------------------------------


ROUND_TRIP_CASES = [(name, []) for name in PRESETS] + [
    (
        "paper-mnist",
        [
            "augment.views=crop+rotate+flip",
            "finetune.augment=crop-rotate",
            "data.root=/data/x",
            "pretrain.lr=3e-4",
            "encoder.conv_channels=[4, 8]",
            "finetune.linear_probe=true",
            "knn.every=2",
            "data.train_limit=100",
        ],
    ),
    # strings that YAML would read as other types must come back as strings
    ("paper-mnist", {"data": {"root": "2024"}, "out_dir": "null", "device": "cpu"}),
    ("paper-mnist", {"data": {"root": "1e-3"}, "out_dir": "yes"}),
    ("paper-mnist", {"data": {"root": "010"}, "out_dir": "0x1f"}),
]


@pytest.mark.parametrize(("spec", "overrides"), ROUND_TRIP_CASES)
def test_round_trip(tmp_path, spec: str, overrides: list[str] | dict) -> None:
    cfg = load_config(spec, overrides)
    plain = to_dict(cfg)
    json.dumps(plain)  # plain lists, numbers and strings only
    assert "(" not in repr(plain)  # no tuples left
    assert load_config(plain) == cfg
    assert from_dict(Config, plain) == cfg
    text = dump_yaml(cfg)
    assert load_yaml(text) == plain
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert load_config(str(path)) == cfg


@pytest.mark.parametrize("section", [None, *SECTIONS])
def test_configs_are_frozen(section: str | None) -> None:
    cfg = load_config()
    obj = cfg if section is None else getattr(cfg, section)
    name = dataclasses.fields(obj)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, name, getattr(obj, name))


def test_replace_revalidates() -> None:
    cfg = load_config()
    with pytest.raises(ValueError, match="time_steps"):
        dataclasses.replace(cfg, time_steps=0)
    with pytest.raises(ValueError, match="pretrain.batch_size"):
        dataclasses.replace(cfg.pretrain, batch_size=1)


# ------------------------------------------------------------------------------------------
# Property tests: no input makes load_config fail with anything but ValueError/FileNotFound
# ------------------------------------------------------------------------------------------

st = hypothesis.strategies

# Hypothesis caches under ./.hypothesis by default (even with database=None); tests must not
# write outside temporary folders.
_HYPOTHESIS_HOME = tempfile.TemporaryDirectory(prefix="spikessl-hypothesis-")
hypothesis.configuration.set_hypothesis_home_dir(_HYPOTHESIS_HOME.name)

# An explicit alphabet: hypothesis then needs no unicode table cached under ./.hypothesis
ALPHABET = string.ascii_letters + string.digits + string.punctuation + " \t-+.,[]{}:#!&*é\x00"
KEYS = dotted_keys()
NAMES = sorted({part for key in KEYS for part in key.split(".")})
BIG = 10**400  # an int YAML happily produces, too large for a float
# fmt: off
VALUE_TEXTS = [
    "", "0", "-1", "1", "2", "3", "5", "28", "256", "0.5", "1.5", "-0.5", "1e-3", "1e400",
    "inf", ".inf", ".nan", "nan", "true", "no", "null", "~", "[]", "[1, 2]", "[8, 16]",
    "[0.5, 1]", "[a, b]", "[[1]]", "{}", "{a: 1}", "crop", "crop-rotate", "crop+rotate",
    "rotate-noise", "flip", "jitter", "batch", "none", "cosine", "cpu", "gpu", "mnist",
    "cifar10", "2024-01-01", "!!binary aGk=", "*alias", "&a 1", "'quoted'", "[", "a: b", str(BIG),
]
# fmt: on

SETTINGS = hypothesis.settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)


def _check_load(spec: object, overrides: object = None) -> None:
    try:
        cfg = load_config(spec, overrides)
    except (ValueError, FileNotFoundError):
        return
    assert type(cfg) is Config
    assert_typed(cfg)


override_items = st.one_of(
    st.builds(
        "{}={}".format,
        st.one_of(st.sampled_from(KEYS), st.text(ALPHABET, max_size=15)),
        st.one_of(
            st.sampled_from(VALUE_TEXTS),
            st.text(ALPHABET, max_size=15),
            st.integers().map(str),
            st.floats().map(repr),
        ),
    ),
    st.text(ALPHABET, max_size=20),
)


@SETTINGS
@hypothesis.given(st.lists(override_items, max_size=4))
def test_random_overrides_raise_only_value_errors(items: list[str]) -> None:
    _check_load("paper-mnist", items)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(ALPHABET, max_size=8),
    st.just(BIG),
    st.integers(-3, 300),
    st.floats(-2, 2),
    st.sampled_from(["crop", "crop-rotate", "batch", "cpu", "cosine", "mnist", "1e-3"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(NAMES), scalars), inner, max_size=3),
    ),
    max_leaves=8,
)

plausible = st.one_of(
    st.integers(-3, 300),
    st.floats(),
    st.just(BIG),
    st.booleans(),
    st.none(),
    st.sampled_from(
        [
            "crop",
            "crop-rotate",
            "rotate+noise",
            "batch",
            "cpu",
            "cosine",
            "mnist",
            "1e-3",
            "inf",
            "8,16",
            "",
        ]
    ),  # fmt: skip
    st.lists(
        st.one_of(st.integers(-2, 40), st.floats(-2, 2), st.sampled_from(["crop", "x"])), max_size=4
    ),
    values,
)


def _nest(pairs: list[tuple[str, object]]) -> dict:
    tree: dict = {}
    for key, value in pairs:
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


config_dicts = st.one_of(
    # a few real keys set to odd values: these get past the key checks to the validators
    st.lists(st.tuples(st.sampled_from(KEYS), plausible), min_size=1, max_size=3).map(_nest),
    st.dictionaries(st.one_of(st.sampled_from(NAMES), scalars), values, max_size=5),
)


@SETTINGS
@hypothesis.given(config_dicts)
def test_random_dicts_raise_only_value_errors(raw: dict) -> None:
    _check_load(raw)
    _check_load("paper-mnist", raw)


@SETTINGS
@hypothesis.given(spec=st.text(ALPHABET, max_size=40))
def test_random_spec_strings_raise_only_value_or_file_errors(
    spec: str, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # an empty folder: no generated name can hit a real file
    if spec in PRESETS:
        return
    with pytest.raises((ValueError, FileNotFoundError)):
        load_config(spec)


def test_type_errors_show_the_form_that_works() -> None:
    assert "quote it to keep it a string: out_dir=\"'123'\"" in load_error(["out_dir=123"])
    assert load_config("mnist-quick", ["out_dir='123'"]).out_dir == "123"  # the form it shows
    example = "e.g. 'encoder.fc_sizes=[8,16]'"
    assert example in load_error(["encoder.fc_sizes=0"])
    assert load_config("mnist-quick", ["encoder.fc_sizes=[8,16]"]).encoder.fc_sizes == (8, 16)
    assert "2 numbers, e.g. 'augment.crop_scale=[0.5,0.5]'" in load_error(["augment.crop_scale=1"])
    assert load_config("mnist-quick", ["augment.crop_scale=[0.5,0.5]"]).augment.crop_scale == (
        0.5,
        0.5,
    )
    assert "e.g. finetune.augment=crop+rotate" in load_error(["finetune.augment="])
    assert "For no augmentation: finetune.augment=[]" in load_error(["finetune.augment=none"])
    assert load_config("mnist-quick", ["finetune.augment=[]"]).finetune.augment == ()
    assert "out_dir has no value (expected str): give it one" in load_error(["out_dir="])
    assert "pretrain.lr has no value (expected float)" in load_error(["pretrain.lr="])
    assert "finetune.linear_probe=true or finetune.linear_probe=false" in load_error(
        ["finetune.linear_probe=yes"]
    )
    assert "is a grid: `spikessl sweep` runs one" in load_error(["time_steps=10,30"])


@pytest.mark.parametrize(
    ("override", "value"),
    [
        ("time_steps=010", 10),  # YAML 1.1: eight (octal)
        ("seed=0x10", 16),
        ("pretrain.lr=1e-3", 1e-3),  # YAML 1.1: the text "1e-3"
        ("data.root=yes", "yes"),  # YAML 1.1: True
        ("out_dir=on", "on"),
        ("out_dir=1:30", "1:30"),  # YAML 1.1: ninety (base 60)
    ],
)
def test_override_values_are_read_as_yaml_1_2(override: str, value: object) -> None:
    key, _ = override.split("=", 1)
    cfg = load_config("mnist-quick", [override])
    got = cfg
    for part in key.split("."):
        got = getattr(got, part)
    assert got == value and type(got) is type(value)


def test_yaml_1_1_numbers_are_refused_where_a_number_belongs() -> None:
    assert "time_steps='1:30' has the wrong type: expected int" in load_error(["time_steps=1:30"])
    assert "expected bool" in load_error(["pretrain.center=yes"])


def test_a_key_twice_in_a_config_file_is_an_error(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("pretrain:\n  epochs: 1\n  epochs: 2\n")
    assert "found the key 'epochs' twice" in load_error([], str(path))
    assert "found the key 'epochs' twice" in load_error(["pretrain={epochs: 1, epochs: 2}"])
    path.write_text("{[1]: 2}: 3\n")  # an unhashable key: PyYAML's own error
    assert "unhashable" in load_error([], str(path))


def test_merge_keys_share_settings_and_may_be_overridden(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("pretrain: &p {epochs: 2, lr: 0.01}\nfinetune: {<<: *p, lr: 0.001}\n")
    cfg = load_config(str(path))
    assert (cfg.finetune.epochs, cfg.finetune.lr, cfg.pretrain.lr) == (2, 0.001, 0.01)


def test_a_section_override_keeps_an_earlier_dotted_one() -> None:
    for items in (
        ["pretrain.epochs=1", "pretrain={lr: 0.1}"],
        ["pretrain={lr: 0.1}", "pretrain.epochs=1"],
    ):
        pre = load_config("mnist-quick", items).pretrain
        assert (pre.epochs, pre.lr) == (1, 0.1)
    assert (
        load_config("mnist-quick", ["pretrain.epochs=1", "pretrain={epochs: 2}"]).pretrain.epochs
        == 2
    )


def test_a_seed_beyond_64_bits_is_refused() -> None:
    assert "from 0 to 2**63 - 1" in load_error(["seed=18446744073709551616"])
