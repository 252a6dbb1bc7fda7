"""The Slurm launcher: the srun command and what each task sets (fast), then a real one-node Slurm cluster on
127.0.0.1 (``tests.slurm_cluster``): ``salloc`` + ``python -m cluster.slurm_launch`` trains a 2-rank ZeRO-2 job
with the losses of one process, and a stopped launch leaves no job step behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cluster import slurm_launch as sl
from cluster.config import ClusterConfig
from cluster.guard import start_guarded, stop_guarded
from cluster.launcher_run import PROJECT_ROOT, save_cluster_section
from cluster.slurm_rank import master_port, rank_env, tasks_per_node
from core.config import ConfigError, from_dict
from tests.listening import LOOPBACK_IPS
from tests.slurm_cluster import jobs, local_slurm, wait_until
from tests.trainer_utils import losses, make_job, make_shards, one_thread  # noqa: F401
from training.trainer import run_training

TRAIN = dict(steps=4, checkpoint_every=2, batch_size=8, p_error=0.0, data_split="sample", log_every=1, zero_stage=2)


def test_two_nodes_of_eight_gpus_in_an_allocation():
    c = ClusterConfig(launcher="slurm", num_nodes=2, gpus_per_node=8, srun_args=["--gres=gpu:8"])
    cmd = sl.srun_command(c, "/runs/a/train/job.json", {"SLURM_JOB_CPUS_PER_NODE": "72(x2)"})
    assert cmd == [
        "srun",
        "--nodes=2",
        "--ntasks=16",
        "--ntasks-per-node=8",
        "--cpus-per-task=9",
        "--gpus-per-node=8",
        "--kill-on-bad-exit=1",
        "--export=ALL",
        "--job-name=pt2i-train",
        "--gres=gpu:8",
        sys.executable,
        "-m",
        "cluster.slurm_rank",
        "--job",
        "/runs/a/train/job.json",
    ]


def test_cpus_per_task_from_the_smallest_node_unless_given():
    c = ClusterConfig(launcher="slurm", num_nodes=3, procs_per_node=4)
    assert "--cpus-per-task=9" in sl.srun_command(c, "j", {"SLURM_JOB_CPUS_PER_NODE": "72(x2),36"})
    assert not any(a.startswith("--cpus") for a in sl.srun_command(c, "j", {}))  # outside an allocation
    own = ClusterConfig(launcher="slurm", procs_per_node=4, srun_args=["--cpus-per-task=2"])
    assert [a for a in sl.srun_command(own, "j", {"SLURM_JOB_CPUS_PER_NODE": "8"}) if "cpus" in a] == [
        "--cpus-per-task=2"
    ]


def test_srun_hands_the_tasks_no_other_launchers_rank_variables():
    base = {k: "3" for k in sl.CLEARED} | {"X": "1"}
    env = sl.srun_env(ClusterConfig(launcher="slurm"), base)
    assert not {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"} & set(env)
    assert env["X"] == "1" and env["PYTHONPATH"].split(":")[0] == PROJECT_ROOT
    pinned = sl.srun_env(ClusterConfig(launcher="slurm", master_addr="n1", master_port=29511), base)
    assert (pinned["MASTER_ADDR"], pinned["MASTER_PORT"]) == ("n1", "29511")


TASK = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_TASKS": "8", "SLURM_STEP_NUM_NODES": "1"}


def test_a_task_takes_its_rank_from_slurm_and_stays_on_loopback_on_one_node():
    env = {**TASK, "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_CPUS_PER_TASK": "6"}
    got = rank_env(env)
    assert got == {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(master_port(env)),
        "OMP_NUM_THREADS": "6",
    }
    ports = {master_port({"SLURM_JOB_ID": str(j), "SLURM_STEP_ID": str(s)}) for j in (4242, 4243) for s in (0, 1)}
    assert len(ports) == 4 and all(20000 <= p < 32768 for p in ports)  # per step, below the ephemeral ports
    assert rank_env({**env, "MASTER_PORT": "29511", "OMP_NUM_THREADS": "2"})["MASTER_PORT"] == "29511"
    assert "OMP_NUM_THREADS" not in rank_env({**env, "OMP_NUM_THREADS": "2"})  # the user's setting stands


def test_tasks_sharing_a_nodes_cpus_split_them_and_a_bound_task_keeps_its_own():
    assert tasks_per_node("8(x2),4") == [8, 8, 4] and tasks_per_node("2") == [2]
    env = {**TASK, "SLURM_STEP_TASKS_PER_NODE": "8(x2),4", "SLURM_NODEID": "2", "SLURM_CPUS_PER_TASK": "12"}
    assert rank_env(env, cpus=96)["LOCAL_WORLD_SIZE"] == "4"  # unbound: the trainer takes 96 / 4 cores
    assert "LOCAL_WORLD_SIZE" not in rank_env(env, cpus=12)  # bound to its 12: all of them


def test_a_multi_node_task_takes_the_steps_first_node_as_master(monkeypatch):
    expanded = []
    monkeypatch.setattr("cluster.slurm_rank.step_hosts", lambda nodes: expanded.append(nodes) or ["gpu01", "gpu02"])
    env = {**TASK, "SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_NODELIST": "gpu[01-02]", "SLURM_JOB_NODELIST": "gpu[01-04]"}
    assert rank_env(env)["MASTER_ADDR"] == "gpu01" and expanded == ["gpu[01-02]"]
    assert rank_env({**env, "MASTER_ADDR": "gpu07"})["MASTER_ADDR"] == "gpu07"  # cluster.master_addr
    with pytest.raises(RuntimeError, match="SLURM_PROCID unset: cluster.slurm_rank runs as a task of srun"):
        rank_env({"SLURM_LOCALID": "0"})


def test_slurm_settings_are_checked_at_load():
    with pytest.raises(ConfigError, match="cluster: srun_args is for launcher slurm; launcher is deepspeed"):
        from_dict(ClusterConfig, {"launcher": "deepspeed", "srun_args": ["-p", "gpu"]}, source="x", path="cluster")
    hosts = r"cluster: hosts is for launcher deepspeed \(set it to \[\]\): under launcher slurm the allocation"
    with pytest.raises(ConfigError, match=hosts):
        from_dict(ClusterConfig, {"launcher": "slurm", "num_nodes": 2, "hosts": ["a", "b"]}, source="x", path="cluster")


def test_launch_command_prints_the_srun_command(tmp_path, monkeypatch, capsys):
    from pipeline.cli import main

    for k in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(k)
    root = Path(__file__).resolve().parents[1]
    sets = ["cluster.launcher=slurm", "cluster.num_nodes=2", "cluster.gpus_per_node=4", f"run_dir={tmp_path}"]
    assert main(["launch-command", str(root / "configs" / "tiny.yaml"), *[a for s in sets for a in ("--set", s)]]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# not in a Slurm allocation")
    assert out[1].startswith("srun --nodes=2 --ntasks=8 --ntasks-per-node=4 --gpus-per-node=4 --kill-on-bad-exit=1")
    assert out[1].endswith(f"-m cluster.slurm_rank --job {tmp_path / 'train' / 'job.json'}")
    assert not list(tmp_path.iterdir())  # printed, nothing written


CLEANUP = """
import pathlib, signal, sys, time
def done(*_):  # like srun cancelling its step: it takes a while
    time.sleep(1); pathlib.Path(sys.argv[1]).write_text("cleaned up"); sys.exit(0)
