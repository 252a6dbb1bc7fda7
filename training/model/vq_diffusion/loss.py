"""The VQ-Diffusion training objective: the variational bound plus the auxiliary x_0 loss.

For a sample noised to x_t ~ q(x_t | x_0) at a uniform t in 1..T and the network's p(x_0 | x_t):

    L_vb  = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))     t > 1   (Eq. 3 against Eq. 5)
          = -log p(x_0 | x_1)                                t = 1   (the decoder term)
    L_aux = -log p(x_0 | x_t)                                 (KL of the one-hot x_0 to the prediction)
    loss  = mean over positions of  L_vb + w_t * aux_weight * L_aux,   w_t = 2 - (t - 1) / T when adaptive, else 1

as microsoft/VQ-Diffusion's ``_train_loss`` (``mask_weight`` [1, 1], ``adaptive_auxiliary_loss``), except
that t is drawn uniformly (the reference switches to importance sampling by a running loss history).
"""

from __future__ import annotations

import torch
from torch import Tensor

from training.model.vq_diffusion.posterior import LOG_FLOOR, log_onehot, posterior_log_probs
from training.model.vq_diffusion.schedule import MaskAndReplace


def vq_diffusion_loss(
    token_logits: Tensor,
    x0: Tensor,
    x_t: Tensor,
    t: Tensor,
    schedule: MaskAndReplace,
    aux_weight: float = 5e-4,
    adaptive_aux: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``token_logits`` [B, L, K] of p(x_0 | x_t); ``x0``, ``x_t`` Long[B, L]; ``t`` Long[B] in 1..T.
    Metrics (detached): loss, vb_loss, aux_loss, token_acc (argmax x_0 at the [MASK] positions), mask_frac."""
    log_p_x0 = token_logits.float().log_softmax(-1).transpose(1, 2).clamp(min=LOG_FLOOR)  # [B, K, L]
    t_cpu, t = t.cpu(), t.to(token_logits.device)  # the schedule's tables are on the CPU, the losses on the device
    log_model = posterior_log_probs(log_p_x0, x_t, t_cpu, schedule)  # p(x_{t-1} | x_t), Eq. 5
    log_true = posterior_log_probs(log_onehot(x0, schedule.K), x_t, t_cpu, schedule)  # q(x_{t-1} | x_t, x_0), Eq. 3
    kl = (log_true.exp() * (log_true - log_model)).sum(1)  # [B, L]
    nll = -log_model.gather(1, x0[:, None]).squeeze(1)  # -log p(x_0 | x_1) where t = 1
    first = (t == 1)[:, None]
    vb = torch.where(first, nll, kl)
    aux = torch.where(first, nll, -log_p_x0.gather(1, x0[:, None]).squeeze(1))
    weight = torch.full_like(t, aux_weight, dtype=torch.float32)
    if adaptive_aux:
        weight = weight * (2.0 - (t.float() - 1.0) / schedule.T)
    loss = (vb + weight[:, None] * aux).mean()
    with torch.no_grad():
        masked = x_t == schedule.mask_id
        correct = (token_logits.argmax(-1) == x0)[masked]
        metrics = {
            "loss": loss.detach(),
            "vb_loss": vb.mean().detach(),
            "aux_loss": aux.mean().detach(),
            "token_acc": correct.float().mean() if correct.numel() else loss.new_zeros(()),
            "mask_frac": masked.float().mean(),
        }
    return loss, metrics
