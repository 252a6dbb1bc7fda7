"""``load_config``: a bad ``--set`` value is blamed on the file given (the overrides' source), not on the base file
that set the key first; a relative ``run_dir`` resolves against ``base_dir`` when one is given."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import ConfigError
from pipeline.experiment import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_a_bad_override_of_a_key_a_base_file_sets_names_the_file_given(tmp_path):
    (tmp_path / "base.yaml").write_text(f"base: {ROOT / 'configs' / 'tiny.yaml'}\ntrain:\n  lr: 0.001\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nname: child\n")
    with pytest.raises(ConfigError) as err:
        load_config(child, ["train.lr=-1", f"run_dir={tmp_path / 'run'}"])
    assert str(err.value) == f"{child}: train.lr: must be >= 0.0, got -1.0"
    (tmp_path / "base.yaml").write_text(f"base: {ROOT / 'configs' / 'tiny.yaml'}\ntrain:\n  lr: -1\n")
    with pytest.raises(ConfigError, match=f"^{tmp_path / 'base.yaml'}: train.lr: must be >= 0.0"):
        load_config(child, [f"run_dir={tmp_path / 'run'}"])  # set by the base: the base is named


def test_a_relative_run_dir_resolves_against_base_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "elsewhere"
    other.mkdir()
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["run_dir=runs/a"], base_dir=other)
    assert cfg.run_dir == str(other / "runs" / "a")
    assert load_config(ROOT / "configs" / "tiny.yaml", ["run_dir=runs/a"]).run_dir == str(tmp_path / "runs" / "a")
