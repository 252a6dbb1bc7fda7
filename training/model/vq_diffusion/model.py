"""The VQ-Diffusion denoising network: our PDM decoder with a timestep embedding, predicting p(x_0 | x_t).

VQ-Diffusion reparameterises the reverse process by the denoised token distribution p_theta(x~_0 | x_t)
(Improved VQ-Diffusion section 2, before Eq. 5). The network is ``PDM``'s decoder (embeddings with the
[MASK] row, 2D positions, blocks with cross-attention to the text and the learnable null text of the
classifier-free guidance, Improved VQ-Diffusion 3.1) plus a learned embedding of t (1..T) added to every
input position; the token head gives the K logits of x_0. The state head of PDM is not part of it.
(microsoft/VQ-Diffusion feeds t through adaptive layer norms in every block instead.)
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn as nn
from torch import Tensor

from training.model.config import ModelConfig
from training.model.pdm import PDM
from training.model.vq_diffusion.schedule import MaskAndReplace


class DiffusionOutput(NamedTuple):
    token_logits: Tensor  # [B, L, K]  logits of p(x_0 | x_t)
    hidden: Tensor  # [B, L, dim]


class VQDiffusionTransformer(PDM):
    """``forward(tokens, text, text_mask, drop_text=None, attn_bias_text=0.0, *, t) -> DiffusionOutput``: PDM's
    call with the timestep ``t`` Long[B] in 1..T as a keyword; ``tokens`` Long[B, L] is x_t (codes or ``mask_id``).
    ``schedule`` is the model's mask-and-replace process (``model.diffusion`` of its config)."""

    kind = "vq_diffusion"

    def __init__(self, cfg: ModelConfig | str | dict):
        super().__init__(cfg)
        self.state_head = None  # p(z | ...) belongs to PDM only
        self.schedule = MaskAndReplace(self.cfg.codebook_size, self.cfg.diffusion)
        self.time_emb = nn.Embedding(self.schedule.T, self.cfg.dim)
        nn.init.normal_(self.time_emb.weight, 0.0, self.cfg.init_std)

    def forward(
        self,
        tokens: Tensor,
        text: Tensor,
        text_mask: Tensor,
        drop_text: Optional[Tensor] = None,
        attn_bias_text: float = 0.0,
        *,
        t: Tensor,
    ) -> DiffusionOutput:
        t = torch.as_tensor(t, device=tokens.device).expand(tokens.shape[0])
        if ((t < 1) | (t > self.schedule.T)).any():
            raise ValueError(f"timesteps must be in 1..{self.schedule.T}, got {sorted(set(t.tolist()))}")
        step = self.time_emb(t - 1)[:, None]
        h = self.trunk(tokens, text, text_mask, drop_text, attn_bias_text, extra_embedding=step)
        return DiffusionOutput(self.token_head(h), h)
