"""Config trees: YAML 1.2 presets and files, ``key=value`` overrides, and the typed
round trip between a tree and the frozen dataclasses of ``spikessl.config``.

Nothing here knows a setting: ``from_dict`` checks keys and types against any dataclass's
hints (with a did-you-mean), and each dataclass validates its own values.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's core-schema scalars and no duplicate keys.

    PyYAML reads YAML 1.1, where ``010`` is eight (octal), ``1:30`` is ninety (base 60),
    ``yes``/``on`` are True and ``1e-3`` is text: ``time_steps=010`` would run T=8. Here
    ``010`` is ten, ``1:30`` and ``yes`` are text (and refused where a number or a bool
    belongs), ``1e-3`` is a number, and a key given twice in a mapping is an error.
    """

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *defaults" may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"found the key {key!r} twice", key_node.start_mark
                    )
                seen.add(key)
            except TypeError:  # unhashable: SafeConstructor says so below
                continue
        return super().construct_mapping(node, deep)


def _yaml_int(loader: YamlLoader, node: yaml.Node) -> int:
    text = loader.construct_scalar(node)
    body = text.lstrip("+-")
    sign = -1 if text.startswith("-") else 1
    if body[:2] in ("0o", "0x"):
        return sign * int(body[2:], 8 if body[1] == "o" else 16)
    return sign * int(body, 10)


_BOOL, _INT, _FLOAT = (f"tag:yaml.org,2002:{t}" for t in ("bool", "int", "float"))
YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _pattern, _first in (
    (_BOOL, r"true|True|TRUE|false|False|FALSE", "tTfF"),
    (_INT, r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", "-+0123456789"),
    (
        _FLOAT,
        r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)",
        "-+0123456789.",
    ),
):
    YamlLoader.add_implicit_resolver(_tag, re.compile(f"^(?:{_pattern})$"), list(_first))
YamlLoader.add_constructor(_INT, _yaml_int)


class YamlDumper(yaml.SafeDumper):
    """Quotes exactly the text that ``YamlLoader`` would read as something else ("1e-3")."""


YamlDumper.yaml_implicit_resolvers = YamlLoader.yaml_implicit_resolvers


def load_yaml(text: str) -> Any:
    """``text`` read with ``YamlLoader`` (YAML 1.2 numbers and bools, no duplicate keys)."""
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 (a SafeLoader)


def preset_names() -> list[str]:
    return sorted(
        p.name[:-5]
        for p in resources.files("spikessl.presets").iterdir()
        if p.name.endswith(".yaml")
    )


def read_yaml(spec: str) -> dict:
    """A preset name shipped with the package, or a path to a YAML file."""
    path = Path(spec)
    try:
        is_path = path.suffix in (".yaml", ".yml") or path.exists()
    except OSError as err:  # e.g. a name too long for the file system
        raise ValueError(f"--config {spec[:60]!r}...: {err.strerror}") from None
    if is_path:
        if path.is_dir():
            raise ValueError(f"config {spec} is a directory; pass a .yaml file or a preset")
        if not path.is_file():
            raise FileNotFoundError(
                f"config file {spec} not found; or use a preset: {', '.join(preset_names())}"
            )
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise ValueError(
                f"config {spec} is not a YAML text file (a checkpoint? pass a run to "
                "--pretrained, or use its config.yaml)"
            ) from None
    else:
        if spec not in preset_names():
            raise ValueError(
                f"unknown preset {spec!r}.{did_you_mean(spec, preset_names())} Presets: "
                f"{', '.join(preset_names())}; or pass a path to a .yaml file"
            )
        text = resources.files("spikessl.presets").joinpath(f"{spec}.yaml").read_text()
    try:
        raw = load_yaml(text) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"config {spec} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"config {spec} must be a YAML mapping of keys to values")
    return raw


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {key}: {part} is not a section")
    if isinstance(value, dict) and isinstance(node.get(leaf), dict):
        value = merge(node[leaf], value)  # pretrain.epochs=1 pretrain={lr: 0.1}: both hold
    node[leaf] = value


