"""The local attention windows of CogView2's super-resolution modules (section 3.3 and 4.2), as boolean masks
for ``F.scaled_dot_product_attention`` (True = may attend). The paper's CUDA kernel computes only the window;
a dense masked attention gives the same result.

  2D local attention        a high-resolution token attends to the tokens of the window x window square centred
                            on it (RF 9 x 9 in 4.2), cut at the borders: max(|dr|, |dc|) <= window // 2.
  cross-resolution          a high-resolution token at (r, c) attends to the low-resolution tokens of the
                            cross_window x cross_window square centred on its place (r * lo // hi, c * lo // hi).

``sr_attention_mask`` lays out the SR sequence [low-res tokens, high-res tokens]: the low-res part (the
encoder of direct SR) attends to itself only, with full attention as the released code does for its first
level; the high-res part (the decoder) attends to its local window and to the cross-resolution window.
"""

from __future__ import annotations

import torch
from torch import Tensor


def grid_coords(side: int) -> tuple[Tensor, Tensor]:
    """(row, column) Long[side * side] of each position of a row-major square grid."""
    pos = torch.arange(side * side)
    return pos // side, pos % side


def local_window_mask(side: int, window: int) -> Tensor:
    """Bool[L, L] over a side x side grid: True where max(|dr|, |dc|) <= window // 2."""
    r, c = grid_coords(side)
    half = window // 2
    return ((r[:, None] - r[None]).abs() <= half) & ((c[:, None] - c[None]).abs() <= half)


def cross_resolution_mask(hi_side: int, lo_side: int, window: int) -> Tensor:
    """Bool[L_hi, L_lo]: high-res (r, c) sees the low-res tokens within window // 2 of (r * lo // hi, c * lo // hi)."""
    hr, hc = grid_coords(hi_side)
    lr, lc = grid_coords(lo_side)
    cr, cc = hr * lo_side // hi_side, hc * lo_side // hi_side
    half = window // 2
    return ((cr[:, None] - lr[None]).abs() <= half) & ((cc[:, None] - lc[None]).abs() <= half)


def sr_attention_mask(lo_side: int, hi_side: int, window: int, cross_window: int) -> Tensor:
    """Bool[L_lo + L_hi, L_lo + L_hi] of the sequence [low-res, high-res] (module doc)."""
    n_lo, n_hi = lo_side * lo_side, hi_side * hi_side
    mask = torch.zeros(n_lo + n_hi, n_lo + n_hi, dtype=torch.bool)
    mask[:n_lo, :n_lo] = True
    mask[n_lo:, :n_lo] = cross_resolution_mask(hi_side, lo_side, cross_window)
    mask[n_lo:, n_lo:] = local_window_mask(hi_side, window)
    return mask
