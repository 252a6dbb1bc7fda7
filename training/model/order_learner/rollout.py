"""Policy rollouts (Eq. 7): from all [mask], T steps; at step t the policy picks the set a_t of still-
masked positions (sizes from ``training.model.orders.stage_sizes``) and the PDM fills them.

The PDM runs without gradients, in eval mode (no dropout, no condition dropout); only the policy's
scores keep a graph, so ``log_prob`` [B, T] can be differentiated for REINFORCE. Rollouts only
generate (z = 1); the revision (z = -1) branch of the sampler is not part of the learned action.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal, Optional

import torch
from torch import Tensor

from training.model.order_learner.plackett_luce import first_draw_entropy, greedy_topk, gumbel_topk, pl_log_prob
from training.model.orders import stage_sizes
from training.model.sampling.logits import sample_tokens
from training.model.sampling.progressive import eval_mode


@dataclass
class PolicyBatch:
    """What rollouts and rewards read. ``images`` ([-1, 1], for reward=l2) and ``captions`` (for
    reward=clip) are optional."""

    tokens: Tensor  # Long[B, L]  ground-truth image tokens
    text: Tensor  # Float[B, S, text_dim]
    text_mask: Tensor  # Bool[B, S]
    images: Optional[Tensor] = None
    captions: Optional[list] = None

    def head(self, n: Optional[int]) -> PolicyBatch:
        if n is None or n >= self.tokens.shape[0]:
            return self
        return PolicyBatch(
            self.tokens[:n],
            self.text[:n],
            self.text_mask[:n],
            None if self.images is None else self.images[:n],
            None if self.captions is None else list(self.captions[:n]),
        )


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
    generator: Optional[torch.Generator] = None,
    previews: bool = False,
    picks: Optional[list] = None,
) -> Rollout:
    """Run pi_theta and the PDM ``model`` for T steps (Eq. 7). ``greedy``: top-k sets (evaluation);
    otherwise Gumbel-top-k samples. ``picks`` (a rollout's ``picks``) replays given sets instead: with
    argmax tokens this re-scores the same trajectory under the current policy. The policy graph is
    built when grad is enabled."""
    B = text.shape[0]
    L, mask_id = model.seq_len, model.mask_id
    dev = text.device
    tokens = torch.full((B, L), mask_id, dtype=torch.long, device=dev)
    stage_of = torch.full((B, L), -1, dtype=torch.long, device=dev)
    no_drop = torch.zeros(B, dtype=torch.bool, device=dev)
    chosen, logps, ents, prev = [], [], [], []
    with eval_mode(model):
        for t, n_t in enumerate(stage_sizes(L, T, schedule)):
            with torch.no_grad():
                out = model(tokens, text, text_mask, drop_text=no_drop)
            masked = tokens == mask_id
            scores = policy(out.hidden, masked, t, T, out.token_logits, out.state_logits)
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
                    prev.append(torch.where(masked, out.token_logits.argmax(-1), tokens))
                K = out.token_logits.shape[-1]
                sel = out.token_logits.gather(1, idx.unsqueeze(-1).expand(-1, -1, K))
                temp = 0.0 if token_mode == "argmax" else temperature
                tokens = tokens.scatter(1, idx, sample_tokens(sel, generator, temperature=temp))
                stage_of.scatter_(1, idx, t)
            chosen.append(idx)
    if previews:
        prev.append(tokens)
    return Rollout(tokens, stage_of, chosen, torch.stack(logps, 1), torch.stack(ents, 1), prev if previews else None)
