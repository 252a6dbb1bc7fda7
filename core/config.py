"""Typed YAML configs: YAML mapping -> nested dataclasses, validated at load.

Every component owns a plain ``@dataclass``; this module turns a YAML mapping into it and
rejects, with the dotted key path and the file name:
  * unknown keys (with the closest valid name suggested; a key the loader sets, ``metadata={"loader": True}``
    such as ``source``, is never suggested, and its value in a file, a saved ``config.yaml``, is ignored),
  * values of the wrong type (``int``/``float``/``bool``/``str``/``Optional``/``list``/``dict``/``Literal``),
  * values outside ``field(metadata={"min": .., "max": ..})`` (``"below"``: an open upper bound) or ``Literal`` choices,
  * NaN in every float, and +-inf (YAML ``.inf``, or ``1e400``) unless the field opts in with
    ``metadata={"allow_inf": True}``; integers that fit no 64-bit word (torch.manual_seed refuses them),
  * cross-field errors raised as ``ValueError`` by a dataclass's ``__post_init__``.

YAML 1.1 (PyYAML) reads ``010`` as 8 (octal) and ``1:30`` as 90 (base 60), where YAML 1.2 and most readers
see 10 and a string: the loader keeps such scalars as strings, so a str field gets the text and a number field
refuses it. ``0x10`` and ``0b10`` stay numbers (their prefix says what they are); ``0o10`` (YAML 1.2 octal) is a
string to PyYAML and refused by a number field likewise.

``--set a.b=c`` overrides are applied to the raw mapping before validation, so they are
checked exactly like the file (the value is parsed as YAML: ``--set train.lr=3e-4``).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A config value is wrong. The message names the file and the dotted key path."""


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


_DECIMAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_YAML11_ONLY = re.compile(r"[-+]?(0[0-7_]+|[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?)")  # octal 010, base-60 1:30
_INT64 = (-(2**63), 2**64 - 1)  # signed or unsigned 64 bits: torch's seeds take up to 2**64 - 1
_YAML_BOOL_WORDS = {True: ("yes", "on", "true"), False: ("no", "off", "false")}  # YAML 1.1, any case


def _hint(value: Any) -> str:
    """Why a scalar the YAML reader changed is not the number or word it looks like: what to write instead."""
    if isinstance(value, bool):
        return " (YAML reads yes/no/on/off as true/false: quote the word, e.g. 'no')"
    if isinstance(value, str) and _YAML11_ONLY.fullmatch(value.strip()):
        return " (not read as a number: YAML 1.1 takes a leading 0 as octal, ':' as base 60; write the plain value)"
    return ""


def _bool_as_choice(value: bool, choices: tuple) -> Any:
    """YAML 1.1 reads an unquoted ``no`` (``resize_mode: no``) as false: a ``Literal`` whose choices hold exactly one
    word YAML reads as ``value`` gets that word back. The reader keeps no spelling, so ``off`` or ``false`` there
    also mean ``'no'``: the same sense. With no such choice (or several) the bool stays, refused with a hint."""
    words = [c for c in choices if isinstance(c, str) and c.lower() in _YAML_BOOL_WORDS[value]]
    return words[0] if len(words) == 1 and value not in choices else value


