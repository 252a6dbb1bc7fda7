"""The training step's per-sample draws, hashed from each sample's seed: the stage t is uniform over all T
stages 0..T-1 (stage 0, nothing visible, and stage T-1 are both trained), and the condition dropout
(classifier-free guidance) drops a sample with probability model.cond_dropout, in training mode only."""

import torch

from training.model.config import model_config
from training.model.pdm import PDM
from training.model.train_module import StepSettings, TrainModule


def _cfg(cond_dropout=0.0):
    return model_config(
        "tiny", layers=1, dim=16, ffn_dim=32, heads=2, grid_h=2, grid_w=4, codebook_size=8, text_dim=4,
        cond_dropout=cond_dropout,
    )  # fmt: skip


def test_progressive_step_draws_every_stage_uniformly():
    torch.manual_seed(0)
    cfg = _cfg()
    seen = []

    def grab(ctx):
        seen.append(ctx.tuples.stage.clone())
        return torch.zeros(()), {}

    T, B = 4, 2000
    module = TrainModule(PDM(cfg), StepSettings(order="raster", stages=T, p_error=0.0), extra_losses=[grab])
    g = torch.Generator().manual_seed(0)
    batch = {
        "tokens": torch.randint(0, 8, (B, 8), generator=g),
        "qerr": torch.rand(B, 8, generator=g),
        "seeds": torch.arange(B) * 7919 + 13,
        "text": torch.randn(B, 2, 4, generator=g),
        "text_mask": torch.ones(B, 2, dtype=torch.bool),
    }
    with torch.no_grad():
        module(batch)
    freq = torch.bincount(seen[0], minlength=T).float() / B
    assert freq.shape == (T,) and (freq - 1 / T).abs().max() < 0.03, freq


def test_condition_dropout_rate_is_the_configured_one():
    torch.manual_seed(0)
    module = TrainModule(PDM(_cfg(cond_dropout=0.3)), StepSettings(order="raster", stages=4, p_error=0.0))
    seeds = torch.arange(4000) * 104729 + 1
    drop = module.train()._drop_text(seeds)
    assert drop.dtype == torch.bool and abs(drop.float().mean().item() - 0.3) < 0.03
    assert torch.equal(drop, module._drop_text(seeds))  # a function of the seeds
    assert module.eval()._drop_text(seeds) is None
