"""Randomness that depends only on seeds, never on the batch split, the world size or a resume.

Draws on a generator (``uniform``, ``randint``, ``gumbel``) use the generator's own device and move the
result to ``device``. Per-sample streams: ``unit_uniform(seeds, stream)`` hashes each sample's seed
(splitmix64) into one uniform without touching any torch RNG; ``generator_for(seed)`` and
``batch_seed(seeds)`` give a sample's or a micro-batch's generator.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

_M64 = 2**64 - 1


def uniform(shape, generator: Optional[torch.Generator], device) -> Tensor:
    """U[0, 1) of ``shape`` drawn on ``generator``'s device, returned on ``device``."""
    gdev = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gdev).to(device)


def randint(high: int, shape, generator: Optional[torch.Generator], device, low: int = 0) -> Tensor:
    """Integers in [low, high) of ``shape`` drawn on ``generator``'s device, returned on ``device``."""
    gdev = generator.device if generator is not None else device
    return torch.randint(low, high, shape, generator=generator, device=gdev).to(device)


def gumbel(shape, generator: Optional[torch.Generator], device) -> Tensor:
    """Standard Gumbel(0, 1) noise of ``shape``."""
    u = uniform(shape, generator, device).clamp_(1e-20, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def mix64(x: int) -> int:
    """splitmix64 finaliser: a well-spread 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def unit_uniform(seeds: Tensor, stream: int) -> Tensor:
    """Float[B] in [0, 1): one uniform per sample from its seed and a stream id (no torch RNG)."""
    vals = [(mix64(int(s) ^ stream) >> 11) / float(1 << 53) for s in seeds.tolist()]
    return torch.tensor(vals, dtype=torch.float64, device=seeds.device).float()


def generator_for(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (reduced to 63 bits)."""
    return torch.Generator().manual_seed(int(seed) & (2**63 - 1))


def batch_seed(seeds: Tensor) -> int:
    """One seed for a micro-batch from its samples' seeds (order-sensitive)."""
    s = 0
    for x in seeds.tolist():
        s = (s * 1_000_003 + int(x)) & (2**63 - 1)
    return s
