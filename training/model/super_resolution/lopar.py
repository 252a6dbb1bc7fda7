"""The local parallel autoregressive (LoPAR) schedule of CogView2's iterative super-resolution (Eq. 6).

The grid is cut into sigma x sigma blocks that are generated in parallel; inside a block, iteration k writes the
tokens whose in-block row + column equals k, for k = 0 .. 2 sigma - 2, so that no two tokens written together are
direct (vertical or horizontal) neighbours:

    row(i) = (grid row of i) mod sigma,  col(i) = (grid column of i) mod sigma,  iteration(i) = row(i) + col(i)

(Eq. 6 writes the product up to k = 2 sigma - 1, one more than row + col can reach.) The paper then merges the
first and last iterations by a hand-made 6 x 6 table to run 6 instead of 11 at sigma = 6; that table is not
published in the paper and is not reproduced here: the 2 sigma - 1 iterations of Eq. 6 are run.
"""

from __future__ import annotations

from torch import Tensor

from training.model.super_resolution.local_attention import grid_coords


def lopar_iterations(sigma: int) -> int:
    """2 sigma - 1: the iterations of Eq. 6."""
    return 2 * sigma - 1


def lopar_schedule(side: int, sigma: int) -> Tensor:
    """Long[side * side]: the iteration at which each position of a row-major grid is written (Eq. 6)."""
    if sigma < 1:
        raise ValueError(f"the LoPAR window sigma must be >= 1, got {sigma}")
    r, c = grid_coords(side)
    return r % sigma + c % sigma
