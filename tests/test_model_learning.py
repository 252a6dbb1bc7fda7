"""The PDM learns: it memorises, it revises planted errors, it follows captions.

All three train through the production step (``training.model.train_module.TrainModule``) and optimiser
(``training.engine.LocalEngine``) and sample with the production progressive sampler.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from tests.threads import one_thread
from training.engine import LocalEngine
from training.model.config import model_config
from training.model.pdm import PDM
from training.model.sampling import SampleConfig, generate
from training.model.states import REVISE
from training.model.train_module import StepSettings, TrainModule
from training.train_config import TrainConfig


def train(model, data: dict, steps: int, batch: int, lr: float, settings: StepSettings, seed: int = 0) -> list[float]:
    """``steps`` optimizer steps on random batches of ``data`` (tokens, qerr, text, text_mask)."""
    t = TrainConfig(steps=steps, batch_size=batch, lr=lr, warmup_steps=min(50, steps // 10), weight_decay=0.0)
    engine = LocalEngine(TrainModule(model, settings), t, log=lambda *_: None)
    g = torch.Generator().manual_seed(seed)
    n = data["tokens"].shape[0]
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, n, (batch,), generator=g)
        b = {k: v[idx] for k, v in data.items()}
        b["seeds"] = torch.randint(0, 2**62, (batch,), generator=g)
        losses.append(float(engine.forward_backward(b)["loss"]))
        engine.step()
    return losses


def random_text(n: int, dim: int, seed: int, length: int = 4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, length, dim, generator=g), torch.ones(n, length, dtype=torch.bool)


def test_overfit_eight_samples_then_reproduce_them_exactly_at_T4():
    cfg = model_config("tiny", dim=64, layers=2, heads=4, ffn_dim=256, text_dim=16, cond_dropout=0.0)
    torch.manual_seed(0)
    model = PDM(cfg)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, cfg.codebook_size, (8, cfg.seq_len), generator=g)
    text, mask = random_text(8, cfg.text_dim, seed=2)
    data = {"tokens": tokens, "qerr": torch.rand(8, cfg.seq_len, generator=g), "text": text, "text_mask": mask}
    with one_thread():
        losses = train(
            model, data, steps=400, batch=8, lr=3e-3, settings=StepSettings(order="const_error", stages=4, p_error=0.0)
        )
        res = generate(model, text, mask, SampleConfig(steps=4, temperature=0.0, revise=False, batch_size=8))
    assert losses[-1] < 0.05 * losses[0]
    assert len(res.steps) == 4 and not (res.tokens == model.mask_id).any()
    exact = (res.tokens == tokens).all(1)
    assert exact.all(), (
        f"reproduced {int(exact.sum())}/8 grids; token accuracy {(res.tokens == tokens).float().mean():.3f}"
    )


def row_grids(n: int, cfg, seed: int) -> torch.Tensor:
    """Grids whose rows are constant: a wrong token in a row is visible from its neighbours."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, cfg.codebook_size, (n, cfg.grid_h, 1), generator=g)
    return rows.expand(n, cfg.grid_h, cfg.grid_w).reshape(n, cfg.seq_len).clone()


def revise_rates(p_error: float, steps: int):
    cfg = model_config("tiny", dim=64, layers=2, heads=4, ffn_dim=256, text_dim=16, cond_dropout=0.0, codebook_size=64)
    torch.manual_seed(0)
    model = PDM(cfg)
    tokens = row_grids(512, cfg, seed=3)
    text, mask = random_text(512, cfg.text_dim, seed=4)
    data = {"tokens": tokens, "qerr": torch.zeros(tokens.shape), "text": text, "text_mask": mask}
    with one_thread():
        train(
            model,
            data,
            steps=steps,
            batch=32,
            lr=3e-3,
            settings=StepSettings(order="random", stages=4, p_error=p_error, error_frac=(0.05, 0.2)),
        )
    # held-out grids, half of the positions visible, 4 planted wrong tokens among them
    test = row_grids(64, cfg, seed=5)
    g = torch.Generator().manual_seed(6)
    inputs = test.clone()
    visible = torch.rand(test.shape, generator=g) < 0.5
    inputs[~visible] = model.mask_id
    planted = torch.zeros_like(visible)
    for b in range(test.shape[0]):
        where = visible[b].nonzero().flatten()
        pick = where[torch.randperm(len(where), generator=g)[:4]]
        planted[b, pick] = True
        inputs[b, pick] = (
            test[b, pick] + 1 + torch.randint(0, cfg.codebook_size - 1, (4,), generator=g)
        ) % cfg.codebook_size
    model.eval()
    with torch.no_grad(), one_thread():
        p_revise = model(inputs, text[:64], mask[:64]).state_logits.softmax(-1)[..., REVISE]
    correct = visible & ~planted
    flagged = p_revise > SampleConfig().revise_threshold  # the progressive sampler's rule
    auc = (p_revise[planted][:, None] > p_revise[correct][None, :]).float().mean()
    return float(flagged[planted].float().mean()), float(flagged[correct].float().mean()), float(auc)