def _convert(tp: Any, value: Any, path: str, fail) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it converted."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            fail(path, f"must not be null (expected {_type_name(tp)})")
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path, _raise_inner)
            except _Inner:
                continue
        fail(path, f"expected {_type_name(tp)}, got {value!r}{_hint(value)}")
    if origin is Literal:
        if isinstance(value, bool):
            value = _bool_as_choice(value, get_args(tp))
        if value not in get_args(tp):
            fail(path, f"must be {_type_name(tp)}, got {value!r}{_hint(value)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            fail(path, f"expected a list, got {value!r}")
        (item_tp, *rest) = get_args(tp) or (Any,)
        items = [_convert(item_tp, v, f"{path}[{i}]", fail) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            fail(path, f"expected a mapping, got {value!r}")
        _, val_tp = get_args(tp) or (str, Any)
        return {str(k): _convert(val_tp, v, f"{path}.{k}", fail) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            fail(path, f"expected a mapping for section {tp.__name__}, got {value!r}")
        return _build(tp, value, path, fail)
    if tp is bool:
        if not isinstance(value, bool):
            fail(path, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail(path, f"expected an integer, got {value!r}{_hint(value)}")
        return value
    if tp is float:
        if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()) and not _hint(value):
            return float(value)  # 3e-4: YAML 1.1 (PyYAML) reads a float without a dot as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail(path, f"expected a number, got {value!r}{_hint(value)}")
        try:
            return float(value)
        except OverflowError:  # an integer past any float: infinite, as 1e400 reads (refused unless allow_inf)
            return math.inf if value > 0 else -math.inf
    if tp is str:
        if not isinstance(value, str):
            fail(path, f"expected a string, got {value!r}{_hint(value)}")
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    fail(path, f"expected {_type_name(tp)}, got {value!r}")


class _Inner(Exception):
    pass


def _raise_inner(path: str, msg: str) -> None:
    raise _Inner(msg)


def _numbers(value: Any):
    """Every number in ``value``, through its lists and mappings (a dataclass in them was checked when built)."""
    if isinstance(value, (list, tuple, dict)):
        for v in value.values() if isinstance(value, dict) else value:
            yield from _numbers(v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def _check_range(f: dataclasses.Field, value: Any, path: str, fail) -> None:
    if value is None:
        return
    lo, hi, below = f.metadata.get("min"), f.metadata.get("max"), f.metadata.get("below")
    finite = not f.metadata.get("allow_inf")
    for v in _numbers(value):
        # NaN compares false with every bound, so it passes any; inf breaks round(), softmax, filters downstream
        if isinstance(v, float) and (math.isnan(v) or (finite and math.isinf(v))):
            fail(path, f"must be a {'finite ' if finite else ''}number{_range_text(lo, hi, below)}, got {v!r}")
        if lo is not None and v < lo:
            fail(path, f"must be >= {lo}, got {v!r}")
        if hi is not None and v > hi:
            fail(path, f"must be <= {hi}, got {v!r}")
        if below is not None and v >= below:
            fail(path, f"must be{_range_text(lo, None, below)}, got {v!r}")
        if isinstance(v, int) and not _INT64[0] <= v <= _INT64[1]:
            shown = v if v.bit_length() <= 128 else f"an integer of {v.bit_length()} bits"
            fail(path, f"must fit in 64 bits, in [{_INT64[0]}, {_INT64[1]}], got {shown}")
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        fail(path, f"must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _range_text(lo: Any, hi: Any, below: Any = None) -> str:
    if lo is not None and (hi is not None or below is not None):
        return f" in [{lo}, {hi}]" if hi is not None else f" in [{lo}, {below})"
    if lo is not None:
        return f" >= {lo}"
    return f" <= {hi}" if hi is not None else f" < {below}" if below is not None else ""


def _keys_behind(cls: type, kwargs: dict, msg: str, path: str) -> list[str]:
    """The dotted paths of the keys behind a ``__post_init__`` error (to name the files that set them): those
    given keys without which ``cls`` builds (each left at its default in turn) and those the message ``msg``
    names, else every given key (else the section itself)."""

    def builds_without(name: str) -> bool:
        try:
            cls(**{k: v for k, v in kwargs.items() if k != name})
        except (ValueError, TypeError):
            return False
        return True

    without = [n for n in kwargs if builds_without(n)]
    named = [n for n in kwargs if re.search(rf"(?<!\w){re.escape(n)}(?!\w)", msg)]
    # both: a key whose removal leaves the default, which fails too (encode_quality: 20 with png, where the default
    # 95 fails as well), is still behind the error when the message names it
    keys = list(dict.fromkeys(without + named)) or list(kwargs)
    return [_join(path, n) for n in keys] or [path]


def _build(cls: type, data: dict, path: str, fail) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    # {key: (its value before it was removed, what to set instead)}: a config written before (a run folder's
    # config.yaml) still loads when the key holds that value; another value is refused, saying what to set
    removed = getattr(cls, "REMOVED_KEYS", {})
    data = {k: v for k, v in data.items() if not (k in removed and k not in fields and v == removed[k][0])}
    # a key the loader sets (``source``): a saved config.yaml holds what it wrote, which it sets again
    settable = [n for n, f in fields.items() if not f.metadata.get("loader")]
    data = {k: v for k, v in data.items() if k in settable or k not in fields}
    for key in data:
        if key in removed and key not in fields:
            fail(_join(path, key), f"no longer a setting: {removed[key][1]}")
        if key not in fields:
            close = difflib.get_close_matches(str(key), settable, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(settable)}"
            fail(_join(path, key), f"unknown key{hint}")
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        sub = _join(path, name)
        converted = _convert(hints[name], value, sub, fail)
        _check_range(f, converted, sub, fail)
        kwargs[name] = converted
    try:
        return cls(**kwargs)
    except ValueError as exc:
        msg, label = str(exc), path or cls.__name__
        keys = _keys_behind(cls, kwargs, msg, path)
        named = re.match(r"([A-Za-z_][\w.]*): ", msg)
        if not path and named and named.group(1) in fields:  # the top level: the key the message starts with
            msg, label = msg[named.end() :], named.group(1)
        elif len(keys) == 1 and keys[0] != path:  # one key behind it: name that key, not its whole section
            label = keys[0]
            msg = msg.removeprefix(f"{label.rsplit('.', 1)[-1]}: ")
        fail(label, msg, keys)
    except TypeError as exc:  # a required field without default
        fail(path or cls.__name__, str(exc), [path] if path else None)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def sources_of(source: str | Callable[[str], str], keys: list[str]) -> str:
    """The file (or files, in order, joined by ' and ') that set the dotted ``keys``: ``source`` is a file name,
    or a function of a dotted key path giving the file that set it."""
    if not callable(source):
        return source
    files = list(dict.fromkeys(source(k) for k in keys))
    return " and ".join(files)


def from_dict(cls: type, data: dict | None, source: str | Callable[[str], str] = "<dict>", path: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; raise :class:`ConfigError` naming ``source`` and the key.
    ``source`` is the file name, or a function of the dotted key path giving the file that set that key
    (a config read from several files: ``core.config_base``). A section's ``__post_init__`` error names the
    files that set the keys its message names (else those that set any key of the section)."""

    def fail(p: str, msg: str, keys: list[str] | None = None):
        raise ConfigError(f"{sources_of(source, keys or [p])}: {p}: {msg}")

    return _build(cls, data or {}, path, fail)


def apply_overrides(data: dict, overrides: list[str], source: str = "--set") -> dict:
    """Apply ``a.b=c`` overrides to a raw mapping (values parsed as YAML)."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"{source} {item!r}: expected KEY.PATH=VALUE, e.g. train.lr=3e-4")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if key.strip() and not all(parts):  # .lr, train..lr, train.: a key named ''
            raise ConfigError(f"{source} {item!r}: empty key name in {key.strip()!r}; write SECTION.KEY, e.g. train.lr")
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{source} {item!r}: '{part}' is not a section")
            node = child
        if not parts[-1]:
            raise ConfigError(f"{source} {item!r}: no key before '='")
        try:
            node[parts[-1]] = yaml.load(raw, Loader=_Loader) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source} {item!r}: not a valid YAML value ({_yaml_problem(exc)})") from None
    return data


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a key given twice in one mapping (else the last one silently wins) and
    keeps YAML 1.1's octal and base-60 numbers (``010``, ``1:30``) and its dates and times (``2026-12-02``) as the
    strings they are: no config field holds a date, and a run named by its date is a string."""

    def construct_yaml_int(self, node):
        if _YAML11_ONLY.fullmatch(node.value):
            return node.value
        try:
            return super().construct_yaml_int(node)
        except ValueError as exc:  # past Python's digit limit for int(): one line with the place, not a traceback
            raise yaml.constructor.ConstructorError(None, None, str(exc).split(":")[0], node.start_mark) from None

    def construct_yaml_float(self, node):
        return node.value if _YAML11_ONLY.fullmatch(node.value) else super().construct_yaml_float(node)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *anchor``: merged by the base class
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                break  # the base class refuses it with its own message
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice in this mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _Loader.construct_yaml_float)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_scalar)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: the parser's problem and where (``line L, column C``)."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        what = "a folder, not a config file" if path.is_dir() else "config file not found"
        raise ConfigError(f"{path}: {what}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    if data is None:
        raise ConfigError(f"{path}: the file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def identity_dict(cfg: Any) -> Any:
    """``to_dict`` with each removed key back at the value it had (``REMOVED_KEYS``) and each added key that holds
    its neutral default left out (fields with ``metadata={"neutral_default": True}``: a default that does what
    the code did before the key existed): what hashes and stage manifests record, so that removing a setting,
    or adding one, leaves every stage made before it current."""
    if dataclasses.is_dataclass(cfg):
        out = {
            f.name: identity_dict(getattr(cfg, f.name))
            for f in dataclasses.fields(cfg)
            if not (f.metadata.get("neutral_default") and getattr(cfg, f.name) == f.default)
        }
        for key, (value, _) in getattr(type(cfg), "REMOVED_KEYS", {}).items():
            out.setdefault(key, value)
        return out
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(identity_dict(v) for v in cfg)
    if isinstance(cfg, dict):
        return {k: identity_dict(v) for k, v in cfg.items()}
    return copy.deepcopy(cfg)


def config_hash(section: Any) -> str:
    """Stable short hash of a config (or section): what a stage's manifest is keyed on."""
    blob = json.dumps(identity_dict(section), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
