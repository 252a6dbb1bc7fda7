"""Progressive sampler of PDM (Eq. 4): start from all [mask]; at each of T stages one batched forward gives
the state distribution p(z | Y^{<=t}, X) and the token distribution p(y | Y^{<=t}, X); the state head picks
the positions to generate (z=1) and to revise (z=-1), the token head fills them, every other position is
kept (z=0): y^{t+1} = (1-|z|) y^t + |z| y~ (PDM 3.1).

Constraints enforced at every step t (PDM 3.1):
  * exactly sizes[t] new positions are generated, all of them still masked (sizes[t] = L/T when uniform);
  * revised positions are already written, and #revised <= #generated at step t-1 (and <= cfg.max_revise).

`order` chooses the positions to GENERATE instead of the state head (revision still comes from the state head):
  "state"       top sizes[t] masked positions by p(z=1) (the default, Eq. 4);
  "confidence"  MaskGIT/Emage: sample a token everywhere, write the most probable samples first;
  other names   a fixed order of `training.model.orders` ("raster", "random", "halton", ...), or an `Order`
                instance: its stage map (drawn once, with the same stage sizes) is followed exactly;
  Tensor        fixed priorities [L] or [B, L], higher first (pass -stage_of to follow a stage map, e.g.
                a constant-quantization-error order computed from known qerr);
  per-step      an object with ``per_step = True`` and ``priority(tokens, hidden, token_logits, state_logits,
                t, T, gumbel_scale, generator) -> Float[B, L]`` (higher first), asked at EVERY step with the
                current state (the conditional branch's hidden states, the guided token logits): the
                ``learned`` order's position policy (``training.model.order_learner.Learned``, PDM 3.2). The name
                "learned" alone has no policy: load one (``training.export_loader.load_exported_policy``) and pass
                ``order=Learned(policy, model)``.
For "state" and "confidence" the position scores get + r * log(purity) with the purity prior (Improved
VQ-Diffusion 3.2) and + g * Gumbel noise with cfg.gumbel_scale = g (Emage 4); fixed orders are followed as
given. Only masked positions are ever eligible for generation.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

from training.model.orders import Order as FixedOrder
from training.model.orders import get_order, stage_sizes
from training.model.sampling.config import SampleConfig
from training.model.sampling.logits import cfg_mix, gumbel_like, purity, sample_tokens
from training.model.seeded_random import repeat_rows
from training.model.states import GENERATE, KEEP, REVISE

OrderArg = Union[str, Tensor, FixedOrder]
Scorer = Callable[[Tensor, Optional[list]], Tensor]


@dataclass
class SampleResult:
    """tokens Long[B, L]; steps: token map after every step (mask_id where still masked); states: the state
    of every position at every step (KEEP / GENERATE / REVISE); scores: the reranking score of the kept
    candidate when n_candidates > 1."""

    tokens: Tensor
    steps: list
    states: list
    scores: Optional[Tensor] = None


def plan_steps(L: int, T: int, schedule: str) -> list[int]:
    """Tokens generated at each of the T stages (sum = L), from `training.model.orders.stage_sizes` (the same
    sizes as training). The uniform schedule needs T to divide L: a ValueError names the valid T."""
    sizes = [int(s) for s in stage_sizes(L, T, schedule)]
    if len(sizes) != T or sum(sizes) != L or min(sizes) < 0:
        raise RuntimeError(f"stage_sizes({L}, {T}, {schedule!r}) returned {sizes}: need {T} sizes summing to {L}")
    return sizes


@contextmanager
def eval_mode(model: torch.nn.Module):
    """Run the model in eval mode (no dropout), restoring its previous mode afterwards."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


