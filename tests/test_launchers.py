"""DeepSpeed hostfile and launch command from the cluster section; Ray Train worker layout."""

from __future__ import annotations

import shlex

import pytest

from cluster import deepspeed_launch as dl
from cluster.config import ClusterConfig
from cluster.ray_train import num_workers, worker_env


def test_two_nodes_of_eight_gpus(tmp_path):
    c = ClusterConfig(launcher="deepspeed", num_nodes=2, gpus_per_node=8, hosts=["node1", "node2"], master_port=29600)
    cmd, hostfile, text = dl.plan(c, "/runs/x/train/job.json", tmp_path)
    assert text == "node1 slots=8\nnode2 slots=8\n"
    assert (tmp_path / "hostfile").read_text() == text and hostfile == str(tmp_path / "hostfile")
    assert cmd == [
        "deepspeed",
        "--hostfile",
        str(tmp_path / "hostfile"),
        "--num_nodes",
        "2",
        "--num_gpus",
        "8",
        "--master_addr",
        "node1",
        "--master_port",
        "29600",
        "--module",
        "training.trainer",
        "--job",
        "/runs/x/train/job.json",
    ]
    assert dl.world_size(c) == 16
    env = dl.launch_env(c, base={})
    assert "GLOO_SOCKET_IFNAME" not in env and "OMP_NUM_THREADS" not in env  # GPU nodes: nccl, real NICs
    assert "NCCL_SOCKET_IFNAME" not in env


def ray_node(addr: str, gpus: float, alive: bool = True) -> dict:
    return {"NodeManagerAddress": addr, "Alive": alive, "Resources": {"CPU": 96.0, "GPU": gpus}}


def test_two_by_eight_hostfile_from_the_ray_clusters_alive_nodes(tmp_path):
    """No hosts in the config: the hostfile lists the Ray cluster's alive 8-GPU nodes, the driver's first."""
    nodes = [
        ray_node("10.0.0.9", 8),
        ray_node("10.0.0.7", 8, alive=False),
        ray_node("10.0.0.3", 0),
        ray_node("10.0.0.2", 8),
        ray_node("10.0.0.5", 8),
    ]
    c = ClusterConfig(launcher="deepspeed", address="auto", num_nodes=2, gpus_per_node=8)
    hosts = dl.hosts_from_ray_nodes(nodes, c, head="10.0.0.5")
    assert hosts == ["10.0.0.5", "10.0.0.2"]  # the head, then by address; the dead and GPU-less nodes left out
    cmd, hostfile, text = dl.plan(ClusterConfig(**{**c.__dict__, "hosts": hosts}), "job.json", tmp_path)
    assert text == "10.0.0.5 slots=8\n10.0.0.2 slots=8\n" == (tmp_path / "hostfile").read_text()
    assert cmd[cmd.index("--master_addr") + 1] == "10.0.0.5" and cmd[cmd.index("--num_gpus") + 1] == "8"
    with pytest.raises(ValueError, match="num_nodes=3 .* 2 such alive node"):
        dl.hosts_from_ray_nodes(nodes[:4], ClusterConfig(num_nodes=3, gpus_per_node=8), head="10.0.0.9")


def test_explicit_master_and_existing_hostfile(tmp_path):
    hf = tmp_path / "hosts"
    hf.write_text("a slots=4\nb slots=4\n")
    c = ClusterConfig(num_nodes=2, gpus_per_node=4, master_addr="10.0.0.5", hostfile=str(hf))
    cmd, hostfile, text = dl.plan(c, "job.json", tmp_path / "w")
    assert hostfile == str(hf) and text == hf.read_text() and not (tmp_path / "w" / "hostfile").exists()
    assert cmd[cmd.index("--master_addr") + 1] == "10.0.0.5"


def test_cpu_ranks_on_one_machine_stay_on_loopback(tmp_path):
    c = ClusterConfig(launcher="deepspeed", procs_per_node=2, master_port=29555)
    cmd, hostfile, _ = dl.plan(c, "job.json", tmp_path)
    assert hostfile is None and "--hostfile" not in cmd
    assert shlex.join(cmd) == (
        "deepspeed --num_nodes 1 --num_gpus 2 --master_addr 127.0.0.1 --master_port 29555 "
        "--module training.trainer --job job.json"
    )
    env = dl.launch_env(c, base={"PYTHONPATH": "/x"})
    assert env["GLOO_SOCKET_IFNAME"] == "lo" and int(env["OMP_NUM_THREADS"]) >= 1
    assert env["NCCL_SOCKET_IFNAME"] == "lo"  # a one-machine GPU job: NCCL's bootstrap on loopback too
    assert env["PYTHONPATH"].split(":")[0] == dl.PROJECT_ROOT and env["PYTHONPATH"].endswith("/x")


