"""Samplers: exact positions generated / revised / kept with hand-made logits (tiny fake models), the PDM
constraints, guidance, temperature, top-k, cluster sampling, purity prior, orders, reranking, determinism,
and the autoregressive KV-cache sampler against no-cache greedy decoding."""

from __future__ import annotations

import math
from collections import namedtuple

import pytest
import torch
from torch import nn

from training.model.sampling import (
    GuidedForward,
    SampleConfig,
    cfg_mix,
    cluster_sample,
    generate,
    kmeans_codebook,
    plan_steps,
    progressive_sample,
    progressive_step,
    sample_tokens,
)
from training.model.states import GENERATE, KEEP, REVISE

Out = namedtuple("Out", "token_logits state_logits hidden")
S, D = 3, 4  # text length, text dim


class TableModel(nn.Module):
    """Fake PDM: fixed logits tables (optionally a different token table for the null-text branch), or
    `fn(tokens) -> (token_logits, state_logits)`. Records every call."""

    def __init__(self, L, K, tok=None, state=None, tok_uncond=None, fn=None):
        super().__init__()
        self.seq_len, self.codebook_size, self.mask_id = L, K, K
        self.tok = tok if tok is not None else torch.zeros(L, K)
        self.state = state if state is not None else torch.zeros(L, 3)
        self.tok_uncond, self.fn, self.calls = tok_uncond, fn, []

    def forward(self, tokens, text, text_mask, drop_text=None, attn_bias_text=0.0):
        self.calls.append(dict(tokens=tokens.clone(), drop_text=drop_text, bias=attn_bias_text, training=self.training))
        B, L = tokens.shape
        if self.fn is not None:
            tl, sl = self.fn(tokens)
        else:
            tl = self.tok.expand(B, L, -1).clone()
            sl = self.state.expand(B, L, -1)
        if drop_text is not None and self.tok_uncond is not None:
            tl = torch.where(drop_text[:, None, None], self.tok_uncond.expand(B, L, -1), tl)
        return Out(tl, sl, None)


def text_batch(B):
    return torch.randn(B, S, D), torch.ones(B, S, dtype=torch.bool)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def state_logits(p_gen, p_rev):
    """State logits [L, 3] with the given probabilities of generate / revise (keep gets the rest)."""
    p_gen, p_rev = torch.as_tensor(p_gen, dtype=torch.float), torch.as_tensor(p_rev, dtype=torch.float)
    return torch.stack([1 - p_gen - p_rev, p_gen, p_rev], -1).clamp(min=1e-6).log()


# ---------------------------------------------------------------- one step, hand-made logits
def test_step_exact_positions_generated_revised_kept():
    L, K, M = 8, 5, 5
    tokens = torch.tensor([[0, 1, 2, M, M, M, M, M]])
    # p(generate) highest at written pos 1 (must be ignored), then masked 6 and 3; p(revise) highest at
    # masked pos 4 (must be ignored), then written 2, then 0.
    p_gen = [0.0, 0.9, 0.0, 0.5, 0.1, 0.2, 0.6, 0.05]
    p_rev = [0.7, 0.0, 0.8, 0.0, 0.9, 0.0, 0.0, 0.0]
    tok = torch.full((L, K), -5.0)
    tok[torch.arange(L), torch.tensor([4, 4, 3, 1, 0, 0, 2, 0])] = 5.0  # argmax token per position
    cfg = SampleConfig(temperature=0.0, revise_threshold=0.5)
    new, st = progressive_step(tokens, tok[None], state_logits(p_gen, p_rev)[None], 2, 1, cfg, gen(), M)
    assert new.tolist() == [[0, 1, 3, 1, M, M, 2, M]]  # gen 3,6; revise 2; rest kept
    assert st.tolist() == [[KEEP, KEEP, REVISE, GENERATE, KEEP, KEEP, GENERATE, KEEP]]
    # two revisions allowed: both written positions above the threshold are revised
    new, st = progressive_step(tokens, tok[None], state_logits(p_gen, p_rev)[None], 2, 2, cfg, gen(), M)
    assert new.tolist() == [[4, 1, 3, 1, M, M, 2, M]]
    assert (st == REVISE).nonzero()[:, 1].tolist() == [0, 2]
    # threshold above every p(revise): nothing revised even with room for 3
    cfg = SampleConfig(temperature=0.0, revise_threshold=0.85)
    new, st = progressive_step(tokens, tok[None], state_logits(p_gen, p_rev)[None], 2, 3, cfg, gen(), M)
    assert new.tolist() == [[0, 1, 2, 1, M, M, 2, M]] and not (st == REVISE).any()


