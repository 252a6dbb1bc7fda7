"""Autoregressive baseline (PDM Eq. 3): the same encoder-decoder as ``PDM`` with a causal decoder.

Input position i holds the previous token (a learnable BOS at i = 0) plus the position embedding of
the token it predicts (raster order), so ``forward(tokens)[:, i]`` scores ``tokens[:, i]``.

Sampling with the KV cache (one image token per call)::

    text_kv = model.encode_text(text, text_mask, drop_text=None)     # per-layer cross-attention K/V
    cache = model.init_cache(batch)                                  # empty self-attention cache
    prev = torch.full((batch,), model.bos_id)                        # BOS for the first step
    for i in range(model.seq_len):
        logits = model.step(prev, cache, text_kv)                    # [B, K]: scores of position i
        prev = sample(logits)                                        # Long[B]
    # for CFG: build text_kv / cache with 2B rows (drop_text = [False]*B + [True]*B), feed prev twice

``step`` advances ``cache.pos`` by one; after ``seq_len`` steps the cache is full.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from training.model.config import ModelConfig, model_config
from training.model.decoder import TokenDecoder
from training.model.layers import LayerKV, text_attn_bias


@dataclass
class TextKV:
    """Text context encoded once per prompt batch: cross-attention (k, v) per layer + key validity."""

    kv: list[tuple[Tensor, Tensor]]
    valid: Tensor  # Bool[B, 1+S]


@dataclass
class ARCache:
    """Self-attention keys/values of every layer ([B, H, L, d] each) and the next position to write."""

    layers: list[LayerKV]
    pos: int = 0


class ARModel(TokenDecoder):
    special_row = "bos_emb"  # the BOS row
    kind = "ar"  # the export's ``kind`` metadata (training.model.MODEL_KINDS)

    def __init__(self, cfg: ModelConfig | str | dict):
        super().__init__(model_config(cfg), causal=True)
        self.bos_id = self.special_id  # vocabulary = codebook + BOS

    def forward(
        self,
        tokens: Tensor,
        text: Tensor,
        text_mask: Tensor,
        drop_text: Optional[Tensor] = None,
        attn_bias_text: float = 0.0,
    ) -> Tensor:
        """Teacher forcing: ``tokens`` Long[B, L] (codes) -> logits [B, L, K], row i scoring tokens[:, i]
        given tokens[:, :i] (Eq. 3). ``drop_text`` / condition dropout as in ``PDM.forward``."""
        inp = torch.cat([torch.full_like(tokens[:, :1], self.bos_id), tokens[:, :-1]], dim=1)
        return self.token_head(self.trunk(inp, text, text_mask, drop_text, attn_bias_text))

    # ---- incremental decoding ----
    def encode_text(self, text: Tensor, text_mask: Tensor, drop_text: Optional[Tensor] = None) -> TextKV:
        """Project the text once and precompute every layer's cross-attention keys/values."""
        ctx, valid = self.text(text, text_mask, drop_text)
        return TextKV([blk.cross.kv_of(ctx) for blk in self.blocks], valid)

    def init_cache(self, batch: int, device=None, dtype: Optional[torch.dtype] = None) -> ARCache:
        """An empty cache for ``batch`` rows on the model's device/dtype unless given."""
        p = self.tok_emb.weight
        device, dtype = device or p.device, dtype or p.dtype
        shape = (batch, self.cfg.heads, self.seq_len, self.cfg.head_dim)
        return ARCache(
            [
                LayerKV(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
                for _ in self.blocks
            ]
        )

    def step(self, prev: Optional[Tensor], cache: ARCache, text_kv: TextKV, attn_bias_text: float = 0.0) -> Tensor:
        """One decoding step. ``prev`` Long[B]: the token sampled at the previous step, or ``bos_id``
        (or None) at the first step. Returns logits [B, K] for position ``cache.pos`` and advances it."""
        i = cache.pos
        if i >= self.seq_len:
            raise IndexError(f"the cache is full: all {self.seq_len} positions were decoded")
        B = text_kv.valid.shape[0]
        if prev is None:
            prev = torch.full((B,), self.bos_id, dtype=torch.long, device=text_kv.valid.device)
        x = self.embed(prev.view(B, 1)) + self.pos_emb()[i].to(text_kv.kv[0][0].dtype)
        bias = text_attn_bias(text_kv.valid, attn_bias_text, x.dtype)
        for blk, layer_kv, ckv in zip(self.blocks, cache.layers, text_kv.kv):
            x = blk(x, None, bias, ctx_kv=ckv, cache=layer_kv, pos=i)
        cache.pos = i + 1
        return self.token_head(self.ln_f(x))[:, 0]


def ar_loss(logits: Tensor, tokens: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Eq. 3 teacher-forcing cross-entropy; metrics: loss, accuracy (detached)."""
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens.reshape(-1))
    with torch.no_grad():
        acc = (logits.argmax(-1) == tokens).float().mean()
    return loss, {"loss": loss.detach(), "token_loss": loss.detach(), "token_acc": acc}
