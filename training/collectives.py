"""Collectives on host values (metric sums, bad-shard counts, CPU-offloaded shards): moved to a device the
process group serves, reduced or gathered there, and returned on their own device. An NCCL group serves only
CUDA tensors (a CPU tensor fails with "No backend type associated with device type cpu"); gloo serves the
CPU."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def collective_device(group=None) -> torch.device:
    """The CPU when the group's backend takes CPU tensors, else the current CUDA device (NCCL)."""
    served = [part.split(":")[0] for part in dist.get_backend_config(group).split(",")]
    return torch.device("cpu" if "cpu" in served else "cuda")  # "cuda": the device the rank has set


def all_reduce_host(t: Tensor, op=dist.ReduceOp.SUM) -> Tensor:
    """``t`` all-reduced over the default group, on ``t``'s device; ``t`` itself is left as it was (on every
    backend: gloo would reduce a CPU tensor in place)."""
    x = t.to(collective_device(), copy=True)
    dist.all_reduce(x, op=op)
    return x.to(t.device)


def all_gather_host(t: Tensor) -> list[Tensor]:
    """Every rank's ``t`` (same shape on each), on ``t``'s device."""
    x = t.contiguous().to(collective_device())
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return [p.to(t.device) for p in parts]
