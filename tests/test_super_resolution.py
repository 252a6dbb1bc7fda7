"""CogView2's super-resolution pieces: the local attention windows (section 4.2: RF 9 x 9; cross-resolution),
the LoPAR schedule (Eq. 6) and the refinement that follows it, the masks of the training step, and the model's
attention really being local."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from tests.trainer_utils import one_thread  # noqa: F401  (the shared autouse fixture)
from training.model.super_resolution.config import SRModelConfig, SRSampleConfig
from training.model.super_resolution.local_attention import (
    cross_resolution_mask,
    local_window_mask,
    sr_attention_mask,
)
from training.model.super_resolution.lopar import lopar_iterations, lopar_schedule
from training.model.super_resolution.model import SRTransformer, parent_places
from training.model.super_resolution.sampling import lopar_refine
from training.model.super_resolution.train_step import sr_masks


def test_local_window_is_the_papers_9x9_receptive_field():
    side, window = 16, 9
    mask = local_window_mask(side, window)
    for (r1, c1), (r2, c2) in itertools.product(itertools.product(range(side), repeat=2), repeat=2):
        want = abs(r1 - r2) <= 4 and abs(c1 - c2) <= 4  # the 9 x 9 square centred on the query, cut at borders
        assert bool(mask[r1 * side + c1, r2 * side + c2]) == want
    counts = mask.sum(1).view(side, side)
    assert counts[8, 8] == 81 and counts[0, 0] == 25 and counts[0, 8] == 5 * 9


def test_cross_resolution_window_is_centred_on_the_high_res_tokens_place():
    hi, lo, window = 16, 8, 5
    mask = cross_resolution_mask(hi, lo, window)
    for r, c, lr, lc in itertools.product(range(hi), range(hi), range(lo), range(lo)):
        want = abs(lr - r // 2) <= 2 and abs(lc - c // 2) <= 2
        assert bool(mask[r * hi + c, lr * lo + lc]) == want
    full = sr_attention_mask(lo, hi, 9, window)
    n_lo = lo * lo
    assert full[:n_lo, :n_lo].all() and not full[:n_lo, n_lo:].any()  # the low-res part never sees the decoder
    assert torch.equal(full[n_lo:, :n_lo], mask) and torch.equal(full[n_lo:, n_lo:], local_window_mask(hi, 9))


def test_each_high_res_token_reads_its_parent_code_at_its_place():
    """8x8 -> 16x16: high-res (r, c) sits on low-res (r // 2, c // 2), at place (r % 2, c % 2) of that parent; the
    model has one input row per (parent code, place)."""
    parent, sub, n_sub = parent_places(8, 16)
    assert n_sub == 4
    for r, c in itertools.product(range(16), repeat=2):
        assert (int(parent[r * 16 + c]), int(sub[r * 16 + c])) == ((r // 2) * 8 + c // 2, (r % 2) * 2 + c % 2)
    model = SRTransformer(SRModelConfig(text_dim=4, dim=16, layers=1, heads=2, ffn_dim=32))
    assert model.child_emb.num_embeddings == 256 * 4


def test_the_model_attends_only_inside_its_windows():
    """One layer: changing a high-res token outside position p's window leaves p's logits alone; inside, not."""
    cfg = SRModelConfig(text_dim=4, dim=16, layers=1, heads=2, ffn_dim=32, window=5, cross_window=3)
    torch.manual_seed(0)
    model = SRTransformer(cfg).eval()
    lo, hi = torch.randint(0, 256, (1, 64)), torch.randint(0, 256, (1, 256))
    text, mask = torch.randn(1, 2, 4), torch.ones(1, 2, dtype=torch.bool)
    p = 5 * 16 + 5  # (5, 5): its window is rows and columns 3..7, the low-res tokens around (2, 2)

    def logits_at_p(lo_, hi_):
        with torch.no_grad():
            return model(lo_, hi_, text, mask)[0, p]

    base = logits_at_p(lo, hi)
    for r, c, inside in [(7, 7, True), (8, 5, False), (5, 2, False), (3, 3, True)]:
        other = hi.clone()
        other[0, r * 16 + c] = (other[0, r * 16 + c] + 1) % 256
        assert torch.allclose(logits_at_p(lo, other), base) != inside, (r, c)
    for r, c, inside in [(3, 3, True), (0, 0, False), (4, 1, False)]:
        other = lo.clone()
        other[0, r * 8 + c] = (other[0, r * 8 + c] + 1) % 256
        assert torch.allclose(logits_at_p(other, hi), base) != inside, ("lo", r, c)


def test_lopar_schedule_is_eq6_diagonal_order():
    side, sigma = 16, 4
    it = lopar_schedule(side, sigma).view(side, side)
    assert lopar_iterations(sigma) == 7 and it.min() == 0 and it.max() == 6
    for r, c in itertools.product(range(side), repeat=2):
        assert it[r, c] == r % sigma + c % sigma
    # tokens written together are never direct (vertical or horizontal) neighbours
    assert not (it[1:] == it[:-1]).any() and not (it[:, 1:] == it[:, :-1]).any()
    # every iteration writes the same number of tokens in every sigma x sigma block
    blocks = it.view(4, sigma, 4, sigma).permute(0, 2, 1, 3).reshape(16, -1)
    for k in range(7):
        assert ((blocks == k).sum(1) == min(k, 6 - k) + 1).all()


class Recorder(nn.Module):
    """Fake SR model: logits favour code 1 + iteration count; records each call's high-res input."""

    def __init__(self, side=8, K=50):
        super().__init__()
        self.cfg = SRModelConfig(lo_grid=4, hi_grid=side, hi_codebook_size=K)
        self.n_hi, self.mask_id, self.K, self.calls = side * side, K, K, []

    def forward(self, lo, hi, text, text_mask, drop_text=None):
        self.calls.append(hi.clone())
        logits = torch.full((*hi.shape, self.K), -30.0)
        logits[..., len(self.calls)] = 30.0  # the call number: who wrote what is readable from the tokens
        return logits


def test_lopar_writes_each_remasked_token_once_at_its_iteration():
    side, sigma = 8, 4
    model = Recorder(side)
    direct = torch.zeros(2, side * side, dtype=torch.long)  # code 0: the direct SR output
    cfg = SRSampleConfig(lopar_window=sigma, mask_ratio=0.75, temperature=1.0)
    res = lopar_refine(model, torch.zeros(2, 16, dtype=torch.long), direct, None, None, cfg, torch.Generator())
    it = lopar_schedule(side, sigma)
    remasked = res.remasked
    assert (remasked.sum(1) == 48).all()  # 75% regenerated, 25% kept as context
    assert (res.tokens[~remasked] == 0).all()  # the context is never written
    calls = len(model.calls)
    assert calls == lopar_iterations(sigma) == 7
    for k, seen in enumerate(model.calls):  # iteration k sees [MASK] exactly at the re-masked tokens of k and later
        assert torch.equal(seen == model.mask_id, remasked & (it >= k)[None])
    # each re-masked token was written by the forward of its own iteration, once
    assert torch.equal(res.tokens[remasked], (it[None].expand(2, -1) + 1)[remasked])


def test_training_masks_mix_direct_sr_and_the_iterative_ratios():
    g = torch.Generator().manual_seed(0)
    masks = sr_masks(4000, 100, [0.2, 0.4, 0.6, 0.8, 0.9], 0.5, g, "cpu")
    counts = masks.sum(1)
    assert set(counts.unique().tolist()) == {20, 40, 60, 80, 90, 100}
    assert abs(float((counts == 100).float().mean()) - 0.5) < 0.03  # direct SR: every token masked
