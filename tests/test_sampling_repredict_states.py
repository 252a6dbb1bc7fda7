"""Emage Algorithm 3 (sample.repredict): a written token that takes the same prediction again is KEPT; only
the positions whose token changed are marked REVISE."""

from collections import namedtuple

import torch
from torch import nn

from training.model.sampling import SampleConfig, progressive_sample
from training.model.states import GENERATE, KEEP, REVISE

Out = namedtuple("Out", "token_logits state_logits hidden")
L, K, T = 8, 5, 4


class StableModel(nn.Module):
    """Predicts code (position % 2) at every position on every call, except code 4 at position 0 from the
    third call on: one written token changes its prediction once."""

    def __init__(self):
        super().__init__()
        self.seq_len, self.codebook_size, self.mask_id = L, K, K
        self.calls = 0

    def forward(self, tokens, text, text_mask, drop_text=None, attn_bias_text=0.0):
        self.calls += 1
        B = tokens.shape[0]
        tl = torch.full((B, L, K), -5.0)
        tl[:, torch.arange(L), torch.arange(L) % 2] = 5.0
        if self.calls >= 3:
            tl[:, 0] = -5.0
            tl[:, 0, 4] = 5.0
        return Out(tl, torch.zeros(B, L, 3), None)


def test_repredict_marks_revise_only_where_the_token_changed():
    cfg = SampleConfig(steps=T, order="raster", temperature=0.0, repredict=True, revise=False)
    res = progressive_sample(StableModel(), torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.bool), cfg,
                             torch.Generator().manual_seed(0))  # fmt: skip
    # raster: positions 0,1 at step 0, 2,3 at step 1, ...; position 0 changes to code 4 at step 2 (third call)
    revised = [(st == REVISE).nonzero()[:, 1].unique().tolist() for st in res.states]
    assert revised == [[], [], [0], []]
    assert all(((st == GENERATE).sum(1) == 2).all() for st in res.states)
    assert (res.states[3][:, :6] == KEEP).all()
    assert res.tokens[0].tolist() == [4, 1, 0, 1, 0, 1, 0, 1]
