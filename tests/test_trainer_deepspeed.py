"""The real ``deepspeed`` launcher with 2 CPU ranks (gloo, 127.0.0.1) under ZeRO-2 and ZeRO-3.

Same global batch (8 = 2 ranks x 2 x 2 accumulation steps; the reference: 1 rank x 4 x 2) and data as a
1-process run of the plain engine: the sample split gives the same samples per step for any world size
and worker count, and a sample's stage, order noise and condition dropout come from its seed. p_error = 0
and the uniform schedule give every sample L/T scored tokens, so the mean of the per-rank mean losses is
the global mean. Also on: EMA of the weights, activation checkpointing, gradient clipping. Tolerance: 1e-4
absolute per step on the loss, 1e-4 on every exported (EMA) weight (fp32; the ranks reduce gradients
in another order; observed loss differences ~1e-7).

Determinism (``train.deterministic``, on by default): the ZeRO-2 job runs twice, with a DataLoader
worker per rank; the two exports are identical byte for byte. The local launcher's run of the same job
is the reference above: the same samples and draws, equal within the tolerance, not bitwise (the sums
of the two ranks' gradients are added in another order than one process adds them).
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from cluster import deepspeed_launch as dl
from cluster.config import ClusterConfig
from tests.listening import not_loopback, sampled
from tests.trainer_utils import (  # noqa: F401
    assert_same_exports,
    heldout_score,
    losses,
    make_job,
    make_shards,
    one_thread,
)
from training.checkpoint import complete_tags, load_export
from training.engine import free_port
from training.metrics_log import read_metrics
from training.trainer import TrainJob, run_training

# one xdist worker for the module: its module fixtures (two ZeRO-2 runs, the reference) are built once, not on each
# worker that takes one of its tests (both CI workers built zero2_twice, 47-70 s each, before the group)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900), pytest.mark.xdist_group("zero_two_ranks")]
STEPS, EVERY, TOL = 12, 4, 1e-4
TRAIN = dict(
    steps=STEPS,
    checkpoint_every=EVERY,
    batch_size=8,
    grad_accum=2,
    p_error=0.0,
    data_split="sample",
    log_every=1,
    num_workers=0,
    keep_last=3,
    ema_decay=0.8,
    activation_checkpointing=True,
    order_mode="softmax",  # order noise per sample (Eq. 5 sampling)
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("ds_shards"), n_shards=4, per_shard=16)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shards):
    """1 process, plain PyTorch engine, the same global batch."""
    job = make_job(tmp_path_factory.mktemp("ref"), shards, engine="local", **TRAIN)
    run_training(job, log=lambda m: None)
    return losses(job.out_dir), Path(job.out_dir)


def launch(root: Path, shards, zero: int, heldout=None, **train) -> tuple[subprocess.Popen, Path]:
    job = make_job(root, shards, engine="deepspeed", zero_stage=zero, heldout_shards=heldout, **{**TRAIN, **train})
    path = Path(job.out_dir) / "job.json"
    job.save(path)
    c = ClusterConfig(launcher="deepspeed", procs_per_node=2, master_port=free_port())
    cmd, _, _ = dl.plan(c, path, job.out_dir, executable=dl.deepspeed_executable())
    log = open(Path(job.out_dir) / "launcher.log", "a")
    return subprocess.Popen(cmd, env=dl.launch_env(c), cwd=dl.PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT), Path(
        job.out_dir
    )


def finish(proc: subprocess.Popen, out: Path) -> None:
    rc = proc.wait(timeout=600)
    assert rc == 0, (out / "launcher.log").read_text()[-3000:]


def close(a: dict, b: dict, steps) -> None:
    diffs = {s: abs(a[s] - b[s]) for s in steps}
    assert max(diffs.values()) <= TOL, diffs


def same_export(out: Path, ref: Path, name: str) -> None:
    a, _ = load_export(out / "export" / name)
    b, _ = load_export(ref / "export" / name)
    assert set(a) == set(b)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= TOL, (name, worst)


@pytest.fixture(scope="module")
def zero2_twice(tmp_path_factory, shards) -> tuple[list[Path], set]:
    """The same ZeRO-2 job run twice, at the same time, with a DataLoader worker per rank; and every socket
    the launchers and their ranks listened on meanwhile."""
    heldout = make_shards(tmp_path_factory.mktemp("zero2_heldout"), n_shards=1, per_shard=8, seed=1)
    held = dict(heldout=heldout, eval_every=EVERY, eval_samples=8)  # val/* and, with the EMA, val_ema/*
    with sampled() as sockets:
        runs = [launch(tmp_path_factory.mktemp(f"zero2_{i}"), shards, zero=2, num_workers=1, **held) for i in range(2)]
        for proc, out in runs:
            finish(proc, out)
    return [out for _, out in runs], sockets


def test_zero2_two_ranks_match_one_process(zero2_twice, reference):
    outs, sockets = zero2_twice
    assert sockets and not_loopback(sockets) == []  # a single-node job rendezvouses on loopback only
    out = outs[0]
    curve = losses(out)
    ref_curve, ref_dir = reference
    assert sorted(curve) == list(range(1, STEPS + 1))
    close(curve, ref_curve, range(1, STEPS + 1))
    assert curve[STEPS] < curve[1]
    same_export(out, ref_dir, "model.safetensors")
    same_export(out, ref_dir, "model_ema.safetensors")  # the EMA's held-out loss put the trained weights back
    assert complete_tags(out / "checkpoints") == [f"step_{s:08d}" for s in (4, 8, 12)]
    records = read_metrics(out / "metrics.jsonl")
    val = {s: (r["val/loss"], r["val_ema/loss"]) for s, r in records.items() if "val/loss" in r}
    assert sorted(val) == [4, 8, 12] and all(0 < v < 10 and v != e for v, e in val.values()), val


def test_two_runs_of_one_job_give_identical_exports(zero2_twice):
    a, b = zero2_twice[0]
    assert_same_exports(a, b)
    assert losses(a) == losses(b)
    assert read_metrics(a / "metrics.jsonl").keys() == read_metrics(b / "metrics.jsonl").keys()
    held = [
        {s: r["val_ema/loss"] for s, r in read_metrics(d / "metrics.jsonl").items() if "val_ema/loss" in r}
        for d in (a, b)
    ]
    assert held[0] == held[1] and len(held[0]) == 3


def rank_process(launcher: subprocess.Popen, local_rank: int):
    for p in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if f"--local_rank={local_rank}" in " ".join(p.cmdline()):
                return p
        except psutil.NoSuchProcess:
            continue
    return None


def test_zero3_sigkill_a_rank_then_resume(tmp_path, shards, reference):
    """SIGKILL rank 1 right after the first checkpoint; the relaunch resumes from the latest complete
    checkpoint and its losses equal the uninterrupted runs' (1 process here; ZeRO-2 above). The job also scores
    a held-out set every 4 steps (``train.eval_every``: a forward on both ranks, ZeRO-3 gathering the parameters),
    with the trained weights and with the EMA's, which changes none of the training's losses or weights."""
    heldout = make_shards(tmp_path / "heldout", n_shards=1, per_shard=8, seed=1)
    held = dict(heldout=heldout, eval_every=EVERY, eval_samples=8)
    proc, out = launch(tmp_path, shards, zero=3, **held)
    latest = out / "checkpoints" / "latest"
    deadline = time.time() + 600
    while not latest.is_file():
        assert proc.poll() is None, (out / "launcher.log").read_text()[-3000:]
        assert time.time() < deadline
        time.sleep(0.02)
    victim = rank_process(proc, 1)
    assert victim is not None
    victim.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=300) != 0  # the launcher tears the job down
    ckpt = latest.read_text().strip()
    assert ckpt != f"step_{STEPS:08d}", "the run finished before it could be killed"
    killed_at = max(losses(out))
    resume_step = int(ckpt.split("_")[1])

    proc, out = launch(tmp_path, shards, zero=3, **held)  # same job: auto-resume
    finish(proc, out)
    assert f"resumed from {out / 'checkpoints' / ckpt} at step {resume_step}" in (out / "launcher.log").read_text()
    curve = losses(out)  # later records of a step win
    ref_curve, ref_dir = reference
    close(curve, ref_curve, range(1, STEPS + 1))
    assert killed_at >= resume_step
    same_export(out, ref_dir, "model.safetensors")  # gathered from the ZeRO-3 partitions
    same_export(out, ref_dir, "model_ema.safetensors")  # per-rank EMA shards, restored on resume
    records = read_metrics(out / "metrics.jsonl")
    val = {s: (r["val/loss"], r["val_ema/loss"]) for s, r in records.items() if "val/loss" in r}
    assert sorted(val) == [4, 8, 12] and all(0 < v < 10 and v != e for v, e in val.values()), val
    # the EMA's averages swapped into each rank's partitions after DeepSpeed released the gathered parameters
    # (without the release the val_ema figures equal the val ones: the forward used the trained values still
    # gathered), then the trained ones put back (the exports above equal the reference's): the last figures are
    # the exports' own held-out losses
    job = TrainJob.load(out / "job.json")
    for name, key in (("model.safetensors", "val/loss"), ("model_ema.safetensors", "val_ema/loss")):
        assert heldout_score(job, out / "export" / name, heldout, 8) == pytest.approx(records[STEPS][key], abs=1e-5)
