"""One rank of a train job started by Slurm's ``srun``: torch.distributed's variables from Slurm's, then the trainer.

    srun ... python -m cluster.slurm_rank --job RUN/train/job.json      # what cluster.slurm_launch runs

* ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` from ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``, ``SLURM_LOCALID``.
* The master: ``MASTER_ADDR`` when the launch set it (``cluster.master_addr``); else the step's first node
  (``scontrol show hostnames``); on a one-node step 127.0.0.1, so that the rendezvous and gloo/NCCL stay on loopback
  (``training.engine.init_distributed``).
* ``MASTER_PORT`` when the launch set it (``cluster.master_port``); else a port from the job and step ids, the same
  on every task and different for two steps of one allocation.
* ``OMP_NUM_THREADS``: the task's CPUs (``SLURM_CPUS_PER_TASK``) unless it is set.
* ``LOCAL_WORLD_SIZE``: the step's tasks on this node, when they share its CPUs (Slurm bound none of them), so
  that the trainer gives each rank its share of the cores as under the other launchers
  (``training.determinism.cores_per_rank``); a task Slurm bound to its own CPUs uses them all.
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from collections.abc import Mapping
from typing import Optional

ENTRY_MODULE = "training.trainer"
PORT_BASE, PORT_SPAN = 20000, 12000  # below Linux's ephemeral ports (32768-60999)


def step_hosts(nodelist: str) -> list[str]:
    """The host names of a Slurm node list (``gpu[01-03],cpu7``), expanded by Slurm's own ``scontrol``."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(
            f"cannot expand the step's node list {nodelist!r} with `scontrol show hostnames` ({exc}); set "
            "cluster.master_addr to the first node's address"
        ) from None
    return out.stdout.split()


def master_port(env: Mapping[str, str]) -> int:
    job, step = int(env.get("SLURM_JOB_ID", 0)), int(env.get("SLURM_STEP_ID", 0))
    return PORT_BASE + (job * 64 + step) % PORT_SPAN


def tasks_per_node(spec: str) -> list[int]:
    """Slurm's tasks-per-node list (``SLURM_STEP_TASKS_PER_NODE``: ``8(x2),4``) one count per node."""
    out = []
    for part in spec.split(","):
        count, _, times = part.partition("(x")
        out += [int(count)] * int(times.rstrip(")") or 1)
    return out


def rank_env(env: Mapping[str, str], cpus: Optional[int] = None) -> dict[str, str]:
    """The variables this task sets from Slurm's (``env``: the task's environment; ``cpus``: how many CPUs it may
    run on, its affinity)."""
    missing = [k for k in ("SLURM_PROCID", "SLURM_LOCALID") if k not in env]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} unset: cluster.slurm_rank runs as a task of srun (launcher slurm)")
    nodes = int(env.get("SLURM_STEP_NUM_NODES", env.get("SLURM_NNODES", "1")))
    out = {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")),
        "LOCAL_RANK": env["SLURM_LOCALID"],
        "MASTER_ADDR": env.get("MASTER_ADDR")
        or (step_hosts(env.get("SLURM_STEP_NODELIST") or env["SLURM_JOB_NODELIST"])[0] if nodes > 1 else "127.0.0.1"),
        "MASTER_PORT": env.get("MASTER_PORT") or str(master_port(env)),
    }
    if "OMP_NUM_THREADS" not in env and env.get("SLURM_CPUS_PER_TASK"):
        out["OMP_NUM_THREADS"] = env["SLURM_CPUS_PER_TASK"]
    own = int(env.get("SLURM_CPUS_PER_TASK") or 0)
    if env.get("SLURM_STEP_TASKS_PER_NODE") and not (cpus is not None and own and cpus <= own):  # shared CPUs
        counts = tasks_per_node(env["SLURM_STEP_TASKS_PER_NODE"])
        out["LOCAL_WORLD_SIZE"] = str(counts[min(int(env.get("SLURM_NODEID", 0)), len(counts) - 1)])
    return out


def main() -> None:
    os.environ.update(rank_env(os.environ, len(os.sched_getaffinity(0))))
    sys.argv = [ENTRY_MODULE, *sys.argv[1:]]
    runpy.run_module(ENTRY_MODULE, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
