"""REINFORCE for the position policy (PDM Eq. 6-7) and its schedule with the PDM.

    L_dis = -E_{tau ~ pi_theta}[ sum_t r(s_t, a_t) ]                                   # Eq. 6
    grad  ~= -1/B sum_b sum_t (G_t - b_t) grad log pi_theta(a_t | s_t) - beta grad H  (G_t: reward-to-go)

Baselines: ``moving_average`` (an EMA of G_t per step, kept in a buffer so it is checkpointed) or
``self_critical`` (G_t of the greedy rollout of the current policy on the same batch, Rennie et al.
2017); ``none``. The entropy bonus is the first-draw entropy at each step (``plackett_luce``).

``OrderLearner`` is an nn.Module (the policy + the baseline / statistics buffers). Its
``forward(model, batch)`` returns (loss, metrics, rollout) without stepping anything;
``apply_policy_loss`` is the update (backward into the policy alone, its own grad clip, its own
optimizer step), ``policy_update`` a fresh rollout plus that update. The trainer keeps the learner
outside the PDM's engine (``training.order_learner_hooks``): the PDM's gradient clip and optimizer
never see the policy, and ``phase`` says when it is updated.
"""

from __future__ import annotations

from collections.abc import Callable
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
            guidance_scale=c.guidance_scale,
            revise=c.revise,
            revise_threshold=c.revise_threshold,
            generator=generator,
            previews=c.reward_mode == "per_step",
        )

    def returns(self, ro: Rollout, b: PolicyBatch) -> tuple[Tensor, Tensor, Tensor]:
        """(rewards [B, T], reward-to-go G [B, T], final score R(Y^T) [B])."""
        r, final = step_rewards(self.reward_fn, ro, b, self.cfg.reward_mode)
        return r, discounted_returns(r, self.cfg.discount), final

    def forward(self, model, batch: Any, generator: Optional[torch.Generator] = None):
        """-> (loss, metrics, rollout) for one batch (Eq. 6); with the self-critical baseline the rollout
        carries the greedy one as ``rollout.greedy``. Metrics are detached 0-d tensors, except
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
                ro.greedy = self._rollout(model, b, greedy=True, generator=generator)
                _, base, greedy_final = self.returns(ro.greedy, b)
            metrics["greedy_reward"] = greedy_final.mean()
        elif c.baseline == "moving_average":
            if not bool(self.baseline_ready):
                self.baseline.copy_(G.detach().mean(0))
                self.baseline_ready.fill_(True)
            base = self.baseline.clone().expand_as(G)  # the value used, before the update below
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
    """The policy's own AdamW (lr and weight decay of ``train.order_learner``)."""
    return torch.optim.AdamW(learner.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def apply_policy_loss(
    learner: OrderLearner,
    loss: Tensor,
    optimizer: Optional[torch.optim.Optimizer] = None,
    reduce_grads: Optional[Callable[[list], None]] = None,
) -> Tensor:
    """Backward of a REINFORCE loss into the policy alone, ``reduce_grads`` (e.g. an all-reduce over
    ranks), clip to the policy's own cfg.grad_clip, optimizer step (if given). -> the grad norm."""
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in learner.parameters() if p.requires_grad]
    if reduce_grads is not None:
        reduce_grads(params)
    clip = learner.cfg.grad_clip
    norm = torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], clip if clip > 0 else float("inf"))
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return norm.detach()


def policy_update(
    learner: OrderLearner,
    model,
    batch: Any,
    optimizer: Optional[torch.optim.Optimizer] = None,
    generator: Optional[torch.Generator] = None,
) -> dict[str, Tensor]:
    """One REINFORCE step on a fresh rollout: loss, ``apply_policy_loss``. -> metrics (with grad_norm)."""
    loss, metrics, _ = learner(model, batch, generator)
    metrics["grad_norm"] = apply_policy_loss(learner, loss, optimizer)
    return metrics


def phase(step: int, cfg: OrderLearnerConfig) -> tuple[int, bool]:
    """The schedule of ``cfg.mode`` at trainer step ``step`` (1-based; the PDM trains at every step):
    (policy updates right after that step, whether that step's PDM tuples came from the policy).

    Steps 1..warmup_steps train the PDM on random-order tuples and never the policy. joint: every later
    step's tuples come from a policy rollout and that same rollout gives one policy update. alternate:
    after step warmup_steps + k * generator_steps (k >= 0), policy_steps updates on fresh rollouts."""
    learned = step > cfg.warmup_steps
    if cfg.mode == "joint":
        return (1 if learned else 0), learned
    k = step - cfg.warmup_steps
    return (cfg.policy_steps if k >= 0 and k % cfg.generator_steps == 0 and step > 0 else 0), learned


def _learned_stage_of(learner: OrderLearner, model, b: PolicyBatch, ro: Optional[Rollout], generator) -> Tensor:
    """The policy's stage maps for the batch: those of ``ro`` (``ro.greedy`` with tuple_order greedy) for
    the rows it covers, a fresh rollout for the others."""
    greedy = learner.cfg.tuple_order == "greedy"
    src = None if ro is None else (ro.greedy if greedy else ro)
    B = b.tokens.shape[0]
    n = 0 if src is None else min(src.stage_of.shape[0], B)
    if n == B:
        return src.stage_of[:B]
    rest = learner.stage_of(model, b.rows(slice(n, B)), greedy=greedy, generator=generator)
    return rest if n == 0 else torch.cat([src.stage_of[:n], rest])


def generator_stage_of(
    learner: OrderLearner,
    model,
    batch: Any,
    step: int,
    rollout_result: Optional[Rollout] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """stage_of [B, L] for the PDM's tuples when ``step`` trainer steps are done: random order during the
    warm-up; afterwards the learned order for the first round(learned_fraction x B) samples (the loader
    shuffles, so they are a random share), random order for the rest. The learned maps reuse
    ``rollout_result`` (the policy update's rollout of this batch: its sampled sets, or its greedy ones with
    tuple_order greedy and the self-critical baseline) for the rows it covers; only the others roll out."""
    b = as_policy_batch(batch)
    B, L = b.tokens.shape
    dev = b.tokens.device
    random = get_order("random")(B, L, learner.stages, schedule=learner.cfg.schedule, generator=generator, device=dev)
    k = round(learner.cfg.learned_fraction * B)
    if step < learner.cfg.warmup_steps or k == 0:
        return random
    learned = _learned_stage_of(learner, model, b.rows(slice(0, k)), rollout_result, generator)
    return torch.cat([learned, random[k:]])
