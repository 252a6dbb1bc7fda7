"""The 2D Halton order (Halton-MaskGIT): early stages spread evenly over the image."""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from training.model.orders.base import Order, register_order
from training.model.seeded_random import uniform


def _radical_inverse(i: int, base: int) -> float:
    f, r = 1.0, 0.0
    while i > 0:
        f /= base
        r += f * (i % base)
        i //= base
    return r


@lru_cache(maxsize=32)
def halton_permutation(grid_h: int, grid_w: int) -> tuple[int, ...]:
    """Row-major positions of an h x w grid in the order the 2D Halton sequence (bases 2, 3) first
    visits their cells (valeoai/Halton-MaskGIT's idea); every cell exactly once."""
    seen, order, i = set(), [], 0
    L = grid_h * grid_w
    while len(order) < L:
        i += 1
        r = min(int(_radical_inverse(i, 2) * grid_h), grid_h - 1)
        c = min(int(_radical_inverse(i, 3) * grid_w), grid_w - 1)
        if (r, c) not in seen:
            seen.add((r, c))
            order.append(r * grid_w + c)
        if i > 10_000 * L:  # unreachable for real grids; guards a bug, not user input
            raise RuntimeError("Halton sequence did not cover the grid")
    return tuple(order)


@register_order("halton")
class Halton(Order):
    """Low-discrepancy 2D Halton order: early stages are spread evenly over the whole image.
    ``randomize`` rolls the sequence by a random offset per sample (as Halton-MaskGIT's sampler)."""

    def __init__(self, randomize: bool = False):
        self.randomize = randomize

    def permutation(self, batch_size, seq_len, *, quant_error, grid, generator, device):
        if grid is None:
            side = math.isqrt(seq_len)
            if side * side != seq_len:
                raise ValueError(f"the halton order needs grid=(h, w) for a non-square L={seq_len}")
            grid = (side, side)
        h, w = grid
        if h * w != seq_len:
            raise ValueError(f"grid {grid} has {h * w} cells, expected L={seq_len}")
        base = torch.tensor(halton_permutation(h, w), device=device)
        if not self.randomize:
            return base.expand(batch_size, seq_len).clone()
        shift = (uniform((batch_size,), generator, device) * seq_len).long()
        idx = (torch.arange(seq_len, device=device)[None, :] + shift[:, None]) % seq_len
        return base[idx]
