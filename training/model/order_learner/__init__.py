"""Learned generation order (PDM 3.2 "Dynamic Importance Scoring", Eq. 6-7).

A position policy pi_theta(a_t | s_t) reads the PDM's detached hidden states and picks the L/T
positions written at each step (Plackett-Luce / Gumbel-top-k over the [mask] positions); REINFORCE
with a baseline and an entropy bonus maximises a reward of the final image (L2 to the true image, CLIP
image-text similarity, or token accuracy). Importing this package registers the ``learned`` order in
``training.model.orders`` (replacing the placeholder).

    from training.model.order_learner import OrderLearnerConfig, build_order_learner, policy_update
    learner = build_order_learner(model_cfg, cfg, stages=T, decode=vq.decode)    # nn.Module
    opt = make_optimizer(learner, cfg)
    metrics = policy_update(learner, pdm, batch, opt)       # batch: tokens, text, text_mask[, images, captions]
    stage_of = learner.stage_of(pdm, batch)                 # -> training.model.tuples.make_tuples
    res = Learned(learner.policy, pdm).sample(text, text_mask, SampleConfig(steps=T), g)
"""

from __future__ import annotations

from training.model.order_learner.config import OrderLearnerConfig
from training.model.order_learner.order import Learned, learned_sample
from training.model.order_learner.plackett_luce import (
    first_draw_entropy,
    greedy_topk,
    gumbel_topk,
    pl_log_prob,
    pl_set_log_prob,
)
from training.model.order_learner.policy import PositionPolicy
from training.model.order_learner.reinforce import (
    OrderLearner,
    apply_policy_loss,
    generator_stage_of,
    make_optimizer,
    phase,
    policy_update,
)
from training.model.order_learner.rewards import (
    ClipReward,
    L2Reward,
    TokenAccuracyReward,
    discounted_returns,
    make_reward,
    step_rewards,
)
from training.model.order_learner.rollout import PolicyBatch, Rollout, as_policy_batch, rollout, rollout_config


def build_order_learner(
    model_cfg, cfg: OrderLearnerConfig, stages: int, decode=None, clip_model=None, clip_tokenizer=None, reward_fn=None
) -> OrderLearner:
    """Policy sized for ``model_cfg`` (ModelConfig) + reward named by cfg.reward (or ``reward_fn``)."""
    policy = PositionPolicy.for_model(model_cfg, cfg)
    reward = reward_fn if reward_fn is not None else make_reward(cfg.reward, decode, clip_model, clip_tokenizer)
    return OrderLearner(policy, cfg, cfg.stages or stages, reward)


__all__ = [
    "OrderLearnerConfig",
    "Learned",
    "learned_sample",
    "PositionPolicy",
    "OrderLearner",
    "build_order_learner",
    "policy_update",
    "apply_policy_loss",
    "make_optimizer",
    "phase",
    "generator_stage_of",
    "make_reward",
    "step_rewards",
    "discounted_returns",
    "TokenAccuracyReward",
    "L2Reward",
    "ClipReward",
    "PolicyBatch",
    "Rollout",
    "as_policy_batch",
    "rollout",
    "rollout_config",
    "gumbel_topk",
    "greedy_topk",
    "pl_log_prob",
    "pl_set_log_prob",
    "first_draw_entropy",
]
