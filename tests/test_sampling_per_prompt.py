"""``sample.rng: per_prompt``: a generator per prompt, so a prompt's image depends only on (seed, its place in the
prompt list), never on the batch size or on the other prompts of its batch: every sampler (progressive with each
kind of order, revision, guidance and reranked candidates; autoregressive; VQ-Diffusion's strategies; CogView2's
super-resolution) and the sample stage. ``per_chunk`` (the default) draws other images at another batch size."""

from __future__ import annotations

import pytest
import torch

from training.model import build_model
from training.model.config import model_config
from training.model.sampling import SampleConfig, generate
from training.model.seeded_random import RowGenerators, prompt_seeds, uniform

MICRO = dict(grid_h=4, grid_w=4, codebook_size=64, text_dim=16, dim=32, heads=2, layers=2, ffn_dim=64)
B = 5


@pytest.fixture(scope="module")
def prompts():
    text = torch.randn(B, 5, 16, generator=torch.Generator().manual_seed(9))
    mask = torch.ones(B, 5, dtype=torch.bool)
    mask[1, 3:] = mask[3, 2:] = False  # prompts of other lengths in one batch
    return text, mask


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {kind: build_model(model_config("tiny", **MICRO), kind) for kind in ("pdm", "ar", "vq_diffusion")}


def _scorer(tokens, captions):  # reranking: any deterministic function of the tokens
    return tokens.float().sin().sum(1)


CASES = [
    ("pdm", dict()),
    ("pdm", dict(order="confidence", gumbel_scale=0.5, purity_prior=0.5)),
    ("pdm", dict(order="random")),
    ("pdm", dict(order="halton")),
    ("pdm", dict(order="learned", gumbel_scale=1.0)),
    ("pdm", dict(revise_threshold=0.0, guidance_scale=2.0, top_k=20, top_p=0.9)),
    ("pdm", dict(repredict=True, temperature=0.7)),
    ("pdm", dict(n_candidates=2)),
    ("ar", dict(guidance_scale=2.0)),
    ("vq_diffusion", dict(diffusion_strategy="fewer_tokens")),
    ("vq_diffusion", dict(diffusion_strategy="purity")),
    ("vq_diffusion", dict(diffusion_strategy="reverse")),
]
SAMPLERS = {"pdm": "progressive", "ar": "autoregressive", "vq_diffusion": "vq_diffusion"}


def _sample(models, prompts, kind, rng, batch_size, rows=slice(None), seed=0, **kw):
    text, mask = prompts
    order = None
    if kw.get("order") == "learned":  # the position policy's Gumbel-top-k at every step
        from training.model.order_learner import Learned, PositionPolicy

        torch.manual_seed(0)
        order = Learned(PositionPolicy(32, 16, hidden=16), models[kind])
    cfg = SampleConfig(sampler=SAMPLERS[kind], steps=4, rng=rng, batch_size=batch_size, seed=seed, **kw)
    places = range(B)[rows]
    g = RowGenerators(prompt_seeds(seed, places)) if rng == "per_prompt" else None
    return generate(models[kind], text[rows], mask[rows], cfg, generator=g, scorer=_scorer, order=order).tokens


@pytest.mark.parametrize("kind,kw", CASES, ids=[f"{k}-{'-'.join(kw) or 'default'}" for k, kw in CASES])
def test_a_prompts_image_depends_only_on_the_seed_and_its_place(models, prompts, kind, kw):
    whole = _sample(models, prompts, kind, "per_prompt", B, **kw)
    for bs in (2, 1):
        assert torch.equal(_sample(models, prompts, kind, "per_prompt", bs, **kw), whole), f"batch_size {bs}"
    assert torch.equal(_sample(models, prompts, kind, "per_prompt", 2, rows=slice(2, 5), **kw), whole[2:])
    other_seed = _sample(models, prompts, kind, "per_prompt", B, seed=1, **kw)
    assert all(not torch.equal(a, b) for a, b in zip(other_seed, whole))  # each prompt's own draws
    # the default draws the chunk at once: another batch size, other images (so the test above bites)
    assert not torch.equal(
        _sample(models, prompts, kind, "per_chunk", 2, **kw), _sample(models, prompts, kind, "per_chunk", B, **kw)
    )


def test_generate_seeds_the_rows_by_default_and_checks_their_count(models, prompts):
    text, mask = prompts
    cfg = SampleConfig(steps=4, rng="per_prompt", batch_size=2)
    assert torch.equal(
        generate(models["pdm"], text, mask, cfg).tokens, _sample(models, prompts, "pdm", "per_prompt", B)
    )
    with pytest.raises(ValueError, match="3 row generators for 5 prompts"):
        generate(models["pdm"], text, mask, cfg, generator=RowGenerators([1, 2, 3]))


def test_row_generators_split_a_draw_by_rows():
    g = RowGenerators(prompt_seeds(0, [0, 1, 2]))
    a = uniform((3, 4, 2), g, "cpu")
    b = RowGenerators(prompt_seeds(0, [1]))
    assert torch.equal(uniform((1, 4, 2), b, "cpu"), a[1:2])  # row 1 drew from its own generator
    # a slice shares its rows' generators: drawing on it advances them in the whole batch's stream too
    nxt = uniform((1, 5), g[1:2], "cpu")
    assert torch.equal(nxt, uniform((1, 5), b, "cpu"))
    assert torch.equal(uniform((3, 1), g, "cpu")[1], uniform((1, 1), b, "cpu")[0])
    with pytest.raises(ValueError, match=r"shape \(4, 2\) does not split into 3 rows"):
        uniform((4, 2), g, "cpu")
    two = g.repeat_rows(2)
    assert len(two) == 6 and len(set(two.seeds)) == 6 and not set(two.seeds) & set(g.seeds)
    assert len(set(prompt_seeds(0, range(100)) + prompt_seeds(1, range(100)))) == 200


def test_super_resolution_draws_per_prompt():
    from training.model.super_resolution.config import SRModelConfig, SRSampleConfig
    from training.model.super_resolution.model import SRTransformer
    from training.model.super_resolution.sampling import super_resolve

    torch.manual_seed(0)
    model = SRTransformer(SRModelConfig(lo_grid=4, hi_grid=8, text_dim=4, dim=16, layers=1, heads=2, ffn_dim=32))
    lo = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(1))
    text, mask = torch.randn(4, 3, 4, generator=torch.Generator().manual_seed(2)), torch.ones(4, 3, dtype=torch.bool)
    cfg = SRSampleConfig(lopar_window=2)

    def sr(rows):
        return super_resolve(
            model, lo[rows], text[rows], mask[rows], cfg, RowGenerators(prompt_seeds(0, range(4)[rows]))
        )

    whole = sr(slice(None))
    assert whole.remasked.any(1).all()  # LoPAR re-masked some positions of every row: both draws are covered
    parts = [sr(slice(0, 1)), sr(slice(1, 3)), sr(slice(3, 4))]
    assert torch.equal(torch.cat([p.tokens for p in parts]), whole.tokens)
    assert torch.equal(torch.cat([p.direct for p in parts]), whole.direct)
