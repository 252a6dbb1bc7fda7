"""Ray Train: run a training function in N workers of a ``TorchTrainer``.

    summary = run_ray_training(cfg.cluster, asdict(job), training.trainer.run_job)

Workers: ``num_nodes x gpus_per_node`` GPU workers when the cluster has GPUs, else
``num_nodes x procs_per_node`` CPU workers (1 CPU each). On a Ray cluster Ray Train creates the torch
process group (gloo on CPU, nccl on GPU; its master is rank 0's node address); on the embedded Ray of
``cluster.local_ray.ensure_ray`` (every worker on this machine) it only sets ``MASTER_ADDR=127.0.0.1`` and a
free port, and each worker's ``training.engine.init_distributed`` makes the group with a rendezvous store
that listens on 127.0.0.1 only (Ray Train's own would listen on every interface). Each worker then builds
the same DeepSpeed engine as the ``deepspeed`` launcher (DeepSpeed reuses the existing group) and writes the
same checkpoints under the job's ``out_dir``. Ray Train's own run folder is ``out_dir/ray``; every worker
reports its final metrics once (Ray Train v2 wants every worker to call ``report``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from cluster.config import ClusterConfig
from cluster.loopback_store import LOOPBACK, LOOPBACK_SOCKETS

PROJECT_ROOT = str(Path(__file__).resolve().parents[1])


def num_workers(c: ClusterConfig) -> tuple[int, bool]:
    """(workers, use_gpu) from the cluster section."""
    if c.gpus_per_node > 0:
        return c.num_nodes * c.gpus_per_node, True
    return c.num_nodes * c.procs_per_node, False


def _worker_loop(config: dict) -> None:
    """Runs in every Ray Train worker (the process group already exists): ``train_fn(job)``."""
    import ray.train

    ctx = ray.train.get_context()
    os.environ["RANK"] = str(ctx.get_world_rank())
    os.environ["LOCAL_RANK"] = str(ctx.get_local_rank())
    os.environ["WORLD_SIZE"] = str(ctx.get_world_size())
    summary = config["train_fn"](config["job"])
    last = summary.get("last_metrics", {})
    ray.train.report({k: v for k, v in last.items() if isinstance(v, (int, float))})


def _free_loopback_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _set_master(port: int) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = LOOPBACK, str(port)


def _destroy_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def loopback_torch_config(backend: str):
    """A ``TorchConfig`` whose backend leaves the process group to the workers, on loopback (one machine)."""
    from ray.train.backend import Backend
    from ray.train.torch import TorchConfig

    class LoopbackBackend(Backend):
        share_cuda_visible_devices = True

        def on_start(self, worker_group, backend_config) -> None:
            port = worker_group.execute_single(0, _free_loopback_port)
            worker_group.execute(_set_master, port=port)

        def on_shutdown(self, worker_group, backend_config) -> None:
            worker_group.execute(_destroy_group)

    class LoopbackTorchConfig(TorchConfig):
        @property
        def backend_cls(self):
            return LoopbackBackend

    return LoopbackTorchConfig(backend=backend)


def worker_env(c: ClusterConfig) -> dict:
    """Environment of the worker actors: the project importable, no telemetry, the kernel settings in force here
    (a worker on another node starts from that node's environment), gloo and NCCL on loopback locally."""
    from cluster.local_ray import QUIET_ENV
    from core.environment import kernel_env

    env = {**kernel_env(os.environ), **QUIET_ENV}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PROJECT_ROOT, os.environ.get("PYTHONPATH")) if p)
    if c.address is None:
        env.update(LOOPBACK_SOCKETS)
    return env


def run_ray_training(
    c: ClusterConfig,
    job: dict,
    train_fn: Callable[[dict], dict],
    log: Callable[[str], None] = print,
    passthrough: tuple[type[BaseException], ...] = (),
) -> dict:
    """Train with a Ray Train ``TorchTrainer`` whose workers each call ``train_fn(job)`` (a module-level
    function, shipped by reference: ``training.trainer.run_job``); returns ``job["out_dir"]/summary.json``.

    When a worker fails, the lowest failed rank's own exception is raised as it is if it is one of
    ``passthrough`` (the train stage's ``Diverged`` and ``ResumeRefused``), else a ``RuntimeError`` naming the rank
    and its exception in one line; Ray Train's error, with every rank's traceback, is its cause."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    from cluster.local_ray import ensure_ray

    n, use_gpu = num_workers(c)
    job = {**job, "engine": "deepspeed"}
    out = Path(job["out_dir"])
    log(
        f"[ray] TorchTrainer with {n} {'GPU' if use_gpu else 'CPU'} worker(s) on "
        f"{c.address or 'an embedded Ray (127.0.0.1)'}"
    )
    with ensure_ray(c.address, num_cpus=c.num_cpus, num_gpus=c.num_gpus, auth=c.ray_auth, temp_dir=c.ray_temp_dir):
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={"job": job, "train_fn": train_fn},
            scaling_config=ScalingConfig(
                num_workers=n, use_gpu=use_gpu, resources_per_worker=None if use_gpu else {"CPU": 1}
            ),
            torch_config=(TorchConfig if c.address else loopback_torch_config)(backend="nccl" if use_gpu else "gloo"),
            run_config=RunConfig(
                name="ray_train",
                storage_path=str((out / "ray").resolve()),
                failure_config=FailureConfig(max_failures=0),
                worker_runtime_env={"env_vars": worker_env(c)},
            ),
        )
        try:
            result = trainer.fit()  # Ray Train v2 raises its TrainingFailedError; v1 returned it in the result
        except TrainingFailedError as exc:
            raise training_error(exc, passthrough) from exc
    if result.error is not None:
        raise training_error(result.error, passthrough) from result.error
    return json.loads((out / "summary.json").read_text())


def training_error(error: BaseException, passthrough: tuple[type[BaseException], ...] = ()) -> BaseException:
    """What ``run_ray_training`` raises for a failed ``fit()``: the lowest failed rank's exception (Ray Train's
    ``WorkerGroupError.worker_failures``) when it is one of ``passthrough``, else a one-line ``RuntimeError``."""
    failures = getattr(error, "worker_failures", None) or {}
    if not failures:  # the controller failed, or no worker kept its exception
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[-1]
        return RuntimeError(f"Ray Train failed: {first_line}")
    rank = min(failures)
    own = failures[rank]
    if isinstance(own, passthrough):
        return own
    text = (str(own).strip().splitlines() or [""])[0]
    what = f"{type(own).__name__}: {text}" if text else type(own).__name__
    return RuntimeError(f"Ray Train failed: rank {rank}: {what}")
