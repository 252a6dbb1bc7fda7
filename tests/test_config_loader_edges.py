"""The config loader's edge cases: infinities, 64-bit integers, YAML 1.1 number, date and bool forms, empty --set keys,
the label of a one-key section error, the loader's own ``source`` key and a non-string model preset."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from core.config import ConfigError, apply_overrides, from_dict, read_yaml
from pipeline.experiment import ExperimentConfig, load_config

ROOT = Path(__file__).resolve().parents[1]

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


@dataclass
class Section:
    bias: float = 0.0
    weights: dict[str, float] = field(default_factory=dict)
    grid: list[list[float]] = field(default_factory=list)
    limit: Optional[float] = field(default=None, metadata={"allow_inf": True})
    seed: int = 0
    steps: int = 1
    name: str = "x"
    resize: Literal["no", "border"] = "border"
    kind: Literal["a", "b"] = "a"
    lo: int = 0
    hi: int = 10
    source: Optional[str] = field(default=None, metadata={"loader": True})

    def __post_init__(self):
        if self.lo > self.hi:
            raise ValueError("lo: must not exceed hi")


@dataclass
class Outer:
    sec: Section = field(default_factory=Section)


def load(*overrides: str) -> Section:
    return from_dict(Section, apply_overrides({}, list(overrides)), source="exp.yaml")


def error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as err:
        load(*overrides)
    return str(err.value)


@pytest.mark.parametrize(
    "override, key",
    [
        ("bias=.inf", "bias"),
        ("bias=-.inf", "bias"),
        ("bias=1e400", "bias"),  # PyYAML leaves 1e400 a string, read as a float: inf
        pytest.param("bias=" + "9" * 400, "bias", id="an-integer-past-any-float"),
        ("weights={a: .inf}", "weights"),
        ("grid=[[1, .inf]]", "grid"),
    ],
)
def test_infinity_fails_every_float_field_that_does_not_opt_in(override, key):
    assert error(override).startswith(f"exp.yaml: {key}: must be a finite number, got ")
    assert load("limit=.inf").limit == float("inf")


@pytest.mark.parametrize(
    "override",
    ["data.mixing.weights={laion: .inf}", "data.download.min_similarity=1e400", "data.download.min_similarity=.inf"],
)
def test_infinity_fails_the_experiment_keys_it_broke(override):
    with pytest.raises(ConfigError, match=rf"{override.split('=')[0]}: must be a finite number, got inf"):
        load_config(TINY, [override])


def test_integers_past_64_bits_fail_naming_the_key():
    assert "exp.yaml: seed: must fit in 64 bits" in error(f"seed={2**64}")
    assert "exp.yaml: seed: must fit in 64 bits" in error(f"seed={-(2**63) - 1}")
    assert load(f"seed={2**64 - 1}").seed == 2**64 - 1  # torch.manual_seed takes it


def test_yaml_1_1_octal_and_base_60_numbers_stay_strings(tmp_path):
    assert "steps: expected an integer, got '010' (not read as a number" in error("steps=010")
    assert "steps: expected an integer, got '1:30'" in error("steps=1:30")
    assert "bias: expected a number, got '010'" in error("bias=010")
    assert (load("name=1:30").name, load("name=010").name) == ("1:30", "010")
    assert (load("steps=0x10").steps, load("steps=0b10").steps, load("steps=10").steps) == (16, 2, 10)
    (tmp_path / "exp.yaml").write_text("steps: 010\nname: 1:30\n")
    assert read_yaml(tmp_path / "exp.yaml") == {"steps": "010", "name": "1:30"}


def test_yaml_dates_and_times_stay_strings(tmp_path):
    assert load("name=2026-12-02").name == "2026-12-02"
    assert load("name=2026-12-02T10:30:00Z").name == "2026-12-02T10:30:00Z"
    assert "steps: expected an integer, got '2026-12-02'" in error("steps=2026-12-02")
    (tmp_path / "exp.yaml").write_text("name: 2026-12-02\n")
    assert read_yaml(tmp_path / "exp.yaml") == {"name": "2026-12-02"}


def test_empty_key_names_in_overrides_fail():
    for item in (".lr=1", "train..lr=1", "train.=1"):
        with pytest.raises(ConfigError, match=rf"'{item}': empty key name"):
            apply_overrides({}, [item])


def test_a_yaml_bool_becomes_the_literal_choice_it_spells():
    assert load("resize=no").resize == "no"
    assert "kind: must be one of 'a', 'b', got False (YAML reads yes/no/on/off as true/false: quote" in error("kind=no")
    assert "name: expected a string, got True (YAML reads" in error("name=yes")


def test_a_section_error_behind_one_key_names_that_key():
    assert error("lo=20") == "exp.yaml: lo: must not exceed hi"
    with pytest.raises(ConfigError, match=r"^exp\.yaml: sec\.lo: must not exceed hi$"):
        from_dict(Outer, {"sec": {"lo": 20}}, source="exp.yaml")


def test_the_loaders_own_source_key_is_neither_suggested_nor_taken_from_a_file(tmp_path):
    assert "source" not in error("sourc=/x")  # not "did you mean 'source'?"
    with pytest.raises(ConfigError) as err:
        from_dict(ExperimentConfig, {"zzz": 1}, source="exp.yaml")
    assert "valid keys: name," in str(err.value) and "source" not in str(err.value)
    assert load("source=/x").source is None  # a saved config.yaml holds it: it loads, the loader sets its own
    saved = tmp_path / "config.yaml"
    saved.write_text(f"base: {TINY}\nsource: /elsewhere.yaml\n")
    assert load_config(saved).source == str(saved.resolve())


@pytest.mark.parametrize("preset", ["[tiny]", "{name: tiny}"])
def test_a_model_preset_that_is_not_a_name_fails_naming_the_key(preset):
    with pytest.raises(ConfigError, match=r"tiny\.yaml: model\.preset: expected a preset name, got "):
        load_config(TINY, [f"model.preset={preset}"])


def test_a_key_whose_default_fails_too_is_still_named(tmp_path):
    """png with encode_quality 20: leaving encode_quality out gives the default 95, which fails as well; the error
    still names the file that set 20 (and so the section, as two keys are behind it), not only encode_format's."""
    base = tmp_path / "base.yaml"
    base.write_text(
        f"base: {ROOT / 'configs' / 'tiny.yaml'}\ndata: {{download: {{encode_format: png, encode_quality: 5}}}}\n"
    )
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\ndata: {download: {encode_quality: 20}}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(child)
    assert f"{child}" in str(exc.value) and "data.download:" in str(exc.value) and "got 20" in str(exc.value)


@dataclass
class Decay:
    decay: float = field(default=0.5, metadata={"min": 0.0, "below": 1.0})
    upper: float = field(default=0.5, metadata={"below": 1.0})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"decay": 1.0}, r"decay: must be in \[0.0, 1.0\), got 1.0"),  # the open end: refused at it
        ({"decay": 1.5}, r"decay: must be in \[0.0, 1.0\), got 1.5"),
        ({"decay": -0.1}, r"decay: must be >= 0.0"),
        ({"upper": 1.0}, r"upper: must be < 1.0, got 1.0"),
        ({"decay": float("inf")}, r"decay: must be a finite number in \[0.0, 1.0\)"),
    ],
)
def test_an_open_upper_bound_refuses_its_end_and_says_so(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Decay, data, source="exp.yaml")
    assert from_dict(Decay, {"decay": 0.999999, "upper": -5.0}, source="exp.yaml").decay == 0.999999
