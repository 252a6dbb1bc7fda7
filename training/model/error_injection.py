"""Error injection (PDM section 3.3): pseudo errors planted in the visible tokens of a training tuple,
so that the model learns to flag (state REVISE, z = -1) and rewrite its own earlier mistakes.

An instance is chosen with probability ``p_error`` (Bernoulli); in a chosen instance a fraction
f ~ U[lo, hi] of its visible positions (at least one) gets a different code, never [mask] and never the
same code. ``training.model.tuples.make_tuples`` calls it with the paper's cap: at most as many
injected errors as positions written at the previous stage.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from training.model.seeded_random import randint, uniform

FracSpec = Union[float, tuple[float, float]]


def random_subset(candidates: Tensor, k: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Bool[B, L]: ``k[b]`` positions drawn uniformly among ``candidates[b]`` (all of them if fewer)."""
    scores = uniform(candidates.shape, generator, candidates.device).masked_fill(~candidates, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)  # rank of each position, candidates first
    return (rank < k[:, None]) & candidates


def _frac_range(error_frac: FracSpec) -> tuple[float, float]:
    lo, hi = (error_frac, error_frac) if isinstance(error_frac, (int, float)) else error_frac
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"error_frac must be a fraction or a (lo, hi) range within [0, 1], got {error_frac}")
    return float(lo), float(hi)


def inject_errors(
    inputs: Tensor,
    candidates: Tensor,
    codebook_size: int,
    p_error: float = 0.3,
    error_frac: FracSpec = (0.0, 0.2),
    max_errors: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> tuple[Tensor, Tensor]:
    """Section 3.3 pseudo errors. Each instance is chosen with probability ``p_error`` (Bernoulli);
    in a chosen instance ceil(f * n) of its n candidate (visible) positions, f ~ U[lo, hi] and at least
    one, at most ``max_errors[b]``, get a different code (never [mask], never the same code).
    Returns (new inputs, injected Bool[B, L]). Instances without candidates are left unchanged."""
    if not 0.0 <= p_error <= 1.0:
        raise ValueError(f"p_error must be in [0, 1], got {p_error}")
    lo, hi = _frac_range(error_frac)
    B, L = inputs.shape
    dev = inputs.device
    chosen = uniform((B,), generator, dev) < p_error  # ~ Bernoulli(p_error)
    n = candidates.sum(dim=1)
    frac = lo + (hi - lo) * uniform((B,), generator, dev)
    k = torch.ceil(frac * n).long().clamp(min=1)
    k = torch.minimum(k, n)
    if max_errors is not None:
        k = torch.minimum(k, max_errors.to(dev).long())
    k = torch.where(chosen, k, torch.zeros_like(k))
    injected = random_subset(candidates, k, generator)
    offset = randint(codebook_size, (B, L), generator, dev, low=1)  # 1..K-1: never the same code
    wrong = (inputs.clamp(max=codebook_size - 1) + offset) % codebook_size
    return torch.where(injected, wrong, inputs), injected
