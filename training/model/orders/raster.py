"""The raster order: left to right, top to bottom, the VQ-AR order (Table 3 "left to right")."""

from __future__ import annotations

import torch

from training.model.orders.base import Order, register_order


@register_order("raster")
class Raster(Order):
    """Left to right, top to bottom (row-major): the VQ-AR order, in T chunks."""

    def permutation(self, batch_size, seq_len, *, quant_error, grid, generator, device):
        return torch.arange(seq_len, device=device).expand(batch_size, seq_len).clone()
