"""Sampling the super-resolution model: direct super-resolution (CogView2 Eq. 3), then the LoPAR refinement
(Eq. 4-6) of the iterative super-resolution module.

    direct   the high-res grid all [MASK]: every token drawn independently from p(im1_i | im0, text)  (Eq. 3)
    LoPAR    ``mask_ratio`` of the tokens re-masked at random (75%: the 25% kept are the context); then for
             k = 0 .. 2 sigma - 2 the re-masked tokens of iteration k (``lopar_schedule``) are drawn from one
             forward that sees the context, the low-res grid and every token written at iterations < k (Eq. 6).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from training.model.sampling.logits import sample_tokens
from training.model.sampling.progressive import eval_mode
from training.model.seeded_random import Generator, RowGenerators, uniform
from training.model.super_resolution.config import SRSampleConfig
from training.model.super_resolution.lopar import lopar_iterations, lopar_schedule


@dataclass
class SRResult:
    """tokens Long[B, L_hi] (final); direct: the direct SR output; remasked Bool[B, L_hi]: the positions LoPAR
    regenerated; steps: the grid after each LoPAR iteration."""

    tokens: Tensor
    direct: Tensor
    remasked: Optional[Tensor] = None
    steps: list = field(default_factory=list)


def _draw(logits: Tensor, where: Tensor, cfg: SRSampleConfig, generator: Optional[Generator]) -> Tensor:
    """Tokens for the positions ``where`` (Bool[B, L]) of logits [B, L, K], in ``masked_scatter`` order. With a
    generator per row every position is drawn and the wanted ones kept: rows want different counts."""
    kw = dict(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)
    if isinstance(generator, RowGenerators):
        return sample_tokens(logits, generator, **kw)[where]
    return sample_tokens(logits[where], generator, **kw)


@torch.no_grad()
def direct_super_resolution(model, lo, text, text_mask, cfg: SRSampleConfig, generator=None) -> Tensor:
    """Eq. 3: one forward over an all-[MASK] high-res grid, each token drawn independently. Long[B, L_hi]."""
    hi = torch.full((lo.shape[0], model.n_hi), model.mask_id, dtype=torch.long, device=lo.device)
    logits = model(lo, hi, text, text_mask)
    everywhere = torch.ones_like(hi, dtype=torch.bool)
    return hi.masked_scatter(everywhere, _draw(logits, everywhere, cfg, generator))


@torch.no_grad()
def lopar_refine(model, lo, hi, text, text_mask, cfg: SRSampleConfig, generator=None) -> SRResult:
    """Re-mask ``cfg.mask_ratio`` of ``hi`` and regenerate it in the 2 sigma - 1 iterations of Eq. 6."""
    B, L = hi.shape
    n = round(cfg.mask_ratio * L)
    order = uniform((B, L), generator, hi.device).argsort(1)
    remasked = torch.zeros_like(hi, dtype=torch.bool).scatter_(1, order[:, :n], True)
    it = lopar_schedule(model.cfg.hi_grid, cfg.lopar_window).to(hi.device)
    cur = hi.masked_fill(remasked, model.mask_id)
    steps = []
    for k in range(lopar_iterations(cfg.lopar_window)):
        now = remasked & (it == k)[None]
        if now.any():
            logits = model(lo, cur, text, text_mask)
            cur = cur.masked_scatter(now, _draw(logits, now, cfg, generator))
        steps.append(cur)
    return SRResult(cur, hi, remasked, steps)


@torch.no_grad()
def super_resolve(model, lo, text, text_mask, cfg: SRSampleConfig, generator=None) -> SRResult:
    """Direct SR, then (``cfg.refine``) LoPAR. lo Long[B, L_lo] -> SRResult with Long[B, L_hi] tokens."""
    with eval_mode(model):
        direct = direct_super_resolution(model, lo, text, text_mask, cfg, generator)
        if not cfg.refine:
            return SRResult(direct, direct)
        return lopar_refine(model, lo, direct, text, text_mask, cfg, generator)
