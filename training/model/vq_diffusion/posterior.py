"""The posterior of the mask-and-replace process and the reverse step built on it (Improved VQ-Diffusion Eq. 3, 5).

Distributions are log-probabilities laid out classes first, ``[B, C, L]`` (C = K codes, or K + 1 with [MASK]
last), like microsoft/VQ-Diffusion and diffusers' ``VQDiffusionScheduler``. Log-probabilities are floored at
``LOG_FLOOR`` so that impossible states stay finite (a KL of two of them is then 0, never NaN).

    q(x_s | x_t, x_0) = q(x_t | x_s) q(x_s | x_0) / q(x_t | x_0)                           Eq. 3 (s = t - 1)
    p(x_s | x_t)      = sum_x0 q(x_s | x_t, x0) p(x0 | x_t)                               Eq. 5
                      = q(x_t | x_s) * sum_x0 [p(x0 | x_t) / q(x_t | x0)] q(x_s | x0)

The second form needs no [K, K] matrix: every factor is mask-and-replace (``MaskAndReplace.coefficients``).
s < t - 1 (skipping steps) is the same formula with Q_{s+1} ... Q_t as the transition.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from training.model.seeded_random import uniform
from training.model.vq_diffusion.schedule import MaskAndReplace, TimeArg

LOG_FLOOR = -70.0


def log_onehot(x: Tensor, num_classes: int) -> Tensor:
    """Long[B, L] -> the log one-hot [B, num_classes, L] (floored, not -inf)."""
    onehot = F.one_hot(x, num_classes).permute(0, 2, 1)
    return torch.where(onehot.bool(), 0.0, LOG_FLOOR)


def _per_sample(v: Tensor, batch: int, device) -> Tensor:
    """A coefficient (scalar or [B]) as log-values [B, 1, 1], float32."""
    return v.log().float().to(device).expand(batch).reshape(batch, 1, 1)


def _log_q_given(x: Tensor, coeffs: tuple[Tensor, Tensor, Tensor], K: int, to_mask_row: bool) -> Tensor:
    """log q(x | y) for the observed states x Long[B, L] over the K code values of y ([B, K, L]), and with
    ``to_mask_row`` a last row for y = [MASK] ([B, K+1, L]): alpha + beta where y = x, beta elsewhere, gamma
    for every code y when x is [MASK]; from [MASK] only [MASK] is reachable."""
    B, L = x.shape
    a, b, g = (_per_sample(c, B, x.device) for c in coeffs)
    masked = (x == K)[:, None]
    same = F.one_hot(x.clamp(max=K - 1), K).permute(0, 2, 1).bool()
    rows = torch.where(masked, g, torch.where(same, torch.logaddexp(a, b), b))
    if to_mask_row:
        from_mask = torch.where(masked, 0.0, LOG_FLOOR)
        rows = torch.cat([rows, from_mask], dim=1)
    return rows.expand(B, -1, L)


def posterior_log_probs(
    log_p_x0: Tensor, x_t: Tensor, t: TimeArg, schedule: MaskAndReplace, s: Optional[TimeArg] = None
) -> Tensor:
    """log p(x_s | x_t) [B, K+1, L] (Eq. 5) for a predicted log p(x_0 | x_t) [B, K, L]; a one-hot ``log_p_x0``
    (``log_onehot``) gives the true posterior q(x_s | x_t, x_0) (Eq. 3). ``x_t`` Long[B, L] (codes or K =
    [MASK]); ``t`` and ``s`` (default t - 1) ints or Long[B], 0 <= s < t <= T."""
    K = schedule.K
    B = x_t.shape[0]
    t = torch.as_tensor(t, device="cpu")
    s = t - 1 if s is None else torch.as_tensor(s, device="cpu")
    log_q_xt_x0 = _log_q_given(x_t, schedule.coefficients(torch.zeros_like(t), t), K, to_mask_row=False)
    log_w = log_p_x0.float() - log_q_xt_x0  # p(x0 | x_t) / q(x_t | x0)
    log_z = torch.logsumexp(log_w, dim=1, keepdim=True)
    log_w = log_w - log_z
    a_s, b_s, g_s = (_per_sample(c, B, x_t.device) for c in schedule.cumulative(s))
    log_xs = torch.cat(  # q(x_s | x0) applied to the normalised weights: codes, then [MASK]
        [torch.logaddexp(log_w + a_s, b_s), g_s.expand(B, 1, x_t.shape[1])], dim=1
    )
    log_q_xt_xs = _log_q_given(x_t, schedule.coefficients(s, t), K, to_mask_row=True)
    return (log_xs + log_q_xt_xs + log_z).clamp(min=LOG_FLOOR)


def gumbel_max(log_p: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    """One categorical draw per position from log-probabilities [B, C, L] -> Long[B, L] (Gumbel-max; the noise
    is ``torch.rand`` of the same shape, as in microsoft/VQ-Diffusion and diffusers)."""
    u = uniform(log_p.shape, generator, log_p.device)
    return (log_p - torch.log(-torch.log(u + 1e-30) + 1e-30)).argmax(dim=1)


def reverse_step(
    log_p_x0: Tensor,
    x_t: Tensor,
    t: int,
    schedule: MaskAndReplace,
    generator: Optional[torch.Generator] = None,
    s: Optional[int] = None,
) -> Tensor:
    """x_s ~ p(x_s | x_t) (Eq. 5), s = t - 1 unless given. At s = 0 the posterior is p(x_0 | x_t) itself, so the
    draw is made from ``log_p_x0`` directly (never [MASK])."""
    s = t - 1 if s is None else s
    if s == 0:
        return gumbel_max(log_p_x0, generator)
    return gumbel_max(posterior_log_probs(log_p_x0, x_t, t, schedule, s), generator)
