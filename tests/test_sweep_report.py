"""``pipeline.sweep_report`` on hand-written manifests (no stage runs): the seed spread is the mean of the
variants' standard deviations, a one-seed sweep quotes another sweep's spread (its own columns only), the time
line counts each stored folder once and names the shared ones, the FID column says when it used the stand-in
extractor, a row without the paper's figure shows "-", and failed runs are named under the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.sweep import Plan
from pipeline.sweep_config import load_sweep
from pipeline.sweep_report import write_sweep_report

ROOT = Path(__file__).resolve().parents[1]


def _sweep(tmp_path: Path, name: str = "sweep", **extra) -> Path:
    doc = {
        "base": str(ROOT / "configs" / "tiny.yaml"),
        "name": name,
        "run_dir": str(tmp_path / name),
        "seeds": [0, 1],
        "columns": ["attribute_match", "fid"],
        "variants": [
            {"name": "a", "set": {"train.p_error": 0.0}, "paper": {"FID": 15.86}},
            {"name": "b", "set": {"train.p_error": 0.3}},
        ],
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(doc))
    return path


def _manifest(folder: Path, **doc) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(doc))


def _report(path: Path, metrics: dict, seconds: dict, keys=None, failed=None):
    """``metrics[run_dir name]`` -> the evaluate metrics; ``seconds[(stage, run index)]`` -> that folder's time;
    ``keys``: each run's stage keys (default: one shared synthetic folder, a train folder per run)."""
    cfg, runs = load_sweep(path)
    for r in runs:
        _manifest(r.run_dir / "evaluate", metrics=metrics[r.run_dir.name])
    keys = keys or [{"synthetic": "shared", "train": f"t{i}"} for i in range(len(runs))]
    for (stage, i), sec in seconds.items():
        _manifest(runs[i].run_dir / stage, seconds=sec)
    return cfg, write_sweep_report(cfg, Plan(runs, keys, []), wall_seconds=90.0, failed=failed)


def test_the_seed_spread_is_the_mean_sd_over_the_variants(tmp_path):
    metrics = {
        "a-s0": {"attribute_match": 0.5, "fid": 10.0},
        "a-s1": {"attribute_match": 0.7, "fid": 10.0},  # sd 0.1414
        "b-s0": {"attribute_match": 0.4, "fid": 12.0},
        "b-s1": {"attribute_match": 0.44, "fid": 14.0},  # sd 0.02828
    }
    cfg, report = _report(_sweep(tmp_path), metrics, {})
    sds = [row["values"]["attribute_match"]["sd"] for row in report["rows"]]
    assert sds == pytest.approx([0.2 / 2**0.5, 0.04 / 2**0.5])
    assert report["noise"]["attribute_match"] == pytest.approx(sum(sds) / 2)  # the mean, not the largest
    assert report["noise"]["fid"] == pytest.approx((0.0 + 2**0.5) / 2)
    assert report["noise_from"] is None  # several seeds: the sweep's own spread
    md = (Path(cfg.run_dir) / "report.md").read_text()
    assert "Seed spread (mean sd over the variants): attribute match ± 0.085, FID ± 0.707." in md


def test_a_one_seed_sweep_quotes_the_spread_of_its_noise_sweep(tmp_path):
    other = _sweep(tmp_path, name="noise")
    (tmp_path / "noise").mkdir()
    spread = {"attribute_match": 0.0213, "token_nll": 0.5, "fid": 1.25}  # token_nll: not a column here
    (tmp_path / "noise" / "report.json").write_text(json.dumps({"noise": spread}))
    one = {"a-s0": {"attribute_match": 0.5, "fid": 10.0}, "b-s0": {"attribute_match": 0.4, "fid": 12.0}}
    cfg, report = _report(_sweep(tmp_path, seeds=[0], noise_from=other.name), one, {})
    assert report["noise_from"] == {"from": str(other), "sd": spread}
    md = (Path(cfg.run_dir) / "report.md").read_text()
    assert (
        f"Noise level (the seed spread of {other}, mean sd over its variants): attribute match ± 0.021, "
        "FID ± 1.250." in md
    )
    assert "held-out token NLL" not in md and "Seed spread" not in md

    two = {f"{v}-s{s}": {"attribute_match": 0.5 + s / 10, "fid": 10.0} for v in "ab" for s in (0, 1)}
    cfg, report = _report(_sweep(tmp_path, name="multi", noise_from=other.name), two, {})
    assert report["noise_from"] is None  # several seeds measure their own spread
    assert "Noise level" not in (Path(cfg.run_dir) / "report.md").read_text()


def test_the_time_line_counts_each_stored_folder_once(tmp_path):
    metrics = {f"{v}-s{s}": {"attribute_match": 0.5, "fid": 10.0} for v in "ab" for s in (0, 1)}
    # the shared synthetic folder (60 s) is read from its first user; each run's own train folder 30 s
    seconds = {("synthetic", 0): 60.0, **{("train", i): 30.0 for i in range(4)}}
    seconds[("synthetic", 1)] = 999.0  # another run's link to the same folder: never counted again
    cfg, report = _report(_sweep(tmp_path), metrics, seconds)
    assert report["timing"] == {"wall_seconds": 90.0, "stage_seconds": 180.0, "shared_seconds": 60.0}
    md = (Path(cfg.run_dir) / "report.md").read_text()
    assert "Time: this invocation 1.5 min wall; the runs' stages 3.0 min (sum of their manifests, each shared " in md
    assert "stage once: 1.0 min shared)." in md


def test_the_table_labels_paper_cells_and_failed_runs(tmp_path):
    metrics = {
        "a-s0": {"attribute_match": 0.5, "fid": 10.0},
        "a-s1": {"attribute_match": 0.7, "fid": 10.0},
        "b-s0": {"attribute_match": 0.4, "fid": 12.0},
        "b-s1": {},  # failed before evaluate wrote its metrics
    }
    failed = {"b-s1": "RuntimeError: boom"}
    cfg, report = _report(_sweep(tmp_path), metrics, {}, failed=failed)
    lines = (Path(cfg.run_dir) / "report.md").read_text().splitlines()
    assert "| variant | attribute match ↑ | FID (stand-in extractor) ↓ | paper FID |" in lines
    assert "| a | 0.600 ± 0.141 (2) | 10.00 ± 0.00 (2) | 15.86 |" in lines
    assert "| b | 0.400 (1 of 2 seeds) | 12.00 (1 of 2 seeds) | - |" in lines  # no paper figure for b
    assert "Failed runs (rerun the sweep to resume them): b-s1: RuntimeError: boom" in lines
    assert json.loads((Path(cfg.run_dir) / "report.json").read_text())["failed"] == failed

    weights = tmp_path / "inception.pth"
    weights.write_text("x")
    same = {f"{v}-s{s}": {"attribute_match": 0.5, "fid": 10.0} for v in "ab" for s in (0, 1)}
    cfg, _ = _report(_real_fid(tmp_path, weights), same, {})  # the real Inception weights: no label
    md = (Path(cfg.run_dir) / "report.md").read_text()
    assert "| variant | attribute match ↑ | FID ↓ | paper FID |" in md and "Failed runs" not in md


def _real_fid(tmp_path: Path, weights: Path) -> Path:
    base = tmp_path / "base.yaml"
    base.write_text(f"base: {ROOT / 'configs' / 'tiny.yaml'}\neval:\n  inception_weights: {weights}\n")
    return _sweep(tmp_path, name="real", base=str(base))
