"""Candidate reranking (Emage 4, sample.n_candidates): of the n samples of a prompt, the one with the HIGHEST
score is kept, with its steps and states."""

from collections import namedtuple

import torch
from torch import nn

from training.model.sampling import SampleConfig, progressive_sample

Out = namedtuple("Out", "token_logits state_logits hidden")
L, K, n = 8, 4, 6


class UniformModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.seq_len, self.codebook_size, self.mask_id = L, K, K

    def forward(self, tokens, text, text_mask, drop_text=None, attn_bias_text=0.0):
        B = tokens.shape[0]
        return Out(torch.zeros(B, L, K), torch.zeros(B, L, 3), None)


def test_the_best_candidate_of_each_prompt_is_kept():
    seen = {}

    def scorer(tokens, captions):
        seen["tokens"] = tokens.clone()
        return (tokens == 0).sum(1).float() + 0.01 * tokens.sum(1).float()  # ties broken

    cfg = SampleConfig(steps=2, n_candidates=n)
    res = progressive_sample(UniformModel(), torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.bool), cfg,
                             torch.Generator().manual_seed(0), scorer=scorer)  # fmt: skip
    cands = seen["tokens"].view(2, n, L)
    scores = scorer(seen["tokens"], None).view(2, n)
    assert (scores.max(1).values > scores.min(1).values).all()  # the candidates differ
    best = scores.argmax(1)
    assert torch.equal(res.tokens, cands[torch.arange(2), best])
    assert torch.allclose(res.scores, scores.max(1).values)
    assert torch.equal(res.steps[-1], res.tokens)
