"""Test data: the synthetic set in memory, and the keys of a token shard."""

from __future__ import annotations

import os

import numpy as np

from tokenization.shards import read_token_shard
from tokenization.synthetic import render_dataset


def make_dataset(
    n: int, seed: int, size: int = 32, min_objects: int = 1, max_objects: int = 2
) -> tuple[np.ndarray, list[str]]:
    """n images (uint8 [N,H,W,3]) and their captions, deterministic from seed."""
    return render_dataset(n, seed, size, min_objects, max_objects)


def shard_keys(path: str | os.PathLike) -> list[str]:
    """Keys of a token shard, in order."""
    return [s["key"] for s in read_token_shard(path)]
