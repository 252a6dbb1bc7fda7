"""Same job, same seed, same machine: the same weights, byte for byte (``train.deterministic``).

The local launcher twice with every source of randomness on (error injection, order noise, dropout,
condition dropout, two DataLoader workers, EMA, accumulation); the pieces that made runs differ: the
thread count, the global generators used by the loader and the alternate policy update, the export's
header order. The DeepSpeed launcher twice on 2 ranks: tests/test_trainer_deepspeed.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.trainer_utils import K, L, assert_same_exports, losses, make_job, make_shards, one_thread  # noqa: F401 (autouse fixture)
from training.checkpoint import export_safetensors, load_export
from training.data import LoaderSpec, ShardLoader
from training.determinism import cores_per_rank, deterministic_mode
from training.trainer import run_training

RANDOM = dict(grad_accum=2, p_error=0.3, order_mode="softmax", num_workers=2, ema_decay=0.8)  # 6 steps, batch 8


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    return make_shards(tmp_path_factory.mktemp("shards"), n_shards=4, per_shard=12)


def test_local_runs_of_one_job_give_identical_exports(tmp_path, shards):
    outs = []
    for i in range(2):
        job = make_job(tmp_path / f"run{i}", shards, model={"dropout": 0.1}, **RANDOM)
        summary = run_training(job, log=lambda m: None)
        outs.append(Path(job.out_dir))
    assert summary["deterministic"] and summary["threads"] == 1
    assert_same_exports(*outs)
    assert losses(outs[0]) == losses(outs[1]) and len(losses(outs[0])) == 6


def test_deterministic_mode_fixes_the_threads_and_restores_them(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setenv("LOCAL_SIZE", "1")
    cores = len(os.sched_getaffinity(0))
    assert cores_per_rank() == cores
    with deterministic_mode(True) as n:
        assert n == torch.get_num_threads() == cores and torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == 1 and not torch.are_deterministic_algorithms_enabled()
    with deterministic_mode(True, threads=3) as n:
        assert n == torch.get_num_threads() == 3
    with deterministic_mode(False) as n:  # not asked: torch's count, no deterministic algorithms
        assert n == 1 and not torch.are_deterministic_algorithms_enabled()
    monkeypatch.setenv("LOCAL_SIZE", str(2 * cores))  # more ranks than cores: still one thread each
    assert cores_per_rank() == 1


def test_export_bytes_do_not_depend_on_the_metadata_order(tmp_path):
    sd = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3)}
    meta = {f"key{i}": str(i) for i in range(8)}
    export_safetensors(sd, tmp_path / "a.safetensors", meta)
    export_safetensors(dict(reversed(sd.items())), tmp_path / "b.safetensors", dict(reversed(meta.items())))
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    weights, got = load_export(tmp_path / "b.safetensors")
    assert got == {**meta, "aliases": "{}"} and all(torch.equal(weights[k], sd[k]) for k in sd)


def test_loader_workers_leave_the_global_generator_alone(shards):
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    loader = ShardLoader(LoaderSpec(shards, seq_len=L, codebook_size=K, micro_batch=4, num_workers=1))
    it = iter(loader)
    next(it)
    it.close()
    assert torch.equal(torch.rand(4), expected)  # dropout's stream does not depend on the worker count


def test_alternate_policy_updates_draw_from_the_batch_seeds(tmp_path):
    from training.model import build_model
    from training.order_learner_hooks import learned_order_hooks

    ol = {"mode": "alternate", "hidden": 8, "warmup_steps": 0, "reward": "token_acc", "lr": 1e-2}
    cfg = make_job(tmp_path, [], order="learned", order_learner=ol).trainer_config()
    g = torch.Generator().manual_seed(1)
    batch = {
        "tokens": torch.randint(0, K, (4, L), generator=g),
        "text": torch.randn(4, 3, cfg.model.text_dim, generator=g),
        "text_mask": torch.ones(4, 3, dtype=torch.bool),
        "seeds": torch.arange(4) + 100,
    }

    def policy_after_one_update(global_seed: int) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = build_model(cfg.model)
        hooks = learned_order_hooks(cfg, model)
        torch.manual_seed(global_seed)  # what dropout and the rest left in the global generator
        hooks.policy_update(1, model, batch)
        return [p.detach().clone() for p in hooks.state.learner.policy.parameters()]

    a, b = policy_after_one_update(1), policy_after_one_update(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    torch.manual_seed(0)
    model = build_model(cfg.model)
    fresh = [p.detach().clone() for p in learned_order_hooks(cfg, model).state.learner.policy.parameters()]
    assert not all(torch.equal(x, y) for x, y in zip(a, fresh))  # the update did change the policy
