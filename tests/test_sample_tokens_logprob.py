"""The log-probability ``sample_tokens`` returns with each draw (the MaskGIT confidence order ranks by it):
under the tempered, top-k-filtered distribution it drew from; with cluster sampling, under the tempered
distribution over all codes."""

from __future__ import annotations

import torch

from training.model.sampling.logits import kmeans_codebook, sample_tokens


def _logits(n: int = 64, k: int = 12) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(0)) * 3


def test_logprob_is_the_drawn_tokens_under_the_tempered_top_k_distribution():
    x = _logits()
    tok, logp = sample_tokens(x, torch.Generator().manual_seed(1), temperature=0.5, top_k=3, return_logprob=True)
    kept = (x / 0.5).masked_fill(x < x.topk(3, -1).values[:, -1:], float("-inf"))
    assert torch.allclose(logp, kept.log_softmax(-1).gather(1, tok[:, None])[:, 0])
    assert bool((x.gather(1, tok[:, None]) >= x.topk(3, -1).values[:, -1:]).all())  # drawn among the top 3


def test_logprob_with_clusters_is_under_all_codes_not_the_drawn_cluster():
    x = _logits()
    clusters = kmeans_codebook(torch.randn(12, 4, generator=torch.Generator().manual_seed(2)), 4)
    g = torch.Generator().manual_seed(1)
    tok, logp = sample_tokens(x, g, temperature=2.0, top_k=2, clusters=clusters, n_clusters=4, return_logprob=True)
    assert torch.allclose(logp, (x / 2.0).log_softmax(-1).gather(1, tok[:, None])[:, 0])
    inside = (x / 2.0).masked_fill(clusters[None] != clusters[tok][:, None], float("-inf"))
    assert not torch.allclose(logp, inside.log_softmax(-1).gather(1, tok[:, None])[:, 0])
