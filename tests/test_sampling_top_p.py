"""Nucleus (top-p) sampling in every sampler, and ``sample.top_p`` at its default (1 = off) leaving every stage
made before the key existed current (``neutral_default``: the key is left out of hashes at its default)."""

from __future__ import annotations

import pytest
import torch

from core.config import ConfigError, config_hash, identity_dict
from tests.eval_utils import one_thread  # noqa: F401  (one torch thread per xdist worker)
from training.model.sampling import (
    SampleConfig,
    cluster_sample,
    progressive_sample,
    sample_tokens,
    top_p_filter,
)
from training.model.sampling.diffusion import x0_log_probs


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_top_p_keeps_the_fewest_most_probable_tokens_reaching_p():
    probs = torch.tensor([[0.05, 0.5, 0.3, 0.15], [0.97, 0.01, 0.01, 0.01]])
    kept = lambda p: torch.isfinite(top_p_filter(probs.log(), p))  # noqa: E731
    assert kept(0.5).tolist() == [[False, True, False, False], [True, False, False, False]]
    assert kept(0.51).tolist() == [[False, True, True, False], [True, False, False, False]]
    assert kept(0.8).tolist() == [[False, True, True, False], [True, False, False, False]]
    assert kept(0.81).tolist() == [[False, True, True, True], [True, False, False, False]]
    assert kept(1e-6).sum(-1).tolist() == [1, 1]  # always the most probable one
    assert torch.equal(top_p_filter(probs.log(), 1.0), probs.log())
    # what is kept keeps its logit: the renormalised distribution is the nucleus's
    x = top_p_filter(probs.log(), 0.81)
    assert torch.allclose(x[0].softmax(-1), torch.tensor([0.0, 0.5, 0.3, 0.15]) / 0.95)


def test_draws_stay_in_the_nucleus_and_p_1_changes_nothing():
    logits = torch.randn(64, 50, generator=gen(4))
    nucleus = torch.isfinite(top_p_filter(logits / 2.0, 0.3))
    draws = torch.stack([sample_tokens(logits, gen(s), temperature=2.0, top_p=0.3) for s in range(20)], 1)
    assert nucleus.gather(1, draws).all()
    assert sum(len(row.unique()) > 1 for row in draws) > 32  # not the argmax: several tokens in most rows
    assert torch.equal(sample_tokens(logits, gen(7), top_p=1.0), sample_tokens(logits, gen(7)))
    # top-k first, then top-p of what is left (k = 1: the argmax whatever p)
    assert torch.equal(sample_tokens(logits, gen(), top_k=1, top_p=0.9), logits.argmax(-1))
    tok, logp = sample_tokens(logits, gen(1), top_p=0.3, return_logprob=True)
    assert torch.allclose(logp, top_p_filter(logits, 0.3).log_softmax(-1).gather(1, tok[:, None])[:, 0])


def test_cluster_sampling_applies_top_p_over_clusters():
    # cluster 0 (tokens 0-2) holds 0.6, cluster 1 (token 3) 0.4: p = 0.5 keeps cluster 0 only
    probs = torch.tensor([[0.2, 0.2, 0.2, 0.4]]).expand(300, 4)
    clusters = torch.tensor([0, 0, 0, 1])
    draws = cluster_sample(probs.log(), clusters, 2, top_k=0, generator=gen(), top_p=0.5)
    assert (draws < 3).all() and len(draws.unique()) == 3
    both = cluster_sample(probs.log(), clusters, 2, top_k=0, generator=gen(), top_p=1.0)
    assert (both == 3).any() and (both < 3).any()


