"""Codebook quantizers: nearest-neighbour VQ (Eq. 2 of the PDM paper) and taming's Gumbel variant.

Parameter names match taming-transformers: ``VectorQuantizer.embedding.weight`` [n_embed, embed_dim]
(taming's ``VectorQuantizer2``) and ``GumbelQuantizer.proj`` (1x1 conv to logits) plus
``GumbelQuantizer.embed.weight`` (taming's ``GumbelQuantize``).

Both expose the same inference interface on features ``z`` [B, D, h, w] (the quant_conv output):

* ``lookup(z) -> (ids [B, h*w] long, sq_dist [B, h*w] float)``: the chosen code per position and
  the squared L2 distance ||z - e_id||^2 between the feature and that code's embedding (the
  "constant quantization error" score of the paper);
* ``embed_ids(ids [B, h*w], (h, w)) -> z_q [B, D, h, w]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_CHUNK = 4096  # rows of the distance matrix computed at once (16384 codes x 4096 rows x 4 B = 256 MB)


def _flatten(z: torch.Tensor) -> torch.Tensor:
    """[B, D, h, w] -> [B*h*w, D], row-major over (h, w)."""
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def _unflatten(zf: torch.Tensor, b: int, hw: tuple[int, int]) -> torch.Tensor:
    """[B*h*w, D] -> [B, D, h, w]."""
    return zf.reshape(b, hw[0], hw[1], -1).permute(0, 3, 1, 2).contiguous()


def nearest_codes(zf: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row (squared L2) for each row of ``zf``; chunked to bound memory."""
    e2 = (codebook * codebook).sum(1)
    out = []
    for part in zf.split(_CHUNK):
        # ||z||^2 is constant per row and does not change the argmin
        d = e2[None, :] - 2.0 * part @ codebook.t()
        out.append(d.argmin(1))
    return torch.cat(out) if out else zf.new_zeros(0, dtype=torch.long)


def squared_distance(zf: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Exact ||z - e||^2 per row, computed from the difference (no cancellation error)."""
    return (zf - codes).pow(2).sum(1)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook ``embedding`` [n_embed, embed_dim] with straight-through gradients.

    ``forward`` returns ``(z_q, loss, ids)`` where ``z_q = z + sg[e - z]`` (straight-through),
    ``loss = codebook_weight * ||sg[z] - e||^2 + beta * ||z - sg[e]||^2`` (means over elements; Eq. 1
    of the PDM paper, with the codebook term dropped when the codebook is updated by EMA instead).
    """

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25):
        super().__init__()
        self.n_embed, self.embed_dim, self.beta = n_embed, embed_dim, beta
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def lookup(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest code ids [B, h*w] and the squared distance to it [B, h*w]."""
        b = z.shape[0]
        zf = _flatten(z).float()
        w = self.embedding.weight.float()
        ids = nearest_codes(zf, w)
        dist = squared_distance(zf, w[ids])
        return ids.reshape(b, -1), dist.reshape(b, -1)

    def embed_ids(self, ids: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Code ids [B, h*w] -> embeddings [B, embed_dim, h, w]."""
        return _unflatten(self.embedding(ids.reshape(-1)), ids.shape[0], hw)

    def forward(self, z: torch.Tensor, codebook_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, _, h, w = z.shape
        zf = _flatten(z)
        with torch.no_grad():
            ids = nearest_codes(zf.detach().float(), self.embedding.weight.float())
        e = self.embedding(ids)
        loss = self.beta * F.mse_loss(zf, e.detach())
        if codebook_weight:
            loss = loss + codebook_weight * F.mse_loss(e, zf.detach())
        zq = zf + (e - zf).detach()
        return _unflatten(zq, b, (h, w)), loss, ids.reshape(b, -1)


class GumbelQuantizer(nn.Module):
    """taming's ``GumbelQuantize`` for inference: ``proj`` (1x1 conv to n_embed logits) + ``embed``.

    Tokens are the argmax of the logits (taming draws Gumbel noise even in eval mode; we use the
    noise-free argmax so tokenization is deterministic). The quantization error is the squared L2
    distance between the projected-in feature ``z`` (the quant_conv output, embed_dim channels, the
    same space the codes live in) and the embedding of the argmax code.
    Training a Gumbel model is not supported here (``train_tokenizer`` trains ``kind: vq`` only).
    """

    def __init__(self, num_hiddens: int, embed_dim: int, n_embed: int):
        super().__init__()
        self.n_embed, self.embed_dim = n_embed, embed_dim
        self.proj = nn.Conv2d(num_hiddens, n_embed, 1)
        self.embed = nn.Embedding(n_embed, embed_dim)

    def lookup(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = z.shape[0]
        ids = self.proj(z).argmax(1).reshape(-1)
        zf = _flatten(z).float()
        dist = squared_distance(zf, self.embed.weight.float()[ids])
        return ids.reshape(b, -1), dist.reshape(b, -1)

    def embed_ids(self, ids: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return _unflatten(self.embed(ids.reshape(-1)), ids.shape[0], hw)

    def forward(self, z: torch.Tensor, codebook_weight: float = 1.0):  # noqa: D401
        raise NotImplementedError("GumbelQuantizer is inference-only; train with kind: vq")
