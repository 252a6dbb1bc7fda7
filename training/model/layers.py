"""Transformer pieces shared by the PDM and the autoregressive baseline (plain PyTorch, nanoGPT-like).

Attention is ``F.scaled_dot_product_attention``. The text context every block cross-attends to is
``[null] + projected text`` (``TextConditioner``): the learnable null embedding (Improved VQ-Diffusion
3.1) is key 0 and is always visible; for a dropped sample (CFG / condition dropout) it is the only
visible key. Because it is always there, the constant ``attn_bias_text`` c that CogView2 (Eq. 7) adds
to the scores toward text tokens is not a no-op here: inside the cross-attention softmax it moves
weight between the text keys and the null ("no text") key, as in CogView2 it moves weight between the
text and the image keys. (Without key 0 a constant added to every key would cancel in the softmax.)
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def _heads(x: Tensor, heads: int) -> Tensor:
    """[B, N, D] -> [B, H, N, D/H]"""
    B, N, D = x.shape
    return x.view(B, N, heads, D // heads).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    """[B, H, N, d] -> [B, N, H*d]"""
    B, H, N, d = x.shape
    return x.transpose(1, 2).reshape(B, N, H * d)


class LayerKV:
    """Preallocated self-attention keys/values of one layer for incremental (autoregressive) decoding."""

    def __init__(self, k: Tensor, v: Tensor):
        self.k, self.v = k, v  # [B, H, L_max, d]


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def forward(
        self,
        x: Tensor,
        causal: bool = False,
        cache: Optional[LayerKV] = None,
        pos: int = 0,
        attn_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """Full (bidirectional or causal) attention over ``x``, or restricted by ``attn_mask`` (Bool[N, N], True
        where query i may attend to key j: local windows); with ``cache``, ``x`` holds the positions
        ``pos .. pos+N-1``: their keys/values are written into the cache and the queries attend to every
        cached position up to their own (causal)."""
        q, k, v = (_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        p = self.dropout if self.training else 0.0
        if attn_mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        elif cache is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal)
        else:
            n = x.shape[1]
            cache.k[:, :, pos : pos + n] = k
            cache.v[:, :, pos : pos + n] = v
            k, v = cache.k[:, :, : pos + n], cache.v[:, :, : pos + n]
            qi = torch.arange(pos, pos + n, device=x.device)
            allowed = torch.arange(pos + n, device=x.device)[None, :] <= qi[:, None]  # [n, pos+n]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)
        return self.proj(_merge(y))


class CrossAttention(nn.Module):
    """Queries from the image stream, keys/values from the text context ``[B, 1+S, dim]``."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim, bias=bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def kv_of(self, ctx: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.kv(ctx).chunk(2, dim=-1)
        return _heads(k, self.heads), _heads(v, self.heads)

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], bias: Tensor) -> Tensor:
        """``bias``: additive float mask [B, 1, 1, 1+S] from :func:`text_attn_bias`."""
        q = _heads(self.q(x), self.heads)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=bias, dropout_p=p)
        return self.proj(_merge(y))


class MLP(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, ffn_dim, bias=bias)
        self.fc2 = nn.Linear(ffn_dim, dim, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x))))


class Block(nn.Module):
    """Pre-norm decoder block: self-attention, cross-attention to the text context, MLP."""

    def __init__(
        self,
        dim: int,
        heads: int,
        ffn_dim: int,
        dropout: float = 0.0,
        eps: float = 1e-5,
        bias: bool = True,
        causal: bool = False,
    ):
        super().__init__()
        self.causal = causal
        self.ln1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, heads, dropout, bias)
        self.ln2 = nn.LayerNorm(dim, eps=eps)
        self.cross = CrossAttention(dim, heads, dropout, bias)
        self.ln3 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, ffn_dim, dropout, bias)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        ctx: Optional[Tensor],
        bias: Tensor,
        ctx_kv: Optional[tuple[Tensor, Tensor]] = None,
        cache: Optional[LayerKV] = None,
        pos: int = 0,
        attn_mask: Optional[Tensor] = None,
    ) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x), causal=self.causal, cache=cache, pos=pos, attn_mask=attn_mask))
        kv = ctx_kv if ctx_kv is not None else self.cross.kv_of(ctx)
        x = x + self.drop(self.cross(self.ln2(x), kv, bias))
        return x + self.mlp(self.ln3(x))


