"""The Slurm launcher: ``srun`` starts the train stage's ranks on the nodes of the allocation pt2i runs in.

    sbatch --nodes 2 --gpus-per-node 8 --wrap "pt2i run CONFIG"          # cluster.launcher: slurm
    pt2i launch-command CONFIG                                          # print the srun command
    python -m cluster.slurm_launch RUN/train/job.json [--dry-run]       # (re)run a train stage's job

The train stage runs, from the batch script (or ``salloc``)::

    srun --nodes=2 --ntasks=16 --ntasks-per-node=8 --cpus-per-task=9 --gpus-per-node=8 --kill-on-bad-exit=1 \\
        --export=ALL --job-name=pt2i-train PYTHON -m cluster.slurm_rank --job RUN/train/job.json

* srun hands this process's environment to every task (``--export=ALL``): the kernel settings the run records,
  PYTHONPATH and the user's variables reach every node without DeepSpeed's environment file. Each task maps
  Slurm's numbering to torch's and picks the master (``cluster.slurm_rank``).
* ``--cpus-per-task``: the allocation's CPUs per node (``SLURM_JOB_CPUS_PER_NODE``, the smallest node) over its
  ranks, unless ``cluster.srun_args`` gives it; CPU ranks run that many threads.
* GPU ranks see every GPU of their node (srun's default) and take the ``LOCAL_RANK``-th.
* A stopped stage asks srun to end (SIGTERM), which cancels the job step on every node; a killed srun would leave
  the step's ranks running (``cluster.guard``'s grace).
* Outside an allocation srun asks Slurm for one (add ``--partition``/``--time`` to ``cluster.srun_args``).
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Optional

from cluster.config import ClusterConfig
from cluster.deepspeed_launch import LOOPBACK, slots_per_node, world_size
from cluster.launcher_run import PROJECT_ROOT, job_main, project_env, run_launcher

RANK_MODULE = "cluster.slurm_rank"
STOP_GRACE_S = 60.0  # srun waits up to Slurm's KillWait (30 s by default) for the step's tasks to end
CLEARED = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT")


def cpus_per_node(env: Mapping[str, str]) -> Optional[int]:
    """The fewest CPUs any node of the allocation has (``SLURM_JOB_CPUS_PER_NODE``, e.g. ``72(x2),36``); None
    outside an allocation."""
    counts = [int(m.group(1)) for m in re.finditer(r"(\d+)(?:\(x\d+\))?", env.get("SLURM_JOB_CPUS_PER_NODE", ""))]
    return min(counts) if counts else None


def srun_command(c: ClusterConfig, job_path: str | Path, env: Mapping[str, str]) -> list[str]:
    """The ``srun`` argv that runs ``training.trainer --job job_path`` on every rank."""
    ranks = slots_per_node(c)
    cmd = ["srun", f"--nodes={c.num_nodes}", f"--ntasks={world_size(c)}", f"--ntasks-per-node={ranks}"]
    cpus = cpus_per_node(env)
    if cpus and not any(a.startswith(("--cpus-per-task", "-c")) for a in c.srun_args):
        cmd.append(f"--cpus-per-task={max(1, cpus // ranks)}")
    if c.gpus_per_node:
        cmd.append(f"--gpus-per-node={c.gpus_per_node}")
    cmd += ["--kill-on-bad-exit=1", "--export=ALL", "--job-name=pt2i-train", *c.srun_args]
    return [*cmd, sys.executable, "-m", RANK_MODULE, "--job", str(job_path)]


def srun_env(c: ClusterConfig, base: Optional[dict] = None) -> dict:
    """What srun hands to every task: this environment without another launcher's rank variables, with
    ``cluster.master_addr``/``master_port`` when they are set."""
    env = {k: v for k, v in project_env(base).items() if k not in CLEARED}
    if c.master_addr not in LOOPBACK:
        env["MASTER_ADDR"] = c.master_addr
    if c.master_port:
        env["MASTER_PORT"] = str(c.master_port)
    return env


def run(c: ClusterConfig, job_path: str | Path, work_dir: str | Path, log: Callable[[str], None] = print) -> int:
    """Run srun and wait; its output goes to ``work_dir/launcher.log`` and ``log``."""
    env = srun_env(c)
    return run_launcher("srun", srun_command(c, job_path, env), env, PROJECT_ROOT, work_dir, log, STOP_GRACE_S)


def print_plan(c: ClusterConfig, job_path: str | Path, work_dir: str | Path) -> None:
    """Print the srun command (as it would run from this environment); runs nothing."""
    env = srun_env(c)
    if cpus_per_node(env) is None:
        print("# not in a Slurm allocation: run it inside one (sbatch, salloc) for --cpus-per-task")
    print(shlex.join(srun_command(c, job_path, env)))


def main(argv: Optional[list[str]] = None) -> int:
    return job_main(argv, "Slurm", print_plan, run)


if __name__ == "__main__":
    sys.exit(main())