def did_you_mean(value: Any, choices) -> str:
    """`` Did you mean 'x'?`` for a string close to one of ``choices`` (in any case), else ''."""
    if not isinstance(value, str):
        return ""
    lower = {str(c).lower(): c for c in choices}
    close = difflib.get_close_matches(value.lower(), list(lower), n=1)
    return f" Did you mean {lower[close[0]]!r}?" if close else ""


def parse_overrides(items: list[str]) -> dict:
    """``["pretrain.lr=3e-4", "time_steps=10"]`` -> nested dict; values parsed as YAML."""
    tree: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key=value, e.g. time_steps=10")
        try:
            value = load_yaml(text)
        except yaml.YAMLError as err:
            if "twice" in str(getattr(err, "problem", "")):
                raise ValueError(f"override {item!r}: {err.problem}") from None
            value = text
        _set_dotted(tree, key.strip(), value)
    return tree


def set_data_root(tree: dict, root: str) -> dict:
    """``--data-dir ROOT`` into an override tree: ``data.root``, taken literally (no YAML)."""
    if not isinstance(tree.setdefault("data", {}), dict):
        raise ValueError(
            f"data={tree['data']!r}: data is a section; set its keys, e.g. data.name=mnist"
        )
    tree["data"]["root"] = root
    return tree


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ValueError(f"{key} must be a section (mapping), got {value!r}")
        return from_dict(hint, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key)
    if origin is tuple:
        if isinstance(value, str):  # "8,16" or "crop+rotate" from the command line
            names = args[0] is str  # "+" joins names; in numbers it is an exponent's sign (1e+0)
            text = value.replace("+", ",") if names else value
            value = [_scalar(v) for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key} must be a list, got {value!r}: {_list_example(key, args)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ValueError(f"{key} must have {len(args)} entries, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if hint is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string
            number = float(value)
        except (ValueError, OverflowError):
            number = None
        if number is not None:
            if not math.isfinite(number):
                raise ValueError(f"{key}={value!r} must be a finite number")
            return number
    if hint in (int, bool, str) and type(value) is hint:
        return value
    expected = getattr(hint, "__name__", hint)
    if value is None:  # key= with nothing after the "=", or key: with nothing in YAML
        raise ValueError(f"{key} has no value (expected {expected}): give it one")
    hint_text = ""
    if hint is str:  # key=123 on the command line is read as a number
        hint_text = f"; quote it to keep it a string: {key}=\"'{value}'\""
    elif hint is bool:  # yes/no/on/off are strings in YAML 1.2
        hint_text = f": {key}=true or {key}=false"
    elif isinstance(value, str) and "," in value:  # a sweep's axis outside a sweep
        hint_text = f"; a list of values ({key}=v1,v2) is a grid: `spikessl sweep` runs one"
    raise ValueError(f"{key}={value!r} has the wrong type: expected {expected}{hint_text}")


def _list_example(key: str, args: tuple) -> str:
    """How to write a list for ``key`` whose hint is ``tuple[args]``."""
    if args[0] is str:
        return f"e.g. {key}=crop+rotate"
    # brackets, quoted for the shell: a sweep reads 8,16 as two cells
    if len(args) == 2 and args[1] is Ellipsis:
        return f"e.g. '{key}=[8,16]'"
    return f"{len(args)} numbers, e.g. '{key}=[{','.join(['0.5'] * len(args))}]'"


def _scalar(text: str) -> Any:
    try:
        return load_yaml(text)
    except yaml.YAMLError:
        return text.strip()


def from_dict(cls: type, raw: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``raw``, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ValueError(
                f"unknown config key {path!r}.{did_you_mean(str(key), names)} Valid keys "
                f"here: {', '.join(names)}"
            )
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except ValueError as err:
        if not prefix or str(err).startswith(prefix):
            raise
        raise ValueError(f"{prefix}: {err}") from None


def to_dict(cfg: Any) -> dict:
    """Plain dict (tuples as lists) for YAML/JSON, inverse of ``from_dict``."""

    def plain(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def dump_yaml(cfg: Any) -> str:
    """A config dataclass as YAML that ``load_yaml`` reads back the same."""
    return yaml.dump(to_dict(cfg), Dumper=YamlDumper, sort_keys=False)
