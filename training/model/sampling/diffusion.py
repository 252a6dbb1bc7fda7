"""Sampling a VQ-Diffusion model (``training.model.vq_diffusion``): the reverse chain and Improved VQ-Diffusion's
high-quality inference strategy (section 3.2, Algorithms 1 and 2). Every step starts from the network's
p(x_0 | x_t), guided with the learnable null text when ``sample.guidance_scale`` != 1 (Eq. 7 applied to the
unnoised state, as 3.1 allows), sharpened by Eq. 11 when ``sample.purity_prior`` r > 0, then divided by the
temperature and top-k filtered as in ``logits.sample_tokens``. ``sample.diffusion_strategy``:

  reverse        the VQ-Diffusion chain from x_T = all [MASK]: ``sample.steps`` transitions x_t -> x_s over
                 evenly spaced timesteps of T..0, each a draw from p(x_s | x_t) (Eq. 5; the exact posterior
                 of the skipped steps when s < t - 1). Written tokens may be replaced again (state REVISE).
  fewer_tokens   Algorithm 1: ``sample.steps`` steps of L / steps tokens (``sample.schedule`` as for PDM);
                 the timestep fed to the network is argmin_t | #[MASK] / L - gamma-bar_t |; the positions to
                 write are drawn uniformly from the masked ones; x_0 is drawn there and never changes again.
  purity         Algorithm 2: the same, but the positions are drawn without replacement with probability
                 proportional to their purity (Eq. 8), by Gumbel-top-k on log purity.

Not followed: the released code of the paper walks the 100 training timesteps with a fixed table of tokens per
step and normalises the purity by its maximum before Eq. 11; here the timestep comes from the mask share
(Algorithm 1, line 10) and Eq. 11 uses the purity itself.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from training.model.sampling.config import SampleConfig
from training.model.sampling.logits import (
    gumbel_like,
    purity,
    purity_sharpen,
    sample_tokens,
    top_k_filter,
    top_p_filter,
)
from training.model.sampling.progressive import GuidedForward, SampleResult, Scorer, eval_mode, plan_steps, rerank
from training.model.seeded_random import repeat_rows
from training.model.states import GENERATE, KEEP, REVISE
from training.model.vq_diffusion.posterior import LOG_FLOOR, reverse_step


def reverse_timesteps(T: int, steps: int) -> list[int]:
    """The ``steps`` + 1 timesteps T = t_0 > ... > t_steps = 0 of a reverse chain (evenly spaced)."""
    if not 1 <= steps <= T:
        raise ValueError(f"sample.steps ({steps}) must be in 1..{T} (model.diffusion.timesteps) for the reverse chain")
    return [round(T * (steps - i) / steps) for i in range(steps + 1)]


def x0_log_probs(logits: Tensor, cfg: SampleConfig) -> Tensor:
    """log p(x_0 | x_t) [B, K, L] for the reverse chain from guided logits [B, L, K]: Eq. 11, temperature (0: the
    argmax, as a floored one-hot), top-k, top-p."""
    x = logits.float()
    if cfg.purity_prior > 0:
        x = purity_sharpen(x, cfg.purity_prior)
    if cfg.temperature == 0:
        best = x.argmax(-1, keepdim=True)
        x = torch.full_like(x, LOG_FLOOR).scatter_(-1, best, 0.0)
    else:
        x = top_p_filter(top_k_filter(x / cfg.temperature, cfg.top_k), cfg.top_p)
    return x.log_softmax(-1).clamp(min=LOG_FLOOR).transpose(1, 2)


def _states(before: Tensor, after: Tensor, mask_id: int) -> Tensor:
    """GENERATE where a [MASK] was written, REVISE where a written token changed, KEEP elsewhere."""
    changed = before != after
    return torch.where(changed & (before == mask_id), GENERATE, torch.where(changed, REVISE, KEEP))


@torch.no_grad()
def vq_diffusion_sample(
    model,
    text: Tensor,
    text_mask: Tensor,
    cfg: SampleConfig,
    generator: torch.Generator,
    scorer: Optional[Scorer] = None,
    captions: Optional[list] = None,
    clusters: Optional[Tensor] = None,
) -> SampleResult:
    """Sample Long[B, L] tokens with ``cfg.diffusion_strategy`` (module doc); steps / states as the progressive
    sampler records them; n_candidates / scorer / clusters (not with the reverse chain) as there."""
    strategy = cfg.diffusion_strategy
    if cfg.cluster_sampling and (clusters is None or strategy == "reverse"):
        raise ValueError(
            "cluster_sampling needs clusters=kmeans_codebook(...) and a token-writing strategy "
            "(sample.diffusion_strategy fewer_tokens or purity), not the reverse chain"
        )
    n = cfg.n_candidates
    if n > 1 and scorer is None:
        raise ValueError("n_candidates > 1 needs a scorer(tokens, captions) -> scores")
    if n > 1:
        text, text_mask = text.repeat_interleave(n, 0), text_mask.repeat_interleave(n, 0)
        generator = repeat_rows(generator, n)  # a candidate's own draws with rng: per_prompt
    B, L, mask_id, schedule = text.shape[0], model.seq_len, model.mask_id, model.schedule
    forward = GuidedForward(model, text, text_mask, cfg)
    tokens = torch.full((B, L), mask_id, dtype=torch.long, device=text.device)
    steps, states = [], []
    with eval_mode(model):
        if strategy == "reverse":
            times = reverse_timesteps(schedule.T, cfg.steps)
            for t, s in zip(times[:-1], times[1:]):
                logits, _ = forward(tokens, t=torch.full((B,), t, device=text.device))
                new = reverse_step(x0_log_probs(logits, cfg), tokens, t, schedule, generator, s=s)
                steps.append(new)
                states.append(_states(tokens, new, mask_id))
                tokens = new
        else:
            tok_kw = dict(
                temperature=cfg.temperature,
                top_k=cfg.top_k,
                top_p=cfg.top_p,
                purity_prior=cfg.purity_prior,
                clusters=clusters if cfg.cluster_sampling else None,
                n_clusters=cfg.n_clusters,
            )
            for n_t in plan_steps(L, cfg.steps, cfg.schedule):
                masked = tokens == mask_id
                t = schedule.timestep_for_mask_ratio(masked.float().mean(1))
                logits, _ = forward(tokens, t=t)
                score = gumbel_like(logits[..., 0].float(), generator)  # Algorithm 1: uniform among the masked
                if strategy == "purity":  # Algorithm 2: importance sampling by purity (Eq. 8)
                    score = score + purity(logits.float()).log()
                idx = score.masked_fill(~masked, float("-inf")).topk(n_t, dim=1).indices
                sel = logits.gather(1, idx[..., None].expand(-1, -1, logits.shape[-1]))
                new = tokens.scatter(1, idx, sample_tokens(sel, generator, **tok_kw))
                steps.append(new)
                states.append(_states(tokens, new, mask_id))
                tokens = new
    res = SampleResult(tokens, steps if cfg.record_steps else [], states if cfg.record_steps else [])
    return rerank(res, n, scorer, captions) if n > 1 else res
