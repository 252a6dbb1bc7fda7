"""Generation orders (PDM section 3.2): which positions are written at which of the T stages.

An order maps each sample to ``stage_of`` Long[B, L] in 0..T-1 (position i is written at stage
stage_of[b, i]); stage t holds ``stage_sizes(L, T, schedule)[t]`` positions (L/T each with the default
uniform schedule, the paper's K = L/T). Orders are picked by name::

    order = get_order("const_error", mode="softmax", tau=0.5)
    stage_of = order(B, L, T, quant_error=qerr, grid=(h, w), generator=g)

Names: raster, random, const_error, anti_progressive, halton, confidence, learned (see each class).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Literal, Optional

import torch
from torch import Tensor

ORDERS: dict[str, type] = {}


def register_order(name: str) -> Callable[[type], type]:
    """Class decorator: make an order available to ``get_order(name)`` (the order learner registers
    ``learned`` this way, replacing the placeholder)."""
    def deco(cls: type) -> type:
        cls.name = name
        ORDERS[name] = cls
        return cls
    return deco


def get_order(name: str, **kw) -> "Order":
    if name not in ORDERS:
        raise ValueError(f"unknown generation order {name!r}; valid names: {', '.join(sorted(ORDERS))}")
    return ORDERS[name](**kw)


def stage_sizes(L: int, T: int, schedule: Literal["uniform", "linear", "cosine"] = "uniform") -> list[int]:
    """Positions written at each of the T stages (sums to L, each >= 1).

    uniform: L/T each (PDM 3.1: sum_i I[z_i^t = 1] = L/T); T must divide L.
    linear:  floor(L t/T) positions written after stage t (Emage's linear mask schedule; = uniform
             when T divides L).
    cosine:  L - ceil(L cos(pi/2 t/T)) written after stage t (MaskGIT; few at first, many at the end).
    """
    if not 1 <= T <= L:
        raise ValueError(f"the number of stages T must be in 1..L={L}, got {T}")
    if schedule == "uniform":
        if L % T:
            divisors = [d for d in range(1, L + 1) if L % d == 0]
            raise ValueError(f"T={T} does not divide L={L}: the uniform schedule needs L/T positions per "
                             f"stage. Use a divisor of L ({divisors}) or schedule='linear'/'cosine'.")
        return [L // T] * T
    if schedule == "linear":
        cum = [L * t // T for t in range(T + 1)]
    elif schedule == "cosine":
        cum = [L - math.ceil(L * math.cos(math.pi / 2 * t / T) - 1e-9) for t in range(T + 1)]
    else:
        raise ValueError(f"schedule must be 'uniform', 'linear' or 'cosine', got {schedule!r}")
    cum[0], cum[T] = 0, L
    for t in range(1, T + 1):                 # every stage writes at least one position ...
        cum[t] = max(cum[t], cum[t - 1] + 1)
    for t in range(T - 1, 0, -1):             # ... and leaves at least one for each later stage
        cum[t] = min(cum[t], cum[t + 1] - 1)
    return [cum[t + 1] - cum[t] for t in range(T)]


def stages_from_permutation(perm: Tensor, sizes: list[int]) -> Tensor:
    """``perm`` Long[B, L] (perm[b, j] = the j-th position to write) -> ``stage_of`` Long[B, L]."""
    B, L = perm.shape
    if sum(sizes) != L:
        raise ValueError(f"stage sizes sum to {sum(sizes)}, expected L={L}")
    stage_by_rank = torch.repeat_interleave(torch.arange(len(sizes), device=perm.device),
                                            torch.tensor(sizes, device=perm.device))
    stage_of = torch.empty_like(perm)
    return stage_of.scatter_(1, perm, stage_by_rank.expand(B, L).contiguous())


def _rand(shape, generator: Optional[torch.Generator], device) -> Tensor:
    gdev = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gdev).to(device)


def _gumbel(shape, generator, device) -> Tensor:
    u = _rand(shape, generator, device).clamp_(1e-20, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


class Order:
    """Base class. Subclasses implement ``permutation`` (positions in writing order)."""

    name = "base"
    needs_quant_error = False     # the order reads the tokenizer's per-token quantization error
    decided_at_sampling = False   # the sampler decides the real order (training uses a stand-in)

    def __call__(self, batch_size: int, seq_len: int, T: int, *, quant_error: Optional[Tensor] = None,
                 grid: Optional[tuple[int, int]] = None, schedule: str = "uniform",
                 generator: Optional[torch.Generator] = None, device=None) -> Tensor:
        """-> stage_of Long[batch_size, seq_len] with values in 0..T-1."""
        if quant_error is not None:
            if tuple(quant_error.shape) != (batch_size, seq_len):
                raise ValueError(f"quant_error has shape {tuple(quant_error.shape)}, "
                                 f"expected {(batch_size, seq_len)}")
            device = device or quant_error.device
        elif self.needs_quant_error:
            raise ValueError(f"the {self.name!r} order needs quant_error [B, L] (the tokenizer's qerr)")
        device = torch.device(device or "cpu")
        sizes = stage_sizes(seq_len, T, schedule)
        perm = self.permutation(batch_size, seq_len, quant_error=quant_error, grid=grid,
                                generator=generator, device=device)
        return stages_from_permutation(perm, sizes)

    def permutation(self, batch_size: int, seq_len: int, *, quant_error, grid, generator, device) -> Tensor:
        raise NotImplementedError


@register_order("raster")
class Raster(Order):
    """Left to right, top to bottom (row-major): the VQ-AR order, in T chunks."""

    def permutation(self, batch_size, seq_len, *, quant_error, grid, generator, device):
        return torch.arange(seq_len, device=device).expand(batch_size, seq_len).clone()


@register_order("random")
class Random(Order):
    """A uniformly random permutation per sample."""

    def permutation(self, batch_size, seq_len, *, quant_error, grid, generator, device):
        return _rand((batch_size, seq_len), generator, device).argsort(dim=1)


@register_order("confidence")
class Confidence(Random):
    """MaskGIT: the positions are chosen at sampling time by the model's own confidence, so there is
    no data order to train on; training uses uniformly random stages (as MaskGIT trains with random
    masks). The sampler implements the confidence selection."""

    decided_at_sampling = True


@register_order("const_error")
class ConstError(Order):
    """Constant quantization-error scoring (Eq. 5): confidence c = -quant_error; low error first.

    mode="topk":    deterministic ranking by error, the top-K (K = L/T) most confident per stage.
    mode="softmax": positions drawn without replacement from Softmax(c / tau) (Eq. 5), i.e.
                    Gumbel-top-k over -error / tau; tau -> 0 gives topk, large tau gives random.
    """

    needs_quant_error = True
    sign = -1.0  # confidence = sign * error

    def __init__(self, mode: Literal["topk", "softmax"] = "topk", tau: float = 1.0):
        if mode not in ("topk", "softmax"):
            raise ValueError(f"mode must be 'topk' or 'softmax', got {mode!r}")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.mode, self.tau = mode, tau

    def permutation(self, batch_size, seq_len, *, quant_error, grid, generator, device):
        conf = self.sign * quant_error.to(device=device, dtype=torch.float32)
        if self.mode == "topk":
            return conf.argsort(dim=1, descending=True, stable=True)
        keys = conf / self.tau + _gumbel(conf.shape, generator, device)  # Eq. 5, Gumbel-top-k
        return keys.argsort(dim=1, descending=True)


@register_order("anti_progressive")
class AntiProgressive(ConstError):
    """The reverse of ``const_error`` (Table 3 "un-progressive"): high quantization error first,
    fine to coarse. Same ``mode`` / ``tau`` options."""

    sign = 1.0


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
        shift = (_rand((batch_size,), generator, device) * seq_len).long()
        idx = (torch.arange(seq_len, device=device)[None, :] + shift[:, None]) % seq_len
        return base[idx]


class LearnedOrderNotAvailable(NotImplementedError):
    pass


@register_order("learned")
class Learned(Order):
    """Placeholder for the dynamic importance scoring of PDM 3.2 (policy gradient, Eq. 6-7)."""

    def __init__(self, **kw):
        raise LearnedOrderNotAvailable(
            "the 'learned' order (dynamic importance scoring, PDM section 3.2, Eq. 6-7) comes with the "
            "policy-gradient order learner, which registers it with training.orders.register_order"
            "('learned'); it is not available from training.orders alone")
