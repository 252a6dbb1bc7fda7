"""Set selection without replacement: Gumbel-top-k sampling and its exact Plackett-Luce log-probability.

Scores s [B, L] and an eligibility mask (only currently [mask] positions) define, per sample, a
Plackett-Luce (PL) distribution over ordered draws without replacement::

    p(i_1, ..., i_k) = prod_j exp(s_{i_j}) / sum_{l in E \\ {i_1..i_{j-1}}} exp(s_l)

Adding i.i.d. Gumbel(0, 1) noise to s and taking the top k gives an exact sample of it, ordered by
the perturbed score (Gumbel-top-k; Kool et al. 2019).

Which log-probability the estimator uses: the ORDERED one (``pl_log_prob``). The environment only sees
the set, and the set probability is the sum of the ordered one over the k! orderings, so
E_o[R(set(o)) grad log p(o)] = grad E[R(set)]: the ordered log-prob gives an unbiased REINFORCE gradient
at O(k L) cost. The set marginal would be a Rao-Blackwellised (lower variance) variant but costs k!
terms (or a numerical integral); ``pl_set_log_prob`` computes it by enumeration for small k, for tests.
"""

from __future__ import annotations

import itertools
from typing import Optional

import torch
from torch import Tensor

from training.model.seeded_random import gumbel

NEG = -1e30  # finite "-inf": keeps logsumexp/gradients NaN-free when a row has no eligible position


def masked_scores(scores: Tensor, eligible: Tensor) -> Tensor:
    return scores.float().masked_fill(~eligible, NEG)


def gumbel_topk(scores: Tensor, k: int, eligible: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Long[B, k]: an ordered PL sample of k eligible positions (needs k <= #eligible in every row)."""
    s = masked_scores(scores.detach(), eligible)
    keys = (s + gumbel(s.shape, generator, s.device)).masked_fill(~eligible, float("-inf"))
    return keys.topk(k, dim=1).indices  # sorted: the draw order


def greedy_topk(scores: Tensor, k: int, eligible: Tensor) -> Tensor:
    """Long[B, k]: the k highest-scoring eligible positions (the PL mode of the set; evaluation)."""
    return masked_scores(scores.detach(), eligible).masked_fill(~eligible, float("-inf")).topk(k, dim=1).indices


def pl_log_prob(scores: Tensor, idx: Tensor, eligible: Tensor) -> Tensor:
    """Float[B]: exact log p(i_1, ..., i_k) of the ordered draw ``idx`` [B, k] (differentiable in scores).

    Step j's denominator is a logsumexp over the eligible positions not drawn before j: a [B, k, L]
    mask, no subtraction of exponentials (stable even when the drawn positions dominate)."""
    B, k = idx.shape
    s = masked_scores(scores, eligible)
    onehot = torch.zeros(B, k, s.shape[1], dtype=torch.bool, device=s.device)
    onehot.scatter_(2, idx.unsqueeze(-1), True)
    before = (onehot.cumsum(1) - onehot.long()) > 0  # drawn at an earlier j
    denom = s.unsqueeze(1).masked_fill(before, NEG).logsumexp(-1)  # [B, k]
    return (s.gather(1, idx) - denom).sum(1)


def pl_set_log_prob(scores: Tensor, idx: Tensor, eligible: Tensor, max_k: int = 6) -> Tensor:
    """Float[B]: log P(set) = logsumexp over all k! orderings of the ordered PL log-prob (k <= max_k)."""
    k = idx.shape[1]
    if k > max_k:
        raise ValueError(f"set log-prob by enumeration needs k <= {max_k} (k! orderings), got k={k}")
    terms = [pl_log_prob(scores, idx[:, list(p)], eligible) for p in itertools.permutations(range(k))]
    return torch.stack(terms, 0).logsumexp(0)


def first_draw_entropy(scores: Tensor, eligible: Tensor) -> Tensor:
    """Float[B]: entropy of the first PL draw, softmax over the eligible positions (the entropy bonus:
    a cheap, differentiable proxy of the set entropy that is 0 only for a deterministic first pick)."""
    s = masked_scores(scores, eligible)
    logp = s.log_softmax(-1)
    return -(logp.exp() * logp).masked_fill(~eligible, 0.0).sum(-1)
