"""Randomness that depends only on seeds, never on the batch split, the world size or a resume.

Draws on a generator (``uniform``, ``randint``, ``gumbel``) use the generator's own device and move the
result to ``device``. Per-sample streams: ``unit_uniform(seeds, stream)`` hashes each sample's seed
(splitmix64) into one uniform without touching any torch RNG; ``generator_for(seed)`` and
``batch_seed(seeds)`` give a sample's or a micro-batch's generator. ``RowGenerators`` stands in for a
generator where each row of a batch must draw from its own (the samplers' ``rng: per_prompt``):
``uniform``/``randint``/``gumbel`` take either.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

_M64 = 2**64 - 1


class RowGenerators:
    """One generator per row of a batch, standing in for one ``torch.Generator``: a draw of shape [B * m, ...]
    takes its rows b * m ... b * m + m - 1 (row-major, b outermost) from generator b, so what a row draws never
    depends on the other rows of its batch, nor on how many there are. Generators live on ``device``."""

    def __init__(self, seeds, device="cpu", _gens: Optional[list] = None):
        self.seeds = [int(s) & (2**63 - 1) for s in seeds]
        self.device = torch.device(device)
        self.gens = (
            _gens if _gens is not None else [torch.Generator(device=self.device).manual_seed(s) for s in self.seeds]
        )

    def __len__(self) -> int:
        return len(self.gens)

    def __getitem__(self, rows: slice) -> RowGenerators:
        """These rows' generators (the same objects: drawing on the slice advances them)."""
        return RowGenerators(self.seeds[rows], self.device, self.gens[rows])

    def repeat_rows(self, n: int) -> RowGenerators:
        """n rows per row (a prompt's n candidates, in the order of ``repeat_interleave``), each with a new
        generator seeded from (its row's seed, j)."""
        return RowGenerators([mix64(s ^ mix64(j + 1)) for s in self.seeds for j in range(n)], self.device)

    def _per_row(self, shape) -> int:
        shape = tuple(shape)
        if not shape or shape[0] % len(self):
            raise ValueError(f"a draw of shape {shape} does not split into {len(self)} rows of the batch")
        return math.prod(shape) // len(self)

    def rand(self, shape) -> Tensor:
        n = self._per_row(shape)
        return torch.cat([torch.rand(n, generator=g, device=self.device) for g in self.gens]).view(shape)

    def randint(self, low: int, high: int, shape) -> Tensor:
        n = self._per_row(shape)
        parts = [torch.randint(low, high, (n,), generator=g, device=self.device) for g in self.gens]
        return torch.cat(parts).view(shape)


Generator = Union[torch.Generator, RowGenerators]


def uniform(shape, generator: Optional[Generator], device) -> Tensor:
    """U[0, 1) of ``shape`` drawn on ``generator``'s device, returned on ``device``."""
    if isinstance(generator, RowGenerators):
        return generator.rand(shape).to(device)
    gdev = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gdev).to(device)


def randint(high: int, shape, generator: Optional[Generator], device, low: int = 0) -> Tensor:
    """Integers in [low, high) of ``shape`` drawn on ``generator``'s device, returned on ``device``."""
    if isinstance(generator, RowGenerators):
        return generator.randint(low, high, shape).to(device)
    gdev = generator.device if generator is not None else device
    return torch.randint(low, high, shape, generator=generator, device=gdev).to(device)


def gumbel(shape, generator: Optional[Generator], device) -> Tensor:
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


def prompt_seeds(seed: int, indices) -> list[int]:
    """The generator seeds of prompts ``indices`` (their places in the prompt list) under sampling seed
    ``seed``: a function of (seed, index) only."""
    base = mix64(int(seed))  # hashed first: (seed, i) and (i, seed) seed different generators
    return [mix64(base ^ int(i)) for i in indices]


def sampling_generator(rng: str, seed: int, places, device) -> Generator:
    """A sampler's generator for prompts at ``places`` of the prompt list: one ``torch.Generator`` seeded with
    ``seed`` for them all (``rng`` "per_chunk"), or one per prompt seeded from (seed, its place) ("per_prompt")."""
    if rng == "per_prompt":
        return RowGenerators(prompt_seeds(seed, places), device)
    return torch.Generator(device=device).manual_seed(seed)


def repeat_rows(generator: Optional[Generator], n: int) -> Optional[Generator]:
    """The generator of a batch whose rows are each repeated n times (``RowGenerators.repeat_rows``); one
    ``torch.Generator`` serves any batch as it is."""
    return generator.repeat_rows(n) if isinstance(generator, RowGenerators) and n > 1 else generator