signal.signal(signal.SIGTERM, done)
pathlib.Path(sys.argv[1] + ".ready").touch()
time.sleep(300)
"""


@pytest.mark.parametrize("grace_s", [0.0, 10.0])
def test_a_guard_with_grace_lets_the_command_end_its_work(tmp_path, grace_s):
    """srun cancels its step on SIGTERM; killed outright it leaves the step's ranks running. With a grace the
    guard lets the command finish what it does on SIGTERM (its end, not the grace, decides how long the stop takes);
    without, the group is killed at once."""
    marker = tmp_path / "marker"
    proc = start_guarded([sys.executable, "-c", CLEANUP, str(marker)], grace_s=grace_s)
    wait_until(lambda: Path(f"{marker}.ready").exists(), 30, "the command never started")
    t0 = time.time()
    stop_guarded(proc)
    assert proc.poll() is not None and time.time() - t0 < 5
    assert marker.exists() == bool(grace_s)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    with local_slurm(tmp_path_factory.mktemp("slurm")) as env:
        yield env


def slurm_processes() -> list[psutil.Process]:
    names = ("slurmctld", "slurmd", "slurmstepd", "srun", "salloc")
    return [
        p
        for p in psutil.process_iter(["name", "cmdline"])
        if p.info["name"] in names or "cluster.slurm_rank" in " ".join(p.info["cmdline"] or [])
    ]


@pytest.mark.slow
@pytest.mark.xdist_group("slurm")
@pytest.mark.timeout(600)
def test_salloc_trains_two_ranks_like_one_process(tmp_path, slurm):
    shards = make_shards(tmp_path / "shards", n_shards=4, per_shard=8)
    job = make_job(tmp_path / "slurm", shards, engine="deepspeed", **TRAIN, threads=0)  # 0: the rank's share
    path = Path(job.out_dir) / "job.json"
    job.save(path)
    save_cluster_section(ClusterConfig(launcher="slurm", procs_per_node=2), path)
    cmd = ["salloc", "--ntasks=2", "--job-name=pt2i-test", sys.executable, "-m", "cluster.slurm_launch", str(path)]
    listened = set()
    log = tmp_path / "salloc.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=slurm, cwd=PROJECT_ROOT, stdout=f, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            for p in slurm_processes():
                try:
                    conns = p.net_connections("inet")
                except psutil.Error:
                    continue
                listened |= {(p.pid, c.laddr.ip) for c in conns if c.status == psutil.CONN_LISTEN}
            time.sleep(0.2)
    out = log.read_text()
    assert proc.returncode == 0, out[-3000:]
    assert "[srun] srun --nodes=1 --ntasks=2 --ntasks-per-node=2 --cpus-per-task=" in out
    assert listened and all(ip in LOOPBACK_IPS for _, ip in listened), listened
    summary = json.loads((Path(job.out_dir) / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["engine"] == "deepspeed"
    assert summary["ranks"] == [{"ranks": "0-1", "host": socket.gethostname()}]
    assert summary["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)  # the cores shared by the node's 2 ranks
    ref = make_job(tmp_path / "ref", shards, engine="local", **TRAIN)
    run_training(ref, log=lambda m: None)
    a, b = losses(job.out_dir), losses(ref.out_dir)
    assert max(abs(a[s] - b[s]) for s in range(1, 5)) <= 1e-4, (a, b)


@pytest.mark.slow
@pytest.mark.xdist_group("slurm")
@pytest.mark.timeout(300)
def test_a_stopped_or_killed_launch_cancels_its_step_and_slurm_expands_node_lists(tmp_path, slurm):
    """The stage's stop (``stop_guarded``), then its process killed outright: either way srun gets its SIGTERM and
    the step's ranks end on the node."""
    hosts = subprocess.run(
        ["scontrol", "show", "hostnames", "gpu[01-03],cpu7"], env=slurm, capture_output=True, text=True, check=True
    )
    assert hosts.stdout.split() == ["gpu01", "gpu02", "gpu03", "cpu7"]
    for how in ("stopped", "killed"):
        marker = tmp_path / how
        script = f"import time, pathlib; pathlib.Path('{marker}').touch(); time.sleep(300)"
        srun = ["srun", "--ntasks=2", f"--job-name=pt2i-{how}", sys.executable, "-c", script]
        if how == "stopped":
            proc = start_guarded(srun, sl.STOP_GRACE_S, env=slurm)
        else:  # a stage process that starts the guarded srun, then dies by SIGKILL
            stage = f"from cluster.guard import start_guarded; import time; start_guarded({srun!r}, {sl.STOP_GRACE_S})"
            proc = subprocess.Popen([sys.executable, "-c", stage + "; time.sleep(300)"], env=slurm, cwd=PROJECT_ROOT)
        wait_until(lambda m=marker: m.exists() and jobs(slurm), 60, f"{how}: the step never started")
        if how == "stopped":
            stop_guarded(proc)
        else:
            proc.kill()
            proc.wait()
        wait_until(lambda: not jobs(slurm), 30, f"{how}: a job is left: {jobs(slurm)}")
        ranks = [p for p in psutil.process_iter(["cmdline"]) if str(marker) in " ".join(p.info["cmdline"] or [])]
        assert not ranks, how


def test_a_run_without_srun_fails_before_its_first_stage(tmp_path, monkeypatch, capsys):
    from pipeline.cli import main
    from pipeline.experiment import load_config
    from pipeline.preflight import missing_programs

    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # the venv's programs: no srun
    root = Path(__file__).resolve().parents[1]
    sets = [f"run_dir={tmp_path}", "cluster.launcher=slurm", "cluster.procs_per_node=2"]
    assert main(["run", str(root / "configs" / "tiny.yaml"), *[a for s in sets for a in ("--set", s)]]) != 0
    err = capsys.readouterr()
    assert (
        "cluster.launcher: slurm starts the train stage's ranks with srun, which is not on PATH here"
        in err.err + err.out
    )
    assert not (tmp_path / "download").exists()
    cfg = load_config(root / "configs" / "tiny.yaml", sets)
    assert missing_programs(cfg, ["download", "tokenize"]) == []  # only the train stage starts srun
