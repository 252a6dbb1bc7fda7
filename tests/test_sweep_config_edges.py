"""Edges of a sweep file (``pipeline.sweep_config``): seeds unique, seed_keys the experiment's seed settings (and
some when there are several seeds), a run_dir, at least one run, a noise_from file that exists; errors about the
sweep file's own keys name that file and key, not the base experiment the value lands in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config import ConfigError
from pipeline.sweep_config import load_sweep

ROOT = Path(__file__).resolve().parents[1]


def sweep(tmp_path: Path, **extra) -> Path:
    doc = {
        "base": str(ROOT / "configs" / "tiny.yaml"),
        "run_dir": str(tmp_path / "sweep"),
        "variants": [{"name": "a", "set": {"train.p_error": 0.0}}],
        **extra,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    "extra, error",
    [
        ({"seeds": [0, 1, 0]}, r"sweep.yaml: seeds: \[0\] given twice"),
        ({"seeds": [0, 1], "seed_keys": []}, "sweep.yaml: seed_keys: empty, so the 2 seeds would be identical runs"),
        ({"seed_keys": ["train.order_learner.seed"]}, r"sweep.yaml: seed_keys\[0\]: train.order_learner.seed: unknown"),
        ({"seeds": [0, -1]}, r"sweep.yaml: seeds\[1\]: train.seed: must be >= 0, got -1"),
        ({"run_dir": " "}, "sweep.yaml: run_dir: empty"),
        ({"variants": [], "grid": {"train.stages": []}}, "sweep.yaml: variants: none, and no grid values"),
        ({"noise_from": "other.yaml"}, "sweep.yaml: noise_from: sweep file .*other.yaml not found"),
    ],
)
def test_a_sweep_file_that_would_misbehave_is_refused_naming_its_key(tmp_path, extra, error):
    with pytest.raises(ConfigError, match=error) as exc:
        load_sweep(sweep(tmp_path, **extra))
    assert "tiny.yaml" not in str(exc.value)  # the base experiment is not to blame


def test_seed_keys_are_the_seed_settings(tmp_path):
    with pytest.raises(ConfigError, match=r"sweep.yaml: seed_keys\[1\]: 'train.lr' is not a seed setting"):
        load_sweep(sweep(tmp_path, seed_keys=["train.seed", "train.lr"]))  # lr 0.0 and 1.0 as a "seed spread"
    keys = ["seed", "train.seed", "sample.seed", "tokenizer.seed", "data.synthetic.seed", "eval.prompt_seed"]
    (tmp_path / "other.yaml").write_text("{}")
    cfg, runs = load_sweep(sweep(tmp_path, seeds=[0, 1], seed_keys=keys, noise_from="other.yaml"))
    assert [(r.config.seed, r.config.eval.prompt_seed, r.config.tokenizer.seed) for r in runs] == [(0, 0, 0), (1, 1, 1)]
    _, runs = load_sweep(sweep(tmp_path, seed_keys=[]))  # one seed: nothing to write it to is fine
    assert len(runs) == 1


def test_the_sweep_loader_sets_source_and_never_suggests_it(tmp_path):
    with pytest.raises(ConfigError, match="unknown key") as exc:
        load_sweep(sweep(tmp_path, sourc="x"))
    assert "source" not in str(exc.value).split("sourc: unknown key")[1]  # neither suggested nor listed
    assert load_sweep(sweep(tmp_path, source="/elsewhere.yaml"))[0].source == str((tmp_path / "sweep.yaml").resolve())


def test_a_sweep_file_an_experiment_file_and_a_model_preset_given_for_each_other_say_which_they_are(tmp_path, capsys):
    """``pt2i run SWEEP`` / ``pt2i sweep EXPERIMENT`` fail naming what the file is and the command it is for (not
    "store: unknown key" / "seed: unknown key; did you mean 'seeds'?"); a sweep named as an experiment's base too;
    a sweep whose only slip is seed: for seeds still hears that."""
    from pipeline import cli
    from pipeline.experiment import load_config

    table3 = ROOT / "configs" / "ablations" / "table3-orders.yaml"
    for command in ("run", "status", "config"):
        assert cli.main([command, str(table3)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith(
            f"{table3}: a sweep file (it has variants:), not an experiment: run its variants with `pt2i sweep {table3}`"
        ), err
    assert cli.main(["sweep", str(ROOT / "configs" / "tiny.yaml"), "--plan"]) == 2
    err = capsys.readouterr().err
    assert "tiny.yaml: an experiment file (it has data: and no variants: or grid:), not a sweep: run it with " in err
    assert "`pt2i run " in err and len(err.strip().splitlines()) == 1
    assert cli.main(["config", str(ROOT / "configs" / "models" / "pdm-1.2b.yaml")]) == 2
    assert (
        "pdm-1.2b.yaml: a model preset (the model section's keys), not an experiment: an experiment uses it as "
        "model: {preset: pdm-1.2b}" in capsys.readouterr().err
    )

    grid_only = tmp_path / "grid.yaml"
    grid_only.write_text(json.dumps({"base": str(ROOT / "configs" / "tiny.yaml"), "grid": {"train.stages": [4]}}))
    (tmp_path / "child.yaml").write_text(json.dumps({"base": "grid.yaml", "train": {"lr": 0.001}}))
    with pytest.raises(ConfigError, match=r"grid.yaml: a sweep file \(it has grid:\): an experiment's base: names "):
        load_config(tmp_path / "child.yaml")
    slip = tmp_path / "slip.yaml"
    slip.write_text(json.dumps({"base": str(ROOT / "configs" / "tiny.yaml"), "seed": [0, 1]}))
    with pytest.raises(ConfigError, match="seed: unknown key; did you mean 'seeds'"):
        load_sweep(slip)
