"""The image-token decoder that PDM and its autoregressive baseline share (PDM section 4 / appendix A).

Code embeddings with one extra learnable row (PDM's [mask], the AR baseline's BOS), 2D position embeddings,
the text conditioner with its learnable null text (classifier-free guidance), ``cfg.layers`` blocks with
cross-attention to the text (causal or not), a final norm and the codebook head. A subclass names the extra
row (``special_row``: the parameter's name in checkpoints) and adds its own heads.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from training.model.config import ModelConfig
from training.model.layers import Block, PositionEmbedding, TextConditioner, init_weights, text_attn_bias


class TokenDecoder(nn.Module):
    special_row = "special_emb"  # the extra row's parameter name; its id is ``codebook_size``

    def __init__(self, cfg: ModelConfig, causal: bool, state_classes: int = 0):
        """``state_classes`` > 0 adds ``state_head`` (a linear layer with bias) before the weights are
        initialised, so a seed gives the same weights as a model that declares it itself."""
        super().__init__()
        self.cfg = cfg
        self.codebook_size = cfg.codebook_size
        self.special_id = cfg.codebook_size  # vocabulary = codebook + the extra row
        self.seq_len = cfg.seq_len
        self.grid = cfg.grid
        self.grad_checkpointing = False  # the trainer may switch it on (activation checkpointing)

        self.tok_emb = nn.Embedding(cfg.codebook_size, cfg.dim)  # code rows (tied to token_head if asked)
        setattr(self, self.special_row, nn.Parameter(torch.zeros(cfg.dim)))
        self.pos_emb = PositionEmbedding(cfg.grid_h, cfg.grid_w, cfg.dim, cfg.pos_emb)
        self.text = TextConditioner(cfg.text_dim, cfg.dim, cfg.norm_eps, cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.ffn_dim, cfg.dropout, cfg.norm_eps, cfg.bias, causal=causal)
            for _ in range(cfg.layers)
        )
        self.ln_f = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.token_head = nn.Linear(cfg.dim, cfg.codebook_size, bias=False)
        if state_classes:
            self.state_head = nn.Linear(cfg.dim, state_classes, bias=True)
        init_weights(self, cfg.init_std, cfg.layers)
        nn.init.normal_(self.special_embedding, 0.0, cfg.init_std)
        if cfg.tie_embeddings:
            self.token_head.weight = self.tok_emb.weight

    @property
    def special_embedding(self) -> nn.Parameter:
        return getattr(self, self.special_row)

    def embed(self, tokens: Tensor) -> Tensor:
        """Embeddings of ``tokens`` Long[...]: codes in [0, K) or ``special_id``."""
        is_special = tokens == self.special_id
        x = self.tok_emb(tokens.masked_fill(is_special, 0))
        return torch.where(is_special[..., None], self.special_embedding.to(x.dtype), x)

    def sample_drop(self, batch: int, device: torch.device) -> Optional[Tensor]:
        """The condition-dropout mask used when ``drop_text`` is None (training mode only)."""
        if not self.training or self.cfg.cond_dropout <= 0:
            return None
        return torch.rand(batch, device=device) < self.cfg.cond_dropout

    def trunk(
        self,
        tokens: Tensor,
        text: Tensor,
        text_mask: Tensor,
        drop_text: Optional[Tensor] = None,
        attn_bias_text: float = 0.0,
        extra_embedding: Optional[Tensor] = None,
    ) -> Tensor:
        """The decoder without its heads: final (normalised) hidden states [B, L, dim] of the input ``tokens``
        Long[B, L]. ``extra_embedding`` ([B, 1, dim] or [B, L, dim]) is added to the input embeddings (a
        timestep embedding)."""
        B, L = tokens.shape
        if L != self.seq_len:
            raise ValueError(f"expected {self.seq_len} image tokens per sample, got {L}")
        if drop_text is None:
            drop_text = self.sample_drop(B, tokens.device)
        ctx, valid = self.text(text, text_mask, drop_text)
        x = self.embed(tokens) + self.pos_emb().to(ctx.dtype)
        if extra_embedding is not None:
            x = x + extra_embedding.to(x.dtype)
        x = self.drop(x)
        bias = text_attn_bias(valid, attn_bias_text, x.dtype)
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, ctx, bias, use_reentrant=False)
            else:
                x = blk(x, ctx, bias)
        return self.ln_f(x)
