"""The DeepSpeed launcher: hostfile + ``deepspeed`` command from the ``cluster`` section.

    pt2i launch-command CONFIG [--set k=v ...]               # print the hostfile and the command
    python -m cluster.deepspeed_launch RUN/train/job.json [--dry-run]   # (re)run a train stage's job

prints or runs (the cluster section is the ``cluster.yaml`` the train stage writes beside ``job.json``)::

    deepspeed --hostfile RUN/train/hostfile --num_nodes 2 --num_gpus 8 --master_addr node1 \\
        --master_port 29500 --module training.trainer --job RUN/train/job.json

* GPU nodes: ``--num_gpus`` = ``cluster.gpus_per_node``; several nodes need ``cluster.hosts`` (a
  hostfile ``host slots=N`` is written), an existing ``cluster.hostfile``, or neither with a Ray
  ``cluster.address``: the hosts are then the Ray cluster's alive nodes with enough GPUs (head first).
  DeepSpeed starts the remote ranks over ssh/pdsh. The master is ``cluster.master_addr``, or the first host when that is
  left at 127.0.0.1 on a multi-node job.
* CPU ranks on one machine (``gpus_per_node: 0``): ``deepspeed --num_gpus N`` with N =
  ``procs_per_node``; DeepSpeed's CPU accelerator runs N processes that talk over gloo. Here the
  launch pins gloo to loopback (``GLOO_SOCKET_IFNAME=lo``) and gives each rank cores/N threads.
* Several nodes: the kernel settings in force here (and the CPU ranks' thread count) reach the other nodes' ranks
  through ``RUN/train/deepspeed_env`` (``cluster.deepspeed_env``), which keeps the user's ``~/.deepspeed_env``.
The job file (``training.trainer.TrainJob``) is written by the ``train`` stage.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from cluster.config import ClusterConfig
from cluster.deepspeed_env import env_file
from cluster.launcher_run import PROJECT_ROOT, job_main, project_env, run_launcher
from cluster.loopback_store import LOOPBACK_SOCKETS
from core.files import write_text_atomic

LOOPBACK = ("127.0.0.1", "localhost")
ENTRY_MODULE = "training.trainer"
DEFAULT_MASTER_PORT = 29500  # master_port 0 on a multi-node job


def slots_per_node(c: ClusterConfig) -> int:
    """Ranks per node: GPUs, or CPU processes when the nodes have no GPU."""
    return c.gpus_per_node if c.gpus_per_node > 0 else c.procs_per_node


def world_size(c: ClusterConfig) -> int:
    return c.num_nodes * slots_per_node(c)


def hostfile_text(hosts: list[str], slots: int) -> str:
    """DeepSpeed/OpenMPI-style hostfile: one ``host slots=N`` line per node."""
    if not hosts:
        raise ValueError("a hostfile needs at least one host")
    return "".join(f"{h} slots={slots}\n" for h in hosts)


def write_hostfile(path: str | Path, hosts: list[str], slots: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, hostfile_text(hosts, slots))


def hostfile_hosts(path: str | Path) -> list[str]:
    """The host names of a DeepSpeed hostfile (``host slots=N`` lines; ``#`` comments and blank lines skipped)."""
    lines = (line.split("#", 1)[0].split() for line in Path(path).read_text().splitlines())
    return [words[0] for words in lines if words]


def master_addr(c: ClusterConfig) -> str:
    """``cluster.master_addr``; for several nodes when it is left on loopback: the first of ``cluster.hosts``, else
    the first host of ``cluster.hostfile`` (as DeepSpeed's own launcher picks it)."""
    if c.num_nodes > 1 and c.master_addr in LOOPBACK:
        if c.hosts:
            return c.hosts[0]
        if c.hostfile is not None and not Path(c.hostfile).is_file():
            raise ValueError(f"cluster.hostfile {c.hostfile} is not a file (relative paths are read from {Path.cwd()})")
        if c.hostfile is not None and hostfile_hosts(c.hostfile):
            return hostfile_hosts(c.hostfile)[0]
        raise ValueError(
            "a multi-node job needs cluster.master_addr, cluster.hosts or a cluster.hostfile that lists its hosts "
            "(the first is the master)"
        )
    return c.master_addr


def master_port(c: ClusterConfig) -> int:
    """``cluster.master_port``, or when it is 0: a free loopback port for a single-node job on loopback
    (two local runs at once must not share one), else DeepSpeed's usual 29500."""
    if c.master_port:
        return c.master_port
    if c.num_nodes == 1 and master_addr(c) in LOOPBACK:
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    return DEFAULT_MASTER_PORT


def hosts_from_ray_nodes(nodes: list[dict], c: ClusterConfig, head: Optional[str] = None) -> list[str]:
    """``cluster.num_nodes`` hosts for the hostfile from ``ray.nodes()`` records: alive nodes with at least
    ``cluster.gpus_per_node`` GPUs (or ``procs_per_node`` CPUs), ``head`` (the driver's node) first, the
    others by address. Raises ValueError naming what the cluster has when it has too few."""
    need_gpu = c.gpus_per_node
    fit = sorted(
        {
            n["NodeManagerAddress"]
            for n in nodes
            if n.get("Alive")
            and n.get("Resources", {}).get("GPU", 0) >= need_gpu
            and n.get("Resources", {}).get("CPU", 0) >= (0 if need_gpu else c.procs_per_node)
        },
        key=lambda a: (a != head, a),
    )
    if len(fit) < c.num_nodes:
        have = (
            ", ".join(
                f"{n['NodeManagerAddress']} ({n.get('Resources', {}).get('GPU', 0):g} GPU)"
                for n in nodes
                if n.get("Alive")
            )
            or "none"
        )
        raise ValueError(
            f"cluster.num_nodes={c.num_nodes} with {need_gpu} GPU(s) each, but the Ray cluster has "
            f"{len(fit)} such alive node(s); alive: {have}"
        )
    return fit[: c.num_nodes]


def with_ray_hosts(c: ClusterConfig) -> ClusterConfig:
    """``c`` with ``hosts`` filled from the connected Ray cluster when a multi-node DeepSpeed job names
    neither hosts nor a hostfile (``c`` unchanged otherwise)."""
    import dataclasses

    if c.num_nodes == 1 or c.hosts or c.hostfile is not None or not c.address:
        return c
    import ray

    from cluster.local_ray import ensure_ray

    with ensure_ray(c.address):
        nodes, head = ray.nodes(), ray.util.get_node_ip_address()
    return dataclasses.replace(c, hosts=hosts_from_ray_nodes(nodes, c, head))


def needs_hostfile(c: ClusterConfig) -> bool:
    return c.hostfile is not None or c.num_nodes > 1 or bool(c.hosts)


def launch_command(
    c: ClusterConfig, job_path: str, hostfile: Optional[str] = None, executable: str = "deepspeed"
) -> list[str]:
    """The ``deepspeed`` argv for ``python -m training.trainer --job job_path`` on every rank."""
    if c.num_nodes > 1 and hostfile is None:
        raise ValueError(f"{c.num_nodes} nodes need a hostfile (cluster.hostfile or cluster.hosts)")
    cmd = [executable]
    if hostfile is not None:
        cmd += ["--hostfile", str(hostfile)]
    cmd += [
        "--num_nodes",
        str(c.num_nodes),
        "--num_gpus",
        str(slots_per_node(c)),
        "--master_addr",
        master_addr(c),
        "--master_port",
        str(master_port(c)),
        "--module",
        ENTRY_MODULE,
        "--job",
        str(job_path),
    ]
    return cmd


def launch_env(c: ClusterConfig, base: Optional[dict] = None) -> dict:
    """Environment for the launcher (inherited by local ranks): project on PYTHONPATH, no telemetry,
    gloo and NCCL sockets on loopback for a local job, cores/N threads per CPU rank."""
    env = project_env(base)
    if c.num_nodes == 1 and master_addr(c) in LOOPBACK:
        for k, v in LOOPBACK_SOCKETS.items():
            env.setdefault(k, v)
    if c.gpus_per_node == 0:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // c.procs_per_node)))
    return env


def ranks_env_file(c: ClusterConfig, env: dict, work_dir: str | Path, write: bool = True):
    """(path, text) of the environment file every node's ranks export (``cluster.deepspeed_env``), or (None, "")
    for one node (its ranks inherit the launcher's environment) or when there is nothing to carry."""
    if c.num_nodes == 1:
        return None, ""
    return env_file(work_dir, env, PROJECT_ROOT, cpu_ranks=c.gpus_per_node == 0, write=write)


def deepspeed_executable() -> str:
    """The ``deepspeed`` script next to this interpreter (the same venv), else from PATH."""
    local = Path(sys.executable).parent / "deepspeed"
    return str(local) if local.is_file() else "deepspeed"


def plan(
    c: ClusterConfig, job_path: str | Path, work_dir: str | Path, write: bool = True, executable: str = "deepspeed"
) -> tuple[list[str], Optional[str], Optional[str]]:
    """(argv, hostfile path, hostfile text). Writes ``work_dir/hostfile`` from ``cluster.hosts``
    unless ``cluster.hostfile`` is given or ``write`` is False."""
    hostfile = text = None
    if c.hostfile is not None:
        hostfile = c.hostfile
        text = Path(c.hostfile).read_text() if Path(c.hostfile).is_file() else None
    elif needs_hostfile(c):
        if len(c.hosts) != c.num_nodes:
            raise ValueError(
                f"cluster.hosts lists {len(c.hosts)} host(s) for num_nodes={c.num_nodes} (leave hosts "
                f"empty and set cluster.address to take them from the Ray cluster's alive nodes)"
            )
        hostfile = str(Path(work_dir) / "hostfile")
        text = hostfile_text(c.hosts, slots_per_node(c))
        if write:
            write_hostfile(hostfile, c.hosts, slots_per_node(c))
    return launch_command(c, str(job_path), hostfile, executable), hostfile, text


def run(c: ClusterConfig, job_path: str | Path, work_dir: str | Path, log: Callable[[str], None] = print) -> int:
    """Run the launcher and wait; its output goes to ``work_dir/launcher.log`` and ``log``."""
    c = with_ray_hosts(c)
    cmd, _, _ = plan(c, job_path, work_dir, executable=deepspeed_executable())
    env = launch_env(c)
    env_path, _ = ranks_env_file(c, env, work_dir)
    if env_path is not None:
        env["DS_ENV_FILE"] = str(env_path)
        log(f"[deepspeed] every node's ranks get the settings in {env_path}")
    return run_launcher("deepspeed", cmd, env, PROJECT_ROOT, work_dir, log, what="the DeepSpeed launcher")


def print_plan(c: ClusterConfig, job_path: str | Path, work_dir: str | Path) -> None:
    """Print the hostfile (when one is needed), the environment file of a multi-node job's ranks (when it has
    settings to carry) and the launch command; writes nothing."""
    cmd, hostfile, text = plan(c, job_path, work_dir, write=False)
    if hostfile:
        print(f"# hostfile {hostfile}\n{text or '(existing file)'}", end="" if text else "\n")
    env_path, env_text = ranks_env_file(c, launch_env(c), work_dir, write=False)
    if env_path is not None:
        print(f"# DS_ENV_FILE {env_path} (every node's ranks export these)\n{env_text}", end="")
        cmd = [f"DS_ENV_FILE={env_path}", *cmd]
    print(shlex.join(cmd))


def main(argv: Optional[list[str]] = None) -> int:
    return job_main(argv, "DeepSpeed", print_plan, run)


if __name__ == "__main__":
    sys.exit(main())
