"""Pins for ``pipeline.sweep_report`` (found by mutation testing): where each non-evaluate column is read,
the stand-in label of clean-FID, each variant's own per-seed values, the plotted column, the notes and the
"not yet run" noise line. ``save_plot`` is replaced by a recorder (no matplotlib)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

import pipeline.sweep_report as sr
from tests.test_sweep_report import _manifest, _report, _sweep


def _run(tmp_path, sampler):
    cfg = SimpleNamespace(model=SimpleNamespace(seq_len=64), sample=SimpleNamespace(sampler=sampler, steps=8))
    return SimpleNamespace(run_dir=tmp_path / sampler, config=cfg)


def test_run_values_reads_each_column_from_its_stage(tmp_path):
    """evaluate metrics; s / image from the sample manifest; train seconds; passes: L for AR, else T."""
    run = _run(tmp_path, "progressive")
    _manifest(run.run_dir / "evaluate", metrics={"fid": 3.0, "attribute_match": 0.5})
    _manifest(run.run_dir / "sample", metrics={"seconds_per_image": 0.25}, seconds=99.0)
    _manifest(run.run_dir / "train", seconds=120.0, metrics={"seconds_per_image": 7.0})
    v = sr.run_values(run)
    assert (v["fid"], v["attribute_match"], v["clip_score"]) == (3.0, 0.5, None)
    assert (v["passes"], v["seconds_per_image"], v["train_seconds"]) == (8.0, 0.25, 120.0)
    assert sr.run_values(_run(tmp_path, "autoregressive"))["passes"] == 64.0


@pytest.mark.parametrize("col", ["fid", "clean_fid"])
def test_both_fid_columns_say_when_the_stand_in_extractor_was_used(col):
    stand_in = SimpleNamespace(eval=SimpleNamespace(inception_weights=None))
    real = SimpleNamespace(eval=SimpleNamespace(inception_weights="/w/pt_inception.pth"))
    label = sr.COLUMNS[col][0]
    assert sr._label(stand_in, col) == f"{label} (stand-in extractor) ↓"
    assert sr._label(real, col) == f"{label} ↓"


@pytest.fixture
def plots(monkeypatch):
    seen = []

    def record(rows, col, label, title, path):
        seen.append((col, label))
        Path(path).write_bytes(b"png")
        return Path(path)

    monkeypatch.setattr(sr, "save_plot", record)
    return seen


def test_each_variant_keeps_its_own_seed_values_and_the_plot_column(tmp_path, plots):
    metrics = {
        "a-s0": {"attribute_match": 0.5, "fid": 10.0},
        "a-s1": {"attribute_match": 0.7, "fid": 11.0},
        "b-s0": {"attribute_match": 0.4, "fid": 12.0},
        "b-s1": {"attribute_match": 0.44, "fid": 14.0},
    }
    cfg, report = _report(_sweep(tmp_path, columns=["attribute_match"], plot="fid"), metrics, {})
    rows = {r["variant"]: r["values"] for r in report["rows"]}
    assert rows["a"]["attribute_match"]["seeds"] == {"0": 0.5, "1": 0.7}
    assert rows["b"]["fid"]["seeds"] == {"0": 12.0, "1": 14.0} and rows["b"]["fid"]["mean"] == 13.0
    assert plots == [("fid", "FID (stand-in extractor) ↓")]
    assert "![plot](plot.png)" in (Path(cfg.run_dir) / "report.md").read_text()


def test_no_plot_when_the_plotted_column_has_no_value(tmp_path, plots):
    metrics = {f"{v}-s{s}": {"fid": 10.0} for v in "ab" for s in (0, 1)}
    cfg, report = _report(_sweep(tmp_path), metrics, {})  # plots the first column, attribute_match: unmeasured
    assert plots == [] and "plot.png" not in report["paths"]
    assert "![plot]" not in (Path(cfg.run_dir) / "report.md").read_text()


def test_notes_and_a_noise_sweep_not_yet_run(tmp_path, plots):
    other = _sweep(tmp_path, name="noise")  # its run_dir has no report.json yet
    one = {"a-s0": {"attribute_match": 0.5, "fid": 10.0}, "b-s0": {"attribute_match": 0.4, "fid": 12.0}}
    path = _sweep(tmp_path, seeds=[0], noise_from=other.name, notes=["FID: 10 images only", "seed 0 only"])
    cfg, report = _report(path, one, {})
    md = (Path(cfg.run_dir) / "report.md").read_text()
    assert f"Noise level (the seed spread of {other}, mean sd over its variants): not yet run.\n" in md
    assert "\n- FID: 10 images only\n- seed 0 only\n\nTime: " in md
    assert json.loads((Path(cfg.run_dir) / "report.json").read_text())["noise_from"]["sd"] is None
