"""Where the pipeline runs: an embedded local Ray and one process, or a Ray cluster / DeepSpeed launcher / Slurm."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass
class ClusterConfig:
    address: Optional[str] = field(
        default=None,
        metadata={"help": "Ray address (ray://host:10001 or 'auto'); None starts an embedded local Ray on 127.0.0.1"},
    )
    num_cpus: Optional[int] = field(default=None, metadata={"min": 1, "help": "CPUs for the embedded Ray"})
    ray_auth: Literal["token", "disabled"] = field(
        default="token",
        metadata={
            "help": "embedded Ray: token (default) accepts only processes holding a random token made for this "
            "run (other users of the machine can reach 127.0.0.1 too); disabled: no authentication, for a "
            "machine only you use or a Ray without token authentication"
        },
    )
    num_gpus: Optional[int] = field(default=None, metadata={"min": 0})
    ray_temp_dir: Optional[str] = field(
        default=None,
        metadata={
            "path": "output",
            "help": "folder of the embedded Ray's session files (logs, sockets, spilled objects); None: Ray's "
            "default (/tmp/ray, or $RAY_TMPDIR). A local disk, short enough for Ray's socket paths (Unix socket "
            "paths hold at most 107 bytes). A Ray at cluster.address keeps its own (ray start --temp-dir)",
        },
    )
    actor_start_timeout_s: float = field(
        default=300.0,
        metadata={
            "min": 0.1,
            "help": "seconds the Ray actors of tokenize, sample and retrieval have to be placed and started; "
            "past it the stage fails naming what each actor needs and what the cluster holds",
        },
    )
    launcher: Literal["local", "deepspeed", "ray", "slurm"] = field(
        default="local",
        metadata={
            "help": "how the train stage starts its ranks: local (this process), deepspeed (DeepSpeed's launcher, "
            "ssh/pdsh to cluster.hosts), ray (Ray Train workers), slurm (srun in the Slurm allocation pt2i runs in)"
        },
    )
    num_nodes: int = field(default=1, metadata={"min": 1})
    gpus_per_node: int = field(default=0, metadata={"min": 0, "help": "0 = CPU ranks"})
    procs_per_node: int = field(default=1, metadata={"min": 1, "help": "processes per node when gpus_per_node is 0"})
    master_addr: str = "127.0.0.1"
    master_port: int = field(
        default=0,
        metadata={
            "min": 0,
            "max": 65535,
            "help": "0: 29500 for a multi-node job; for a single-node job on loopback, a free "
            "port (so concurrent local runs do not collide)",
        },
    )
    hostfile: Optional[str] = field(
        default=None,
        metadata={
            "path": True,
            "help": "an existing DeepSpeed hostfile ('host slots=N' lines); None: written from hosts",
        },
    )
    hosts: list[str] = field(
        default_factory=list,
        metadata={
            "help": "node hostnames for the DeepSpeed launcher (num_nodes > 1); the first one is the master "
            "when master_addr is left at 127.0.0.1"
        },
    )
    srun_args: list[str] = field(
        default_factory=list,
        metadata={
            "help": "launcher slurm: more srun options, e.g. ['--gres=gpu:8'] where the cluster counts GPUs as "
            "gres, ['--partition=gpu', '--time=72:00:00'] when pt2i runs outside an allocation"
        },
    )
    host_allocator: Literal["auto", "keep", "system"] = field(
        default="auto",
        metadata={
            "help": "training processes' C allocator (glibc): keep freed memory for the next step instead of "
            "returning it and faulting in fresh zeroed pages each step (ZeRO-3 on a CPU rank spent its "
            "overhead there); system: glibc's default; auto: keep on CPU ranks that offload nothing (offload "
            "is for when RAM is the limit). It does not change results (training/host_allocator.py)"
        },
    )

    def __post_init__(self) -> None:
        if self.ray_temp_dir is not None:
            from cluster.local_ray import ray_temp_dir_problem

            problem = ray_temp_dir_problem(self.ray_temp_dir)
            if problem:
                raise ValueError(f"ray_temp_dir: {problem}")
        if self.srun_args and self.launcher != "slurm":
            raise ValueError(f"srun_args is for launcher slurm; launcher is {self.launcher}")
        if self.launcher == "slurm" and (self.hosts or self.hostfile):
            key, unset = ("hosts", "[]") if self.hosts else ("hostfile", "null")
            raise ValueError(
                f"{key} is for launcher deepspeed (set it to {unset}): under launcher slurm the allocation names "
                "the nodes"
            )
        if self.launcher == "deepspeed" and not self.master_addr.strip():  # only the DeepSpeed launcher reads it
            raise ValueError(
                "master_addr is empty: give the master node's host name or address, or leave it at 127.0.0.1 (one "
                "node; with several, the first of hosts)"
            )
