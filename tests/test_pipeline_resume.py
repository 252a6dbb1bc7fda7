"""Kill ``pt2i run`` during the tokenize stage, run it again: it resumes (only the unfinished shards
are redone) and its outputs equal those of an uninterrupted run, down to the trained weights; a setting that
changes no output redoes nothing after it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PT2I = str(Path(sys.executable).parent / "pt2i")
SMALL = [
    "data.synthetic.n_train=480",
    "data.synthetic.n_eval=8",
    "data.download.samples_per_shard=20",
    "data.tokenize.batch_size=1",
    "tokenizer.steps=10",
    "text_encoder.tiny_pretrain_steps=0",  # plumbing only: tests/test_t5_pretrain.py pretrains
    "cluster.launcher=local",
    "train.steps=8",
    "train.batch_size=8",
    "train.warmup_steps=1",
    "train.checkpoint_every=8",
    "train.sample_every=0",
]
BEFORE = ["synthetic", "text", "download", "tokenizer"]


def pt2i(run_dir: Path, *args: str, **kw):
    cmd = [PT2I, "run", str(ROOT / "configs" / "tiny.yaml"), "--set", f"run_dir={run_dir}"]
    cmd += [a for kv in SMALL for a in ("--set", kv)] + list(args)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        cmd,
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **kw,
    )


def finish(proc, timeout=900) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def manifest(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / stage / "manifest.json").read_text())


@pytest.mark.slow
def test_pipeline_killed_during_tokenize_resumes_and_matches_an_uninterrupted_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    finish(pt2i(a, *[x for s in BEFORE for x in ("--stage", s)]))
    shutil.copytree(a, b)  # the same earlier stages (and fingerprints) for both runs
    finish(pt2i(a, "--stage", "tokenize", "--stage", "train"))  # uninterrupted

    proc = pt2i(b, "--stage", "tokenize", "--stage", "train")
    shards = b / "tokenize" / "train"
    try:
        deadline = time.time() + 300
        while not list(shards.glob("*.tar")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # pt2i and the embedded Ray it started (its own process group)
        proc.wait(30)
    time.sleep(3)  # Ray workers that outlive their raylet for a moment may still finish a shard
    done = len(list(shards.glob("*.tar")))
    total = len(list((a / "tokenize" / "train").glob("*.tar")))
    assert 1 <= done < total and not (b / "tokenize" / "manifest.json").exists()  # killed mid-stage

    out = finish(pt2i(b))  # the whole pipeline again: earlier stages skipped, tokenize resumed
    assert "[synthetic] current" in out and "[tokenizer] current" in out
    assert manifest(b, "tokenize")["counts"]["shards_done_now"] == total - done  # only the unfinished ones
    for f in sorted((a / "tokenize" / "train").iterdir()):
        if f.suffix == ".tar":
            assert (b / "tokenize" / "train" / f.name).read_bytes() == f.read_bytes(), f.name
    from training.checkpoint import load_export

    wa, _ = load_export(a / "train" / "export" / "model.safetensors")
    wb, _ = load_export(b / "train" / "export" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)  # the same trained model
    assert (b / "evaluate" / "report.md").is_file()  # and the pipeline ran to its end

    # a setting that changes no token: tokenize reruns and reuses every shard; nothing after it is redone
    out = finish(pt2i(b, "--set", "data.tokenize.num_actors=1"))
    assert "[tokenize] stale: config changed (data.tokenize.num_actors: " in out
    assert manifest(b, "tokenize")["counts"]["shards_done_now"] == 0
    assert "[tokenize] the same output as before" in out, out[-3000:]
    assert all(f"[{s}] current" in out for s in ("train", "sample", "evaluate")), out[-3000:]


@pytest.mark.slow
def test_a_changed_tokenizer_redoes_every_token_shard_and_training_refuses_the_old_checkpoint(tmp_path):
    """Change an input and rerun: nothing made from the old one is kept silently. The token shards are all
    redone with the new tokenizer; the train stage refuses the old checkpoint, naming what changed, until
    the user chooses (train.resume: never trains from scratch, the old checkpoints moved aside)."""
    run = tmp_path / "run"
    few = ["--set", "data.synthetic.n_train=100"]
    finish(pt2i(run, "--stage", *BEFORE, "tokenize", "train", *few))
    shards = sorted((run / "tokenize" / "train").glob("*.tar"))
    old = {p.name: p.read_bytes() for p in shards}
    total = manifest(run, "tokenize")["counts"]["shards"]
    assert len(old) == 5 and total == 6  # train and eval splits

    proc = pt2i(run, "--stage", "tokenizer", "tokenize", "train", *few, "--set", "tokenizer.steps=12")
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 1, out[-3000:]
    assert "[tokenize] stale: config changed (tokenizer.steps: 10 -> 12); input tokenizer was redone" in out
    assert manifest(run, "tokenize")["counts"]["shards_done_now"] == total  # every shard redone
    assert all((run / "tokenize" / "train" / n).read_bytes() != b for n, b in old.items())
    assert "error (StageError):" in out and "inputs.tokens:" in out and "train.resume: never" in out
    assert "Traceback" not in out  # one clear line, no traceback

    out = finish(pt2i(run, "--stage", "train", *few, "--set", "tokenizer.steps=12", "--set", "train.resume=never"))
    assert "old checkpoints moved to" in out and manifest(run, "train")["resumed_from"] == 0
    assert list(run.glob("train/checkpoints.replaced-*"))
