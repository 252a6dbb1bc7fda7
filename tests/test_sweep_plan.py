"""Sweep planning details: folder names from variant names (lower case), the default store under RUN_DIR,
core groups never empty, a run's stage link moved when its config now shares another folder, and the plan's
description of who uses each stored folder; a sweep without seeds is refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core.config import ConfigError
from pipeline.sweep import core_groups, link_stages, make_plan
from pipeline.sweep_config import load_sweep, slug
from tests.sweep_utils import STAGES

ROOT = Path(__file__).resolve().parents[1]


def test_variant_folders_and_the_default_store(tmp_path):
    assert slug("Table A (p=0.3)") == "table-a-p-0-3" and slug("***") == "variant"
    doc = {
        "base": str(ROOT / "configs" / "tiny.yaml"),
        "run_dir": str(tmp_path / "sweep"),
        "variants": [
            {"name": "No Errors", "set": {"train.p_error": 0.0}},
            {"name": "P 0.3", "set": {"train.p_error": 0.3}},
        ],
    }
    (tmp_path / "s.yaml").write_text(json.dumps(doc))
    cfg, runs = load_sweep(tmp_path / "s.yaml")
    assert [r.run_dir for r in runs] == [tmp_path / "sweep" / "no-errors-s0", tmp_path / "sweep" / "p-0-3-s0"]
    assert cfg.store == str(tmp_path / "sweep" / "stages")
    lines = make_plan(runs, STAGES).describe()
    assert sorted(line.split()[0] for line in lines) == ["evaluate", "evaluate", "synthetic", "train", "train"]
    assert lines[0].startswith("synthetic") and lines[0].endswith("2 run(s): all runs")
    assert [line.split(": ")[-1] for line in lines if line.startswith("train")] == ["no-errors-s0", "p-0-3-s0"]
    (tmp_path / "none.yaml").write_text(json.dumps({**doc, "seeds": []}))
    with pytest.raises(ConfigError, match="none.yaml.*seeds: give at least one seed"):
        load_sweep(tmp_path / "none.yaml")  # else a sweep of no runs


def test_core_groups_split_round_robin_and_never_empty():
    assert core_groups(2, [0, 1, 2, 3, 4]) == [{0, 2, 4}, {1, 3}]
    assert core_groups(4, [6, 7]) == [{6}, {7}]  # more jobs than cores: one group per core
    assert core_groups(0, [0, 1]) == [{0, 1}]


def test_a_changed_config_moves_the_link_to_its_new_folder(tmp_path):
    run, store = tmp_path / "run", tmp_path / "store"
    link_stages(run, {"train": "aaaa"}, store, log=lambda m: None)
    assert os.readlink(run / "train") == os.path.relpath(store / "train" / "aaaa", run)
    link_stages(run, {"train": "bbbb"}, store, log=lambda m: None)  # e.g. the variant's train.lr changed
    assert os.readlink(run / "train") == os.path.relpath(store / "train" / "bbbb", run)
    (run / "own").mkdir()
    said = []
    link_stages(run, {"own": "cccc"}, store, log=said.append)  # a folder of its own (pt2i run --force) stays
    assert (run / "own").is_dir() and not (run / "own").is_symlink() and "left as it is" in said[0]


def test_a_failed_run_lets_the_others_finish_then_fails_the_sweep(tmp_path, monkeypatch):
    from core.stage import StageError
    from pipeline.sweep import run_local, run_sweep

    monkeypatch.setenv("PT2I_TEST_CALLS", str(tmp_path / "calls.txt"))
    doc = {
        "base": str(ROOT / "configs" / "tiny.yaml"),
        "run_dir": str(tmp_path / "sweep"),
        "columns": ["attribute_match"],
        "variants": [{"name": "bad", "set": {"train.p_error": 0.1}}, {"name": "good", "set": {"train.p_error": 0.2}}],
    }
    (tmp_path / "s.yaml").write_text(json.dumps(doc))
    cfg, runs = load_sweep(tmp_path / "s.yaml")

    def runner(run, stages, log):
        if run.run_dir.name == "bad-s0" and len(stages) == len(STAGES):
            raise RuntimeError("boom\nsecond line")
        run_local(run, stages, log)

    with pytest.raises(StageError, match=r"^1 of 2 runs failed \(bad-s0: RuntimeError: boom\); rerun the sweep"):
        run_sweep(cfg, runs, stages=STAGES, runner=runner, log=lambda m: None)
    report = json.loads((tmp_path / "sweep" / "report.json").read_text())
    assert report["failed"] == {"bad-s0": "RuntimeError: boom"}
    assert [row["values"]["attribute_match"]["n"] for row in report["rows"]] == [0, 1]  # the other run finished


def test_the_plan_names_the_runs_sharing_a_folder_unless_all_do(tmp_path):
    doc = {
        "base": str(ROOT / "configs" / "tiny.yaml"),
        "run_dir": str(tmp_path / "sweep"),
        "variants": [
            {"name": "a", "set": {"train.p_error": 0.1, "eval.speed_quality_images": 8}},
            {"name": "b", "set": {"train.p_error": 0.1, "eval.speed_quality_images": 4}},  # a's training
            {"name": "c", "set": {"train.p_error": 0.3}},
        ],
    }
    (tmp_path / "s.yaml").write_text(json.dumps(doc))
    _, runs = load_sweep(tmp_path / "s.yaml")
    lines = make_plan(runs, STAGES).describe()
    assert [line.split(None, 2)[2] for line in lines if line.startswith("train")] == [
        "2 run(s): a-s0, b-s0",
        "1 run(s): c-s0",
    ]
    assert [line.split(None, 2)[2] for line in lines if line.startswith("synthetic")] == ["3 run(s): all runs"]