def test_the_samplers_pass_top_p_on():
    """progressive, autoregressive and vq_diffusion (its reverse chain's x0 distribution) read ``sample.top_p``."""
    from tests.test_sampling import MICRO, TableModel, text_batch, tiny_text
    from training.model.ar_model import ARModel
    from training.model.sampling import autoregressive_sample

    L, K = 8, 6
    row = torch.tensor([3.0, 2.9, 0.0, 0.0, 0.0, 0.0])  # tokens 0 and 1 hold ~0.9 of the mass
    model = TableModel(L, K, tok=row.expand(L, K))
    cfg = SampleConfig(steps=4, top_p=0.4, temperature=1.0)
    toks = torch.stack([progressive_sample(model, *text_batch(2), cfg, gen(s)).tokens for s in range(5)])
    assert (toks == 0).all()  # token 0 alone reaches 0.4
    toks = torch.stack(
        [progressive_sample(model, *text_batch(2), SampleConfig(steps=4), gen(s)).tokens for s in range(5)]
    )
    assert (toks == 1).any()
    torch.manual_seed(2)
    ar, text = ARModel(dict(MICRO, layers=1)), tiny_text(2)
    greedy = autoregressive_sample(ar, *text, SampleConfig(temperature=0.0, record_steps=False), gen(2)).tokens
    nucleus = autoregressive_sample(ar, *text, SampleConfig(top_p=1e-6, record_steps=False), gen(1)).tokens
    assert torch.equal(nucleus, greedy)
    x0 = x0_log_probs(row.expand(1, L, K), SampleConfig(sampler="vq_diffusion", top_p=0.4))  # [B, K, L]
    assert (x0[0, 0] > -1e-3).all() and (x0[0, 1:] < -20).all()


def test_top_p_validation_and_a_neutral_default_leaves_hashes_alone():
    from pipeline.experiment import load_config

    with pytest.raises(ValueError, match="top_p"):
        SampleConfig(top_p=0.0)
    with pytest.raises(ConfigError, match="sample.top_p"):
        load_config("configs/tiny.yaml", ["sample.top_p=1.5"])
    off, on = SampleConfig(), SampleConfig(top_p=0.9)
    assert "top_p" not in identity_dict(off) and identity_dict(on)["top_p"] == 0.9
    before = {k: v for k, v in identity_dict(on).items() if k != "top_p"}  # the section as written before top_p
    assert config_hash(off) == config_hash(before) != config_hash(on)


def test_the_sample_stage_keeps_chunks_made_before_top_p_and_redoes_them_for_another(tmp_path):
    import json

    from evaluation.sample_files import JOB
    from tests.eval_utils import load, make_run, run

    cfg = make_run(tmp_path)
    run(cfg, "sample")
    job = json.loads((tmp_path / "run" / "sample" / JOB).read_text())
    assert "top_p" not in job["sample"]  # what the folder recorded before the key existed
    logs = []
    run(load(tmp_path / "run", ["sample.top_p=0.9"]), "sample", log=logs.append)
    assert any("sampler changed: removing old" in x for x in logs), logs


def test_super_resolution_draws_with_top_p():
    """CogView2's SR sampler (``sr.sample.top_p``): a nucleus so small that it holds the most probable code only
    draws what top-k 1 draws (the same generator, step for step), p = 1 is the sampler without it, and p = 0.9
    draws other codes."""
    from training.model.super_resolution.config import SRModelConfig, SRSampleConfig
    from training.model.super_resolution.model import SRTransformer
    from training.model.super_resolution.sampling import super_resolve

    torch.manual_seed(0)
    model = SRTransformer(SRModelConfig(lo_grid=4, hi_grid=8, text_dim=4, dim=16, layers=1, heads=2, ffn_dim=32))
    with torch.no_grad():
        model.head.weight.mul_(20.0)  # peaked distributions, but not one-hot
    lo = torch.randint(0, 256, (2, 16))
    text, mask = torch.randn(2, 3, 4), torch.ones(2, 3, dtype=torch.bool)

    def tokens(**kw):
        cfg = SRSampleConfig(lopar_window=2, **kw)
        return super_resolve(model, lo, text, mask, cfg, torch.Generator().manual_seed(3)).tokens

    assert torch.equal(tokens(top_p=1e-6), tokens(top_k=1))
    assert torch.equal(tokens(top_p=1.0), tokens())
    assert not torch.equal(tokens(top_p=0.9), tokens(top_k=1)) and not torch.equal(tokens(top_p=0.9), tokens())
    with pytest.raises(ValueError, match="top_p must be in"):
        SRSampleConfig(top_p=0.0)
