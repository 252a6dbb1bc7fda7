"""Emage's two-pass loss (Algorithm 2) position by position, with a fake PDM whose logits are a fixed
table: what the second pass sees (the first pass's predictions, re-masked), which positions the loss reads,
the state labels, the low-confidence re-masking, ``keep_visible_truth`` and the mask ratio r ~ U(0, 1]."""

from collections import namedtuple

import torch
import torch.nn.functional as F
from torch import nn

from training.model.states import GENERATE, KEEP, REVISE
from training.model.two_pass_loss import emage_loss

Out = namedtuple("Out", "token_logits state_logits hidden")
L, K = 8, 6


class TableModel(nn.Module):
    """Token logits: a fixed [L, K] table (the same for every input); state logits: a learnable [L, 3]
    table. Records each call's input and output."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.mask_id = K
        self.tok = nn.Parameter(torch.randn(L, K, generator=g) * 3)
        self.state = nn.Parameter(torch.randn(L, 3, generator=g))
        self.calls = []

    def sample_drop(self, batch, device):
        return None

    def forward(self, tokens, text, text_mask, drop_text=None):
        B = tokens.shape[0]
        tl = self.tok.expand(B, L, K) * 1.0
        sl = self.state.expand(B, L, 3) * 1.0
        if tl.requires_grad:
            tl.retain_grad()
        self.calls.append((tokens.clone(), tl, sl))
        return Out(tl, sl, None)


def _data(B, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, K, (B, L), generator=g), torch.zeros(B, 2, 4), torch.ones(B, 2, dtype=torch.bool)


def test_second_pass_sees_the_first_pass_predictions_and_the_loss_reads_every_position():
    model = TableModel()
    tokens, text, tmask = _data(16)
    loss, m = emage_loss(model, tokens, text, tmask, state_weight=1.0, generator=torch.Generator().manual_seed(0))
    (y_mask, _, _), (y_obs, logits2, state2) = model.calls
    mask2 = y_obs == K
    y_pred = model.tok.detach().argmax(-1).expand(16, L)  # the first pass's argmax
    assert torch.equal(y_obs[~mask2], y_pred[~mask2])  # Y_obs = Y_pred with [mask]s (Algorithm 2, line 7)
    assert (y_obs != tokens)[~mask2].any()  # ... so it holds wrong tokens too
    # line 9: the loss is over ALL positions against the truth
    token_ref = F.cross_entropy(logits2.detach().reshape(-1, K), tokens.reshape(-1))
    assert torch.allclose(m["token_loss"], token_ref, atol=1e-5)
    wrong = ~mask2 & (y_obs != tokens)
    state_t = torch.full_like(tokens, KEEP).masked_fill(mask2, GENERATE).masked_fill(wrong, REVISE)
    state_ref = F.cross_entropy(state2.detach().reshape(-1, 3), state_t.reshape(-1))
    assert torch.allclose(m["state_loss"], state_ref, atol=1e-5)
    assert torch.allclose(loss, token_ref + state_ref, atol=1e-5)
    loss.backward()
    assert (logits2.grad.abs().sum(-1) > 0).all()  # every position of the second pass is scored
    assert torch.allclose(m["wrong_input_frac"], wrong.float().mean())


def test_low_confidence_remask_masks_the_least_confident_first_pass_positions():
    model = TableModel(seed=2)
    tokens, text, tmask = _data(32)
    emage_loss(model, tokens, text, tmask, remask="low_confidence", generator=torch.Generator().manual_seed(0))
    y_obs = model.calls[1][0]
    conf = model.tok.detach().log_softmax(-1).max(-1).values.expand(32, L)
    mask2 = y_obs == K
    for b in range(32):
        if mask2[b].all():
            continue
        assert conf[b][mask2[b]].max() <= conf[b][~mask2[b]].min()


def test_keep_visible_truth_keeps_the_true_tokens_the_first_pass_saw():
    model = TableModel(seed=3)
    tokens, text, tmask = _data(32)
    emage_loss(model, tokens, text, tmask, keep_visible_truth=True, generator=torch.Generator().manual_seed(0))
    (y_mask, _, _), (y_obs, _, _) = model.calls
    seen = (y_mask != K) & (y_obs != K)  # visible in the first pass, not re-masked
    assert seen.any() and torch.equal(y_obs[seen], tokens[seen])
    new = (y_mask == K) & (y_obs != K)  # predicted by the first pass
    assert torch.equal(y_obs[new], model.tok.detach().argmax(-1).expand(32, L)[new])


def test_mask_ratios_are_uniform_on_0_1():
    """r ~ U(0, 1], k = max(1, floor(r L)): k is 1..L-1 (L only when r = 1 exactly), each about 1/L of the
    time (1 twice as often); mean masked share (1 + sum_{j<L} j) / L^2 = 29 / 64 for both passes."""
    model = TableModel()
    tokens, text, tmask = _data(2000)
    _, m = emage_loss(model, tokens, text, tmask, generator=torch.Generator().manual_seed(0))
    counts = (model.calls[0][0] == K).sum(1)
    assert counts.min() == 1 and counts.max() == L - 1
    freq = torch.bincount(counts, minlength=L).float() / 2000
    assert (freq[2:L] - 1 / L).abs().max() < 0.03 and abs(freq[1] - 2 / L) < 0.03, freq
    for frac in (m["mask1_frac"], m["mask2_frac"]):
        assert abs(frac.item() - 29 / 64) < 0.03, frac
