"""The whole pipeline on a user's own data, as a new user would run it: no synthetic stage, no pretrained
weights, two url lists in one run (a LAION-layout parquet and a CC3M-layout tsv, served on 127.0.0.1 by the
download stage), a held-out eval split. The tokenizer and the tiny text encoder are trained on the
downloaded data, the evaluation prompts and the FID reference come from the held-out split, each prompt
with its own held-out image as ground truth, and the samples follow their captions: a classifier trained
here on the real images reads the caption's class back from the held-out images and from the samples, far
more often than chance (1 in 9)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.own_data import CLASSES, class_of, train_classifier, write_cc3m, write_laion
from tokenization.heldout_rows import is_held_out

ROOT = Path(__file__).resolve().parents[1]
PT2I = str(Path(sys.executable).parent / "pt2i")
EVAL_SPLIT = 0.15
# the PDM's recipe on these textures (README, "Own data"): 800 steps at lr 5e-3, on one thread. 100 steps at
# lr 1e-3 (the recipe before) learned little more than the colours; without train.threads the train stage runs
# one thread per core, and two threads on a 2-core machine shared with other jobs made each step 10-25x slower.
TRAIN_STEPS = 800


def overrides(tmp_path: Path) -> list[str]:
    laion, cc3m = tmp_path / "laion", tmp_path / "cc3m"
    sources = (
        f"[{{name: laion, kind: laion, url_list: {laion / 'urls.parquet'}, min_similarity: 0.3, serve_local: true}},"
        f" {{name: cc3m, kind: cc3m, url_list: {cc3m / 'cc3m.tsv'}, serve_local: true}}]"
    )
    return [
        f"run_dir={tmp_path / 'run'}",
        "data.download.source=sources",
        f"data.download.sources={sources}",
        f"data.download.eval_split={EVAL_SPLIT}",
        "data.download.samples_per_shard=100",
        "data.mixing.rule=weighted",
        "data.mixing.weights={laion: 1, cc3m: 1}",
        "tokenizer.steps=200",
        "tokenizer.batch_size=16",
        "text_encoder.tiny_pretrain_steps=60",
        "model.dim=64",
        "model.layers=2",
        "model.ffn_dim=256",
        "cluster.launcher=local",
        "train.threads=1",
        f"train.steps={TRAIN_STEPS}",
        "train.batch_size=32",
        "train.lr=0.005",
        "train.warmup_steps=20",
        f"train.checkpoint_every={TRAIN_STEPS}",
        "train.sample_every=0",
        "eval.metrics=[fid]",
        "eval.num_prompts=36",
        "eval.grid_images=9",
    ]


def _read_images(paths) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


@pytest.mark.slow
def test_own_data_from_two_sources_trains_every_stage_and_samples_follow_their_captions(tmp_path):
    laion_rows = write_laion(tmp_path / "laion", 240, seed=1)  # 216 kept by the similarity filter
    cc3m_rows = write_cc3m(tmp_path / "cc3m", 120, seed=2)
    cmd = [PT2I, "run", str(ROOT / "configs" / "tiny.yaml")] + [a for kv in overrides(tmp_path) for a in ("--set", kv)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=2400)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    run = tmp_path / "run"
    manifest = {s: json.loads((run / s / "manifest.json").read_text()) for s in ("download", "tokenizer", "text")}

    # no synthetic stage; both sources downloaded, each with its held-out rows
    assert "[synthetic] not part of a run with this config" in out and not (run / "synthetic").exists()
    dl = manifest["download"]
    assert sorted(dl["splits"]) == ["eval/cc3m", "eval/laion", "train/cc3m", "train/laion"]
    for name, rows in (("laion", laion_rows), ("cc3m", cc3m_rows)):
        held = sum(is_held_out(u, EVAL_SPLIT) for u, _ in rows)
        assert dl["sources"][name]["splits"] == {"train": len(rows) - held, "eval": held}, name

    # the tokenizer and the text encoder were trained here, on the downloaded train images and captions
    tok = json.loads((run / "tokenizer" / "metrics.json").read_text())
    assert sorted({u.rsplit("/", 3)[-3] for u, _ in tok["data"]}) == ["cc3m", "laion"]  # sources/<name>/train
    assert manifest["tokenizer"]["metrics"]["mae"] < 0.08 and manifest["tokenizer"]["counts"]["holdout_images"] > 0
    assert manifest["text"]["metrics"]["built_tiny"] and manifest["text"]["metrics"]["pretrain_loss"] < 2.0
    from transformers import T5Tokenizer

    words = T5Tokenizer.from_pretrained(str(run / "text" / "encoder")).tokenize("blue checks fabric")
    assert words == ["▁blue", "▁checks", "▁fabric"]  # its vocabulary: the downloaded captions' words
    assert "no text_encoder.path: building a tiny T5 from" in out

    # training mixed the sources as asked and said how it went on the console
    train = json.loads((run / "train" / "manifest.json").read_text())
    assert train["mixing"]["cc3m"]["repeats"] == 2 and 0.4 < train["mixing"]["cc3m"]["share"] < 0.6
    assert f"[train] step {TRAIN_STEPS}/{TRAIN_STEPS} (100%) | loss" in out and "ETA" in out

    # evaluation: the prompts are the held-out captions, the FID reference the held-out images
    prompts = [json.loads(x) for x in (run / "sample" / "prompts.jsonl").read_text().splitlines()]
    held_captions = {c for u, c in laion_rows + cc3m_rows if is_held_out(u, EVAL_SPLIT)}
    assert len(prompts) == 36 and all(p["prompt"] in held_captions for p in prompts)
    report = json.loads((run / "evaluate" / "report.json").read_text())
    assert "held-out eval split of the downloaded data" in report["fid_reference"]
    assert np.isfinite(report["runs"]["PDM (this run)"]["fid"]["fid"])
    assert (run / "evaluate" / "loss_curve.png").is_file() and "![loss curve](loss_curve.png)" in (
        run / "evaluate" / "report.md"
    ).read_text()

    # the samples follow their captions, as a classifier trained on the real images reads them
    real = sorted((tmp_path / "laion" / "images").glob("*.png")) + sorted((tmp_path / "cc3m" / "images").glob("*.png"))
    labels = np.array([i % len(CLASSES) for i in range(240)] + [(i * 5) % len(CLASSES) for i in range(120)])
    small = np.stack([np.asarray(Image.fromarray(x).resize((32, 32), Image.BICUBIC)) for x in _read_images(real)])
    predict = train_classifier(small, labels)
    heldout = sorted((run / "evaluate" / "heldout").glob("*.png"))
    truth = np.array([class_of(p["prompt"]) for p in prompts])
    real_acc = float((predict(_read_images(heldout)) == truth).mean())  # the downloaded held-out images
    samples = _read_images(sorted((run / "sample" / "images").glob("*.png")))
    acc = float((predict(samples) == truth).mean())
    print(f"\nclassifier on the held-out real images {real_acc:.2f}, on the samples {acc:.2f} (chance {1 / 9:.2f})")
    assert real_acc >= 0.9, real_acc  # the held-out images are the prompts' ground truth, one for each
    # measured: 0.69 with this config; 0.61-0.94 (mean 0.76) over 9 runs, this one and 8 with other seeds of
    # the tiny T5, the tokenizer and the PDM; 0.14-0.28 with the recipe before (chance 0.11)
    assert acc >= 0.5, acc

    # the run ends with its summary table
    lines = out.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.split()[:2] == ["stage", "status"]) :]
    for stage in ("download", "text", "tokenizer", "tokenize", "train", "sample", "evaluate"):
        assert any(line.split()[:2] == [stage, "ran"] for line in table), stage
