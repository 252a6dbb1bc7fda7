"""The mask-and-replace forward process of VQ-Diffusion (Improved VQ-Diffusion section 2, Eq. 1, 2 and 4).

States are the K codes and [MASK] (index K). One step t keeps a code with probability alpha_t + beta_t,
replaces it by each other code with probability beta_t, masks it with probability gamma_t; [MASK] stays
[MASK]: beta_t = (1 - alpha_t - gamma_t) / K. Timesteps are the paper's, 1..T; t = 0 is the clean x_0.

Matrices here are row-stochastic: ``Q[i, j] = q(x_t = j | x_s = i)``, so rows sum to 1. Eq. 2 prints the
transpose (its columns are the "from" states: q(x_t | x_{t-1}) = v(x_t)^T Q_t v(x_{t-1})).

Any product Q_{s+1} ... Q_t is again mask-and-replace (``coefficients(s, t)``), with
alpha = alpha-bar_t / alpha-bar_s, 1 - gamma = (1 - gamma-bar_t) / (1 - gamma-bar_s), beta = (1 - alpha - gamma) / K.
With s = 0 it is Eq. 4: Q-bar_t v(x_0) = alpha-bar_t v(x_0) + (gamma-bar_t - beta-bar_t) v(K+1) + beta-bar_t, where
beta-bar_t = (1 - alpha-bar_t - gamma-bar_t) / K. (Eq. 4 as printed divides by K + 1; then the column would not sum
to 1. The product of the Eq. 2 matrices, microsoft/VQ-Diffusion and diffusers all divide by K.)

The cumulative values are linear in t between the configured ends (VQ-Diffusion's schedule), and the
per-step alpha_t, gamma_t follow from them.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from training.model.seeded_random import randint, uniform
from training.model.vq_diffusion.config import DiffusionConfig

TimeArg = Union[int, Tensor]


class MaskAndReplace:
    """The schedule of a codebook of ``codebook_size`` codes (K); [MASK] is state K."""

    def __init__(self, codebook_size: int, cfg: Optional[DiffusionConfig] = None):
        cfg = cfg or DiffusionConfig()
        self.K, self.T, self.mask_id = codebook_size, cfg.timesteps, codebook_size
        frac = torch.arange(cfg.timesteps, dtype=torch.float64) / (cfg.timesteps - 1)
        one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
        # index t = 0..T; t = 0 is the identity (x_0 itself)
        self.alpha_bar = torch.cat([one, cfg.alpha_cum_start + frac * (cfg.alpha_cum_end - cfg.alpha_cum_start)])
        self.gamma_bar = torch.cat([zero, cfg.gamma_cum_start + frac * (cfg.gamma_cum_end - cfg.gamma_cum_start)])

    def coefficients(self, s: TimeArg, t: TimeArg) -> tuple[Tensor, Tensor, Tensor]:
        """(alpha, beta, gamma) of Q_{s+1} ... Q_t (float64; the shape of s, t broadcast), s <= t."""
        s, t = torch.as_tensor(s), torch.as_tensor(t)
        a_bar, g_bar = self.alpha_bar.to(t.device), self.gamma_bar.to(t.device)
        alpha = a_bar[t] / a_bar[s]
        gamma = 1.0 - (1.0 - g_bar[t]) / (1.0 - g_bar[s])
        return alpha, (1.0 - alpha - gamma) / self.K, gamma

    def step(self, t: TimeArg) -> tuple[Tensor, Tensor, Tensor]:
        """(alpha_t, beta_t, gamma_t) of one step Q_t, Eq. 2."""
        return self.coefficients(torch.as_tensor(t) - 1, t)

    def cumulative(self, t: TimeArg) -> tuple[Tensor, Tensor, Tensor]:
        """(alpha-bar_t, beta-bar_t, gamma-bar_t) of Q-bar_t = Q_t ... Q_1, Eq. 4."""
        return self.coefficients(torch.zeros_like(torch.as_tensor(t)), t)

    def matrix(self, s: int, t: int) -> Tensor:
        """The dense row-stochastic [K+1, K+1] matrix of Q_{s+1} ... Q_t (Eq. 2 when s = t - 1, Eq. 4 when s = 0)."""
        alpha, beta, gamma = (float(v) for v in self.coefficients(s, t))
        q = torch.full((self.K + 1, self.K + 1), beta, dtype=torch.float64)
        q[:, self.K] = gamma
        q.diagonal()[: self.K] += alpha
        q[self.K] = 0.0
        q[self.K, self.K] = 1.0
        return q

    def q_sample(self, x0: Tensor, t: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Draw x_t ~ q(x_t | x_0) (Eq. 4): Long[B, L] codes -> codes or [MASK]; ``t`` Long[B] in 1..T.
        Two uniforms per token from ``generator`` (its own device), the result on x0's device."""
        alpha, beta, gamma = (v.float().to(x0.device)[:, None] for v in self.cumulative(t.cpu()))
        u = uniform(x0.shape, generator, x0.device)
        other = randint(self.K, x0.shape, generator, x0.device)
        # [0, gamma): [MASK]; [gamma, gamma + K beta): a uniform code (x_0 itself included); above: x_0 kept
        out = torch.where(u < gamma + self.K * beta, other, x0)
        return out.masked_fill(u < gamma, self.mask_id)

    def timestep_for_mask_ratio(self, ratio: Tensor) -> Tensor:
        """argmin_t |ratio - gamma-bar_t| over t = 1..T (Improved VQ-Diffusion 3.2 and Algorithm 1, line 10): the
        timestep whose [MASK] share matches a state with ``ratio`` of its tokens masked. Float[B] -> Long[B]."""
        g_bar = self.gamma_bar[1:].to(ratio.device, torch.float64)
        return (ratio.double()[:, None] - g_bar[None]).abs().argmin(1) + 1
