"""The CLI reports config errors with file and key path (the shipped configs: tests/test_configs.py)."""

from pathlib import Path

import pytest
import yaml

from core.config import ConfigError
from pipeline.cli import main
from pipeline.experiment import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_preset_values_are_overridden_by_the_section(tmp_path):
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["model.layers=2"])
    assert cfg.model.layers == 2 and cfg.model.dim == 128  # dim from the tiny preset


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("model.layrs=3", "model.layrs: unknown key; did you mean 'layers'?"),
        ("train.p_error=1.5", "train.p_error: must be <= 1.0"),
        ("model.codebook_size=512", "model.codebook_size (512) != tokenizer.n_embed (256)"),
        ("model.text_dim=32", "model.text_dim (32) != text_encoder.dim (64)"),
        ("sample.order=sideways", "sample.order: must be one of"),
        ("data.download.image_size=abc", "data.download.image_size: expected an integer"),
    ],
)
def test_wrong_values_fail_at_load_with_path_and_file(override, fragment, capsys):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs" / "tiny.yaml", [override])
    assert fragment in str(err.value) and "tiny.yaml" in str(err.value)
    assert main(["config", str(ROOT / "configs" / "tiny.yaml"), "--set", override]) == 2
    assert fragment in capsys.readouterr().err


def test_typo_in_a_yaml_file_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stpes: 10\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: train.stpes: unknown key; did you mean 'steps'\?"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_cli_config_prints_resolved_config(capsys):
    assert main(["config", str(ROOT / "configs" / "tiny.yaml"), "--set", "train.steps=7"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["steps"] == 7 and printed["model"]["dim"] == 128


@pytest.mark.parametrize(
    "override, key, message",
    [
        ("train.order=zigzag", "train.order", "unknown generation order 'zigzag'; known: anti_progressive"),
        ("train.stages=5", "train.stages", "T=5 does not divide L=64"),
        ("sample.steps=65", "sample.steps", "must be in 1..L=64"),
        ("tokenizer.n_embed=20000", "tokenizer.n_embed", "do not fit the token shards"),
        ("train.order_learner.stages=8", "train.order_learner.stages", "must equal train.stages (4)"),
        ("eval.metrics=[attributes]", "eval.metrics", None),
    ],
)
def test_cross_section_rules_fail_pt2i_config_naming_the_key(capsys, override, key, message):
    """Values that a stage would only reject deep in a run fail when the config loads, naming the key."""
    from pipeline.cli import main

    extra = ["--set", "train.order=learned"] if key.startswith("train.order_learner") else []
    if key == "eval.metrics":
        extra = ["--set", "data.download.source=laion", "--set", "data.download.url_list=/x"]
    assert main(["config", str(ROOT / "configs" / "tiny.yaml"), "--set", override, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("config error: ") and f": {key}: " in err and (message is None or message in err), err


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["train.order=learned", "sample.order=learned", "sample.guidance_scale=2.0"], "sample.guidance_scale"),
        (["train.order=learned", "sample.order=learned", "sample.revise=false"], "sample.revise"),
        (["train.order=learned", "sample.order=learned", "sample.temperature=1.0"], "sample.temperature"),
        (["train.mode=emage", "train.emage_state_weight=0"], "sample.order"),
        (["train.mode=emage", "train.emage_state_weight=0", "sample.order=confidence"], "sample.revise"),
    ],
)
def test_samplers_that_cannot_use_the_trained_model_fail_at_load(overrides, key):
    """The learned order samples with its rollouts' guidance, revision and temperature; an Emage run's
    untrained state head (emage_state_weight 0) can neither order the positions nor revise."""
    with pytest.raises(ConfigError, match=f": {key}: "):
        load_config(ROOT / "configs" / "tiny.yaml", overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.order=learned", "sample.order=learned", "sample.temperature=0", "train.order_learner.revise=true"],
        ["train.mode=emage"],  # the head is trained by default
        ["train.mode=emage", "train.emage_state_weight=0", "sample.order=confidence", "sample.repredict=true"],
    ],
)
def test_samplers_that_can_use_the_trained_model_load(overrides):
    load_config(ROOT / "configs" / "tiny.yaml", overrides)
