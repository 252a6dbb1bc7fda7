"""A single-node job's ranks listen on loopback only: torch's own rendezvous store would listen on every
interface (``::``) even with MASTER_ADDR=127.0.0.1; ``init_distributed`` binds it to 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cluster.deepspeed_launch import PROJECT_ROOT
from tests.listening import not_loopback
from training.engine import free_port

RANK = """
import json, os, psutil, torch.distributed as dist
from training.engine import init_distributed
rank, world, _ = init_distributed(timeout_minutes=2, log=lambda m: None)
dist.barrier()  # every rank is connected: the store and gloo's sockets are all up
socks = [(c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections("inet") if c.status == "LISTEN"]
print("SOCKETS " + json.dumps({"rank": rank, "world": world, "listening": socks}), flush=True)
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.slow  # two processes importing DeepSpeed: ~20-40 s on 2 shared cores
def test_two_local_ranks_listen_on_loopback_only():
    port = free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (PROJECT_ROOT, os.environ.get("PYTHONPATH")) if p),
        }
        procs.append(subprocess.Popen([sys.executable, "-c", RANK], env=env, stdout=subprocess.PIPE, text=True))
    reports = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=300)
            assert p.returncode == 0, out[-2000:]
            reports.append(json.loads(next(line for line in out.splitlines() if line.startswith("SOCKETS "))[8:]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert sorted(r["rank"] for r in reports) == [0, 1] and all(r["world"] == 2 for r in reports)
    found = {(r["rank"], ip, port_) for r in reports for ip, port_ in r["listening"]}
    assert (0, "127.0.0.1", port) in found  # rank 0 serves the rendezvous store, on loopback
    assert not_loopback(found) == []
