"""The DeepSpeed launch rules the main launcher tests leave open: CPU ranks share the cores (cores/N threads
each), a CPU-only Ray cluster's hostfile lists only nodes with enough CPUs for the ranks, a job whose master is
another machine keeps DeepSpeed's port 29500, and a hosts list longer than num_nodes is refused."""

from __future__ import annotations

import os

import pytest

from cluster import deepspeed_launch as dl
from cluster.config import ClusterConfig


def test_each_cpu_rank_gets_its_share_of_the_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert dl.launch_env(ClusterConfig(procs_per_node=4), base={})["OMP_NUM_THREADS"] == "4"
    assert dl.launch_env(ClusterConfig(procs_per_node=32), base={})["OMP_NUM_THREADS"] == "1"  # never 0
    assert dl.launch_env(ClusterConfig(procs_per_node=4), base={"OMP_NUM_THREADS": "2"})["OMP_NUM_THREADS"] == "2"


def test_cpu_ranks_need_nodes_with_enough_cpus():
    nodes = [
        {"NodeManagerAddress": "10.0.0.2", "Alive": True, "Resources": {"CPU": 2.0}},
        {"NodeManagerAddress": "10.0.0.3", "Alive": True, "Resources": {"CPU": 8.0}},
        {"NodeManagerAddress": "10.0.0.4", "Alive": True, "Resources": {"CPU": 8.0}},
    ]
    c = ClusterConfig(launcher="deepspeed", address="auto", num_nodes=2, procs_per_node=4)
    assert dl.hosts_from_ray_nodes(nodes, c) == ["10.0.0.3", "10.0.0.4"]  # the 2-CPU node cannot hold 4 ranks
    with pytest.raises(ValueError, match="2 such alive node"):
        dl.hosts_from_ray_nodes(nodes, ClusterConfig(num_nodes=3, procs_per_node=4))


def test_a_one_node_job_on_another_machine_keeps_port_29500():
    assert dl.master_port(ClusterConfig(master_addr="10.0.0.5", gpus_per_node=8)) == dl.DEFAULT_MASTER_PORT


def test_a_hosts_list_must_match_num_nodes(tmp_path):
    with pytest.raises(ValueError, match="lists 3 host"):
        dl.plan(ClusterConfig(num_nodes=2, gpus_per_node=8, hosts=["a", "b", "c"]), "j", tmp_path)
