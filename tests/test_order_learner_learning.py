"""Learning proof of the order learner (PDM 3.2, Eq. 6-7) on a task whose best order is known.

Task: a 2 x 8 token grid; each row is [k1, k2, c, c, c, c, c, c] with two independent uniform keys
k1, k2 in {0..3} (own token ranges) and the six non-key tokens all equal to the code c = 4 k1 + k2.
Rows are independent; there is no text information. T = 4 stages of 4 positions, tokens SAMPLED
(temperature 0.5). Positions written in the same stage are drawn independently, so a stage can only
write dependent positions consistently if what it writes is already determined. The only pair of
undetermined positions in a row that is independent is (k1, k2); hence the unique order that writes
every row consistently is: both keys of both rows at stage 0 (4 of the 16 positions: chance rate
4/16 = 25% of first-stage picks), then the non-keys, which are then determined.

Reward: the fraction of valid rows (non-keys == 4 k1 + k2), the synthetic analogue of CLIP's
"does the image look right / match the text" score. (Token accuracy against the ground truth cannot
single out an order here: with a calibrated generator every position's marginal is the same under
any order, so its expectation is order-independent; only joint-consistency rewards such as CLIP or
perceptual ones see the conditional-independence errors an order causes.)

The generator is a tiny PDM trained on random-order tuples (T in {2, 4, 8}), so it can predict from
any context. Then REINFORCE trains the policy. Asserted: >= 90% of the sampled policy's first-stage
picks are keys (chance 25%), and the learned order's reward beats the random order by >= 0.4.
"""

from __future__ import annotations

import time

import pytest
import torch

from tests.threads import one_thread
from training.model.config import model_config
from training.model.order_learner import (
    OrderLearnerConfig,
    PolicyBatch,
    build_order_learner,
    make_optimizer,
    policy_update,
)
from training.model.orders import get_order
from training.model.pdm import PDM
from training.model.pdm_loss import pdm_loss
from training.model.tuples import make_tuples

R, C, NK = 2, 8, 4
K = NK * NK + 2 * NK  # codes 0..15, k1 tokens 16..19, k2 tokens 20..23
L, T = R * C, 4
KEYS = torch.zeros(L, dtype=torch.bool)
KEYS.view(R, C)[:, :2] = True


def data(B: int, g: torch.Generator) -> torch.Tensor:
    k = torch.randint(0, NK, (B, R, 2), generator=g)
    code = k[..., 0] * NK + k[..., 1]
    keys = k + torch.tensor([NK * NK, NK * NK + NK])
    return torch.cat([keys, code[..., None].expand(B, R, C - 2)], -1).reshape(B, L)


def validity(tokens: torch.Tensor, batch=None) -> torch.Tensor:
    """Float[B]: fraction of rows whose six non-keys equal 4 k1 + k2 of the written keys."""
    t = tokens.view(-1, R, C)
    k1, k2 = t[..., 0] - NK * NK, t[..., 1] - NK * NK - NK
    ok = (k1 >= 0) & (k1 < NK) & (k2 >= 0) & (k2 < NK)
    code = k1.clamp(0, NK - 1) * NK + k2.clamp(0, NK - 1)
    return (ok & (t[..., 2:] == code[..., None]).all(-1)).float().mean(1)


def text(B):
    return torch.zeros(B, 1, 8), torch.ones(B, 1, dtype=torch.bool)


def train_generator(steps: int, g: torch.Generator) -> PDM:
    torch.manual_seed(0)
    cfg = model_config(
        "tiny",
        grid_h=R,
        grid_w=C,
        codebook_size=K,
        text_dim=8,
        dim=64,
        layers=2,
        heads=4,
        ffn_dim=128,
        cond_dropout=0.0,
    )
    pdm = PDM(cfg)
    opt = torch.optim.AdamW(pdm.parameters(), lr=3e-3, weight_decay=0.0)
    rnd, B = get_order("random"), 256
    tx, tm = text(B)
    for step in range(steps):
        Tt = (2, 4, 8)[step % 3]
        bt = make_tuples(data(B, g), rnd(B, L, Tt, generator=g), Tt, pdm.mask_id, K, p_error=0.0, generator=g)
        loss, _ = pdm_loss(pdm(bt.inputs, tx, tm), bt, state_weight=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return pdm.eval()


def evaluate(learner, pdm, greedy: bool, g: torch.Generator, n: int = 512) -> tuple[float, float]:
    """(mean validity, fraction of first-stage picks that are keys) over n rollouts."""
    tx, tm = text(n)
    with torch.no_grad():
        ro = learner._rollout(pdm, PolicyBatch(data(n, g), tx, tm), greedy, g)
    return validity(ro.tokens).mean().item(), KEYS[ro.picks[0]].float().mean().item()


@pytest.mark.slow
def test_policy_learns_key_positions_first():
    t0 = time.time()
    with one_thread():
        g = torch.Generator().manual_seed(0)
        pdm = train_generator(300, g)
        cfg = OrderLearnerConfig(
            reward="token_acc",
            hidden=32,
            lr=1e-2,
            entropy_coef=0.01,
            baseline="moving_average",
            token_mode="sample",
            temperature=0.5,
        )
        learner = build_order_learner(pdm.cfg, cfg, stages=T, reward_fn=validity)
        random_reward, random_keys = evaluate(learner, pdm, greedy=False, g=g)  # untrained = random order
        assert abs(random_keys - KEYS.float().mean().item()) < 0.08  # chance rate 4/16
        opt = make_optimizer(learner, cfg)
        tx, tm = text(128)
        for _step in range(40):
            m = policy_update(learner, pdm, dict(tokens=data(128, g), text=tx, text_mask=tm), opt, g)
        sampled_reward, sampled_keys = evaluate(learner, pdm, greedy=False, g=g)
        greedy_reward, greedy_keys = evaluate(learner, pdm, greedy=True, g=g)
    print(
        f"random order: reward {random_reward:.3f}, first-stage keys {random_keys:.2f} (chance 0.25) | "
        f"learned sampled: {sampled_reward:.3f}, keys {sampled_keys:.2f} | greedy: {greedy_reward:.3f}, "
        f"keys {greedy_keys:.2f} | entropy {m['entropy']:.2f} | {time.time() - t0:.0f}s"
    )
    assert sampled_keys >= 0.9 and greedy_keys >= 0.9
    assert greedy_reward - random_reward >= 0.4
    assert sampled_reward - random_reward >= 0.4
    # the per-position mean stage of the policy's picks puts the keys first
    assert (m["pos_stage"][KEYS] < m["pos_stage"][~KEYS].min()).all()
