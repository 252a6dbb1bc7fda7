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
