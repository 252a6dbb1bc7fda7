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

from torch import Tensor

from training.model.config import ModelConfig, model_config
from training.model.decoder import TokenDecoder
from training.model.states import NUM_STATES


class PDMOutput(NamedTuple):
    token_logits: Tensor  # [B, L, K]  codebook logits (never the [mask] id)
    state_logits: Tensor  # [B, L, 3]  keep / generate / revise
    hidden: Tensor  # [B, L, dim] final (normalised) hidden states


class PDM(TokenDecoder):
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

    special_row = "mask_emb"  # the [mask] row
    kind = "pdm"  # the export's ``kind`` metadata (training.model.MODEL_KINDS)

    def __init__(self, cfg: ModelConfig | str | dict):
        super().__init__(model_config(cfg), causal=False, state_classes=NUM_STATES)
        self.mask_id = self.special_id  # vocabulary = codebook + [mask]
        self.vocab_size = self.codebook_size + 1

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
