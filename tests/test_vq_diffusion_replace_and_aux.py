"""VQ-Diffusion pieces the default schedule cannot see: the uniform "replace" share of q(x_t | x_0) (beta is
about 0 with the default ends alpha-bar + gamma-bar = 1), and the adaptive weight of the auxiliary loss,
w_t = 2 - (t - 1) / T (microsoft/VQ-Diffusion's adaptive_auxiliary_loss)."""

import math

import torch

from training.model.vq_diffusion.config import DiffusionConfig
from training.model.vq_diffusion.loss import vq_diffusion_loss
from training.model.vq_diffusion.schedule import MaskAndReplace


def test_q_sample_replaces_with_probability_k_beta_bar():
    K, n = 4, 100_000
    sch = MaskAndReplace(K, DiffusionConfig(timesteps=10, alpha_cum_end=0.1, gamma_cum_end=0.5))
    x0 = torch.zeros(1, n, dtype=torch.long)
    for t in (4, 10):
        alpha, beta, gamma = (float(v) for v in sch.cumulative(t))
        assert K * beta > 0.1  # a real replace share
        xt = sch.q_sample(x0, torch.tensor([t]), torch.Generator().manual_seed(t))
        freq = torch.bincount(xt.flatten(), minlength=K + 1).double() / n
        expected = torch.tensor([alpha + beta] + [beta] * (K - 1) + [gamma], dtype=torch.float64)
        assert torch.allclose(freq, expected, atol=5e-3), (t, freq, expected)


def test_adaptive_aux_weight_is_two_minus_t_fraction():
    K, L, T = 5, 6, 10
    sch = MaskAndReplace(K, DiffusionConfig(timesteps=T))
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, K, (1, L), generator=g)
    logits = torch.randn(1, L, K, generator=g)
    for t in (1, 4, 10):
        tt = torch.tensor([t])
        xt = sch.q_sample(x0, tt, torch.Generator().manual_seed(t))
        loss, m = vq_diffusion_loss(logits, x0, xt, tt, sch, aux_weight=0.5, adaptive_aux=True)
        w = 0.5 * (2.0 - (t - 1) / T)
        assert math.isclose(loss.item(), m["vb_loss"].item() + w * m["aux_loss"].item(), rel_tol=1e-5)
        flat, _ = vq_diffusion_loss(logits, x0, xt, tt, sch, aux_weight=0.5, adaptive_aux=False)
        assert math.isclose(flat.item(), m["vb_loss"].item() + 0.5 * m["aux_loss"].item(), rel_tol=1e-5)
