"""Token-distribution processing shared by the samplers: classifier-free guidance mixing, purity prior,
temperature, top-k, top-p (nucleus), cluster sampling (k-means over codebook vectors) and Gumbel-max sampling.

All functions work on logits of shape [..., K] and are batched: no Python loops over positions.
Random numbers come only from the `torch.Generator` passed in, so a seed + batch gives one result.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from training.model.seeded_random import uniform


def gumbel_like(x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    """Standard Gumbel(0, 1) noise with the shape, dtype and device of `x`, drawn on the generator's device
    (the trainer passes a CPU generator whatever the model's device)."""
    u = uniform(x.shape, generator, x.device)
    u.clamp_(min=torch.finfo(torch.float32).tiny)  # uniform_ may return 0 -> -inf noise
    return u.log_().neg_().log_().neg_().to(x.dtype)


def cfg_mix(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: uncond + s * (cond - uncond).

    s = 0 gives the unconditional logits, s = 1 the conditional ones. Improved VQ-Diffusion Eq. 7 writes the
    same mix with (s' + 1) = s on log-probabilities; log-softmax only shifts each row by a constant, so mixing
    raw logits gives the same distribution."""
    return torch.lerp(uncond, cond, scale)


def purity(logits: Tensor) -> Tensor:
    """Purity of Improved VQ-Diffusion Eq. 8: the largest token probability at each position. [...]"""
    return (logits.max(-1).values - logits.logsumexp(-1)).exp()


def purity_sharpen(logits: Tensor, r: float) -> Tensor:
    """Improved VQ-Diffusion Eq. 11: softmax((1 + purity * r) * log p) sharpens confident positions."""
    logp = logits.float().log_softmax(-1)
    pur = logp.max(-1, keepdim=True).values.exp()
    return logp * (1.0 + r * pur)


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Set all but the k largest logits of each row to -inf (k <= 0 or k >= K: unchanged)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filtering (Holtzman et al. 2020): keep the fewest most probable entries of each row whose
    probability sums to at least ``p`` (always the most probable one), set the rest to -inf (p >= 1: unchanged).
    An entry tied with the last one kept may be kept or dropped."""
    if p >= 1.0:
        return logits
    ranked, order = logits.sort(-1, descending=True)
    probs = ranked.float().softmax(-1)
    drop = probs.cumsum(-1) - probs >= p  # the mass of the entries ranked above it already reaches p
    drop[..., 0] = False
    return logits.scatter(-1, order, ranked.masked_fill(drop, float("-inf")))


@torch.no_grad()
def kmeans_codebook(
    codebook: Tensor, n_clusters: int, generator: Optional[torch.Generator] = None, iters: int = 20
) -> Tensor:
    """Lloyd's k-means over codebook vectors [K, D] (CogView2 4.1). Returns the cluster id of each code, Long[K].

    Initial centres are `n_clusters` distinct codes drawn with `generator`; an empty cluster keeps its centre."""
    K = codebook.shape[0]
    if not 1 <= n_clusters <= K:
        raise ValueError(f"n_clusters must be in [1, {K}] (codebook size), got {n_clusters}")
    x = codebook.float()
    gdev = generator.device if generator is not None else "cpu"
    perm = torch.randperm(K, generator=generator, device=gdev).to(x.device)
    centres = x[perm[:n_clusters]].clone()
    assign = torch.zeros(K, dtype=torch.long, device=x.device)
    for it in range(iters):
        new = torch.cdist(x, centres).argmin(1)
        if it > 0 and torch.equal(new, assign):
            break
        assign = new
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=n_clusters).unsqueeze(1)
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    return assign


def cluster_sample(
    logits: Tensor,
    clusters: Tensor,
    n_clusters: int,
    top_k: int,
    generator: Optional[torch.Generator],
    top_p: float = 1.0,
) -> Tensor:
    """CogView2 4.1: pick a cluster by its summed probability (top-k, then top-p, over clusters), then a token
    in it.

    logits [N, K] (temperature already applied), clusters Long[K] -> Long[N]."""
    probs = logits.float().softmax(-1)
    mass = probs.new_zeros(probs.shape[0], n_clusters).index_add_(1, clusters, probs)
    cl_logits = top_p_filter(top_k_filter(mass.log(), top_k), top_p)
    chosen = (cl_logits + gumbel_like(cl_logits, generator)).argmax(-1)  # [N]
    inside = clusters.unsqueeze(0) == chosen.unsqueeze(1)  # [N, K]
    tok_logits = logits.float().masked_fill(~inside, float("-inf"))
    return (tok_logits + gumbel_like(tok_logits, generator)).argmax(-1)


def sample_tokens(
    logits: Tensor,
    generator: Optional[torch.Generator],
    temperature: float = 1.0,
    top_k: int = 0,
    purity_prior: float = 0.0,
    top_p: float = 1.0,
    clusters: Optional[Tensor] = None,
    n_clusters: int = 0,
    return_logprob: bool = False,
):
    """Draw one token per row from logits [..., K] -> Long[...] (and, optionally, its log-probability under
    the distribution it was drawn from, used by the MaskGIT confidence order; with clusters, under the tempered
    distribution over all K codes, not the one restricted to the drawn cluster: a small cluster would
    otherwise make any draw in it look certain).

    Pipeline: purity sharpening (Eq. 11, if purity_prior > 0) -> / temperature -> top-k -> top-p (or both over
    clusters, with cluster sampling) -> Gumbel-max draw (an exact categorical sample). temperature == 0 means
    argmax (clusters ignored). The temperature divides fresh logits on every call, so it never compounds across
    steps."""
    shape = logits.shape[:-1]
    x = logits.reshape(-1, logits.shape[-1]).float()
    if purity_prior > 0:
        x = purity_sharpen(x, purity_prior)
    if temperature == 0:
        tok = x.argmax(-1)
    else:
        x = x / temperature
        if clusters is not None:
            tok = cluster_sample(x, clusters, n_clusters, top_k, generator, top_p)
        else:
            x = top_p_filter(top_k_filter(x, top_k), top_p)
            tok = (x + gumbel_like(x, generator)).argmax(-1)
    tok = tok.reshape(shape)
    if not return_logprob:
        return tok
    logp = x.log_softmax(-1).gather(-1, tok.reshape(-1, 1)).reshape(shape)
    return tok, logp
