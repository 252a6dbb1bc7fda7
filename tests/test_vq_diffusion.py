"""VQ-Diffusion's mask-and-replace process (Improved VQ-Diffusion section 2): the transition matrices, their
closed-form product, the posterior against brute force, the reverse step against diffusers'
``VQDiffusionScheduler``, and the loss on a tiny set."""

from __future__ import annotations

import itertools

import pytest
import torch

from tests.trainer_utils import one_thread  # noqa: F401  (the shared autouse fixture)
from training.model.vq_diffusion.config import DiffusionConfig
from training.model.vq_diffusion.posterior import log_onehot, posterior_log_probs, reverse_step
from training.model.vq_diffusion.schedule import MaskAndReplace

T = 10


def schedule(K: int, T: int = T) -> MaskAndReplace:
    return MaskAndReplace(K, DiffusionConfig(timesteps=T))


def product(sch: MaskAndReplace, s: int, t: int) -> torch.Tensor:
    """Q_{s+1} ... Q_t multiplied out from the one-step matrices (row-stochastic: x_s Q = distribution of x_t)."""
    q = torch.eye(sch.K + 1, dtype=torch.float64)
    for i in range(s + 1, t + 1):
        q = q @ sch.matrix(i - 1, i)
    return q


def test_each_step_matrix_is_eq2_and_its_rows_sum_to_one():
    sch = schedule(K=4)
    for t in range(1, T + 1):
        q = sch.matrix(t - 1, t)
        alpha, beta, gamma = (float(v) for v in sch.step(t))
        assert torch.allclose(q.sum(1), torch.ones(5, dtype=torch.float64), atol=1e-12)
        assert (q >= 0).all()
        codes = q[:4, :4]
        assert torch.allclose(codes.diagonal(), torch.full((4,), alpha + beta, dtype=torch.float64))
        assert torch.allclose(codes[~torch.eye(4, dtype=torch.bool)], torch.full((12,), beta, dtype=torch.float64))
        assert torch.allclose(q[:4, 4], torch.full((4,), gamma, dtype=torch.float64))  # -> [MASK]
        assert q[4].tolist() == [0, 0, 0, 0, 1]  # [MASK] stays [MASK]
    # the schedule's ends are the configured cumulative values
    a_bar, _, g_bar = sch.cumulative(torch.tensor([1, T]))
    assert torch.allclose(a_bar, torch.tensor([0.99999, 0.000009], dtype=torch.float64))
    assert torch.allclose(g_bar, torch.tensor([0.000009, 0.99999], dtype=torch.float64))


def test_cumulative_product_matches_the_closed_form_of_eq4():
    K = 3
    sch = schedule(K)
    for t in range(1, T + 1):
        closed = sch.matrix(0, t)  # Eq. 4: alpha-bar_t v(x0) + (gamma-bar_t - beta-bar_t) v(K+1) + beta-bar_t
        assert torch.allclose(product(sch, 0, t), closed, atol=1e-12), t
        a_bar, b_bar, g_bar = (float(v) for v in sch.cumulative(t))
        assert b_bar == pytest.approx((1 - a_bar - g_bar) / K)  # / K, not the K + 1 printed in Eq. 4
    for s, t in [(2, 5), (4, 10), (7, 8)]:  # any product of steps is mask-and-replace too
        assert torch.allclose(product(sch, s, t), sch.matrix(s, t), atol=1e-12)


def test_q_sample_draws_the_eq4_marginal():
    K, n = 3, 200_000
    sch = schedule(K)
    x0 = torch.zeros(1, n, dtype=torch.long)
    for t in (2, 6):
        xt = sch.q_sample(x0, torch.tensor([t]), torch.Generator().manual_seed(t))
        freq = torch.bincount(xt.flatten(), minlength=K + 1).double() / n
        assert torch.allclose(freq, sch.matrix(0, t)[0], atol=4e-3), (t, freq)


def brute_force_posterior(sch: MaskAndReplace, x0: int, xt: int, t: int, s: int) -> torch.Tensor:
    """q(x_s | x_t, x_0) over the K + 1 states from dense matrices:
    Q[x_s -> x_t] Q-bar_s[x0 -> x_s] / Q-bar_t[x0 -> x_t]."""
    q_step, q_s, q_t = product(sch, s, t), product(sch, 0, s), product(sch, 0, t)
    return q_step[:, xt] * q_s[x0, :] / q_t[x0, xt]