@pytest.mark.slow
def test_revision_flags_planted_errors_only_when_trained_with_error_injection():
    hit, false_alarm, auc = revise_rates(p_error=0.5, steps=600)
    hit0, false_alarm0, _ = revise_rates(p_error=0.0, steps=300)
    # measured: hit 0.17, false alarm 0.015, AUC ~0.8 after 600 steps; p_error 0: both ~0
    assert hit >= 5 * false_alarm and hit >= 0.08, (hit, false_alarm)  # flags wrong tokens far more often
    assert auc >= 0.7, auc  # and ranks them above correct ones
    assert hit0 <= 0.01 and false_alarm0 <= 0.01, (hit0, false_alarm0)  # never learned to revise


def train_on_captions(
    vq,
    text_encoder,
    images,
    captions,
    steps: int,
    batch: int,
    settings: StepSettings | None = None,
    kind: str = "pdm",
    lr: float = 1e-3,
):
    """VQ-encode the images, encode the captions, and train a tiny model of ``kind`` on them for ``steps`` steps
    (default: PDM, const-error order, p_error 0.3). Returns (model, losses, training CPU-s measured alone)."""
    from tokenization.vqgan.train import to_model_range
    from training.model import build_model

    with torch.no_grad(), one_thread():
        ids, qerr = zip(*[vq.encode(to_model_range(images[i : i + 500])) for i in range(0, len(images), 500)])
        text_ids, text_mask = text_encoder.tokenize(captions)
        text = text_encoder.encode(text_ids, text_mask)
    data = {"tokens": torch.cat(ids), "qerr": torch.cat(qerr), "text": text, "text_mask": text_mask}
    cfg = model_config("tiny", codebook_size=vq.codebook_size, text_dim=text.shape[-1])
    torch.manual_seed(0)
    model = build_model(cfg, kind)
    t0 = time.process_time()
    with one_thread():
        losses = train(
            model,
            data,
            steps=steps,
            batch=batch,
            lr=lr,
            settings=settings or StepSettings(order="const_error", stages=4, p_error=0.3),
        )
    return model, losses, time.process_time() - t0


