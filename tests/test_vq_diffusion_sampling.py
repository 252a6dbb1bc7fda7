"""The VQ-Diffusion sampler with hand-made x_0 logits (a fake network): the reverse chain against diffusers over a
whole chain, Improved VQ-Diffusion's high-quality strategy (Algorithms 1 and 2: tokens per step, the timestep of
the mask share, purity-sampled positions) and guidance with the null text."""

from __future__ import annotations

import torch
from torch import nn

from training.model.sampling import SampleConfig, cfg_mix, generate
from training.model.states import GENERATE, KEEP
from training.model.vq_diffusion.config import DiffusionConfig
from training.model.vq_diffusion.model import DiffusionOutput
from training.model.vq_diffusion.schedule import MaskAndReplace


class FakeDenoiser(nn.Module):
    """Fixed logits of x_0 per position (another table for the null text); records x_t, t and drop_text."""

    kind = "vq_diffusion"

    def __init__(self, tok: torch.Tensor, T: int, tok_uncond: torch.Tensor | None = None):
        super().__init__()
        self.seq_len, self.codebook_size = tok.shape
        self.mask_id = self.codebook_size
        self.schedule = MaskAndReplace(self.codebook_size, DiffusionConfig(timesteps=T))
        self.tok, self.tok_uncond, self.calls = tok, tok_uncond, []

    def forward(self, tokens, text, text_mask, drop_text=None, attn_bias_text=0.0, *, t):
        self.calls.append(dict(tokens=tokens.clone(), t=t.clone(), drop_text=drop_text))
        B, L = tokens.shape
        logits = self.tok.expand(B, L, -1).clone()
        if drop_text is not None and self.tok_uncond is not None:
            logits = torch.where(drop_text[:, None, None], self.tok_uncond.expand(B, L, -1), logits)
        return DiffusionOutput(logits, torch.zeros(B, L, 1))


def text(B: int):
    return torch.randn(B, 3, 4), torch.ones(B, 3, dtype=torch.bool)


def run(model, B: int, seed: int = 0, **cfg):
    cfg = SampleConfig(sampler="vq_diffusion", batch_size=B, **cfg)
    return generate(model, *text(B), cfg, generator=torch.Generator().manual_seed(seed))


def test_reverse_chain_is_diffusers_chain_step_for_step():
    from diffusers import VQDiffusionScheduler

    T, K, L, B = 12, 6, 16, 3
    tok = torch.randn(L, K, generator=torch.Generator().manual_seed(1))
    model = FakeDenoiser(tok, T)
    res = run(model, B, seed=7, diffusion_strategy="reverse", steps=T, temperature=1.0)
    ref = VQDiffusionScheduler(num_vec_classes=K + 1, num_train_timesteps=T)
    g, x = torch.Generator().manual_seed(7), torch.full((B, L), K)
    log_p_x0 = tok.log_softmax(-1).T.expand(B, K, L)
    for k in range(T - 1, -1, -1):
        x = ref.step(log_p_x0, k, x, generator=g).prev_sample
    assert torch.equal(res.tokens, x)
    assert [int(c["t"][0]) for c in model.calls] == list(range(T, 0, -1))
    assert len(res.steps) == T and not (res.tokens == K).any()


def test_reverse_chain_skips_over_evenly_spaced_timesteps():
    model = FakeDenoiser(torch.randn(16, 6), T=20)
    res = run(model, 2, diffusion_strategy="reverse", steps=5, temperature=1.0)
    assert [int(c["t"][0]) for c in model.calls] == [20, 16, 12, 8, 4]
    assert len(res.steps) == 5 and not (res.tokens == 6).any()


def test_fewer_tokens_writes_L_over_steps_tokens_per_step_at_the_timestep_of_the_mask_share():
    """Algorithm 1: exactly L / steps new tokens per step, never rewritten; the network sees the timestep whose
    gamma-bar is nearest to the share of [MASK] tokens."""
    T, K, L, B, steps = 50, 5, 16, 3, 4
    model = FakeDenoiser(torch.randn(L, K), T)
    res = run(model, B, diffusion_strategy="fewer_tokens", steps=steps, temperature=1.0)
    sch, prev = model.schedule, torch.full((B, L), K)
    for i, (tokens, states, call) in enumerate(zip(res.steps, res.states, model.calls)):
        masked_before = prev == K
        assert torch.equal(call["tokens"], prev)
        ratio = masked_before.float().mean(1)
        assert ratio.tolist() == [1 - i / steps] * B
        assert torch.equal(call["t"], sch.timestep_for_mask_ratio(ratio))
        new = (tokens != K) & masked_before
        assert (new.sum(1) == L // steps).all()
        assert torch.equal(tokens[~masked_before], prev[~masked_before])  # written tokens stay
        assert torch.equal(states, torch.where(new, GENERATE, KEEP))
        prev = tokens
    assert int(model.calls[0]["t"][0]) == T and not (res.tokens == K).any()


def confident_share(strategy: str, seeds: int = 40) -> float:
    """Share of the first step's 8 writes that land on the 8 near-one-hot positions (the other 8 are uniform)."""
    K, L = 20, 16
    tok = torch.zeros(L, K)
    tok[:8, 0] = 12.0  # purity ~1 at positions 0..7, 1/K at 8..15
    hits = 0.0
    for seed in range(seeds):
        res = run(FakeDenoiser(tok, 100), 1, seed=seed, diffusion_strategy=strategy, steps=2, temperature=1.0)
        first = res.steps[0][0] != K
        hits += float(first[:8].sum()) / 8
    return hits / seeds


def test_purity_strategy_samples_confident_positions_first():
    """Algorithm 2 draws positions in proportion to purity (Eq. 8); Algorithm 1 uniformly."""
    purity, uniform = confident_share("purity"), confident_share("fewer_tokens")
    assert purity >= 0.85, purity
    assert 0.3 <= uniform <= 0.7, uniform


def test_guidance_runs_the_null_text_branch_at_the_same_timestep():
    T, K, L, B = 30, 4, 8, 2
    g = torch.Generator().manual_seed(3)
    cond, uncond = torch.randn(L, K, generator=g), torch.randn(L, K, generator=g)
    model = FakeDenoiser(cond, T, tok_uncond=uncond)
    res = run(model, B, diffusion_strategy="fewer_tokens", steps=2, temperature=0.0, guidance_scale=3.0)
    for call in model.calls:
        assert call["tokens"].shape[0] == 2 * B and call["drop_text"].tolist() == [False] * B + [True] * B
        assert torch.equal(call["t"][:B], call["t"][B:])
    want = cfg_mix(cond, uncond, 3.0).argmax(-1)  # temperature 0: the argmax of the guided x_0 logits
    assert torch.equal(res.tokens, want.expand(B, L))
