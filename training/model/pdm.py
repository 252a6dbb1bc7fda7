"""The Progressive Denoising Model (PDM, section 3; architecture of section 4 / appendix A).

Encoder-decoder: the (frozen) text encoder lives outside; PDM receives its states [B, S, text_dim]
and owns a projection to ``dim`` plus a learnable null text embedding (CFG). The decoder runs over the
L image positions WITHOUT a causal mask ("the removal of the causal mask in the image decoder",
section 4) and has two heads: ``token_head`` (codebook logits, p(y | Y^{<=t}, X, z), Eq. 4) and
``state_head`` ("an additional linear layer ... to predict the state sequence", appendix A: p(z | Y^{<=t}, X),
Eq. 4; classes in ``training.model.states``: 0 keep, 1 generate, 2 revise).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from training.model.config import ModelConfig, model_config
from training.model.layers import Block, PositionEmbedding, TextConditioner, init_weights, text_attn_bias
from training.model.states import NUM_STATES


class PDMOutput(NamedTuple):
    token_logits: Tensor  # [B, L, K]  codebook logits (never the [mask] id)
    state_logits: Tensor  # [B, L, 3]  keep / generate / revise
    hidden: Tensor  # [B, L, dim] final (normalised) hidden states


class PDM(nn.Module):
    """``forward(tokens, text, text_mask, drop_text=None, attn_bias_text=0.0) -> PDMOutput``.

    tokens:    Long[B, L], codes in [0, K) or ``mask_id`` (= K).
    text:      Float[B, S, text_dim], frozen text-encoder states.
    text_mask: Bool[B, S], True at real (non-padding) text tokens.
    drop_text: Bool[B]; True replaces sample b's text by the learnable null embedding (classifier-free
               guidance: run the batch twice, or concatenated, with False / True). When None and the
               module is in training mode, each sample is dropped with probability ``cfg.cond_dropout``.
    attn_bias_text: c of CogView2 Eq. 7, added to the cross-attention scores toward the text tokens
               (relative to the always-visible null key; see ``training.model.layers``).
    """

    kind = "pdm"  # the export's ``kind`` metadata (training.model.MODEL_KINDS)

    def __init__(self, cfg: ModelConfig | str | dict):
        super().__init__()
        cfg = model_config(cfg)
        self.cfg = cfg
        self.codebook_size = cfg.codebook_size
        self.mask_id = cfg.codebook_size  # vocabulary = codebook + [mask]
        self.vocab_size = cfg.codebook_size + 1
        self.seq_len = cfg.seq_len
        self.grid = cfg.grid
        self.grad_checkpointing = False  # the trainer may switch it on (activation checkpointing)

        self.tok_emb = nn.Embedding(cfg.codebook_size, cfg.dim)  # code rows (tied to token_head if asked)
        self.mask_emb = nn.Parameter(torch.zeros(cfg.dim))  # the [mask] row
        self.pos_emb = PositionEmbedding(cfg.grid_h, cfg.grid_w, cfg.dim, cfg.pos_emb)
        self.text = TextConditioner(cfg.text_dim, cfg.dim, cfg.norm_eps, cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.ffn_dim, cfg.dropout, cfg.norm_eps, cfg.bias, causal=False)
            for _ in range(cfg.layers)
        )
        self.ln_f = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.token_head = nn.Linear(cfg.dim, cfg.codebook_size, bias=False)
        self.state_head = nn.Linear(cfg.dim, NUM_STATES, bias=True)
        init_weights(self, cfg.init_std, cfg.layers)
        nn.init.normal_(self.mask_emb, 0.0, cfg.init_std)
        if cfg.tie_embeddings:
            self.token_head.weight = self.tok_emb.weight

    def embed(self, tokens: Tensor) -> Tensor:
        is_mask = tokens == self.mask_id
        x = self.tok_emb(tokens.masked_fill(is_mask, 0))
        return torch.where(is_mask[..., None], self.mask_emb.to(x.dtype), x)

    def sample_drop(self, batch: int, device: torch.device) -> Optional[Tensor]:
        """The condition-dropout mask used when ``drop_text`` is None (training mode only)."""
        if not self.training or self.cfg.cond_dropout <= 0:
            return None
        return torch.rand(batch, device=device) < self.cfg.cond_dropout

    def forward(
        self,
        tokens: Tensor,
        text: Tensor,
        text_mask: Tensor,
        drop_text: Optional[Tensor] = None,
        attn_bias_text: float = 0.0,
    ) -> PDMOutput:
        h = self.trunk(tokens, text, text_mask, drop_text, attn_bias_text)
        return PDMOutput(self.token_head(h), self.state_head(h), h)

    def trunk(
        self,
        tokens: Tensor,
        text: Tensor,
        text_mask: Tensor,
        drop_text: Optional[Tensor] = None,
        attn_bias_text: float = 0.0,
        extra_embedding: Optional[Tensor] = None,
    ) -> Tensor:
        """The decoder without its heads: final (normalised) hidden states [B, L, dim]. ``extra_embedding``
        ([B, 1, dim] or [B, L, dim]) is added to the input embeddings (a timestep embedding)."""
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
