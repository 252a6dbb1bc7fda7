"""``VQModel``: encoder + quantizer + decoder with taming-transformers' state-dict layout.

Top-level modules: ``encoder``, ``decoder``, ``quant_conv`` (z_channels -> embed_dim, 1x1),
``post_quant_conv`` (embed_dim -> z_channels, 1x1) and ``quantize`` (``VectorQuantizer`` for
``kind: vq``, ``GumbelQuantizer`` for ``kind: gumbel``). Images are float [B, 3, H, W] in [-1, 1].
"""

from __future__ import annotations

import torch
from torch import nn

from tokenization.vqgan.config import TokenizerConfig
from tokenization.vqgan.modules import Decoder, Encoder
from tokenization.vqgan.quantize import GumbelQuantizer, VectorQuantizer


class VQModel(nn.Module):
    """Image tokenizer. ``encode`` -> token ids and quantization errors; ``decode`` -> images."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        dd = cfg.ddconfig()
        self.encoder = Encoder(in_channels=cfg.in_channels, **dd)
        self.decoder = Decoder(out_ch=cfg.out_ch, **dd)
        if cfg.kind == "vq":
            self.quantize: nn.Module = VectorQuantizer(cfg.n_embed, cfg.embed_dim, cfg.beta)
        else:
            # taming builds GumbelQuantize(z_channels, ...) but applies it to the quant_conv output
            # (embed_dim channels); published models have z_channels == embed_dim.
            self.quantize = GumbelQuantizer(cfg.embed_dim, cfg.embed_dim, cfg.n_embed)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    # --- properties ---
    @property
    def grid_size(self) -> tuple[int, int]:
        """Token grid (h, w) for images of ``cfg.pixels`` (``image_size`` or ``resolution``) pixels."""
        return self.cfg.grid_size

    @property
    def codebook_size(self) -> int:
        return self.cfg.n_embed

    @property
    def codebook(self) -> torch.Tensor:
        """The code vectors [n_embed, embed_dim]."""
        q = self.quantize
        return q.embedding.weight if isinstance(q, VectorQuantizer) else q.embed.weight

    # --- building blocks ---
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pre-quantization features: quant_conv(encoder(images)), [B, embed_dim, h, w]."""
        return self.quant_conv(self.encoder(images))

    def decode_features(self, zq: torch.Tensor) -> torch.Tensor:
        """Quantized features [B, embed_dim, h, w] -> images [B, out_ch, H, W]."""
        return self.decoder(self.post_quant_conv(zq))

    # --- tokenizer API ---
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, 3, H, W] in [-1, 1] -> (token ids LongTensor [B, h*w] row-major,
        quant_error FloatTensor [B, h*w] = ||feature - code||^2 of each position's chosen code)."""
        self._check_images(images)
        return self.quantize.lookup(self.features(images))

    def decode(self, token_ids: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Token ids [B, h*w] -> images [B, 3, H, W] clamped to [-1, 1]. ``grid`` defaults to
        ``grid_size`` (or a square grid if the length differs)."""
        if token_ids.dim() != 2:
            raise ValueError(f"token_ids must be [B, h*w], got shape {tuple(token_ids.shape)}")
        if grid is None:
            grid = self.grid_size
            if grid[0] * grid[1] != token_ids.shape[1]:
                side = int(round(token_ids.shape[1] ** 0.5))
                if side * side != token_ids.shape[1]:
                    raise ValueError(f"cannot infer a grid for {token_ids.shape[1]} tokens; pass grid=(h, w)")
                grid = (side, side)
        if token_ids.numel() and (token_ids.min() < 0 or token_ids.max() >= self.codebook_size):
            raise ValueError(f"token ids must be in [0, {self.codebook_size})")
        zq = self.quantize.embed_ids(token_ids.long(), grid)
        return self.decode_features(zq).clamp(-1.0, 1.0)

    def forward(self, images: torch.Tensor, codebook_weight: float = 1.0):
        """Training pass (``kind: vq``): returns (reconstruction, vq loss, ids [B, h*w], features)."""
        z = self.features(images)
        zq, vq_loss, ids = self.quantize(z, codebook_weight=codebook_weight)
        return self.decode_features(zq), vq_loss, ids, z

    def _check_images(self, images: torch.Tensor) -> None:
        f = self.cfg.factor
        if images.dim() != 4 or images.shape[1] != self.cfg.in_channels:
            raise ValueError(f"images must be [B, {self.cfg.in_channels}, H, W], got {tuple(images.shape)}")
        if images.shape[2] % f or images.shape[3] % f:
            raise ValueError(f"image size {tuple(images.shape[2:])} is not divisible by the factor {f}")
