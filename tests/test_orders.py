"""Generation orders: permutations into stages, const-error ranking, Halton coverage, schedules, registry."""

import pytest
import torch

from training.model import orders
from training.model.orders import ORDERS, get_order, halton_permutation, stage_sizes, stages_from_permutation

NAMES = sorted(n for n in ORDERS if n != "learned")


def _qerr(B, L, seed=0):
    return torch.rand(B, L, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("T", [1, 4, 16])
def test_orders_are_permutations_into_equal_stages(name, T):
    B, L = 3, 64
    g = torch.Generator().manual_seed(0)
    stage_of = get_order(name)(B, L, T, quant_error=_qerr(B, L), grid=(8, 8), generator=g)
    assert stage_of.shape == (B, L) and stage_of.dtype == torch.long
    for b in range(B):
        assert torch.bincount(stage_of[b], minlength=T).tolist() == [L // T] * T


def test_raster():
    stage_of = get_order("raster")(2, 8, 4)
    assert stage_of.tolist() == [[0, 0, 1, 1, 2, 2, 3, 3]] * 2


def test_const_error_low_error_first_and_anti_progressive_reverse():
    qerr = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.8, 0.2, 0.7, 0.4], [0.0, 0.0, 1.0, 1.0, 0.5, 0.5, 0.2, 0.2]])
    stage_of = get_order("const_error")(2, 8, 4, quant_error=qerr)
    # row 0 ranks 0.1, 0.2 | 0.3, 0.4 | 0.5, 0.7 | 0.8, 0.9
    assert stage_of[0].tolist() == [3, 0, 2, 1, 3, 0, 2, 1]
    assert stage_of[1].tolist() == [0, 0, 3, 3, 2, 2, 1, 1]
    anti = get_order("anti_progressive")(2, 8, 4, quant_error=qerr)
    assert anti[0].tolist() == [0, 3, 1, 2, 0, 3, 1, 2]
    assert anti[1].tolist() == [3, 3, 0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="quant_error"):
        get_order("const_error")(2, 8, 4)


def test_const_error_softmax_sampling():
    B, L, T = 256, 16, 4
    qerr = torch.linspace(0, 1, L).expand(B, L)
    g = torch.Generator().manual_seed(0)
    cold = get_order("const_error", mode="softmax", tau=1e-4)(B, L, T, quant_error=qerr, generator=g)
    assert (cold == get_order("const_error")(B, L, T, quant_error=qerr)).all()  # tau -> 0: top-K
    warm = get_order("const_error", mode="softmax", tau=0.2)(B, L, T, quant_error=qerr, generator=g)
    assert len({tuple(r) for r in warm.tolist()}) > 10  # stochastic ...
    mean_stage = warm.float().mean(0)
    assert mean_stage[:4].mean() < 1.0 and mean_stage[-4:].mean() > 2.0  # ... but low error early
    hot = get_order("const_error", mode="softmax", tau=100.0)(B, L, T, quant_error=qerr, generator=g)
    assert (hot.float().mean(0) - 1.5).abs().max() < 0.5  # tau -> inf: random
    with pytest.raises(ValueError):
        get_order("const_error", mode="softmax", tau=0.0)


@pytest.mark.parametrize("grid", [(8, 8), (16, 16), (32, 32), (4, 6), (1, 10)])
def test_halton_covers_every_position_once(grid):
    h, w = grid
    perm = halton_permutation(h, w)
    assert sorted(perm) == list(range(h * w))
    rnd = get_order("halton", randomize=True)(5, h * w, 1, grid=grid, generator=torch.Generator().manual_seed(0))
    assert (rnd == 0).all()
    p = get_order("halton", randomize=True).permutation(
        5, h * w, quant_error=None, grid=grid, generator=None, device="cpu"
    )
    assert all(sorted(r) == list(range(h * w)) for r in p.tolist())


def test_halton_first_stage_is_spread_out():
    stage_of = get_order("halton")(1, 64, 16, grid=(8, 8))[0].view(8, 8)
    first = (stage_of <= 1).nonzero().tolist()  # the first 8 positions (2 stages) ...
    assert len({r for r, _ in first}) == 8 and len({c for _, c in first}) == 8  # ... all rows and columns
    quadrants = [(r // 4, c // 4) for r, c in first]
    assert all(quadrants.count(q) == 2 for q in [(0, 0), (0, 1), (1, 0), (1, 1)])  # ... 2 per quadrant
    with pytest.raises(ValueError, match="grid"):
        get_order("halton")(1, 12, 4)


def test_random_and_confidence_use_the_generator():
    order = get_order("random")
    a = order(4, 32, 8, generator=torch.Generator().manual_seed(1))
    b = order(4, 32, 8, generator=torch.Generator().manual_seed(1))
    c = order(4, 32, 8, generator=torch.Generator().manual_seed(2))
    assert (a == b).all() and not (a == c).all()
    conf = get_order("confidence")
    assert conf.decided_at_sampling and not order.decided_at_sampling


def test_registry_errors():
    with pytest.raises(ValueError) as err:
        get_order("spiral")
    for name in ("raster", "random", "const_error", "anti_progressive", "halton", "confidence", "learned"):
        assert name in str(err.value)
    # the placeholder (training.model.order_learner replaces the registry entry when it is imported)
    with pytest.raises(NotImplementedError, match="order learner"):
        orders.Learned()
    if ORDERS["learned"] is orders.Learned:
        with pytest.raises(NotImplementedError, match="order learner"):
            get_order("learned")


def test_stage_sizes():
    assert stage_sizes(64, 16) == [4] * 16
    assert stage_sizes(64, 64) == [1] * 64
    with pytest.raises(ValueError, match="does not divide"):
        stage_sizes(64, 10)
    with pytest.raises(ValueError):
        stage_sizes(8, 9)
    assert stage_sizes(64, 16, "linear") == [4] * 16
    lin = stage_sizes(64, 10, "linear")
    assert sum(lin) == 64 and set(lin) == {6, 7}
    for L, T in [(64, 10), (1024, 16), (16, 16), (256, 8)]:
        cos = stage_sizes(L, T, "cosine")
        assert sum(cos) == L and len(cos) == T and min(cos) >= 1
        assert cos[0] < cos[-1] or L == T  # few first, many last
    with pytest.raises(ValueError, match="schedule"):
        stage_sizes(64, 8, "exp")
    stage_of = get_order("raster")(1, 64, 10, schedule="cosine")
    assert torch.bincount(stage_of[0], minlength=10).tolist() == stage_sizes(64, 10, "cosine")


def test_stages_from_permutation():
    perm = torch.tensor([[3, 1, 0, 2]])
    assert stages_from_permutation(perm, [1, 3]).tolist() == [[1, 1, 1, 0]]