class GuidedForward:
    """One model call per step; with guidance (s != 1) the conditional and the unconditional (null text,
    Improved VQ-Diffusion 3.1) branches run in ONE forward over the concatenated batch, then are mixed."""

    def __init__(self, model, text: Tensor, text_mask: Tensor, cfg: SampleConfig):
        self.model, self.s, self.c = model, cfg.guidance_scale, cfg.attn_bias_text
        self.text, self.mask, self.drop = text, text_mask, None
        self.hidden: Optional[Tensor] = None  # the last call's final hidden states [B, L, dim] (cond branch)
        if self.s != 1.0:
            B = text.shape[0]
            self.text, self.mask = torch.cat([text, text]), torch.cat([text_mask, text_mask])
            self.drop = torch.arange(2 * B, device=text.device) >= B  # second half: null text

    def __call__(self, tokens: Tensor, **per_sample: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """tokens [B, L] -> (token logits [B, L, K] after guidance, state logits [B, L, 3] of the cond branch, or
        None for a model without a state head). ``per_sample`` keyword tensors [B] (a diffusion model's timestep
        ``t``) go to the model, repeated for the null-text branch."""
        if self.drop is None:
            out = self.model(tokens, self.text, self.mask, attn_bias_text=self.c, **per_sample)
            self.hidden = getattr(out, "hidden", None)
            return out.token_logits, getattr(out, "state_logits", None)
        B = tokens.shape[0]
        twice = {k: torch.cat([v, v]) for k, v in per_sample.items()}
        out = self.model(
            torch.cat([tokens, tokens]), self.text, self.mask, drop_text=self.drop, attn_bias_text=self.c, **twice
        )
        h, state = getattr(out, "hidden", None), getattr(out, "state_logits", None)
        self.hidden = None if h is None else h[:B]
        return cfg_mix(out.token_logits[:B], out.token_logits[B:], self.s), None if state is None else state[:B]


def fixed_priority(order: OrderArg, B: int, L: int, T: int, schedule: str, grid, generator, device) -> Optional[Tensor]:
    """Priorities [B, L] (higher first) of a fixed order, or None for the model-driven "state" / "confidence"."""
    if isinstance(order, Tensor):
        return order.to(device, torch.float32).expand(B, L)
    if isinstance(order, str):
        if order in ("state", "confidence"):
            return None
        order = get_order(order)
    if getattr(order, "decided_at_sampling", False):  # training.model.orders' Confidence stand-in
        return None
    if getattr(order, "needs_quant_error", False):
        raise ValueError(
            f"order {order.name!r} needs the quantization error; pass priorities "
            f"-order(B, L, T, quant_error=qerr) as a tensor instead"
        )
    stage_of = order(B, L, T, grid=grid, schedule=schedule, generator=generator, device=device)
    return -stage_of.float()


def choose_revisions(state_logits: Tensor, masked: Tensor, n_revise: int, threshold: float) -> tuple[Tensor, Tensor]:
    """Error revision at sampling time (PDM 3.3; the state z = -1 of Eq. 4): among the positions already
    written (not ``masked``), the ``n_revise`` with the highest p(z = REVISE); a candidate is revised only when
    that probability exceeds ``threshold``. The caller passes n_revise <= the positions written at the previous
    step (PDM 3.1: sum_i I[z_i^t = -1] <= sum_i I[z_i^{t-1} = 1]).
    Returns (positions Long[B, n_revise], revise Bool[B, n_revise])."""
    p_rev = state_logits.float().softmax(-1)[..., REVISE].masked_fill(masked, -1.0)
    top, idx = p_rev.topk(n_revise, dim=1)
    return idx, top > threshold


def revision_budget(prev: int, cfg: SampleConfig) -> int:
    """How many written positions a step may revise: at most the ``prev`` positions generated the step
    before (PDM 3.1), at most ``cfg.max_revise``; none with ``cfg.revise`` off or ``cfg.repredict`` (whose
    written tokens all take the new prediction instead)."""
    if not cfg.revise or cfg.repredict:
        return 0
    return min(prev, cfg.max_revise) if cfg.max_revise is not None else prev


def progressive_step(
    tokens: Tensor,
    token_logits: Tensor,
    state_logits: Tensor,
    n_gen: int,
    n_revise: int,
    cfg: SampleConfig,
    generator: torch.Generator,
    mask_id: int,
    order: Union[str, Tensor] = "state",
    clusters: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """One stage of Eq. 4 on given logits. Generates exactly n_gen masked positions, revises at most n_revise
    written ones (those with p(revise) > cfg.revise_threshold), keeps the rest; with ``cfg.repredict``
    (Emage Algorithm 3) every written position takes a new draw instead (REVISE where it changed). `order`: "state",
    "confidence" or priorities [B, L] (higher first, see `fixed_priority`).
    Returns (new tokens [B, L], states [B, L] with KEEP/GENERATE/REVISE)."""
    K = token_logits.shape[-1]
    masked = tokens == mask_id
    tok_kw = dict(
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        purity_prior=cfg.purity_prior,
        clusters=clusters,
        n_clusters=cfg.n_clusters,
    )
    new_all = None
    if isinstance(order, Tensor):
        score = order
    else:
        if order == "state":
            score = state_logits.float().log_softmax(-1)[..., GENERATE]
        elif order == "confidence":  # MaskGIT: draw everywhere, rank by the drawn token's log-prob
            new_all, score = sample_tokens(token_logits, generator, return_logprob=True, **tok_kw)
        else:
            raise ValueError(f"order must be 'state', 'confidence' or a priority tensor, got {order!r}")
        if cfg.purity_prior > 0:  # Improved VQ-Diffusion 3.2, Eq. 8
            score = score + cfg.purity_prior * purity(token_logits.float()).log()
        if cfg.gumbel_scale > 0:  # Emage 4: Gumbel noise on the position choice
            score = score + cfg.gumbel_scale * gumbel_like(score, generator)
    score = score.clamp(min=-1e30).masked_fill(~masked, float("-inf"))
    idx = score.topk(n_gen, dim=1).indices  # [B, n_gen], all masked
    state = torch.zeros_like(tokens)
    state.scatter_(1, idx, GENERATE)
    ok = None
    if n_revise > 0:
        rev_idx, rev_ok = choose_revisions(state_logits, masked, n_revise, cfg.revise_threshold)
        state.scatter_(1, rev_idx, torch.where(rev_ok, REVISE, KEEP))
        ok = torch.cat([torch.ones_like(idx, dtype=torch.bool), rev_ok], 1)
        idx = torch.cat([idx, rev_idx], 1)
    if new_all is not None:
        new = new_all.gather(1, idx)
    else:  # draw only where something is written: [B, n, K] instead of [B, L, K]
        sel = token_logits.gather(1, idx.unsqueeze(-1).expand(-1, -1, K))
        new = sample_tokens(sel, generator, **tok_kw)
    if ok is not None:
        new = torch.where(ok, new, tokens.gather(1, idx))
    out = tokens.scatter(1, idx, new)
    if cfg.repredict:  # Emage Algorithm 3: the written tokens take this step's prediction
        again = new_all if new_all is not None else sample_tokens(token_logits, generator, **tok_kw)
        out = torch.where(masked, out, again)
        state = state.masked_fill(~masked & (again != tokens), REVISE)
    return out, state


@torch.no_grad()
def progressive_sample(
    model,
    text: Tensor,
    text_mask: Tensor,
    cfg: SampleConfig,
    generator: torch.Generator,
    order: Optional[OrderArg] = None,
    scorer: Optional[Scorer] = None,
    captions: Optional[list] = None,
    clusters: Optional[Tensor] = None,
) -> SampleResult:
    """Sample image tokens for a batch of prompts with T batched forwards (2 branches in one with guidance).

    text [B, S, text_dim], text_mask Bool[B, S]. `order` overrides cfg.order (see module doc). With
    cfg.n_candidates = n > 1, n samples per prompt are drawn in the same batch and `scorer(tokens [B*n, L],
    captions repeated n times or None) -> Float[B*n]` keeps the best (Emage 4). `clusters` Long[K] (from
    `kmeans_codebook`) is needed for cfg.cluster_sampling."""
    if cfg.cluster_sampling and clusters is None:
        raise ValueError("cluster_sampling needs clusters=kmeans_codebook(codebook_vectors, cfg.n_clusters)")
    if not cfg.cluster_sampling:
        clusters = None
    n = cfg.n_candidates
    if n > 1 and scorer is None:
        raise ValueError("n_candidates > 1 needs a scorer(tokens, captions) -> scores")
    L, mask_id = model.seq_len, model.mask_id
    sizes = plan_steps(L, cfg.steps, cfg.schedule)
    order = cfg.order if order is None else order
    if isinstance(order, str) and order == "learned":
        raise ValueError(
            "order 'learned' needs the trained position policy: load it with "
            "training.export_loader.load_exported_policy(export_dir) and pass order=Learned(policy, model) "
            "(training.model.order_learner)"
        )
    per_step = order if getattr(order, "per_step", False) else None
    if n > 1:
        text, text_mask = text.repeat_interleave(n, 0), text_mask.repeat_interleave(n, 0)
        generator = repeat_rows(generator, n)  # a candidate's own draws with rng: per_prompt
        if isinstance(order, Tensor) and order.dim() == 2:
            order = order.repeat_interleave(n, 0)
    B = text.shape[0]
    if per_step is None:
        prio = fixed_priority(
            order, B, L, cfg.steps, cfg.schedule, getattr(model, "grid", None), generator, text.device
        )
        order = prio if prio is not None else ("confidence" if order != "state" else "state")
    forward = GuidedForward(model, text, text_mask, cfg)
    tokens = torch.full((B, L), mask_id, dtype=torch.long, device=text.device)
    steps, states, prev = [], [], 0
    with eval_mode(model):
        for t, n_t in enumerate(sizes):
            token_logits, state_logits = forward(tokens)
            if per_step is not None:  # this step's priorities from the current state (the learned order)
                order = per_step.priority(
                    tokens, forward.hidden, token_logits, state_logits, t, cfg.steps, cfg.gumbel_scale, generator
                )
            n_rev = revision_budget(prev, cfg)
            tokens, state = progressive_step(
                tokens, token_logits, state_logits, n_t, n_rev, cfg, generator, mask_id, order, clusters
            )
            if cfg.record_steps:
                steps.append(tokens)  # a new tensor every step (scatter is out of place)
                states.append(state)
            prev = n_t
    if n == 1:
        return SampleResult(tokens, steps, states)
    return rerank(SampleResult(tokens, steps, states), n, scorer, captions)


def rerank(res: SampleResult, n: int, scorer: Scorer, captions: Optional[list]) -> SampleResult:
    """Keep the best of n consecutive candidates per prompt by `scorer(tokens, captions)` (Emage 4)."""
    B = res.tokens.shape[0] // n
    caps = [c for c in captions for _ in range(n)] if captions is not None else None
    scores = torch.as_tensor(scorer(res.tokens, caps), device=res.tokens.device).float().view(B, n)
    best, arg = scores.max(1)
    pick = torch.arange(B, device=res.tokens.device) * n + arg
    return SampleResult(res.tokens[pick], [s[pick] for s in res.steps], [s[pick] for s in res.states], best)
