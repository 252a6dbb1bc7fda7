"""The VQ quantizer's training pass (Eq. 1 of the PDM paper): nearest codes, the straight-through estimator, the
commitment term (weighted by beta, gradient to the encoder only) and the codebook term (gradient to the codes
only, dropped with ``codebook_weight=0``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tokenization.vqgan.quantize import VectorQuantizer


def _setup(beta: float = 0.25):
    torch.manual_seed(0)
    q = VectorQuantizer(8, 4, beta=beta)
    with torch.no_grad():
        q.embedding.weight.copy_(torch.randn(8, 4))
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    return q, z


def _chosen(q: VectorQuantizer, z: torch.Tensor):
    zf = z.detach().permute(0, 2, 3, 1).reshape(-1, 4)
    d = ((zf[:, None] - q.embedding.weight.detach()[None]) ** 2).sum(-1)
    ids = d.argmin(1)
    return zf, ids, q.embedding.weight.detach()[ids]


def test_forward_picks_the_nearest_codes_and_passes_gradients_straight_through():
    q, z = _setup()
    zq, _, ids = q(z)
    zf, want, e = _chosen(q, z)
    assert ids.shape == (2, 9) and ids.dtype == torch.long and torch.equal(ids.reshape(-1), want)
    assert torch.allclose(zq.permute(0, 2, 3, 1).reshape(-1, 4), e)  # forward value: the codes
    zq.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))  # backward: identity to the encoder's features


def test_loss_is_beta_commitment_plus_codebook_term_each_with_its_own_gradient():
    beta = 0.25
    q, z = _setup(beta)
    _, loss, _ = q(z)
    zf, _, e = _chosen(q, z)
    mse = F.mse_loss(zf, e)
    assert torch.allclose(loss, (1.0 + beta) * mse)
    loss.backward()
    n = zf.numel()
    want_z = (beta * 2.0 * (zf - e) / n).reshape(2, 3, 3, 4).permute(0, 3, 1, 2)  # commitment only
    assert torch.allclose(z.grad, want_z, atol=1e-7)
    g = q.embedding.weight.grad  # codebook term only: mean of 2 (e - z) over the positions using a code
    _, ids, _ = _chosen(q, z)
    want_e = torch.zeros_like(g).index_add_(0, ids, 2.0 * (e - zf) / n)
    assert torch.allclose(g, want_e, atol=1e-7)


def test_codebook_weight_zero_leaves_the_codes_to_the_ema():
    beta = 0.5
    q, z = _setup(beta)
    _, loss, _ = q(z, codebook_weight=0.0)
    zf, _, e = _chosen(q, z)
    assert torch.allclose(loss, beta * F.mse_loss(zf, e))
    loss.backward()
    assert q.embedding.weight.grad is None or not q.embedding.weight.grad.any()
