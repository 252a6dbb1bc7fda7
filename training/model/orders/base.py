"""The order interface, the stage sizes and the registry of orders by name (PDM section 3.2).

An order maps each sample to ``stage_of`` Long[B, L] in 0..T-1 (position i is written at stage
stage_of[b, i]); stage t holds ``stage_sizes(L, T, schedule)[t]`` positions (L/T each with the default
uniform schedule, the paper's K = L/T). A subclass gives ``permutation``: the positions in writing order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, Optional

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


def get_order(name: str, **kw) -> Order:
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
            raise ValueError(
                f"T={T} does not divide L={L}: the uniform schedule needs L/T positions per "
                f"stage. Use a divisor of L ({divisors}) or schedule='linear'/'cosine'."
            )
        return [L // T] * T
    if schedule == "linear":
        cum = [L * t // T for t in range(T + 1)]
    elif schedule == "cosine":
        cum = [L - math.ceil(L * math.cos(math.pi / 2 * t / T) - 1e-9) for t in range(T + 1)]
    else:
        raise ValueError(f"schedule must be 'uniform', 'linear' or 'cosine', got {schedule!r}")
    cum[0], cum[T] = 0, L
    for t in range(1, T + 1):  # every stage writes at least one position ...
        cum[t] = max(cum[t], cum[t - 1] + 1)
    for t in range(T - 1, 0, -1):  # ... and leaves at least one for each later stage
        cum[t] = min(cum[t], cum[t + 1] - 1)
    return [cum[t + 1] - cum[t] for t in range(T)]


def stages_from_permutation(perm: Tensor, sizes: list[int]) -> Tensor:
    """``perm`` Long[B, L] (perm[b, j] = the j-th position to write) -> ``stage_of`` Long[B, L]."""
    B, L = perm.shape
    if sum(sizes) != L:
        raise ValueError(f"stage sizes sum to {sum(sizes)}, expected L={L}")
    stage_by_rank = torch.repeat_interleave(
        torch.arange(len(sizes), device=perm.device), torch.tensor(sizes, device=perm.device)
    )
    stage_of = torch.empty_like(perm)
    return stage_of.scatter_(1, perm, stage_by_rank.expand(B, L).contiguous())


class Order:
    """Base class. Subclasses implement ``permutation`` (positions in writing order)."""

    name = "base"
    needs_quant_error = False  # the order reads the tokenizer's per-token quantization error
    decided_at_sampling = False  # the sampler decides the real order (training uses a stand-in)

    def __call__(
        self,
        batch_size: int,
        seq_len: int,
        T: int,
        *,
        quant_error: Optional[Tensor] = None,
        grid: Optional[tuple[int, int]] = None,
        schedule: str = "uniform",
        generator: Optional[torch.Generator] = None,
        device=None,
    ) -> Tensor:
        """-> stage_of Long[batch_size, seq_len] with values in 0..T-1."""
        if quant_error is not None:
            if tuple(quant_error.shape) != (batch_size, seq_len):
                raise ValueError(f"quant_error has shape {tuple(quant_error.shape)}, expected {(batch_size, seq_len)}")
            device = device or quant_error.device
        elif self.needs_quant_error:
            raise ValueError(f"the {self.name!r} order needs quant_error [B, L] (the tokenizer's qerr)")
        device = torch.device(device or "cpu")
        sizes = stage_sizes(seq_len, T, schedule)
        perm = self.permutation(
            batch_size, seq_len, quant_error=quant_error, grid=grid, generator=generator, device=device
        )
        return stages_from_permutation(perm, sizes)

    def permutation(self, batch_size: int, seq_len: int, *, quant_error, grid, generator, device) -> Tensor:
        raise NotImplementedError
