"""The position policy pi_theta(a_t | s_t) of PDM 3.2 (dynamic importance scoring, Eq. 6-7).

s_t = (Y^{<=t}, Z^t, X). The policy scores every position; the set a_t of positions written at step t
is drawn from the Plackett-Luce distribution of those scores over the still-[mask] positions
(``plackett_luce``). Design choice: a SMALL SEPARATE network reading the PDM decoder's final hidden
states (detached), not the PDM's own state head, because

  * the state head is trained by cross-entropy on the tuples of whatever order cut them (it learns to
    imitate that order); REINFORCE gradients flowing into it, or into the trunk, would mix two
    objectives in the generator. Detached features keep the generator's loss exactly Eq. 4 and let
    policy and generator be trained in alternation or jointly without interference;
  * the decoder's hidden state already summarises Y^{<=t}, Z^t (which positions are [mask]) and X
    (cross-attention), so a per-position MLP on it sees the whole state s_t for one extra forward of
    a few small matrices; no second transformer is needed;
  * the policy is its own nn.Module (a few hundred thousand parameters at the paper's width), so the
    trainer can put it in the same DeepSpeed engine (sharded/checkpointed with the PDM) or its own.

Inputs per position: LayerNorm(hidden) projected to ``hidden`` units, plus scalar features
[is_mask, t/T] and, with ``confidence_features``, the generator's max token log-prob, top-2 logit
margin and state-head log p(generate); a mean-pooled context over positions; an optional learned
per-position bias. The output layer starts at zero, so an untrained policy is the uniformly random
order over the eligible positions.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from training.model.states import GENERATE


@torch.no_grad()
def confidence_features(token_logits: Tensor, state_logits: Optional[Tensor]) -> Tensor:
    """[B, L, 3]: max log p(y), top-2 logit margin, log p(z = generate). No [B, L, K] temporaries
    beyond the logsumexp (K = 16384 at the paper's size)."""
    lse = token_logits.float().logsumexp(-1)
    top2 = token_logits.topk(2, dim=-1).values.float()
    feats = [top2[..., 0] - lse, top2[..., 0] - top2[..., 1]]
    if state_logits is not None:
        feats.append(state_logits.float().log_softmax(-1)[..., GENERATE])
    else:
        feats.append(torch.zeros_like(lse))
    return torch.stack(feats, -1)


class PositionPolicy(nn.Module):
    """``forward(hidden, masked, t, T, token_logits=None, state_logits=None) -> scores Float[B, L]``.

    hidden: [B, L, dim] decoder states (detached here); masked: Bool[B, L], True where still [mask]
    (scores elsewhere are returned but never eligible); t: 0-based step, T: number of steps."""

    def __init__(
        self, dim: int, seq_len: int, hidden: int = 128, position_bias: bool = True, confidence_features: bool = True
    ):
        super().__init__()
        self.dim, self.seq_len, self.use_conf = dim, seq_len, confidence_features
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, hidden)
        self.scalar = nn.Linear(2 + (3 if confidence_features else 0), hidden)
        self.context = nn.Linear(hidden, hidden)
        self.fc = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)  # start as the uniformly random order
        nn.init.zeros_(self.out.bias)
        self.pos_bias = nn.Parameter(torch.zeros(seq_len)) if position_bias else None

    @classmethod
    def for_model(cls, model_cfg, cfg) -> PositionPolicy:
        """From a ``ModelConfig`` (dim, L) and an ``OrderLearnerConfig``."""
        return cls(model_cfg.dim, model_cfg.seq_len, cfg.hidden, cfg.position_bias, cfg.confidence_features)

    def spec(self) -> dict:
        """The constructor's arguments (``PositionPolicy(**spec)`` rebuilds the architecture; the export's
        ``policy_config`` metadata)."""
        return {
            "dim": self.dim,
            "seq_len": self.seq_len,
            "hidden": self.proj.out_features,
            "position_bias": self.pos_bias is not None,
            "confidence_features": self.use_conf,
        }

    def forward(
        self,
        hidden: Tensor,
        masked: Tensor,
        t: int,
        T: int,
        token_logits: Optional[Tensor] = None,
        state_logits: Optional[Tensor] = None,
    ) -> Tensor:
        B, L, _ = hidden.shape
        dtype = self.proj.weight.dtype
        x = self.proj(self.norm(hidden.detach().to(dtype)))
        scal = [masked.to(dtype).unsqueeze(-1), torch.full((B, L, 1), t / max(T, 1), dtype=dtype, device=x.device)]
        if self.use_conf:
            if token_logits is None:
                raise ValueError("this policy uses confidence features: pass token_logits (and state_logits)")
            scal.append(
                confidence_features(token_logits.detach(), None if state_logits is None else state_logits.detach()).to(
                    dtype
                )
            )
        x = F.gelu(x + self.scalar(torch.cat(scal, -1)))
        x = x + self.context(x.mean(1, keepdim=True))
        score = self.out(F.gelu(self.fc(x))).squeeze(-1)
        if self.pos_bias is not None:
            score = score + self.pos_bias.to(score.dtype)
        return score.float()