def test_posterior_matches_brute_force_on_a_three_token_vocabulary():
    K = 3
    sch = schedule(K)
    p_x0 = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)  # a prediction for Eq. 5
    for t in range(2, T + 1):
        for s in (t - 1, max(1, t - 3)):  # one step (Eq. 3) and skipped steps
            for x0, xt in itertools.product(range(K), range(K + 1)):
                want = brute_force_posterior(sch, x0, xt, t, s)
                got = posterior_log_probs(log_onehot(torch.tensor([[x0]]), K), torch.tensor([[xt]]), t, sch, s)
                assert torch.allclose(got[0, :, 0].double().exp(), want, atol=1e-5), (t, s, x0, xt)
            for xt in range(K + 1):  # Eq. 5: the prediction-weighted sum over x0
                want = sum(p_x0[x0] * brute_force_posterior(sch, x0, xt, t, s) for x0 in range(K))
                log_p = p_x0.log().float().view(1, K, 1)
                got = posterior_log_probs(log_p, torch.tensor([[xt]]), t, sch, s)
                assert torch.allclose(got[0, :, 0].double().exp(), want, atol=1e-5), (t, s, xt)


def test_reverse_step_matches_diffusers_vq_diffusion_scheduler():
    """Same logits, schedule and seed: the same p(x_{t-1} | x_t) and the same draws, at every step of a chain."""
    from diffusers import VQDiffusionScheduler

    K, steps, B, L = 16, 20, 3, 25
    ours = MaskAndReplace(K, DiffusionConfig(timesteps=steps))
    ref = VQDiffusionScheduler(num_vec_classes=K + 1, num_train_timesteps=steps)
    g = torch.Generator().manual_seed(0)
    x_ours = x_ref = torch.full((B, L), K)
    for t in range(steps, 0, -1):  # our t is the paper's (1..T); diffusers counts from 0
        log_p_x0 = torch.randn(B, K, L, generator=g).log_softmax(1)
        if t > 1:
            mixed = torch.randint(0, K + 1, (B, L), generator=g)  # any x_t, codes and [MASK]
            want = ref.q_posterior(log_p_x0, mixed, t - 1).exp()
            assert torch.allclose(posterior_log_probs(log_p_x0, mixed, t, ours).exp(), want, atol=1e-6)
        seed = 1000 + t
        x_ours = reverse_step(log_p_x0, x_ours, t, ours, torch.Generator().manual_seed(seed))
        x_ref = ref.step(log_p_x0, t - 1, x_ref, torch.Generator().manual_seed(seed)).prev_sample
        assert torch.equal(x_ours, x_ref), t
    assert not (x_ours == K).any()  # the chain ends with every token written


def test_timestep_of_a_mask_ratio_is_the_nearest_gamma_bar():
    sch = schedule(K=8, T=100)
    t = sch.timestep_for_mask_ratio(torch.tensor([1.0, 0.0, 0.5, 0.25]))
    g_bar = sch.gamma_bar
    assert t[0] == 100 and t[1] == 1
    for ratio, ti in zip((0.5, 0.25), t[2:].tolist()):
        assert abs(g_bar[ti] - ratio) <= min(abs(g_bar[1:] - ratio)) + 1e-12


def tiny_model_cfg(**kw):
    from training.model.config import model_config

    return model_config(
        "tiny", dim=32, layers=1, heads=2, ffn_dim=64, text_dim=8, codebook_size=16, cond_dropout=0.1, **kw
    )


def test_loss_is_finite_at_every_timestep_and_falls_on_a_tiny_set():
    from training.engine import LocalEngine
    from training.model import build_model
    from training.model.train_module import StepSettings, TrainModule
    from training.model.vq_diffusion.loss import vq_diffusion_loss
    from training.train_config import TrainConfig

    torch.manual_seed(0)
    model = build_model(tiny_model_cfg(diffusion={"timesteps": 20}), "vq_diffusion")
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 16, (8, 64), generator=g)
    text, mask = torch.randn(8, 3, 8, generator=g), torch.ones(8, 3, dtype=torch.bool)
    sch = model.schedule
    for t in (1, 2, 10, 20):  # the decoder term (t = 1), middle steps and the last
        tt = torch.full((8,), t)
        xt = sch.q_sample(tokens, tt, g)
        loss, m = vq_diffusion_loss(model(xt, text, mask, t=tt).token_logits, tokens, xt, tt, sch)
        assert torch.isfinite(loss) and all(torch.isfinite(v) for v in m.values()), t
    settings = StepSettings(mode="vq_diffusion")  # the reference's aux weight 5e-4, adaptive
    engine = LocalEngine(
        TrainModule(model, settings), TrainConfig(steps=150, batch_size=8, lr=3e-3, warmup_steps=10), log=print
    )
    losses = []
    for _ in range(150):
        batch = {"tokens": tokens, "text": text, "text_mask": mask}
        batch["seeds"] = torch.randint(0, 2**62, (8,), generator=g)
        losses.append(float(engine.forward_backward(batch)["loss"]))
        engine.step()
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert all(v == v and abs(v) < 1e6 for v in losses)  # finite all along
    assert last < 0.5 * first, (first, last)
