"""``train.order: learned`` in the training loop: the trainer builds the order-learner hooks itself
(the learner outside the PDM's engine with its own AdamW and grad clip, learned tuples, the policy
updates ``phase`` asks for), logs policy metrics, checkpoints the learner in the rank extras, exports
the policy beside the PDM (``policy.safetensors``; ``model.safetensors`` stays the PDM only), resumes,
reuses the tuples' rollout in joint mode and reads the captions for reward=clip. Sampling with the
exported policy: tests/test_sample_stage.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.config import ConfigError
from tests.trainer_utils import make_job, make_shards, one_thread  # noqa: F401 (autouse fixture)
from training import checkpoint as ckpt
from training.trainer import run_training

QUIET = dict(log=lambda m: None)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    return make_shards(tmp_path_factory.mktemp("shards"), n_shards=2, per_shard=16)


def _records(out_dir) -> list[dict]:
    return [json.loads(x) for x in (Path(out_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]


def _engine_state(out_dir, step: int) -> dict:
    path = Path(out_dir) / "checkpoints" / ckpt.tag_for(step) / "engine_state.pt"
    return torch.load(path, map_location="cpu", weights_only=False)


def _learner_state(out_dir, step: int, rank: int = 0) -> dict:
    """The order learner's state (policy weights, baselines, train_step) in a checkpoint's rank extras."""
    path = Path(out_dir) / "checkpoints" / ckpt.tag_for(step) / f"rank_{rank:05d}.pt"
    return torch.load(path, map_location="cpu", weights_only=False)["hooks"]["learner"]


def _assert_exported_policy_is_trained_one(out_dir, step: int, hidden: int) -> None:
    """export/policy.safetensors, loaded by training.export_loader, holds exactly the policy of the step-``step``
    checkpoint (the learner's state in the rank extras), and says what it is."""
    from training.export_loader import load_exported_model, load_exported_policy
    from training.model.order_learner import PositionPolicy

    export = Path(out_dir) / "export"
    model, mcfg, mmeta = load_exported_model(export)
    policy, meta = load_exported_policy(export, model_cfg=mcfg, model_meta=mmeta)
    trained = {k[len("policy.") :]: v for k, v in _learner_state(out_dir, step).items() if k.startswith("policy.")}
    got = policy.state_dict()
    assert isinstance(policy, PositionPolicy) and not policy.training and set(got) == set(trained)
    assert all(torch.equal(got[k], trained[k]) for k in trained)
    assert meta["kind"] == "position_policy" and meta["step"] == mmeta["step"] == str(step)
    assert meta["policy_config"] == {
        "dim": mcfg.dim,
        "seq_len": mcfg.seq_len,
        "hidden": hidden,
        "position_bias": True,
        "confidence_features": True,
    }
    assert meta["order_learner"]["hidden"] == hidden and meta["stages"] == "4" and meta["train_order"] == "learned"


@pytest.mark.parametrize("mode", ["joint", "alternate"])
def test_learned_order_trains_checkpoints_policy_and_resumes(tmp_path, shards, mode):
    ol = {"mode": mode, "hidden": 8, "warmup_steps": 1, "reward": "token_acc", "lr": 1e-2}
    job = make_job(
        tmp_path, shards, steps=4, checkpoint_every=2, keep_last=3, order="learned", p_error=0.3, order_learner=ol
    )
    summary = run_training(job, **QUIET)
    assert summary["resumed_from"] == 0
    recs = _records(job.out_dir)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    # joint: step 1 is the PDM-only warm-up; alternate: the first policy update follows that warm-up step
    assert ("policy/reward" in recs[0]) == (mode == "alternate")
    for r in recs[1:]:
        for k in ("policy/reward", "policy/entropy", "policy/loss", "loss"):
            assert k in r, (k, r)
        assert 0.0 <= r["policy/reward"] <= 1.0 and r["policy/entropy"] > 0

    pol = _learner_state(job.out_dir, 4)
    assert any(k.startswith("policy.") for k in pol) and int(pol["train_step"]) == 4
    first = _learner_state(job.out_dir, 2)
    assert any(not torch.equal(first[k], v) for k, v in pol.items() if k.startswith("policy."))  # the policy moved
    st = _engine_state(job.out_dir, 4)
    assert not any("order_learner" in k or "policy" in k for k in st["module"])  # not in the PDM's engine
    assert len(st["optimizer"]["param_groups"]) == 2  # the PDM's two groups only: the policy has its own AdamW
    extras = torch.load(Path(job.out_dir) / "checkpoints" / ckpt.tag_for(4) / "rank_00000.pt", weights_only=False)
    assert extras["hooks"]["optimizer"]["state"]

    sd, meta = ckpt.load_export(Path(job.out_dir) / "export" / "model.safetensors")
    assert meta["kind"] == "pdm" and not any("order_learner" in k or "policy" in k for k in sd)
    from training.model.config import model_config
    from training.model.pdm import PDM

    PDM(model_config(json.loads(meta["model_config"]))).load_state_dict(sd)  # the PDM, nothing else
    _assert_exported_policy_is_trained_one(job.out_dir, 4, hidden=8)  # and the policy beside it

    # resume: continue to 6 steps from the step-4 checkpoint, the policy state restored
    job6 = make_job(
        tmp_path, shards, steps=6, checkpoint_every=2, keep_last=3, order="learned", p_error=0.3, order_learner=ol
    )
    assert run_training(job6, **QUIET)["resumed_from"] == 4
    recs = _records(job.out_dir)
    assert [r["step"] for r in recs][-2:] == [5, 6] and "policy/reward" in recs[-1]
    assert int(_learner_state(job.out_dir, 6)["train_step"]) == 6
    _assert_exported_policy_is_trained_one(job.out_dir, 6, hidden=8)  # the export moved on with it


def test_publish_export_copies_parts_and_drops_stale_ones(tmp_path):
    """Every *.safetensors of the checkpoint reaches export/; a policy left there by an earlier run whose
    checkpoint has none is removed (the export never pairs a model with another run's policy)."""
    tag = tmp_path / "step_00000002"
    ckpt.write_export(
        tag,
        {"w": torch.ones(2)},
        None,
        "train: {}\n",
        {"kind": "pdm"},
        {"policy.safetensors": ({"p": torch.zeros(3)}, {"kind": "position_policy"})},
    )
    (tag / ckpt.COMPLETE).write_text("{}")
    dest = tmp_path / "export"
    ckpt.publish_export(tag, dest)
    assert sorted(p.name for p in dest.iterdir()) == [
        "config.yaml",
        "lineage.json",
        "model.safetensors",
        "policy.safetensors",
    ]
    assert ckpt.load_export(dest / "policy.safetensors")[1]["kind"] == "position_policy"
    (tag / "policy.safetensors").unlink()
    ckpt.publish_export(tag, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["config.yaml", "lineage.json", "model.safetensors"]
    with pytest.raises(ValueError, match="safetensors"):
        ckpt.PartExport("policy.pt", "aux.x.")


def test_learned_order_l2_reward_without_a_tokenizer_is_a_clear_error(tmp_path, shards):
    job = make_job(tmp_path, shards, steps=2, order="learned", order_learner={"reward": "l2"})
    with pytest.raises(ValueError, match="tokenizer"):
        run_training(job, **QUIET)


def test_learned_order_config_validates(tmp_path):
    from pipeline.experiment import load_config
    from tests.trainer_utils import write_config

    cfg = load_config(write_config(tmp_path, {"order": "learned", "order_learner": {"mode": "joint", "hidden": 4}}))
    assert cfg.train.order_learner.mode == "joint" and cfg.train.order_learner.hidden == 4
    with pytest.raises(ConfigError, match="train.order_learner.mode"):
        load_config(write_config(tmp_path, {"order": "learned", "order_learner": {"mode": "bogus"}}))


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("zero", [2, 3])
def test_learned_order_two_deepspeed_ranks(tmp_path, shards, zero):
    """The real launcher, 2 CPU ranks, joint mode: the policy stays outside the DeepSpeed engine (whole on
    every rank, also under ZeRO-3), its gradients averaged over the ranks: both ranks hold the same policy,
    and the export is that policy."""
    import subprocess

    from cluster import deepspeed_launch as dl
    from cluster.config import ClusterConfig
    from training.engine import free_port

    job = make_job(
        tmp_path,
        shards,
        engine="deepspeed",
        zero_stage=zero,
        steps=4,
        checkpoint_every=2,
        batch_size=8,
        grad_accum=1,
        data_split="sample",
        order="learned",
        order_learner={"mode": "joint", "hidden": 8, "warmup_steps": 1},
    )
    path = Path(job.out_dir) / "job.json"
    job.save(path)
    c = ClusterConfig(launcher="deepspeed", procs_per_node=2, master_port=free_port())
    cmd, _, _ = dl.plan(c, path, job.out_dir, executable=dl.deepspeed_executable())
    with open(Path(job.out_dir) / "launcher.log", "a") as log:
        rc = subprocess.run(
            cmd, env=dl.launch_env(c), cwd=dl.PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=600
        ).returncode
    assert rc == 0, (Path(job.out_dir) / "launcher.log").read_text()[-3000:]
    recs = _records(job.out_dir)
    assert [r["step"] for r in recs] == [1, 2, 3, 4] and "policy/reward" in recs[-1]
    sd, _ = ckpt.load_export(Path(job.out_dir) / "export" / "model.safetensors")
    assert not any("order_learner" in k for k in sd)
    from training.export_loader import load_exported_model, load_exported_policy

    _, mcfg, mmeta = load_exported_model(Path(job.out_dir) / "export")
    policy, meta = load_exported_policy(Path(job.out_dir) / "export", model_cfg=mcfg, model_meta=mmeta)
    assert meta["step"] == "4" and meta["policy_config"]["hidden"] == 8
    assert policy.out.weight.abs().sum() > 0  # trained from its zero initialisation: full, real values
    ranks = [_learner_state(job.out_dir, 4, rank) for rank in (0, 1)]
    weights = [k for k in ranks[0] if k.startswith("policy.")]  # (the baselines are each rank's own statistics)
    assert weights and all(torch.equal(ranks[0][k], ranks[1][k]) for k in weights)  # one policy on both ranks
    assert torch.equal(policy.out.weight, ranks[0]["policy.out.weight"])
