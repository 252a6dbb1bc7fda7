"""REINFORCE for the position policy (PDM Eq. 6-7) and its schedule with the PDM.

    L_dis = -E_{tau ~ pi_theta}[ sum_t r(s_t, a_t) ]                                   # Eq. 6
    grad  ~= -1/B sum_b sum_t (G_t - b_t) grad log pi_theta(a_t | s_t) - beta grad H  (G_t: reward-to-go)

Baselines: ``moving_average`` (an EMA of G_t per step, kept in a buffer so it is checkpointed) or
``self_critical`` (G_t of the greedy rollout of the current policy on the same batch, Rennie et al.
2017); ``none``. The entropy bonus is the first-draw entropy at each step (``plackett_luce``).

``OrderLearner`` is an nn.Module (the policy + the baseline / statistics buffers): the trainer can
put it in the same DeepSpeed engine as the PDM (e.g. ``nn.ModuleDict(pdm=..., order_learner=...)``).
Its ``forward(model, batch)`` returns (loss, metrics, rollout) without stepping anything; the
trainer does ``engine.backward(loss)``. ``policy_update`` is the stand-alone update (backward, clip,
optimizer step) used on CPU and in tests.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
from torch import Tensor

from training.model.order_learner.config import OrderLearnerConfig
from training.model.order_learner.policy import PositionPolicy
from training.model.order_learner.rewards import RewardFn, discounted_returns, step_rewards
from training.model.order_learner.rollout import PolicyBatch, Rollout, as_policy_batch, rollout
from training.model.orders import get_order


class OrderLearner(nn.Module):
    """Policy + REINFORCE state. ``reward_fn(tokens, PolicyBatch) -> Float[B]`` (``rewards.make_reward``)
    is held outside the module tree (a CLIP model must not join the optimizer or the checkpoint)."""

    def __init__(self, policy: PositionPolicy, cfg: OrderLearnerConfig, stages: int, reward_fn: RewardFn):
        super().__init__()
        self.policy, self.cfg, self.stages = policy, cfg, stages
        self.__dict__["reward_fn"] = reward_fn  # not a submodule
        self.register_buffer("baseline", torch.zeros(stages))
        self.register_buffer("baseline_ready", torch.zeros((), dtype=torch.bool))
        self.register_buffer("stage_ema", torch.full((policy.seq_len,), (stages - 1) / 2.0))

    def _rollout(self, model, b: PolicyBatch, greedy: bool, generator) -> Rollout:
        c = self.cfg
        return rollout(
            self.policy,
            model,
            b.text,
            b.text_mask,
            self.stages,
            schedule=c.schedule,
            greedy=greedy,
            token_mode=c.token_mode,
            temperature=c.temperature,
            generator=generator,
            previews=c.reward_mode == "per_step",
        )

    def returns(self, ro: Rollout, b: PolicyBatch) -> tuple[Tensor, Tensor, Tensor]:
        """(rewards [B, T], reward-to-go G [B, T], final score R(Y^T) [B])."""
        r, final = step_rewards(self.reward_fn, ro, b, self.cfg.reward_mode)
        return r, discounted_returns(r, self.cfg.discount), final

    def forward(self, model, batch: Any, generator: Optional[torch.Generator] = None):
        """-> (loss, metrics, rollout) for one batch (Eq. 6). Metrics are detached 0-d tensors, except
        ``pos_stage`` Float[L]: the mean stage at which each position was chosen in this batch (also kept
        as the EMA buffer ``stage_ema``, a grid heat-map to log); ``pos_stage_std`` is its spread over
        positions (about 0 for a random order, about sqrt((T^2-1)/12) for a fixed one)."""
        c = self.cfg
        b = as_policy_batch(batch).head(c.rollout_batch)
        ro = self._rollout(model, b, greedy=False, generator=generator)
        r, G, final = self.returns(ro, b)
        metrics: dict[str, Tensor] = {}
        if c.baseline == "self_critical":
            with torch.no_grad():
                _, base, greedy_final = self.returns(self._rollout(model, b, greedy=True, generator=generator), b)
            metrics["greedy_reward"] = greedy_final.mean()
        elif c.baseline == "moving_average":
            if not bool(self.baseline_ready):
                self.baseline.copy_(G.detach().mean(0))
                self.baseline_ready.fill_(True)
            base = self.baseline.expand_as(G)
        else:
            base = torch.zeros_like(G)
        adv = (G - base).detach()
        if c.normalize_advantage:
            adv = adv / adv.std().clamp(min=1e-6)
        pg = -(adv * ro.log_prob).sum(1).mean()  # Eq. 6 (REINFORCE)
        entropy = ro.entropy.mean()
        loss = pg - c.entropy_coef * entropy
        with torch.no_grad():
            if c.baseline == "moving_average":
                self.baseline.lerp_(G.mean(0), 1.0 - c.baseline_momentum)
            pos_stage = ro.stage_of.float().mean(0)
            self.stage_ema.lerp_(pos_stage, 0.05)
            metrics.update(
                reward=r.sum(1).mean(),
                final_reward=final.mean(),
                advantage_std=adv.std() if adv.numel() > 1 else adv.abs().mean(),
                baseline=base.mean(),
                entropy=entropy.detach(),
                log_prob=ro.log_prob.detach().mean(),
                pg_loss=pg.detach(),
                loss=loss.detach(),
                pos_stage=pos_stage,
                pos_stage_std=pos_stage.std(),
            )
        return loss, metrics, ro

    @torch.no_grad()
    def stage_of(
        self, model, batch: Any, greedy: Optional[bool] = None, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        """stage_of Long[B, L] from a policy rollout, for ``training.model.tuples.make_tuples``."""
        b = as_policy_batch(batch)
        greedy = self.cfg.tuple_order == "greedy" if greedy is None else greedy
        return self._rollout(model, b, greedy=greedy, generator=generator).stage_of


def make_optimizer(learner: OrderLearner, cfg: OrderLearnerConfig) -> torch.optim.Optimizer:
    """AdamW over the policy (the trainer may instead add ``learner.parameters()`` as a param group
    with lr=cfg.lr, weight_decay=cfg.weight_decay to its own optimizer)."""
    return torch.optim.AdamW(learner.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def policy_update(
    learner: OrderLearner,
    model,
    batch: Any,
    optimizer: Optional[torch.optim.Optimizer] = None,
    generator: Optional[torch.Generator] = None,
) -> dict[str, Tensor]:
    """One REINFORCE step: loss, backward, clip to cfg.grad_clip, optimizer step (if given). -> metrics."""
    loss, metrics, _ = learner(model, batch, generator)
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clip = learner.cfg.grad_clip
    params = [p for p in learner.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
    metrics["grad_norm"] = norm.detach()
    if optimizer is not None:
        optimizer.step()
    return metrics


def phase(step: int, cfg: OrderLearnerConfig) -> tuple[bool, bool]:
    """(train the policy?, train the PDM?) at global step ``step`` (0-based) under cfg.mode."""
    if step < cfg.warmup_steps:
        return False, True
    if cfg.mode == "joint":
        return True, True
    r = (step - cfg.warmup_steps) % (cfg.policy_steps + cfg.generator_steps)
    return (True, False) if r < cfg.policy_steps else (False, True)


def generator_stage_of(
    learner: OrderLearner,
    model,
    batch: Any,
    step: int,
    rollout_result: Optional[Rollout] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """stage_of [B, L] for the PDM's tuples at ``step``: random order during warm-up; afterwards the
    learned order (a fresh rollout, or ``rollout_result`` of the policy step when it covers the whole
    batch: joint mode reuses it) for a ``learned_fraction`` share of the samples, random for the rest."""
    b = as_policy_batch(batch)
    B, L = b.tokens.shape
    dev = b.tokens.device
    random = get_order("random")(B, L, learner.stages, schedule=learner.cfg.schedule, generator=generator, device=dev)
    if step < learner.cfg.warmup_steps or learner.cfg.learned_fraction <= 0:
        return random
    if rollout_result is not None and rollout_result.stage_of.shape == (B, L) and learner.cfg.tuple_order == "sampled":
        learned = rollout_result.stage_of
    else:
        learned = learner.stage_of(model, b, generator=generator)
    gdev = generator.device if generator is not None else dev
    use = torch.rand(B, generator=generator, device=gdev).to(dev) < learner.cfg.learned_fraction
    return torch.where(use[:, None], learned, random)