def test_step_is_batched_per_row():
    L, K, M = 6, 4, 4
    tokens = torch.full((2, L), M)
    sl = torch.stack(
        [state_logits([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0] * 6), state_logits([0.6, 0.5, 0.4, 0.3, 0.2, 0.1], [0] * 6)]
    )
    new, st = progressive_step(tokens, torch.zeros(2, L, K), sl, 2, 0, SampleConfig(temperature=0.0), gen(), M)
    assert (st[0] == GENERATE).nonzero()[:, 0].tolist() == [4, 5]
    assert (st[1] == GENERATE).nonzero()[:, 0].tolist() == [0, 1]
    assert (new != M).sum(1).tolist() == [2, 2]


# ---------------------------------------------------------------- the whole sampler
def revise_everything_model(L, K, seed=0):
    """Random token logits, state head that wants to revise every written position, p(gen) random."""
    g = torch.Generator().manual_seed(seed)
    return TableModel(
        L,
        K,
        tok=torch.randn(L, K, generator=g),
        state=state_logits(torch.rand(L, generator=g) * 0.1, torch.full((L,), 0.85)),
    )


@pytest.mark.parametrize(
    "L,T,schedule",
    [
        (16, 4, "uniform"),
        (16, 16, "uniform"),
        (16, 1, "uniform"),
        (18, 5, "linear"),
        (18, 5, "cosine"),
        (16, 8, "cosine"),
    ],
)
def test_sampler_constraints(L, T, schedule):
    K, B = 7, 3
    model = revise_everything_model(L, K)
    cfg = SampleConfig(steps=T, schedule=schedule, revise_threshold=0.5)
    res = progressive_sample(model, *text_batch(B), cfg, gen())
    sizes = plan_steps(L, T, schedule)
    assert len(model.calls) == T and len(res.steps) == T and len(res.states) == T
    assert all(c["tokens"].shape == (B, L) for c in model.calls)  # one batched forward per step
    prev_tokens, prev_gen = torch.full((B, L), K), torch.zeros(B, dtype=torch.long)
    for t, (toks, st) in enumerate(zip(res.steps, res.states)):
        was_masked = prev_tokens == K
        gen_now, rev_now = st == GENERATE, st == REVISE
        assert (gen_now.sum(1) == sizes[t]).all()  # exactly sizes[t] new positions
        assert was_masked[gen_now].all()  # generated only where masked
        assert not was_masked[rev_now].any()  # revised only where written
        assert (rev_now.sum(1) <= prev_gen).all()  # sum[z=-1] <= sum[z^{t-1}=1]
        assert (rev_now.sum(1) == prev_gen).all()  # this state head always revises
        assert (toks[st == KEEP] == prev_tokens[st == KEEP]).all()  # kept positions unchanged
        assert ((toks == K) == (was_masked & ~gen_now)).all()  # mask_id exactly where not written
        prev_tokens, prev_gen = toks, gen_now.sum(1)
    assert (res.tokens != K).all() and res.tokens.max() < K and torch.equal(res.tokens, res.steps[-1])
    if T == 16 and L == 16:
        assert sizes == [1] * 16


def test_max_revise_and_revise_off():
    L, K = 16, 5
    for cfg, cap in [(SampleConfig(steps=4, max_revise=1), 1), (SampleConfig(steps=4, revise=False), 0)]:
        res = progressive_sample(revise_everything_model(L, K), *text_batch(2), cfg, gen())
        counts = [(s == REVISE).sum(1).max().item() for s in res.states]
        assert counts == [0] + [cap] * 3


