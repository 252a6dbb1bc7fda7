"""The typed config loader: every wrong key, type or value fails at load with its path and file."""

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from core.config import ConfigError, apply_overrides, config_hash, from_dict


@dataclass
class Inner:
    width: int = field(default=8, metadata={"min": 1})
    rate: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})
    kind: Literal["a", "b"] = "a"
    path: Optional[str] = None
    sizes: list[int] = field(default_factory=lambda: [1, 2], metadata={"min": 1})

    def __post_init__(self):
        if self.kind == "b" and self.width % 2:
            raise ValueError("kind 'b' needs an even width")


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)


def load(data):
    return from_dict(Outer, data, source="exp.yaml")


def test_defaults_and_values():
    cfg = load({"inner": {"width": 4, "rate": 1, "sizes": [3]}})
    assert cfg.inner.width == 4 and cfg.inner.rate == 1.0 and isinstance(cfg.inner.rate, float)
    assert cfg.inner.sizes == [3] and cfg.name == "x"


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"inner": {"widht": 3}}, "exp.yaml: inner.widht: unknown key; did you mean 'width'?"),
        ({"inner": {"width": "3"}}, "exp.yaml: inner.width: expected an integer"),
        ({"inner": {"width": 2.5}}, "inner.width: expected an integer"),
        ({"inner": {"width": True}}, "inner.width: expected an integer"),
        ({"inner": {"width": 0}}, "inner.width: must be >= 1"),
        ({"inner": {"rate": 1.5}}, "inner.rate: must be <= 1.0"),
        ({"inner": {"kind": "c"}}, "inner.kind: must be one of 'a', 'b'"),
        ({"inner": {"sizes": [1, 0]}}, "inner.sizes: must be >= 1"),
        ({"inner": {"sizes": 3}}, "inner.sizes: expected a list"),
        ({"inner": {"path": 3}}, "inner.path: expected str or None"),
        ({"inner": 5}, "inner: expected a mapping"),
        ({"inner": {"kind": "b", "width": 3}}, "exp.yaml: inner: kind 'b' needs an even width"),
        ({"nmae": "y"}, "nmae: unknown key"),
        ({"inner": {"rate": float("nan")}}, "inner.rate: must be a finite number in [0.0, 1.0], got nan"),
        ({"inner": {"rate": float("inf")}}, "inner.rate: must be a finite number in [0.0, 1.0], got inf"),
        ({"inner": {"rate": float("-inf")}}, "inner.rate: must be a finite number in [0.0, 1.0], got -inf"),
    ],
)
def test_errors_name_file_and_path(data, fragment):
    with pytest.raises(ConfigError) as err:
        load(data)
    assert fragment in str(err.value)


def test_overrides_are_validated_like_the_file():
    raw = apply_overrides({"inner": {"width": 4}}, ["inner.rate=0.25", "inner.kind=b", "name=run1"])
    cfg = load(raw)
    assert (cfg.inner.rate, cfg.inner.kind, cfg.name) == (0.25, "b", "run1")
    with pytest.raises(ConfigError, match="inner.rate: must be <= 1.0"):
        load(apply_overrides({}, ["inner.rate=2"]))
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        apply_overrides({}, ["inner.rate"])


def test_config_hash_is_stable_and_sensitive():
    a, b = load({}), load({})
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(load({"inner": {"width": 9}}))


@dataclass
class Plain:
    scale: float = 1.0  # no range
    limit: float = field(default=1.0, metadata={"min": 0.0})


def test_nan_and_infinity_fail_every_float():
    """NaN compares false with any bound, so a range check alone lets it through."""
    with pytest.raises(ConfigError, match=r"exp.yaml: scale: must be a finite number, got nan"):
        from_dict(Plain, {"scale": float("nan")}, source="exp.yaml")
    with pytest.raises(ConfigError, match=r"exp.yaml: limit: must be a finite number >= 0.0, got inf"):
        from_dict(Plain, {"limit": float("inf")}, source="exp.yaml")
    with pytest.raises(ConfigError, match=r"exp.yaml: scale: must be a finite number, got inf"):
        from_dict(Plain, {"scale": float("inf")}, source="exp.yaml")


def test_a_post_init_error_names_the_files_that_set_the_keys_behind_it():
    """``source`` as a function of the dotted key (a config of several files): a section's cross-field error
    names the files of the keys without which the section builds, not the last file that touched it."""
    files = {"inner.kind": "a.yaml", "inner.width": "b.yaml", "inner.rate": "c.yaml"}

    def source(key):
        return files.get(key, "top.yaml")

    with pytest.raises(ConfigError) as err:
        from_dict(Outer, {"inner": {"kind": "b", "width": 3, "rate": 0.2}}, source=source)
    assert str(err.value) == "a.yaml and b.yaml: inner: kind 'b' needs an even width"
    files["inner.width"] = "a.yaml"
    with pytest.raises(ConfigError, match=r"^a\.yaml: inner: kind 'b'"):
        from_dict(Outer, {"inner": {"kind": "b", "width": 3, "rate": 0.2}}, source=source)
