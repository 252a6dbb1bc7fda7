"""Ray Train: a TorchTrainer with 2 CPU workers on the embedded Ray (127.0.0.1) runs the same training, and a
rank's own error comes back as it is (a divergence) or in one line naming the rank."""

from __future__ import annotations

import socket
from dataclasses import asdict
from pathlib import Path

import pytest

from cluster.config import ClusterConfig
from cluster.ray_train import run_ray_training
from tests.listening import not_loopback, sampled
from tests.trainer_utils import losses, make_job, make_shards, one_thread, run_job_with_nan_loss_from  # noqa: F401
from training.checkpoint import complete_tags, load_export
from training.divergence import Diverged
from training.trainer import run_job, run_training

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
TRAIN = dict(steps=6, checkpoint_every=3, batch_size=8, p_error=0.0, data_split="sample", log_every=1, zero_stage=2)


def test_ray_train_two_cpu_workers(tmp_path, ray_local):
    shards = make_shards(tmp_path / "shards", n_shards=4, per_shard=8)
    job = make_job(tmp_path / "ray", shards, engine="deepspeed", **TRAIN)
    with sampled() as sockets:  # the workers' rendezvous store: loopback only, as Ray's own sockets
        summary = run_ray_training(
            ClusterConfig(launcher="ray", procs_per_node=2), asdict(job), run_job, log=lambda m: None
        )
    assert sockets and not_loopback(sockets) == []
    out = Path(job.out_dir)
    assert summary["world_size"] == 2 and summary["engine"] == "deepspeed"
    assert summary["ranks"] == [{"ranks": "0-1", "host": socket.gethostname()}]  # one host, one environment
    assert complete_tags(out / "checkpoints") == ["step_00000003", "step_00000006"]
    assert sorted((out / "checkpoints" / "step_00000006").glob("rank_*.pt"))[-1].name == "rank_00001.pt"
    sd, meta = load_export(out / "export" / "model.safetensors")
    assert meta["step"] == "6" and sd
    ref = make_job(tmp_path / "ref", shards, engine="local", **TRAIN)  # same losses as 1 process
    run_training(ref, log=lambda m: None)
    a, b = losses(out), losses(ref.out_dir)
    assert max(abs(a[s] - b[s]) for s in range(1, 7)) <= 1e-4


def test_a_rank_s_divergence_comes_back_as_itself(tmp_path, ray_local):
    """The loss turns nan at step 3 in both workers: ``Diverged`` (what the train stage reports in one line) with
    the trainer's own message, not Ray Train's error with every rank's traceback; then the one-line error for
    an exception nobody asked to pass through."""
    shards = make_shards(tmp_path / "shards", n_shards=2, per_shard=8)
    job = make_job(tmp_path / "ray", shards, engine="deepspeed", **{**TRAIN, "steps": 4, "checkpoint_every": 2})
    cluster = ClusterConfig(launcher="ray", procs_per_node=2)
    with pytest.raises(
        Diverged, match=r"^step 3: the gradient norm is (nan|inf).*the newest checkpoint, step_00000002"
    ) as e:
        run_ray_training(cluster, asdict(job), run_job_with_nan_loss_from, lambda m: None, passthrough=(Diverged,))
    assert "Training failed due to worker errors" in str(e.value.__cause__)  # Ray Train's own error, kept as cause
    assert complete_tags(Path(job.out_dir) / "checkpoints") == ["step_00000002"]
