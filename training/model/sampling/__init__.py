"""Samplers: progressive (PDM Eq. 4), autoregressive (KV cache), VQ-Diffusion (reverse chain, Improved
VQ-Diffusion's high-quality strategy), their config and logit processing.

from training.model.sampling import SampleConfig, generate
res = generate(model, text, text_mask, SampleConfig(steps=16))   # res.tokens Long[B, L]
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from training.model.sampling.autoregressive import PrefixSteps, autoregressive_sample
from training.model.sampling.config import SampleConfig
from training.model.sampling.diffusion import vq_diffusion_sample
from training.model.sampling.logits import (
    cfg_mix,
    cluster_sample,
    kmeans_codebook,
    purity,
    purity_sharpen,
    sample_tokens,
    top_k_filter,
    top_p_filter,
)
from training.model.sampling.progressive import (
    GuidedForward,
    SampleResult,
    plan_steps,
    progressive_sample,
    progressive_step,
)
from training.model.seeded_random import Generator, RowGenerators, sampling_generator

__all__ = [
    "SampleConfig",
    "SampleResult",
    "PrefixSteps",
    "generate",
    "progressive_sample",
    "progressive_step",
    "autoregressive_sample",
    "vq_diffusion_sample",
    "plan_steps",
    "GuidedForward",
    "cfg_mix",
    "cluster_sample",
    "kmeans_codebook",
    "purity",
    "purity_sharpen",
    "sample_tokens",
    "top_k_filter",
    "top_p_filter",
]


def generate(
    model, text: Tensor, text_mask: Tensor, cfg: SampleConfig, generator: Optional[Generator] = None, **kwargs
) -> SampleResult:
    """Sample a whole set of prompts in chunks of cfg.batch_size with the sampler named by cfg.sampler.
    The generator defaults to one seeded with cfg.seed (on the text's device), or with ``cfg.rng: per_prompt``
    to one per prompt seeded from (cfg.seed, its row): pass ``RowGenerators(prompt_seeds(seed, places))`` to
    seed them from the prompts' places in a longer list. Extra keyword arguments (scorer, clusters, and order
    for the progressive sampler; captions is chunked too) go to the sampler."""
    if generator is None:
        generator = sampling_generator(cfg.rng, cfg.seed, range(text.shape[0]), text.device)
    if isinstance(generator, RowGenerators) and len(generator) != text.shape[0]:
        raise ValueError(f"{len(generator)} row generators for {text.shape[0]} prompts")
    captions = kwargs.pop("captions", None)
    order = kwargs.pop("order", None)
    parts = []
    for i in range(0, text.shape[0], cfg.batch_size):
        sl = slice(i, i + cfg.batch_size)
        caps = captions[sl] if captions is not None else None
        g = generator[sl] if isinstance(generator, RowGenerators) else generator
        if cfg.sampler == "autoregressive":
            parts.append(autoregressive_sample(model, text[sl], text_mask[sl], cfg, g, captions=caps, **kwargs))
        elif cfg.sampler == "vq_diffusion":
            parts.append(vq_diffusion_sample(model, text[sl], text_mask[sl], cfg, g, captions=caps, **kwargs))
        else:
            o = order[sl] if isinstance(order, Tensor) and order.dim() == 2 else order  # per-prompt order
            parts.append(progressive_sample(model, text[sl], text_mask[sl], cfg, g, order=o, captions=caps, **kwargs))
    if len(parts) == 1:
        return parts[0]
    tokens = torch.cat([p.tokens for p in parts])
    scores = torch.cat([p.scores for p in parts]) if parts[0].scores is not None else None
    if isinstance(parts[0].steps, PrefixSteps):  # autoregressive: rebuild the lazy maps
        K = parts[0].steps.fill
        return SampleResult(tokens, PrefixSteps(tokens, K), PrefixSteps(tokens, K, states=True), scores)
    return SampleResult(
        tokens,
        [torch.cat(s) for s in zip(*[p.steps for p in parts])],
        [torch.cat(s) for s in zip(*[p.states for p in parts])],
        scores,
    )
