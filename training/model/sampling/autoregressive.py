"""Autoregressive sampler (PDM Eq. 3 baseline): L sequential steps of one image token each, raster order,
with the `ARModel` KV cache (`encode_text` once, `init_cache`, then `step`). Guidance runs the conditional
and the null-text rows as one 2B batch per step; temperature / top-k / cluster sampling as in `logits.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor

from training.model.sampling.config import SampleConfig
from training.model.sampling.logits import cfg_mix, sample_tokens
from training.model.sampling.progressive import SampleResult, Scorer, eval_mode, rerank
from training.model.seeded_random import repeat_rows
from training.model.states import GENERATE, KEEP


class PrefixSteps(Sequence):
    """The L per-step maps of an autoregressive run, built on access from the final tokens (no copies in the
    decoding loop): map i has tokens[:, :i+1] written and `fill` after; with states=True, GENERATE at i."""

    def __init__(self, tokens: Tensor, fill: int, states: bool = False):
        self.tokens, self.fill, self.states = tokens, fill, states

    def __len__(self) -> int:
        return self.tokens.shape[1]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]  # negative indices, IndexError past the end
        pos = torch.arange(len(self), device=self.tokens.device)
        if self.states:
            return torch.where(pos == i, GENERATE, KEEP).expand_as(self.tokens)
        return torch.where(pos <= i, self.tokens, self.fill)


@torch.no_grad()
def autoregressive_sample(
    ar_model,
    text: Tensor,
    text_mask: Tensor,
    cfg: SampleConfig,
    generator: torch.Generator,
    scorer: Optional[Scorer] = None,
    captions: Optional[list] = None,
    clusters: Optional[Tensor] = None,
) -> SampleResult:
    """Sample Long[B, L] tokens one position per model call. `steps[i]` is the map after position i is written
    (codebook_size, the BOS id, where not written yet); `states[i]` marks position i as GENERATE; both are
    `PrefixSteps` sequences computed on access.
    The purity prior and the state head do not apply; n_candidates / scorer / clusters as in the
    progressive sampler."""
    if cfg.cluster_sampling and clusters is None:
        raise ValueError("cluster_sampling needs clusters=kmeans_codebook(codebook_vectors, cfg.n_clusters)")
    n = cfg.n_candidates
    if n > 1 and scorer is None:
        raise ValueError("n_candidates > 1 needs a scorer(tokens, captions) -> scores")
    if n > 1:
        text, text_mask = text.repeat_interleave(n, 0), text_mask.repeat_interleave(n, 0)
        generator = repeat_rows(generator, n)  # a candidate's own draws with rng: per_prompt
    B, L, s = text.shape[0], ar_model.seq_len, cfg.guidance_scale
    guided = s != 1.0
    drop = None
    if guided:  # rows B..2B-1: the learnable null text (Improved VQ-Diffusion 3.1)
        text, text_mask = torch.cat([text, text]), torch.cat([text_mask, text_mask])
        drop = torch.arange(2 * B, device=text.device) >= B
    tok_kw = dict(
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        n_clusters=cfg.n_clusters,
        clusters=clusters if cfg.cluster_sampling else None,
    )
    tokens = torch.full((B, L), ar_model.codebook_size, dtype=torch.long, device=text.device)
    prev = None
    with eval_mode(ar_model):
        text_kv = ar_model.encode_text(text, text_mask, drop)
        cache = ar_model.init_cache(text.shape[0], device=text.device)
        for i in range(L):
            logits = ar_model.step(prev, cache, text_kv, attn_bias_text=cfg.attn_bias_text)  # [B or 2B, K]
            if guided:
                logits = cfg_mix(logits[:B], logits[B:], s)
            tok = sample_tokens(logits, generator, **tok_kw)
            tokens[:, i] = tok
            prev = torch.cat([tok, tok]) if guided else tok
    res = SampleResult(tokens, [], [])
    if n > 1:
        res = rerank(res, n, scorer, captions)
    if cfg.record_steps:
        K = ar_model.codebook_size
        res.steps, res.states = PrefixSteps(res.tokens, K), PrefixSteps(res.tokens, K, states=True)
    return res
