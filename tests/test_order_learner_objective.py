"""The REINFORCE loss of the order learner (PDM Eq. 6), number by number from the rollout it returns:
the advantage G_t - b_t with each baseline (the moving average's value before its update, its EMA
momentum; the greedy rollout's returns for self-critical), advantage normalisation and the sign of the
entropy bonus."""

import math

import pytest
import torch

from training.model.config import model_config
from training.model.order_learner import OrderLearnerConfig, PolicyBatch, build_order_learner
from training.model.pdm import PDM

CFG = dict(grid_h=2, grid_w=4, codebook_size=16, text_dim=8, dim=32, layers=1, heads=2, ffn_dim=64, cond_dropout=0.0)


@pytest.fixture(scope="module")
def pdm():
    torch.manual_seed(0)
    return PDM(model_config("tiny", **CFG)).eval()


def _batch(seed, B=4):
    g = torch.Generator().manual_seed(seed)
    return PolicyBatch(
        torch.randint(0, 16, (B, 8), generator=g), torch.randn(B, 2, 8, generator=g), torch.ones(B, 2, dtype=torch.bool)
    )


def _learner(**kw):
    cfg = OrderLearnerConfig(
        reward="token_acc", hidden=16, reward_mode="per_step", discount=0.9, token_mode="sample", **kw
    )
    learner = build_order_learner(model_config("tiny", **CFG), cfg, stages=4)
    torch.manual_seed(1)
    for p in learner.policy.parameters():  # a non-uniform policy: non-zero entropy gradient
        torch.nn.init.normal_(p, 0.0, 0.3)
    return learner


def _close(a, b):
    a, b = float(torch.as_tensor(a).detach()), float(torch.as_tensor(b).detach())
    assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6), (a, b)


def _expected(learner, ro, b, base, normalize=False):
    _, G, _ = learner.returns(ro, b)
    adv = G - base
    if normalize:
        adv = adv / adv.std().clamp(min=1e-6)
    pg = -(adv * ro.log_prob.detach()).sum(1).mean()
    return G, pg, pg - learner.cfg.entropy_coef * ro.entropy.detach().mean()


def test_moving_average_baseline_value_and_momentum(pdm):
    learner = _learner(baseline="moving_average", baseline_momentum=0.8, entropy_coef=0.05)
    b1, b2 = _batch(1), _batch(2)
    loss, m, ro = learner(pdm, b1, torch.Generator().manual_seed(0))
    G1, _, _ = _expected(learner, ro, b1, 0.0)
    assert torch.allclose(learner.baseline, G1.mean(0), atol=1e-6)  # first batch: starts at its mean return
    _close(m["pg_loss"], -((G1 - G1.mean(0)) * ro.log_prob.detach()).sum(1).mean())
    before = learner.baseline.clone()
    loss, m, ro = learner(pdm, b2, torch.Generator().manual_seed(1))
    G2, pg, total = _expected(learner, ro, b2, before)  # the advantage uses the baseline BEFORE this update
    _close(m["pg_loss"], pg)
    _close(loss, total)
    assert torch.allclose(learner.baseline, 0.8 * before + 0.2 * G2.mean(0), atol=1e-6)  # EMA, momentum 0.8


def test_self_critical_baseline_is_the_greedy_rollouts_return(pdm):
    learner = _learner(baseline="self_critical", entropy_coef=0.0)
    b = _batch(3)
    loss, m, ro = learner(pdm, b, torch.Generator().manual_seed(0))
    _, G_greedy, _ = learner.returns(ro.greedy, b)
    G, pg, _ = _expected(learner, ro, b, G_greedy)
    assert not torch.allclose(G, G_greedy)  # a non-trivial advantage
    _close(m["pg_loss"], pg)
    _close(loss, pg)


def test_no_baseline_and_normalised_advantage(pdm):
    learner = _learner(baseline="none", normalize_advantage=True, entropy_coef=0.0)
    b = _batch(4)
    loss, m, ro = learner(pdm, b, torch.Generator().manual_seed(0))
    G, pg, _ = _expected(learner, ro, b, 0.0, normalize=True)
    assert G.std() > 1e-3 and abs(G.std().item() - 1.0) > 1e-2  # normalising changes the value
    _close(m["pg_loss"], pg)


def test_entropy_is_a_bonus(pdm):
    """loss = pg - beta * H: with a zero reward a step on the loss makes the first draws MORE random."""
    learner = _learner(baseline="none", entropy_coef=1.0)
    learner.__dict__["reward_fn"] = lambda tokens, batch: torch.zeros(tokens.shape[0])
    b = _batch(5)
    loss, m, ro = learner(pdm, b, torch.Generator().manual_seed(0))
    _close(m["pg_loss"], 0.0)
    _close(loss, -ro.entropy.detach().mean())
    loss.backward()
    with torch.no_grad():  # one plain gradient-descent step on the loss
        for p in learner.policy.parameters():
            if p.grad is not None:
                p -= 0.05 * p.grad
    _, m2, _ = learner(pdm, b, torch.Generator().manual_seed(0))
    assert m2["entropy"] > m["entropy"]


def test_policy_scores_read_the_mask_map_and_the_step():
    """s_t = (Y^{<=t}, Z^t, X): with the same hidden states, the [mask] map and t/T still change the scores."""
    from training.model.order_learner import PositionPolicy

    torch.manual_seed(0)
    pol = PositionPolicy(32, 8, hidden=16, confidence_features=False)
    for p in pol.parameters():
        torch.nn.init.normal_(p, 0.0, 0.3)
    h = torch.randn(1, 8, 32)
    all_masked, half = torch.ones(1, 8, dtype=torch.bool), torch.arange(8)[None] % 2 == 0
    with torch.no_grad():
        base = pol(h, all_masked, 1, 4)
        assert (pol(h, half, 1, 4) - base).abs().max() > 1e-3
        assert (pol(h, all_masked, 3, 4) - base).abs().max() > 1e-3
