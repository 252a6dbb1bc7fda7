"""Where every rank of a training run ran, and how its environment differs from rank 0's.

The train summary records rank 0's environment (``core.environment``). On several nodes the others may differ: another
venv's torch, a CPU without AVX-512, other GPUs, a kernel setting the launch did not carry. Their gradients are
averaged with rank 0's, so the run trains, but its weights are not what a run on rank 0's machines gives. So every
rank's host and environment is gathered once at the start; the summary's ``ranks`` lists each host with its ranks
and what differs from rank 0 (``core.environment.changes``), and the log names each difference before the first
step.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from core.environment import changes, environment


def rank_ranges(ranks: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    out, ranks = [], sorted(ranks)
    start = prev = ranks[0]
    for r in ranks[1:] + [None]:
        if r is not None and r == prev + 1:
            prev = r
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if r is not None:
            start = prev = r
    return ",".join(out)


def group_by_host(records: list[dict]) -> list[dict]:
    """Every rank's ``{"host", "environment"}`` (indexed by rank) -> one entry per (host, environment), in order of
    its lowest rank: ``{"ranks": "0-7", "host": ..., "differs": [...]}``, ``differs`` only where the environment is
    not rank 0's."""
    first = records[0]["environment"]
    groups: dict[tuple, list] = {}  # (host, environment's repr) -> [record, its ranks]
    for rank, rec in enumerate(records):
        groups.setdefault((rec["host"], repr(rec["environment"])), [rec, []])[1].append(rank)
    out = []
    for rec, ranks in groups.values():
        entry = {"ranks": rank_ranges(ranks), "host": rec["host"]}
        if diff := changes(first, rec["environment"]):
            entry["differs"] = diff
        out.append(entry)
    return out


def gather_rank_environments(world: int, say: Callable[[str], None]) -> list[dict]:
    """Every rank's host and environment, grouped (``group_by_host``); a collective: every rank calls it, after
    the engine has set the rank's device (an NCCL group gathers on it). Each difference from rank 0 is said."""
    record = {"host": socket.gethostname(), "environment": environment()}
    records = [record]
    if world > 1:
        import torch.distributed as dist

        records = [None] * world
        dist.all_gather_object(records, record)
    groups = group_by_host(records)
    for g in groups:
        if g.get("differs"):
            say(f"[train] ranks {g['ranks']} on {g['host']} differ from rank 0: {'; '.join(g['differs'])}")
    return groups


def differences_text(groups: list[dict]) -> str:
    """The groups that differ from rank 0: ``ranks 8-15 on node2: torch 2.14.1 -> 2.15.0`` (``; ``-joined)."""
    return "; ".join(
        f"ranks {g['ranks']} on {g['host']}: {', '.join(g['differs'])}" for g in groups if g.get("differs")
    )


def ranks_text(groups: list[dict]) -> str:
    """What a one-line environment summary adds for the other hosts: "" for one host with one environment, else
    "; N hosts" and each group that differs from rank 0 (``differences_text``)."""
    if len(groups) <= 1:
        return ""
    hosts = {g["host"] for g in groups}
    diff = differences_text(groups)
    return f"; ranks on {len(hosts)} host{'s' if len(hosts) > 1 else ''}" + (f"; {diff}" if diff else "")
