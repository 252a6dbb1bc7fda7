"""Policy rollouts (Eq. 7): from all [mask], T steps; at step t the policy picks the set a_t of still-
masked positions (sizes from ``training.model.orders.stage_sizes``) and the PDM fills them.

A rollout IS the progressive sampler with the policy choosing the positions: the same guided forward
(``sampling.progressive.GuidedForward``: the conditional hidden states, the guided token logits, the
conditional state logits), the same step (``progressive_step``: revision by the state head, token
sampling), so the policy reads at training time exactly what it reads when ``sample.order: learned``
samples with the same guidance, revision and temperature (``rollout_config``). The PDM runs without
gradients, in eval mode (no dropout, no condition dropout); only the policy's scores keep a graph, so
``log_prob`` [B, T] can be differentiated for REINFORCE. Revisions (z = -1) come from the state head,
as in the sampler; they are not part of the learned action.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal, Optional

import torch
from torch import Tensor

from training.model.order_learner.plackett_luce import first_draw_entropy, greedy_topk, gumbel_topk, pl_log_prob
from training.model.sampling.config import SampleConfig
from training.model.sampling.progressive import (
    GuidedForward,
    eval_mode,
    plan_steps,
    progressive_step,
    revision_budget,
)


@dataclass
class PolicyBatch:
    """What rollouts and rewards read. ``images`` ([-1, 1], for reward=l2) and ``captions`` (for
    reward=clip) are optional."""

    tokens: Tensor  # Long[B, L]  ground-truth image tokens
    text: Tensor  # Float[B, S, text_dim]
    text_mask: Tensor  # Bool[B, S]
    images: Optional[Tensor] = None
    captions: Optional[list] = None

    def rows(self, sl: slice) -> PolicyBatch:
        return PolicyBatch(
            self.tokens[sl],
            self.text[sl],
            self.text_mask[sl],
            None if self.images is None else self.images[sl],
            None if self.captions is None else list(self.captions[sl]),
        )

    def head(self, n: Optional[int]) -> PolicyBatch:
        if n is None or n >= self.tokens.shape[0]:
            return self
        return self.rows(slice(0, n))


def as_policy_batch(batch: Any) -> PolicyBatch:
    """A ``PolicyBatch`` from itself, a mapping or any object with the same attribute names."""
    if isinstance(batch, PolicyBatch):
        return batch
    get = batch.get if isinstance(batch, dict) else (lambda k, d=None: getattr(batch, k, d))
    missing = [k for k in ("tokens", "text", "text_mask") if get(k) is None]
    if missing:
        raise ValueError(f"a policy batch needs {missing} (have: tokens Long[B, L], text, text_mask)")
    return PolicyBatch(**{f.name: get(f.name) for f in fields(PolicyBatch)})


@dataclass
class Rollout:
    tokens: Tensor  # Long[B, L]  final Y^T
    stage_of: Tensor  # Long[B, L]  the step at which each position was written
    picks: list  # per step Long[B, n_t], in Plackett-Luce draw order
    log_prob: Tensor  # Float[B, T] log pi(a_t | s_t) (ordered PL; graph to the policy)
    entropy: Tensor  # Float[B, T] first-draw entropy at each step
    previews: Optional[list] = None  # T+1 full maps: Yhat^t = Y^t with [mask] -> PDM argmax; last = Y^T
    greedy: Optional[Rollout] = None  # the greedy rollout of the same batch (self-critical baseline)


def rollout_config(
    T: int,
    schedule: str = "uniform",
    token_mode: Literal["argmax", "sample"] = "argmax",
    temperature: float = 1.0,
    guidance_scale: float = 1.0,
    revise: bool = True,
    revise_threshold: float = 0.5,
) -> SampleConfig:
    """The sampler settings a rollout runs with (the sampler's own ``SampleConfig``)."""
    return SampleConfig(
        steps=T,
        schedule=schedule,
        temperature=0.0 if token_mode == "argmax" else temperature,
        guidance_scale=guidance_scale,
        revise=revise,
        revise_threshold=revise_threshold,
        record_steps=False,
    )


def _forcing(idx: Tensor, L: int) -> Tensor:
    """Priorities [B, L] whose top-k in ``progressive_step`` are exactly ``idx`` [B, k], in its order."""
    k = idx.shape[1]
    prio = torch.zeros(idx.shape[0], L, device=idx.device)
    return prio.scatter(1, idx, torch.arange(k, 0, -1, device=idx.device, dtype=prio.dtype).expand_as(idx))


def rollout(
    policy,
    model,
    text: Tensor,
    text_mask: Tensor,
    T: int,
    *,
    schedule: str = "uniform",
    greedy: bool = False,
    token_mode: Literal["argmax", "sample"] = "argmax",
    temperature: float = 1.0,
    guidance_scale: float = 1.0,
    revise: bool = True,
    revise_threshold: float = 0.5,
    generator: Optional[torch.Generator] = None,
    previews: bool = False,
    picks: Optional[list] = None,
) -> Rollout:
    """Run pi_theta and the PDM ``model`` for T steps (Eq. 7) as the progressive sampler would with
    ``rollout_config(...)``. ``greedy``: top-k sets (evaluation); otherwise Gumbel-top-k samples.
    ``picks`` (a rollout's ``picks``) replays given sets instead: with argmax tokens this re-scores the
    same trajectory under the current policy. The policy graph is built when grad is enabled."""
    cfg = rollout_config(T, schedule, token_mode, temperature, guidance_scale, revise, revise_threshold)
    B = text.shape[0]
    L, mask_id = model.seq_len, model.mask_id
    dev = text.device
    forward = GuidedForward(model, text, text_mask, cfg)
    tokens = torch.full((B, L), mask_id, dtype=torch.long, device=dev)
    stage_of = torch.full((B, L), -1, dtype=torch.long, device=dev)
    chosen, logps, ents, prev = [], [], [], []
    written = 0
    with eval_mode(model):
        for t, n_t in enumerate(plan_steps(L, T, schedule)):
            with torch.no_grad():
                token_logits, state_logits = forward(tokens)
            masked = tokens == mask_id
            scores = policy(forward.hidden, masked, t, T, token_logits, state_logits)
            if picks is not None:
                idx = picks[t].to(dev)
            elif greedy:
                idx = greedy_topk(scores, n_t, masked)
            else:
                idx = gumbel_topk(scores, n_t, masked, generator)
            logps.append(pl_log_prob(scores, idx, masked))
            ents.append(first_draw_entropy(scores, masked))
            with torch.no_grad():
                if previews:
                    prev.append(torch.where(masked, token_logits.argmax(-1), tokens))
                n_rev = revision_budget(written, cfg)
                tokens, _ = progressive_step(
                    tokens, token_logits, state_logits, n_t, n_rev, cfg, generator, mask_id, _forcing(idx, L)
                )
                stage_of.scatter_(1, idx, t)
            chosen.append(idx)
            written = n_t
    if previews:
        prev.append(tokens)
    return Rollout(tokens, stage_of, chosen, torch.stack(logps, 1), torch.stack(ents, 1), prev if previews else None)