def test_master_port_0_is_a_free_local_port_for_one_node_and_29500_for_several():
    import socket

    local = ClusterConfig(launcher="deepspeed", procs_per_node=2)
    assert local.master_port == 0  # the default
    port = dl.master_port(local)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))  # it is free
        taken = s.getsockname()[1]
        assert dl.master_port(local) != taken  # two local runs at once get different ports
    cmd = dl.launch_command(local, "job.json")
    assert 1024 <= int(cmd[cmd.index("--master_port") + 1]) <= 65535
    multi = ClusterConfig(launcher="deepspeed", num_nodes=2, gpus_per_node=8, hosts=["a", "b"])
    assert dl.master_port(multi) == 29500
    assert dl.master_port(ClusterConfig(master_port=29601)) == 29601


def test_the_shipped_multi_node_configs_take_the_master_from_their_hostfile(tmp_path):
    """coco-paper.yaml and pdm-1.2b.yaml give a hostfile and leave master_addr on loopback: the master is the
    hostfile's first host, as DeepSpeed's launcher picks it."""
    from pipeline.experiment import load_config

    for name in ("coco-paper.yaml", "pdm-1.2b.yaml"):
        c = load_config(f"configs/{name}").cluster
        assert c.master_addr in dl.LOOPBACK and not c.hosts and c.hostfile
        cmd, hostfile, text = dl.plan(c, "job.json", tmp_path, write=False)
        assert hostfile == c.hostfile and cmd[cmd.index("--master_addr") + 1] == "node-0"
        assert cmd[cmd.index("--num_nodes") + 1] == "2" and cmd[cmd.index("--num_gpus") + 1] == "8"
    hf = tmp_path / "hosts"
    hf.write_text("# two nodes\n\nx-1 slots=2  # the first\nx-2 slots=2\n")
    assert dl.hostfile_hosts(hf) == ["x-1", "x-2"]
    with pytest.raises(ValueError, match=f"cluster.hostfile {tmp_path / 'absent'} is not a file"):
        dl.master_addr(ClusterConfig(num_nodes=2, gpus_per_node=2, hostfile=str(tmp_path / "absent")))
    (tmp_path / "empty").write_text("# no hosts yet\n")
    with pytest.raises(ValueError, match="hostfile that lists its hosts"):
        dl.master_addr(ClusterConfig(num_nodes=2, gpus_per_node=2, hostfile=str(tmp_path / "empty")))


def test_misconfigured_multi_node_jobs_fail_early(tmp_path):
    with pytest.raises(ValueError, match="hosts"):
        dl.plan(ClusterConfig(num_nodes=2, gpus_per_node=8), "j", tmp_path)
    with pytest.raises(ValueError, match="2 host"):
        dl.plan(ClusterConfig(num_nodes=3, gpus_per_node=8, hosts=["a", "b"]), "j", tmp_path)


def test_dry_run_prints_hostfile_and_command(tmp_path, capsys):
    from tests.trainer_utils import write_config

    path = write_config(
        tmp_path,
        {"batch_size": 16},  # one sample per rank
        cluster={"launcher": "deepspeed", "num_nodes": 2, "gpus_per_node": 8, "hosts": ["gpu-a", "gpu-b"]},
    )
    from pipeline.cli import main

    assert main(["launch-command", str(path), "--set", "cluster.master_port=29601"]) == 0
    out = capsys.readouterr().out
    assert "gpu-a slots=8\ngpu-b slots=8\n" in out
    assert "--num_nodes 2 --num_gpus 8 --master_addr gpu-a --master_port 29601 --module training.trainer" in out
    assert not (tmp_path / "run" / "train" / "hostfile").exists()  # a dry run writes nothing


def test_ray_worker_layout():
    assert num_workers(ClusterConfig(procs_per_node=2)) == (2, False)
    assert num_workers(ClusterConfig(num_nodes=2, gpus_per_node=8)) == (16, True)
    local = worker_env(ClusterConfig())
    assert local["GLOO_SOCKET_IFNAME"] == "lo" == local["NCCL_SOCKET_IFNAME"]
    assert "GLOO_SOCKET_IFNAME" not in worker_env(ClusterConfig(address="ray://head:10001"))


def test_a_failed_rank_is_named_in_one_line():
    from ray.train import WorkerGroupError

    from cluster.ray_train import training_error
    from training.divergence import Diverged

    failures = {1: ValueError("bad shard\nmore"), 0: Diverged("step 3: the loss is nan")}
    err = WorkerGroupError("rank 0 ...\nrank 1 ...", failures)
    assert training_error(err, (Diverged,)) is failures[0]
    assert str(training_error(err)) == "Ray Train failed: rank 0: Diverged: step 3: the loss is nan"
    assert (
        str(training_error(WorkerGroupError("...", {1: failures[1]})))
        == "Ray Train failed: rank 1: ValueError: bad shard"
    )
    assert str(training_error(WorkerGroupError("...", {0: MemoryError()}))) == "Ray Train failed: rank 0: MemoryError"
    assert str(training_error(RuntimeError("Traceback\n...\nActorDiedError: the controller died"))) == (
        "Ray Train failed: ActorDiedError: the controller died"
    )
