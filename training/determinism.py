"""Run-to-run determinism of the train stage (``train.deterministic``, ``train.threads``).

    with deterministic_mode(t.deterministic, t.threads, device_type) as threads:
        ...   # the whole training run

Same config, same seed, same machine -> the same weights, bit for bit. What varied between two runs, and
where it is fixed:
  * the intra-op thread count: CPU kernels split their reductions by thread (1 vs 2 threads moves the
    tiny PDM's weights by ~1e-6 after 30 steps), and the count came from whatever OMP_NUM_THREADS the
    shell had. Here it comes from the config: ``train.threads``, or the cores this process may use
    divided by the ranks on its node (``cores_per_rank``); set for the run, restored after it.
  * kernels without a deterministic implementation: ``torch.use_deterministic_algorithms(True)`` (on
    CPU it swaps the few nondeterministic ones, e.g. ``index_put_`` with accumulate, for deterministic
    ones and raises on any op that has none); on GPU also cuDNN deterministic, no cuDNN benchmark and
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (put in the environment when unset; cuBLAS reads it when the
    process first uses it), with ``warn_only`` there, so an op without a deterministic CUDA kernel
    warns instead of stopping a run.
  * the global generators (torch, numpy, Python ``random``): seeded by ``seed_everything``.
The other sources are seeded where they are drawn: the data order (``training.data``: shard
permutation, shuffle buffer and DataLoader workers from (seed, epoch, slot)), the per-sample stage,
order noise, injected errors and condition dropout (``training.model.train_module``), the policy's
rollouts (``training.order_learner_hooks``), the sample grid (``training.sample_grid``); the export's
bytes (``training.checkpoint.export_safetensors``: a sorted header).
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch

CUBLAS_WORKSPACE = ":4096:8"
LOCAL_RANKS_ENV = ("LOCAL_SIZE", "LOCAL_WORLD_SIZE")  # set by the DeepSpeed launcher / torchrun, Ray Train


def cores_per_rank() -> int:
    """The cores this process may use (its CPU affinity) divided by the ranks on this node."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local = next((int(os.environ[k]) for k in LOCAL_RANKS_ENV if os.environ.get(k)), 1)
    return max(1, cores // max(1, local))


def seed_everything(seed: int) -> None:
    """Seed torch's, numpy's and Python's global generators (numpy's and Python's start from OS entropy)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@contextlib.contextmanager
def deterministic_mode(enabled: bool, threads: int = 0, device_type: str = "cpu") -> Iterator[int]:
    """Deterministic algorithms and a fixed intra-op thread count for the block (see the module
    docstring); yields the thread count. ``threads`` > 0 is applied even when not ``enabled``; 0 means
    ``cores_per_rank()`` when enabled, else torch's current count. Everything is restored on exit."""
    n = threads or (cores_per_rank() if enabled else torch.get_num_threads())
    saved = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.set_num_threads(n)
    if enabled:
        cuda = device_type == "cuda"
        if cuda:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        torch.use_deterministic_algorithms(True, warn_only=cuda)
    try:
        yield n
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[3], saved[4]