class TextConditioner(nn.Module):
    """Frozen-encoder states [B, S, text_dim] -> context [B, 1+S, dim] = [null] + Linear(text).

    Key 0 is the learnable ``null_text`` embedding (Improved VQ-Diffusion 3.1: a learnable vector
    instead of the embedding of an empty text). Returns the context and ``valid`` [B, 1+S]: key 0 is
    always valid; text keys are valid where ``text_mask`` is True and the sample is not dropped."""

    def __init__(self, text_dim: int, dim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(text_dim, dim, bias=bias)
        self.null_text = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(
        self, text: Tensor, text_mask: Optional[Tensor], drop_text: Optional[Tensor] = None
    ) -> tuple[Tensor, Tensor]:
        B, S, _ = text.shape
        x = self.proj(text.to(self.proj.weight.dtype))  # e.g. a float16 encoder's states, a bf16 DeepSpeed model
        ctx = self.norm(torch.cat([self.null_text.expand(B, 1, -1).to(x.dtype), x], dim=1))
        valid = torch.ones(B, S, dtype=torch.bool, device=x.device) if text_mask is None else text_mask.bool()
        if drop_text is not None:
            valid = valid & ~drop_text.to(device=x.device, dtype=torch.bool)[:, None]
        valid = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=x.device), valid], dim=1)
        return ctx, valid


def text_attn_bias(valid: Tensor, attn_bias_text: float, dtype: torch.dtype) -> Tensor:
    """Additive cross-attention mask [B, 1, 1, 1+S]: -inf at invalid keys, ``attn_bias_text`` (CogView2
    Eq. 7's c) at visible text keys, 0 at the null key (index 0)."""
    bias = torch.full(valid.shape, float(attn_bias_text), dtype=dtype, device=valid.device)
    bias[:, 0] = 0.0
    bias = bias.masked_fill(~valid, float("-inf"))
    return bias[:, None, None, :]


class PositionEmbedding(nn.Module):
    """Learned positions: ``2d`` = row table [h, dim] + column table [w, dim]; ``1d`` = one table [L, dim].
    ``forward()`` returns [L, dim] in row-major order (the token order of the shards)."""

    def __init__(self, grid_h: int, grid_w: int, dim: int, kind: str = "2d"):
        super().__init__()
        self.grid_h, self.grid_w, self.kind = grid_h, grid_w, kind
        if kind == "2d":
            self.row = nn.Parameter(torch.zeros(grid_h, dim))
            self.col = nn.Parameter(torch.zeros(grid_w, dim))
        elif kind == "1d":
            self.table = nn.Parameter(torch.zeros(grid_h * grid_w, dim))
        else:
            raise ValueError(f"pos_emb must be '2d' or '1d', got {kind!r}")

    def forward(self) -> Tensor:
        if self.kind == "2d":
            return (self.row[:, None, :] + self.col[None, :, :]).reshape(self.grid_h * self.grid_w, -1)
        return self.table


def init_weights(model: nn.Module, std: float, n_layers: int) -> None:
    """GPT-2 init: N(0, std) for Linear/Embedding weights, position tables and the null embedding, zero
    biases, LayerNorm (1, 0), and std / sqrt(2 * n_layers) for the projections into the residual stream."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, std)
        elif isinstance(m, nn.LayerNorm) and m.weight is not None:
            nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (PositionEmbedding, TextConditioner)):
            for p in m.parameters(recurse=False):
                nn.init.normal_(p, 0.0, std)
    for m in model.modules():
        if isinstance(m, Block):
            for lin in (m.attn.proj, m.cross.proj, m.mlp.fc2):
                nn.init.normal_(lin.weight, 0.0, std / math.sqrt(2 * n_layers))