@pytest.mark.parametrize("order", ["raster", "confidence"])
def test_repredict_rewrites_every_written_token_each_step(order):
    """Emage Algorithm 3 (sample.repredict): the model's prediction changes at every call (token c at call c);
    with repredict every written position holds the LATEST prediction after each step (REVISE where it
    changed), though the state head never asks to revise; without it the written tokens stay."""
    L, K, T = 8, 5, 4
    calls = []

    def fn(tokens):
        calls.append(1)
        tl = torch.full((tokens.shape[0], L, K), -5.0)
        tl[..., (len(calls) - 1) % K] = 5.0
        return tl, state_logits(torch.full((L,), 0.5), torch.zeros(L)).expand(tokens.shape[0], L, 3)

    for repredict in (True, False):
        calls.clear()
        cfg = SampleConfig(steps=T, order=order, temperature=0.0, repredict=repredict, revise=not repredict)
        res = progressive_sample(TableModel(L, K, fn=fn), *text_batch(2), cfg, gen())
        for t, (step, st) in enumerate(zip(res.steps, res.states)):
            written = step != K
            assert written.sum(1).eq((t + 1) * L // T).all()
            if repredict:
                before = res.steps[t - 1] != K if t else torch.zeros_like(written)
                assert (step[written] == t).all() and torch.equal(st == REVISE, before)
            else:
                assert (res.steps[-1][res.steps[0] != K] == 0).all() and not (st == REVISE).any()
    with pytest.raises(ValueError, match="repredict"):
        SampleConfig(sampler="autoregressive", repredict=True)


def test_uniform_schedule_needs_divisor():
    model = revise_everything_model(16, 5)
    with pytest.raises(ValueError, match="does not divide L=16"):
        progressive_sample(model, *text_batch(1), SampleConfig(steps=5), gen())
    assert len(model.calls) == 0
    res = progressive_sample(model, *text_batch(1), SampleConfig(steps=5, schedule="linear"), gen())
    assert (res.tokens != 5).all()


def test_state_order_writes_most_likely_positions_first():
    L, K = 12, 4
    p_gen = torch.linspace(0.05, 0.6, L).flip(0)  # position 0 most likely
    model = TableModel(L, K, state=state_logits(p_gen, torch.zeros(L)))
    res = progressive_sample(model, *text_batch(2), SampleConfig(steps=4), gen())
    for t, st in enumerate(res.states):
        assert (st == GENERATE).nonzero()[:, 1].view(2, 3)[0].tolist() == [3 * t, 3 * t + 1, 3 * t + 2]


def test_orders_raster_tensor_random_confidence():
    L, K = 8, 6
    # state head prefers the end, but the given order overrides it
    model = TableModel(
        L, K, tok=torch.randn(L, K, generator=gen(3)), state=state_logits(torch.linspace(0.1, 0.6, L), torch.zeros(L))
    )
    cfg = SampleConfig(steps=4)
    first = lambda res: sorted((res.states[0][0] == GENERATE).nonzero()[:, 0].tolist())  # noqa: E731
    assert first(progressive_sample(model, *text_batch(1), cfg, gen(), order="raster")) == [0, 1]
    prio = torch.tensor([0.0, 5.0, 1.0, 2.0, 9.0, 3.0, 4.0, 0.5])
    res = progressive_sample(model, *text_batch(1), cfg, gen(), order=prio)
    assert [sorted((s[0] == GENERATE).nonzero()[:, 0].tolist()) for s in res.states] == [[1, 4], [5, 6], [2, 3], [0, 7]]
    from training.model.orders import get_order

    assert first(progressive_sample(model, *text_batch(1), cfg, gen(), order=get_order("raster"))) == [0, 1]
    with pytest.raises(ValueError, match="quantization error"):
        progressive_sample(model, *text_batch(1), cfg, gen(), order="const_error")
    firsts = {tuple(first(progressive_sample(model, *text_batch(1), cfg, gen(s), order="random"))) for s in range(8)}
    assert len(firsts) > 2
    # confidence (MaskGIT): peak height decides; greedy tokens -> position with the highest max prob first
    tok = torch.zeros(L, K)
    tok[:, 0] = torch.tensor([1.0, 8.0, 2.0, 7.0, 3.0, 6.0, 4.0, 5.0])
    conf = TableModel(L, K, tok=tok, state=state_logits(torch.linspace(0.1, 0.6, L), torch.zeros(L)))
    res = progressive_sample(conf, *text_batch(1), SampleConfig(steps=4, temperature=0.0), gen(), order="confidence")
    assert [sorted((s[0] == GENERATE).nonzero()[:, 0].tolist()) for s in res.states] == [[1, 3], [5, 7], [4, 6], [0, 2]]
    assert (res.tokens == 0).all()


def test_purity_prior_prefers_peaked_positions():
    L, K = 8, 6
    tok = torch.zeros(L, K)
    tok[5, 2] = 10.0  # only position 5 is confident
    model = TableModel(L, K, tok=tok, state=state_logits(torch.full((L,), 0.3), torch.zeros(L)))
    res = progressive_sample(model, *text_batch(1), SampleConfig(steps=8, purity_prior=1.0), gen())
    assert res.states[0][0, 5] == GENERATE and res.steps[0][0, 5] == 2


def test_gumbel_position_noise_varies_order_but_not_without():
    L, K = 16, 4
    model = TableModel(L, K, state=state_logits(torch.full((L,), 0.3), torch.zeros(L)))

    def picks(cfg, seed):
        first = progressive_sample(model, *text_batch(1), cfg, gen(seed)).states[0][0]
        return tuple((first == GENERATE).nonzero()[:, 0].tolist())

    assert len({picks(SampleConfig(steps=4, gumbel_scale=1.0), s) for s in range(6)}) > 1
    assert len({picks(SampleConfig(steps=4, gumbel_scale=0.0), s) for s in range(6)}) == 1


# ---------------------------------------------------------------- guidance, temperature, top-k
def test_cfg_one_forward_and_scale_0_1_equal_branches():
    L, K, B = 8, 5, 2
    cond, unc = torch.randn(L, K, generator=gen(1)), torch.randn(L, K, generator=gen(2))
    model = TableModel(L, K, tok=cond, tok_uncond=unc, state=state_logits(torch.linspace(0.1, 0.6, L), torch.zeros(L)))
    only_cond = TableModel(L, K, tok=cond, state=model.state)
    only_unc = TableModel(L, K, tok=unc, state=model.state)

    def run(m, scale):
        return progressive_sample(m, *text_batch(B), SampleConfig(steps=4, guidance_scale=scale), gen(7)).tokens

    assert torch.equal(run(model, 1.0), run(only_cond, 1.0))
    assert torch.equal(run(model, 0.0), run(only_unc, 1.0))
    model.calls.clear()
    run(model, 3.0)
    assert len(model.calls) == 4  # cond + uncond in ONE forward
    assert all(
        c["tokens"].shape == (2 * B, L) and c["drop_text"].tolist() == [False] * B + [True] * B for c in model.calls
    )
    fwd = GuidedForward(model, *text_batch(B), SampleConfig(guidance_scale=3.0))
    tl, _ = fwd(torch.full((B, L), K))
    assert torch.allclose(tl, (unc + 3.0 * (cond - unc)).expand(B, L, K), atol=1e-5)
    assert torch.allclose(cfg_mix(cond, unc, 0.0), unc) and torch.allclose(cfg_mix(cond, unc, 1.0), cond)


def test_attn_bias_text_passed_and_eval_mode():
    model = TableModel(8, 4).train()
    progressive_sample(model, *text_batch(1), SampleConfig(steps=2, attn_bias_text=2.5), gen())
    assert all(c["bias"] == 2.5 and not c["training"] for c in model.calls)
    assert model.training


@pytest.mark.parametrize("tau,p1", [(2.0, math.sqrt(3) / (1 + math.sqrt(3))), (0.5, 0.9)])
def test_temperature_does_not_compound(tau, p1):
    L, K, T = 8192, 2, 4
    tok = torch.tensor([[0.0, math.log(3.0)]]).expand(L, K).contiguous()  # p(token 1) = 0.75 at tau = 1
    model = TableModel(L, K, tok=tok)
    before = model.tok.clone()
    res = progressive_sample(
        model, *text_batch(1), SampleConfig(steps=T, temperature=tau, order="raster", revise=False), gen()
    )
    for st, toks in zip(res.states, res.steps):  # same law at the first and last step
        frac = toks[st == GENERATE].float().mean().item()
        assert abs(frac - p1) < 0.04, (tau, frac, p1)
    assert torch.equal(model.tok, before)  # model logits never modified


def test_top_k_1_equals_argmax_and_top_k_support():
    logits = torch.randn(64, 50, generator=gen(4))
    assert torch.equal(sample_tokens(logits, gen(), temperature=1.0, top_k=1), logits.argmax(-1))
    assert torch.equal(sample_tokens(logits, gen(), temperature=0.0), logits.argmax(-1))
    top3 = logits.topk(3, -1).indices
    draws = torch.stack([sample_tokens(logits, gen(s), temperature=5.0, top_k=3) for s in range(20)], 1)
    assert (draws.unsqueeze(-1) == top3.unsqueeze(1)).any(-1).all()
    L, K = 8, 6
    model = TableModel(L, K, tok=torch.randn(L, K, generator=gen(5)))
    a = progressive_sample(model, *text_batch(2), SampleConfig(steps=4, top_k=1, temperature=1.5), gen(1)).tokens
    b = progressive_sample(model, *text_batch(2), SampleConfig(steps=4, temperature=0.0), gen(2)).tokens
    assert torch.equal(a, b) and torch.equal(a[0], model.tok.argmax(-1))


def test_purity_sharpening_eq11_keeps_argmax():
    from training.model.sampling import purity, purity_sharpen

    x = torch.randn(5, 9, generator=gen(6))
    p = x.softmax(-1)
    assert torch.allclose(purity(x), p.max(-1).values)
    y = purity_sharpen(x, 1.0)
    assert torch.allclose(y, (1 + p.max(-1, keepdim=True).values) * p.log(), atol=1e-5)
    assert torch.equal(y.argmax(-1), x.argmax(-1))


# ---------------------------------------------------------------- clusters, candidates, determinism
def test_kmeans_recovers_separated_groups():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    codebook = centres.repeat_interleave(5, 0) + 0.1 * torch.randn(15, 2, generator=gen(8))
    a = kmeans_codebook(codebook, 3, gen(0))
    assert torch.equal(a, kmeans_codebook(codebook, 3, gen(0)))
    groups = a.view(3, 5)
    assert all(len(set(g.tolist())) == 1 for g in groups) and len(set(groups[:, 0].tolist())) == 3
    with pytest.raises(ValueError):
        kmeans_codebook(codebook, 16)


def test_cluster_sampling_keeps_whole_clusters():
    # CogView2 4.1 incomplete truncation: tokens 0-2 (cluster 0) have 0.2 each, token 3 (cluster 1) 0.4.
    probs = torch.tensor([[0.2, 0.2, 0.2, 0.4]]).expand(400, 4)
    clusters = torch.tensor([0, 0, 0, 1])
    draws = cluster_sample(probs.log(), clusters, 2, top_k=1, generator=gen())
    assert (draws < 3).all() and len(draws.unique()) == 3  # top-1 cluster, any token inside
    assert (sample_tokens(probs.log(), gen(), top_k=1) == 3).all()  # token top-1 picks the lone token
    L, K = 8, 4
    model = TableModel(L, K, tok=torch.tensor([[0.2, 0.2, 0.2, 0.4]]).log().expand(L, K))
    cfg = SampleConfig(steps=2, cluster_sampling=True, n_clusters=2, top_k=1)
    with pytest.raises(ValueError, match="clusters"):
        progressive_sample(model, *text_batch(1), cfg, gen())
    res = progressive_sample(model, *text_batch(3), cfg, gen(), clusters=clusters)
    assert (res.tokens < 3).all()


def test_candidates_reranked_by_scorer():
    L, K, n = 8, 4, 5
    model = TableModel(L, K)  # uniform tokens
    seen = {}

    def scorer(tokens, captions):
        seen["shape"], seen["captions"] = tokens.shape, captions
        return (tokens == 0).sum(1).float()

    cfg = SampleConfig(steps=2, n_candidates=n)
    res = progressive_sample(model, *text_batch(2), cfg, gen(), scorer=scorer, captions=["a", "b"])
    assert seen["shape"] == (2 * n, L) and seen["captions"] == ["a"] * n + ["b"] * n
    assert all(c["tokens"].shape == (2 * n, L) for c in model.calls)  # all candidates in one batch
    assert res.tokens.shape == (2, L) and res.scores.tolist() == (res.tokens == 0).sum(1).float().tolist()
    assert len(res.steps) == 2 and torch.equal(res.steps[-1], res.tokens)
    with pytest.raises(ValueError, match="scorer"):
        progressive_sample(model, *text_batch(1), cfg, gen())


def test_same_seed_same_batch_is_deterministic():
    L, K = 16, 9
    model = revise_everything_model(L, K)
    text = text_batch(3)
    cfg = SampleConfig(steps=4, gumbel_scale=1.0, purity_prior=0.5, top_k=4, guidance_scale=2.0)
    a = progressive_sample(model, *text, cfg, gen(11))
    b = progressive_sample(model, *text, cfg, gen(11))
    c = progressive_sample(model, *text, cfg, gen(12))
    assert torch.equal(a.tokens, b.tokens) and all(torch.equal(x, y) for x, y in zip(a.states, b.states))
    assert not torch.equal(a.tokens, c.tokens)


def test_generate_chunks_by_batch_size():
    L, K = 8, 5
    model = revise_everything_model(L, K)
    text = text_batch(5)
    cfg = SampleConfig(steps=2, batch_size=2, seed=3)
    res = generate(model, *text, cfg)
    assert res.tokens.shape == (5, L) and len(res.steps) == 2 and res.steps[0].shape == (5, L)
    assert max(c["tokens"].shape[0] for c in model.calls) == 2 and len(model.calls) == 6
    assert torch.equal(res.tokens, generate(model, *text, cfg).tokens)


# ---------------------------------------------------------------- real models (smaller than the tiny preset)
MICRO = dict(
    preset="tiny", grid_h=4, grid_w=4, codebook_size=64, text_dim=16, dim=32, heads=2, layers=2, ffn_dim=64
)  # L = 16: a CPU under load pays ~ms per op, so keep the op count low


def tiny_text(B, text_dim=16):
    return torch.randn(B, 5, text_dim, generator=gen(9)), torch.tensor([[True] * 5, [True] * 3 + [False] * 2] * B)[:B]


def test_real_pdm_tiny_end_to_end():
    from training.model.pdm import PDM

    torch.manual_seed(0)
    model = PDM(MICRO)
    cfg = SampleConfig(
        steps=4,
        guidance_scale=2.0,
        top_k=20,
        gumbel_scale=0.5,
        purity_prior=0.5,
        revise_threshold=0.0,
        attn_bias_text=1.0,
    )
    res = progressive_sample(model, *tiny_text(2), cfg, gen())
    assert res.tokens.shape == (2, 16) and res.tokens.max() < model.codebook_size and res.tokens.min() >= 0
    assert [(s == GENERATE).sum().item() for s in res.states] == [8] * 4
    assert [(s == REVISE).sum().item() for s in res.states] == [0] + [8] * 3  # threshold 0: revise max
    assert model.training  # mode restored
    res2 = progressive_sample(model, *tiny_text(2), cfg, gen())
    assert torch.equal(res.tokens, res2.tokens)
    halton = progressive_sample(model, *tiny_text(1), SampleConfig(steps=4, revise=False), gen(), order="halton")
    from training.model.orders import halton_permutation

    assert sorted((halton.states[0][0] == GENERATE).nonzero()[:, 0].tolist()) == sorted(halton_permutation(4, 4)[:4])


def greedy_no_cache(model, text, text_mask, scale=1.0):
    """Reference: L full teacher-forcing forwards, position i from the row-i logits (causal model)."""
    B, L = text.shape[0], model.seq_len
    tokens = torch.zeros(B, L, dtype=torch.long)
    with torch.no_grad():
        for i in range(L):
            cond = model(tokens, text, text_mask, drop_text=torch.zeros(B, dtype=torch.bool))[:, i]
            if scale != 1.0:
                unc = model(tokens, text, text_mask, drop_text=torch.ones(B, dtype=torch.bool))[:, i]
                cond = unc + scale * (cond - unc)
            tokens[:, i] = cond.argmax(-1)
    return tokens


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_autoregressive_kv_cache_equals_no_cache_greedy(scale):
    from training.model.ar_model import ARModel
    from training.model.sampling import autoregressive_sample

    torch.manual_seed(1)
    model = ARModel(MICRO).eval()
    with torch.no_grad():  # sharpen the random model so greedy decisions are far from ties
        model.token_head.weight.mul_(20)
    text = tiny_text(2)
    res = autoregressive_sample(
        model, *text, SampleConfig(sampler="autoregressive", temperature=0.0, guidance_scale=scale), gen()
    )
    assert torch.equal(res.tokens, greedy_no_cache(model, *text, scale))
    assert len(res.steps) == 16 and (res.steps[9][:, 10:] == model.codebook_size).all()
    assert torch.equal(res.steps[-1], res.tokens) and all((s == GENERATE).sum(1).eq(1).all() for s in res.states)


def test_autoregressive_sampling_deterministic_and_top_k_1():
    from training.model.ar_model import ARModel
    from training.model.sampling import autoregressive_sample

    torch.manual_seed(2)
    model = ARModel(dict(MICRO, layers=1))
    text = tiny_text(2)
    cfg = SampleConfig(sampler="autoregressive", top_k=5, record_steps=False)
    a, b = (autoregressive_sample(model, *text, cfg, gen(4)).tokens for _ in range(2))
    assert torch.equal(a, b) and not torch.equal(a, autoregressive_sample(model, *text, cfg, gen(5)).tokens)
    g1 = autoregressive_sample(model, *text, SampleConfig(top_k=1, record_steps=False), gen(1)).tokens
    g0 = autoregressive_sample(model, *text, SampleConfig(temperature=0.0, record_steps=False), gen(2)).tokens
    assert torch.equal(g1, g0)
    res = generate(model, *text, SampleConfig(sampler="autoregressive", batch_size=1, steps=3))
    assert res.tokens.shape == (2, 16) and len(res.steps) == 16 and torch.equal(res.steps[-1], res.tokens)
    assert (res.steps[0][:, 1:] == model.codebook_size).all() and (res.states[3][:, 3] == GENERATE).all()


def test_sample_config_loads_and_validates():
    from core.config import ConfigError, from_dict

    cfg = from_dict(
        SampleConfig,
        {
            "steps": 64,
            "schedule": "cosine",
            "order": "halton",
            "max_revise": 2,
            "guidance_scale": 3,
            "cluster_sampling": True,
            "n_clusters": 8,
            "top_k": 4,
        },
    )
    assert cfg.guidance_scale == 3.0 and cfg.order == "halton"
    for bad in (
        {"temperature": -1.0},
        {"schedule": "square"},
        {"steps": 0},
        {"tempreature": 1.0},
        {"cluster_sampling": True, "n_clusters": 4, "top_k": 5},
    ):
        with pytest.raises(ConfigError):
            from_dict(SampleConfig, bad)
