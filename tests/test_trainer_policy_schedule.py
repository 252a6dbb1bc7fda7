"""The learned order's schedule with the PDM in the training loop: which parameters change in which step
(``order_learner.phase``), one rollout per step in joint mode, and the policy's own gradient clip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.trainer_utils import make_job, make_shards, one_thread  # noqa: F401 (autouse fixture)
from training import checkpoint as ckpt
from training.model.order_learner import OrderLearnerConfig, phase
from training.trainer import run_training

QUIET = dict(log=lambda m: None)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    return make_shards(tmp_path_factory.mktemp("shards"), n_shards=2, per_shard=16)


def _weights(out_dir, step: int) -> tuple[dict, dict]:
    """(the PDM's weights in the engine state, the policy's in the rank extras) of the step-``step`` checkpoint."""
    tag = Path(out_dir) / "checkpoints" / ckpt.tag_for(step)
    module = torch.load(tag / "engine_state.pt", map_location="cpu", weights_only=False)["module"]
    learner = torch.load(tag / "rank_00000.pt", map_location="cpu", weights_only=False)["hooks"]["learner"]
    return (
        {k: v for k, v in module.items() if k.startswith("model.")},
        {k: v for k, v in learner.items() if k.startswith("policy.")},
    )


def _changed(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "ol",
    [
        {"mode": "alternate", "warmup_steps": 1, "generator_steps": 2, "policy_steps": 1},
        {"mode": "joint", "warmup_steps": 2},
    ],
    ids=["alternate", "joint"],
)
def test_which_parameters_change_in_which_step(tmp_path, shards, ol):
    """The PDM changes at every step; the policy exactly after the steps where ``phase`` schedules an
    update (alternate: after the warm-up and every generator_steps steps; joint: every step past it)."""
    ol = {**ol, "hidden": 8, "reward": "token_acc", "lr": 1e-2}
    steps = 6
    job = make_job(
        tmp_path, shards, steps=steps, checkpoint_every=1, keep_last=steps, order="learned", order_learner=ol
    )
    run_training(job, **QUIET)
    cfg = OrderLearnerConfig(**ol)
    expected = [phase(s, cfg)[0] > 0 for s in range(2, steps + 1)]
    assert any(expected) and not all(expected)  # the schedule has both kinds of step in this window
    pdm_moved, policy_moved = [], []
    for s in range(2, steps + 1):
        (p0, q0), (p1, q1) = _weights(job.out_dir, s - 1), _weights(job.out_dir, s)
        pdm_moved.append(_changed(p0, p1))
        policy_moved.append(_changed(q0, q1))
    assert all(pdm_moved)
    assert policy_moved == expected


def test_joint_mode_runs_one_rollout_per_step(tmp_path, shards, monkeypatch):
    """Joint mode: the rollout that cuts a step's tuples is the one the policy update learns from (the old
    wiring ran one for the tuples and another for the update); with the self-critical baseline and greedy
    tuples, the greedy rollout of the baseline cuts the tuples (2 per step, not 3); with rollout_batch 4 and
    learned_fraction 0.5 of the 8 samples, the update's 4-sample rollout cuts the learned tuples alone."""
    from training.model.order_learner import reinforce

    calls = []
    real = reinforce.rollout
    monkeypatch.setattr(
        reinforce, "rollout", lambda *a, **k: calls.append((k.get("greedy"), a[2].shape[0])) or real(*a, **k)
    )
    base = {"mode": "joint", "warmup_steps": 1, "hidden": 8, "reward": "token_acc"}
    for i, (extra, per_step) in enumerate(
        (
            ({}, [(False, 8)]),
            ({"baseline": "self_critical", "tuple_order": "greedy"}, [(False, 8), (True, 8)]),
            ({"rollout_batch": 4, "learned_fraction": 0.5}, [(False, 4)]),
        )
    ):
        calls.clear()
        job = make_job(
            tmp_path / str(i), shards, steps=3, batch_size=8, order="learned", order_learner={**base, **extra}
        )
        run_training(job, **QUIET)
        assert calls == per_step * 2  # steps 2 and 3 (step 1 is the random-order warm-up)


def test_the_policy_is_not_clipped_with_the_pdm(tmp_path, shards):
    """joint mode, one step: the PDM's train.grad_clip (1.0 or 1e-9) changes the PDM's update but not the
    policy's, which only its own train.order_learner.grad_clip bounds (the old wiring clipped both by one
    global norm, so a tiny PDM clip shrank the policy's gradients to the size of AdamW's epsilon)."""
    ol = {"mode": "joint", "warmup_steps": 0, "hidden": 8, "reward": "token_acc", "lr": 1e-2, "grad_clip": 0.5}
    runs = {}
    for clip in (1.0, 1e-9):
        job = make_job(tmp_path / str(clip), shards, steps=1, grad_clip=clip, order="learned", order_learner=ol)
        run_training(job, **QUIET)
        runs[clip] = _weights(job.out_dir, 1)
    (pdm_a, pol_a), (pdm_b, pol_b) = runs[1.0], runs[1e-9]
    assert _changed(pdm_a, pdm_b)  # the PDM's clip took effect
    assert not _changed(pol_a, pol_b)  # and left the policy alone
