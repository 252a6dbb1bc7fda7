"""The learned order at sampling time: gumbel_scale > 0 samples the position sets from the policy
(Gumbel-top-k), gumbel_scale = 0 takes its top-k (deterministic whatever the generator)."""

import torch

from training.model.config import model_config
from training.model.order_learner import Learned, PositionPolicy
from training.model.pdm import PDM
from training.model.sampling import SampleConfig

CFG = dict(grid_h=2, grid_w=4, codebook_size=16, text_dim=8, dim=32, layers=1, heads=2, ffn_dim=64, cond_dropout=0.0)


def _first_sets(order, gumbel_scale, seeds):
    g = torch.Generator().manual_seed(0)
    text, tmask = torch.randn(2, 2, 8, generator=g), torch.ones(2, 2, dtype=torch.bool)
    cfg = SampleConfig(steps=4, temperature=0.0, revise=False, gumbel_scale=gumbel_scale)
    sets = set()
    for s in seeds:
        res = order.sample(text, tmask, cfg, torch.Generator().manual_seed(s))
        sets.add(tuple(map(tuple, (res.steps[0] != 16).nonzero().tolist())))
    return sets


def test_gumbel_scale_samples_the_learned_order():
    torch.manual_seed(0)
    pdm = PDM(model_config("tiny", **CFG)).eval()
    policy = PositionPolicy(32, 8, hidden=16)  # zero output layer: every position scores 0
    order = Learned(policy, pdm)
    assert len(_first_sets(order, 0.0, range(6))) == 1  # top-k: the same set for every seed
    assert len(_first_sets(order, 1.0, range(6))) > 1  # Gumbel-top-k: different sets