def caption_following(
    tokenizer_dir,
    t5_dir,
    images,
    captions,
    steps: int,
    batch: int,
    held_out: int = 64,
    settings: StepSettings | None = None,
    kind: str = "pdm",
    sample: SampleConfig | None = None,
    lr: float = 1e-3,
):
    """Train a tiny model (``train_on_captions``), sample ``held_out`` new captions (default: the progressive
    sampler at T = 4, argmax tokens) and read the images back."""
    from tests.data_utils import make_dataset
    from tokenization.synthetic import attribute_scores, parse_caption
    from tokenization.text import TextEncoderConfig, load_text_encoder
    from tokenization.vqgan import load_tokenizer_dir

    vq = load_tokenizer_dir(tokenizer_dir).eval()
    text_encoder = load_text_encoder(TextEncoderConfig(kind="t5", path=str(t5_dir), dim=64))
    model, losses, cpu = train_on_captions(vq, text_encoder, images, captions, steps, batch, settings, kind, lr)

    _, held = make_dataset(held_out, seed=123, size=32)  # new scenes
    with torch.no_grad(), one_thread():
        e_ids, e_mask = text_encoder.tokenize(held)
        sample = sample or SampleConfig(steps=4, temperature=0.0, batch_size=64)
        res = generate(model, text_encoder.encode(e_ids, e_mask), e_mask, sample)
        pixels = ((vq.decode(res.tokens) + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    scores = [attribute_scores(p, c) for p, c in zip(pixels, held)]
    attrs = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
    ok = np.array([s["all"] for s in scores])
    two = np.array([len(parse_caption(c).shapes) == 2 for c in held])
    print(
        f"\ncaption match {ok.mean():.3f} (1 shape {ok[~two].mean():.2f}, 2 shapes {ok[two].mean():.2f}) after "
        f"{steps} steps, {cpu:.0f} CPU-s; loss {losses[0]:.2f} -> {np.mean(losses[-50:]):.2f}; "
        + ", ".join(f"{k} {v:.2f}" for k, v in attrs.items())
    )
    return attrs, cpu, losses


# 1800 steps at batch 32, lr 2e-3, 10000 scenes: measured 277-394 CPU-s here (~525 on the CI machine, 1.31x slower
# per core), caption match 0.961-1.00 in four runs (two tokenizer seeds, three model seeds; 128 or 64 held-out
# captions). The recipe it replaces (800 steps at batch 64 on 3000 scenes, the same compute) ranged 0.81-0.98 over
# the seeds and machines (0.81 on CI); 1600 steps at batch 32 on 3000 scenes 0.82-0.98.
# Scored on 256 held-out captions: on 64, one caption moves the score by 0.016, and the draw alone can fail it.
# Over seven tokenizers (seeds 0-5 on one thread, and seed 0 on two), the match on 256 captions was 0.94-1.00
# (six of seven >= 0.99), and on the first 64 of them 0.89-1.00: 0.89 is the one-thread seed-0 tokenizer that
# once failed the 64-caption bound on CI, and it scores 0.94 on all 256. The session's (seed 1, one thread): 0.992,
# and 0.992 again with the kernels held to AVX2 (other tokenizer weights; an AVX2-only CPU's numbers)
CAPTION_STEPS, CAPTION_BATCH, CAPTION_LR, CAPTION_SCENES, CAPTION_HELD_OUT = 1800, 32, 2e-3, 10000, 256


@pytest.mark.slow
def test_tiny_pdm_generates_images_that_match_their_captions(shapes_tokenizer, shapes_t5):
    """The issue's bar: >= 90% of held-out captions (256 of them) drawn with every attribute right, after at most
    15 CPU-minutes of training (808 CPU-s on an AVX2-only EPYC; shared tiny tokenizer, pretrained tiny T5,
    const-error order, p_error 0.3)."""
    from tests.data_utils import make_dataset

    images, captions = make_dataset(CAPTION_SCENES, seed=0, size=32)
    attrs, cpu, losses = caption_following(
        shapes_tokenizer[0],
        shapes_t5,
        images,
        captions,
        CAPTION_STEPS,
        batch=CAPTION_BATCH,
        held_out=CAPTION_HELD_OUT,
        lr=CAPTION_LR,
    )
    match = attrs["all"]
    assert np.mean(losses[-50:]) < 0.35 * losses[0]
    assert cpu <= 900, f"training took {cpu:.0f} CPU-s, more than 15 CPU-minutes"
    # chance (every attribute of 1-2 shapes right by luck) is below 1%
    assert match >= 0.90, match


def test_short_run_already_follows_captions_in_token_space(tmp_path):
    """Quick version with a lower bound. Reading attributes back from pixels needs the 800-step tokenizer
    (~270 CPU-s), so this one scores in token space: a 40-step tokenizer, a random tiny T5 and 200 PDM
    steps; on held-out captions, the sampled tokens at the shapes' positions must match the held-out
    images' own tokens far more often with the caption than with the null text (the model's own
    unconditional guess: what it knows without reading the caption)."""
    from tests.data_utils import make_dataset
    from tokenization.synthetic import BACKGROUND
    from tokenization.text import TextEncoderConfig, build_tiny_t5, load_text_encoder
    from tokenization.vqgan import TokenizerConfig, load_tokenizer_dir, train_tokenizer
    from tokenization.vqgan.train import to_model_range

    images, captions = make_dataset(1000, seed=0, size=32)
    with one_thread():
        train_tokenizer(TokenizerConfig(steps=QUICK_TOKENIZER_STEPS, seed=0), images, tmp_path / "vq", progress=False)
    vq = load_tokenizer_dir(tmp_path / "vq").eval()
    build_tiny_t5(captions, tmp_path / "t5", d_model=64)
    text_encoder = load_text_encoder(TextEncoderConfig(kind="t5", path=str(tmp_path / "t5"), dim=64))
    model, losses, _ = train_on_captions(vq, text_encoder, images, captions, QUICK_STEPS, batch=32)
    held_images, held = make_dataset(64, seed=123, size=32)
    with torch.no_grad(), one_thread():
        held_ids, held_mask = text_encoder.tokenize(held)
        held_text = text_encoder.encode(held_ids, held_mask)
        truth = vq.encode(to_model_range(held_images))[0]
    # grid cells that hold part of a shape (any pixel off the background) in the held-out images
    off = torch.from_numpy((held_images != np.array(BACKGROUND, np.uint8)).any(-1))
    gh, gw = model.grid
    shape_cells = off.view(64, gh, 4, gw, 4).any(4).any(2).reshape(64, -1)
    acc = {}
    with torch.no_grad(), one_thread():
        for name, mask in (("caption", held_mask), ("null", torch.zeros_like(held_mask))):
            res = generate(model, held_text, mask, SampleConfig(steps=4, temperature=0.0, batch_size=64))
            acc[name] = float((res.tokens == truth)[shape_cells].float().mean())
    print(
        f"\nshape-cell token accuracy with the caption {acc['caption']:.3f}, with the null text {acc['null']:.3f}; "
        f"loss {losses[0]:.2f} -> {np.mean(losses[-50:]):.2f}"
    )
    assert np.mean(losses[-50:]) < 0.6 * losses[0]
    # measured: 0.34 with the caption, 0.18 with the null text
    assert acc["caption"] >= QUICK_BOUND and acc["caption"] >= 1.5 * acc["null"], acc


QUICK_TOKENIZER_STEPS, QUICK_STEPS, QUICK_BOUND = 40, 200, 0.25
