"""The super-resolution transformer of CogView2's hierarchical generation (section 3.3), built from our layers.

One sequence [low-res tokens, high-res tokens]: the low-res part plays the encoder of direct super-resolution,
the high-res part the decoder, in one stack of shared weights (CogView2 shares everything but the decoder's
attention between its encoder and decoder). Every block cross-attends to the text (``layers.Block`` with the
learnable null text); self-attention is restricted by ``sr_attention_mask``: the high-res tokens see their
local window and the cross-resolution window of the low-res grid, never the whole image. The input of a
high-res token adds an embedding of its low-res parent's code at its place inside the parent (one row per code
and sub-position, ``parent_places``: nearest upsampling, the usual input of a super-resolution network, with a
learned sub-pixel split), so the decoder starts from the low-res content instead of finding it by attention.
This row per (code, place) is ours, not CogView2's: without it the toy model needed twice the steps.

The same network serves both super-resolution modules of the paper: direct SR feeds a high-res grid of [MASK]
(Eq. 3), iterative SR a grid of which a share is [MASK] (the masked-prediction model of the LoPAR refinement).
The paper fine-tunes two copies; here one is trained on both inputs, and the iterative step also sees the
low-res tokens.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from training.model.layers import Block, PositionEmbedding, TextConditioner, init_weights, text_attn_bias
from training.model.super_resolution.config import SRModelConfig
from training.model.super_resolution.local_attention import grid_coords, sr_attention_mask


def parent_places(lo_side: int, hi_side: int) -> tuple[Tensor, Tensor, int]:
    """For each position of the row-major high-res grid: the low-res position under it (nearest upsampling) and its
    place among the s x s high-res tokens of that parent (row-major, s = ceil(hi / lo)); and s * s."""
    hr, hc = grid_coords(hi_side)
    pr, pc = hr * lo_side // hi_side, hc * lo_side // hi_side
    s = -(-hi_side // lo_side)
    dr, dc = (hr - pr * hi_side // lo_side).clamp(0, s - 1), (hc - pc * hi_side // lo_side).clamp(0, s - 1)
    return pr * lo_side + pc, dr * s + dc, s * s


class SRTransformer(nn.Module):
    """``forward(lo_tokens, hi_tokens, text, text_mask, drop_text=None) -> logits [B, L_hi, K_hi]``.

    lo_tokens: Long[B, lo_grid^2] codes of the low-res tokenizer; hi_tokens: Long[B, hi_grid^2] codes of the
    high-res tokenizer or ``mask_id`` (= K_hi); text [B, S, text_dim] with text_mask Bool[B, S]."""

    kind = "super_resolution"

    def __init__(self, cfg: SRModelConfig):
        super().__init__()
        self.cfg = cfg
        self.codebook_size, self.mask_id = cfg.hi_codebook_size, cfg.hi_codebook_size
        self.n_lo, self.n_hi = cfg.lo_grid**2, cfg.hi_grid**2
        self.lo_emb = nn.Embedding(cfg.lo_codebook_size, cfg.dim)
        self.hi_emb = nn.Embedding(cfg.hi_codebook_size, cfg.dim)
        self.mask_emb = nn.Parameter(torch.zeros(cfg.dim))
        self.lo_pos_emb = PositionEmbedding(cfg.lo_grid, cfg.lo_grid, cfg.dim)
        self.hi_pos_emb = PositionEmbedding(cfg.hi_grid, cfg.hi_grid, cfg.dim)
        self.text = TextConditioner(cfg.text_dim, cfg.dim, cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.ffn_dim, cfg.dropout, cfg.norm_eps) for _ in range(cfg.layers)
        )
        self.ln_f = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.hi_codebook_size, bias=False)
        self.register_buffer(
            "attn_mask", sr_attention_mask(cfg.lo_grid, cfg.hi_grid, cfg.window, cfg.cross_window), persistent=False
        )
        parent, sub, self.n_sub = parent_places(cfg.lo_grid, cfg.hi_grid)
        self.register_buffer("parent", parent, persistent=False)
        self.register_buffer("sub", sub, persistent=False)
        self.child_emb = nn.Embedding(cfg.lo_codebook_size * self.n_sub, cfg.dim)
        init_weights(self, cfg.init_std, cfg.layers)
        nn.init.normal_(self.mask_emb, 0.0, cfg.init_std)

    @torch.no_grad()
    def init_from_codebooks(self, lo_codebook: Tensor, hi_codebook: Tensor, seed: int = 0) -> None:
        """Start the code embeddings (and the output head) from the tokenizers' codebook vectors [K, d] through one
        fixed random projection to ``dim``: codes that look alike start alike (CogView2 starts from a pretrained
        model's image-token embeddings; here there is none)."""
        g = torch.Generator().manual_seed(seed)
        proj = torch.randn(lo_codebook.shape[1], self.cfg.dim, generator=g)
        for table, book in (
            (self.lo_emb.weight, lo_codebook),
            (self.hi_emb.weight, hi_codebook),
            (self.head.weight, hi_codebook),
        ):
            if book.shape[1] != proj.shape[0]:
                proj = torch.randn(book.shape[1], self.cfg.dim, generator=g)
            x = (book.float() - book.float().mean(0)) @ proj.to(book.device)
            table.copy_((x / x.std().clamp(min=1e-8) * self.cfg.init_std).to(table))
        self.child_emb.weight.copy_(self.lo_emb.weight.repeat_interleave(self.n_sub, 0))

    def forward(
        self, lo_tokens: Tensor, hi_tokens: Tensor, text: Tensor, text_mask: Tensor, drop_text: Optional[Tensor] = None
    ) -> Tensor:
        if lo_tokens.shape[1] != self.n_lo or hi_tokens.shape[1] != self.n_hi:
            raise ValueError(
                f"expected {self.n_lo} low-res and {self.n_hi} high-res tokens per sample, "
                f"got {lo_tokens.shape[1]} and {hi_tokens.shape[1]}"
            )
        ctx, valid = self.text(text, text_mask, drop_text)
        is_mask = hi_tokens == self.mask_id
        hi = self.hi_emb(hi_tokens.masked_fill(is_mask, 0))
        lo = self.lo_emb(lo_tokens)
        hi = torch.where(is_mask[..., None], self.mask_emb.to(hi.dtype), hi) + self.hi_pos_emb().to(hi.dtype)
        hi = hi + self.child_emb(lo_tokens[:, self.parent] * self.n_sub + self.sub)  # its parent's code at its place
        x = self.drop(torch.cat([lo + self.lo_pos_emb().to(hi.dtype), hi], dim=1))
        bias = text_attn_bias(valid, 0.0, x.dtype)
        local = torch.zeros(self.attn_mask.shape, dtype=x.dtype, device=x.device).masked_fill(
            ~self.attn_mask, -torch.inf
        )
        for blk in self.blocks:
            x = blk(x, ctx, bias, attn_mask=local)
        return self.head(self.ln_f(x[:, self.n_lo :]))
