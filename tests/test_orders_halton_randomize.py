"""The Halton order's ``randomize`` option (train.order_randomize): each sample follows the 2D Halton
sequence rolled by its own random offset, drawn from the generator."""

import torch

from training.model.orders import get_order, halton_permutation


def _rotation_of(row, base):
    L = len(base)
    return any(row == [base[(j + s) % L] for j in range(L)] for s in range(L))


def test_randomized_halton_rolls_the_sequence_per_sample():
    B, L, T = 32, 16, 4
    base = list(halton_permutation(4, 4))
    order = get_order("halton", randomize=True)
    perm = order.permutation(
        B, L, quant_error=None, grid=(4, 4), generator=torch.Generator().manual_seed(0), device="cpu"
    )
    rows = perm.tolist()
    assert all(_rotation_of(r, base) for r in rows)
    assert len({tuple(r) for r in rows}) > 4  # different offsets across the batch
    a = order(B, L, T, grid=(4, 4), generator=torch.Generator().manual_seed(1))
    b = order(B, L, T, grid=(4, 4), generator=torch.Generator().manual_seed(1))
    c = order(B, L, T, grid=(4, 4), generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)  # from the generator alone
    plain = get_order("halton")(B, L, T, grid=(4, 4), generator=torch.Generator().manual_seed(1))
    assert len({tuple(r) for r in plain.tolist()}) == 1  # without randomize: one map for every sample
