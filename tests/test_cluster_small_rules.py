"""Small cluster rules no other test pins: machines are counted by distinct address (several Ray nodes on
one machine share its disk), job server addresses are normalised (``auto`` and ``ray://`` are left to Ray),
the job's command line carries --stage/--from/--force, and the guard refuses to start without a command."""

from __future__ import annotations

import subprocess
import sys

from cluster import local_ray
from cluster.deepspeed_launch import PROJECT_ROOT
from cluster.submit import job_entrypoint, job_server_url


def test_alive_hosts_counts_machines_not_nodes(monkeypatch):
    monkeypatch.setattr(local_ray, "node_addresses", lambda: ["10.0.0.1", "10.0.0.1", "10.0.0.2"])
    assert local_ray.alive_hosts() == 2


def test_job_server_addresses():
    assert job_server_url("http://head:8265/") == "http://head:8265"
    assert job_server_url("head:8265") == "http://head:8265"
    assert job_server_url("auto") is None and job_server_url("ray://head:10001") is None


def test_the_job_runs_the_stages_asked_for():
    run = "python -m pipeline.cli run env:PT2I_CONFIG_YAML"
    assert job_entrypoint([], "train", True) == f"{run} --from train --force"
    assert job_entrypoint(["tokenize", "train"], None, False) == f"{run} --stage tokenize --stage train"


def test_the_guard_needs_a_command():
    for argv in ([], ["--"], ["echo"], ["--grace", "5", "--"]):
        proc = subprocess.run(
            [sys.executable, "-m", "cluster.guard", *argv], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60
        )
        usage = "usage: python -m cluster.guard [--grace S] -- CMD"
        assert proc.returncode == 2 and proc.stderr.startswith(usage), argv
