"""``pt2i sweep`` over the real pipeline (tiny settings): two variants that differ only in train.p_error
share every stage before train (one synthetic set, one download, one tokenizer, one tokenize), each is a
run directory ``pt2i status`` finds current, and the table holds both rows with the measured metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "data.synthetic.n_train=100",
    "data.synthetic.n_eval=8",
    "data.download.samples_per_shard=20",
    "tokenizer.steps=10",
    "text_encoder.tiny_pretrain_steps=0",
    "cluster.launcher=local",
    "train.steps=4",
    "train.batch_size=8",
    "train.warmup_steps=1",
    "train.checkpoint_every=4",
    "train.sample_every=0",
    "eval.num_prompts=8",
    "eval.metrics=[attributes,token_nll]",
]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sweep_of_the_real_pipeline_shares_the_data_stages(tmp_path, capsys):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        json.dumps(
            {
                "base": str(ROOT / "configs" / "tiny.yaml"),
                "name": "pipeline-sweep",
                "run_dir": str(tmp_path / "sweep"),
                "columns": ["attribute_match", "token_nll", "passes", "seconds_per_image"],
                "variants": [
                    {"name": "p0", "set": {"train.p_error": 0.0}},
                    {"name": "p3", "set": {"train.p_error": 0.3}},
                ],
            }
        )
    )
    cmd = [sys.executable, "-m", "pipeline.cli", "sweep", str(sweep)] + [a for kv in SMALL for a in ("--set", kv)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=850)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    store = tmp_path / "sweep" / "stages"
    for name in ("synthetic", "text", "download", "tokenizer", "tokenize"):
        assert len(list((store / name).iterdir())) == 1, name  # one folder for both runs
    for name in ("train", "sample", "evaluate"):
        assert len(list((store / name).iterdir())) == 2, name
    assert out.stdout.count("[tokenize] running") == 1 and out.stdout.count("[train] running") == 2

    rows = {r["variant"]: r["values"] for r in json.loads((tmp_path / "sweep" / "report.json").read_text())["rows"]}
    for v in rows.values():
        assert 0.0 <= v["attribute_match"]["mean"] <= 1.0 and v["token_nll"]["mean"] > 0
        assert v["passes"]["mean"] == 4 and v["seconds_per_image"]["mean"] > 0
    assert "| p0 |" in (tmp_path / "sweep" / "report.md").read_text()

    capsys.readouterr()
    assert main(["status", str(tmp_path / "sweep" / "p3-s0")]) == 0
    status = capsys.readouterr().out
    lines = [ln for ln in status.splitlines()[1:] if ln.strip() and ln.split()[1] != "disabled"]  # superres: off
    assert len(lines) == 8 and all(ln.split()[1] == "current" for ln in lines), status
