"""The trainer's pieces that meet a GPU: host values in collectives (an NCCL group serves only CUDA tensors),
the training sample grid under a bf16 DeepSpeed model, and a bf16 DeepSpeed run's held-out loss with and without
its EMA. The ``cuda`` cases skip on a CPU-only machine;
``benchmarks/gpu_check.py`` runs them with the quick suite on a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.trainer_utils import one_thread  # noqa: F401 (autouse)

ROOT = Path(__file__).resolve().parents[1]


def in_group(backend: str, body: str, tmp_path: Path) -> str:
    """Run ``body`` in a fresh process holding a one-rank process group of ``backend`` over a file store (no
    socket; a process of its own, so the test worker never holds a process group); returns its stdout."""
    code = (
        textwrap.dedent(
            f"""
        import torch, torch.distributed as dist
        dist.init_process_group({backend!r}, init_method="file://{tmp_path / "store"}", rank=0, world_size=1)
        """
        )
        + textwrap.dedent(body)
        + "\ndist.destroy_process_group()\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


@pytest.mark.parametrize("backend,device", [("gloo", "cpu"), ("cuda:gloo", "cuda"), ("cpu:gloo,cuda:gloo", "cpu")])
def test_host_values_go_where_the_group_serves_them(tmp_path, backend, device):
    """gloo takes CPU tensors; a group that serves only CUDA ("cuda:gloo" here, "nccl" on a GPU: a CPU tensor
    fails there with "No backend type associated with device type cpu") gets them on the rank's CUDA device."""
    body = "from training.collectives import collective_device\nprint(collective_device().type)"
    assert in_group(backend, body, tmp_path) == device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_trainer_reductions_of_host_values_on_nccl(tmp_path):
    body = """
    torch.cuda.set_device(0)
    from training.collectives import all_gather_host
    from training.trainer import _all_reduce

    assert _all_reduce([1.0, 2.0], True) == [1.0, 2.0]
    assert _all_reduce([3.0, 1.0], True, "max") == [3.0, 1.0]
    parts = all_gather_host(torch.arange(4.0))  # a CPU-offloaded ZeRO-3 shard (EMA export)
    assert len(parts) == 1 and parts[0].device.type == "cpu" and torch.equal(parts[0], torch.arange(4.0))
    print("ok")
    """
    assert in_group("nccl", body, tmp_path) == "ok"


def test_the_sample_grid_samples_a_bf16_deepspeed_model(tmp_path):
    """DeepSpeed with bf16 casts the module to bf16 and the trainer encodes the batch's text in bf16; the grid
    samples that batch as it is (an fp32 copy of the text met bf16 weights: "mat1 and mat2 must have the same
    dtype") and writes a PNG."""
    from tests.trainer_utils import tiny_model_dict
    from tokenization.vqgan import TokenizerConfig, VQModel, save_tokenizer
    from training.model import build_model
    from training.model.config import model_config
    from training.sample_grid import SampleGrid

    torch.manual_seed(0)
    tok = TokenizerConfig(n_embed=32)
    save_tokenizer(VQModel(tok).eval(), tok, tmp_path / "tokenizer")
    grid_h, grid_w = tok.grid_size
    model = build_model(model_config(tiny_model_dict(grid_h=grid_h, grid_w=grid_w)), "pdm").eval().bfloat16()
    text = torch.randn(2, 5, tiny_model_dict()["text_dim"], dtype=torch.bfloat16)
    batch = {"text": text, "text_mask": torch.ones(2, 5, dtype=torch.bool)}
    path = SampleGrid(str(tmp_path / "tokenizer"), tmp_path / "samples", stages=4, n=2)(8, model, batch)
    assert path is not None and path.is_file() and path.stat().st_size > 0


def bf16_deepspeed_run(tmp_path: Path, device: str) -> tuple[dict, str]:
    """A 1-rank DeepSpeed ZeRO-2 job in bf16 with an EMA and the held-out loss every 2 of its 4 steps, through the
    real launcher, on ``device`` (cpu: no GPU visible): (its metrics.jsonl records, its log)."""
    from cluster import deepspeed_launch as dl
    from cluster.config import ClusterConfig
    from tests.trainer_utils import make_job, make_shards
    from training.engine import free_port
    from training.metrics_log import read_metrics

    shards = make_shards(tmp_path / "shards", n_shards=2, per_shard=8)
    heldout = make_shards(tmp_path / "heldout", n_shards=1, per_shard=8, seed=1)
    train = dict(steps=4, batch_size=4, log_every=1, checkpoint_every=4, num_workers=0, precision="bf16")
    train.update(zero_stage=2, ema_decay=0.5, eval_every=2, eval_samples=8)
    job = make_job(tmp_path / "job", shards, engine="deepspeed", heldout_shards=heldout, **train)
    path = Path(job.out_dir) / "job.json"
    job.save(path)
    c = ClusterConfig(launcher="deepspeed", procs_per_node=1, master_port=free_port())
    cmd, _, _ = dl.plan(c, path, job.out_dir, executable=dl.deepspeed_executable())
    env = {**dl.launch_env(c), **({"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {})}
    run = subprocess.run(cmd, env=env, cwd=dl.PROJECT_ROOT, capture_output=True, text=True, timeout=540)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return read_metrics(Path(job.out_dir) / "metrics.jsonl"), run.stdout + run.stderr


@pytest.mark.parametrize(
    "device",
    [
        pytest.param("cpu", marks=pytest.mark.slow),
        pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")),
    ],
)
@pytest.mark.timeout(600)
def test_a_bf16_deepspeed_run_scores_its_held_out_set_with_and_without_the_ema(tmp_path, device):
    """engine.evaluate under DeepSpeed in bf16, with the EMA's averages swapped in and out (``cuda``: the quick
    suite of ``benchmarks/gpu_check.py``)."""
    records, log = bf16_deepspeed_run(tmp_path, device)
    assert "engine deepspeed (ZeRO 2, bf16)" in log, log[-3000:]
    held = {s: (r["val/loss"], r["val_ema/loss"]) for s, r in records.items() if "val/loss" in r}
    assert sorted(held) == [2, 4] and all(0 < v < 20 and 0 < e < 20 and v != e for v, e in held.values()), held
