"""A multi-node job's ranks see the kernel settings of the process that launched it: DeepSpeed's runner (a real one,
up to the pdsh/ssh hop, which a script on PATH stands in for) exports them on every node through
``RUN/train/deepspeed_env``, with the user's ``~/.deepspeed_env`` kept; Ray Train's workers get them in their
runtime environment."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from cluster import deepspeed_env as de
from cluster import deepspeed_launch as dl
from cluster.config import ClusterConfig
from cluster.ray_train import worker_env


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    for k in ("DS_ENV_FILE", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR"):
        monkeypatch.delenv(k, raising=False)
    return h


def test_the_file_carries_the_kernel_settings_then_the_users_own_lines(tmp_path, home):
    (home / ".deepspeed_env").write_text("HF_HOME=/data/hf\n\nATEN_CPU_CAPABILITY=avx2\n")
    cwd = tmp_path / "project"
    cwd.mkdir()
    (cwd / ".deepspeed_env").write_text("LOCAL_SETTING=1\n")
    env = {"HOME": str(home), "ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "AVX2", "OMP_NUM_THREADS": "3"}
    path, text = de.env_file(tmp_path / "train", env, cwd, cpu_ranks=True)
    assert path == (tmp_path / "train" / "deepspeed_env").absolute() and path.read_text() == text
    # ours first, then the user's files in DeepSpeed's order: a later line wins, so the user's file has the last word
    assert text == (
        "ATEN_CPU_CAPABILITY=default\nMKL_CBWR=AVX2\nOMP_NUM_THREADS=3\n"
        "HF_HOME=/data/hf\nATEN_CPU_CAPABILITY=avx2\nLOCAL_SETTING=1\n"
    )
    # GPU ranks keep their own threads; a DS_ENV_FILE name is read where DeepSpeed reads it
    (home / "team.env").write_text("TEAM=1\n")
    _, gpu = de.env_file(tmp_path / "t2", {**env, "DS_ENV_FILE": "team.env"}, cwd, cpu_ranks=False, write=False)
    assert gpu == "ATEN_CPU_CAPABILITY=default\nMKL_CBWR=AVX2\nTEAM=1\n"
    assert not (tmp_path / "t2").exists()
    # DS_ENV_FILE already naming the file itself (a relaunch): its old lines are not read back
    again = de.env_file(tmp_path / "train", {**env, "DS_ENV_FILE": str(path)}, cwd, cpu_ranks=True)[1]
    assert again == "ATEN_CPU_CAPABILITY=default\nMKL_CBWR=AVX2\nOMP_NUM_THREADS=3\n"
    # GPU ranks with no kernel setting: nothing to carry, no file, and DeepSpeed reads the user's files itself
    assert de.env_file(tmp_path / "t3", {"HOME": str(home), "OMP_NUM_THREADS": "3"}, cwd, False) == (None, "")
    assert not (tmp_path / "t3").exists()


def fake_remote_shell(tmp_path: Path) -> Path:
    """``pdsh`` and ``ssh`` on PATH that start nothing and reach no host: pdsh writes its arguments to a file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pdsh").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path / "pdsh.args"}\n')
    (bin_dir / "ssh").write_text("#!/bin/sh\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


@pytest.mark.slow
def test_deepspeeds_runner_exports_them_on_every_node(tmp_path, home, monkeypatch):
    (home / ".deepspeed_env").write_text("USER_SETTING=1\n")
    monkeypatch.setenv("PATH", f"{fake_remote_shell(tmp_path)}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    c = ClusterConfig(launcher="deepspeed", num_nodes=2, procs_per_node=1, hosts=["node-a", "node-b"])
    work = tmp_path / "train"
    work.mkdir()
    logged: list[str] = []
    assert dl.run(c, work / "job.json", work, log=logged.append) == 0
    assert f"[deepspeed] every node's ranks get the settings in {work / 'deepspeed_env'}" in logged
    args = (tmp_path / "pdsh.args").read_text().splitlines()
    assert args[:5] == ["-S", "-f", "1024", "-w", "node-a,node-b"]
    remote = " ".join(args[5:])  # what each node runs: exports, then DeepSpeed's per-node launcher
    for setting in ("ATEN_CPU_CAPABILITY=default", "OMP_NUM_THREADS=1", "USER_SETTING=1"):
        assert f"export {setting};" in remote
    assert "-m deepspeed.launcher.launch" in remote and "--job" in remote


def test_the_dry_run_prints_the_file_and_points_the_command_at_it(tmp_path, home, monkeypatch, capsys):
    c = ClusterConfig(launcher="deepspeed", num_nodes=2, gpus_per_node=8, hosts=["gpu-a", "gpu-b"])
    dl.print_plan(c, tmp_path / "job.json", tmp_path)
    assert "DS_ENV_FILE" not in capsys.readouterr().out  # nothing to carry: DeepSpeed as ever
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    dl.print_plan(c, tmp_path / "job.json", tmp_path)
    out = capsys.readouterr().out.splitlines()
    path = tmp_path.absolute() / "deepspeed_env"
    assert out[-3:-1] == [f"# DS_ENV_FILE {path} (every node's ranks export these)", "ATEN_CPU_CAPABILITY=avx2"]
    assert shlex.split(out[-1])[:2] == [f"DS_ENV_FILE={path}", "deepspeed"]
    assert not path.exists()  # a dry run writes nothing
    dl.print_plan(ClusterConfig(launcher="deepspeed", procs_per_node=2), tmp_path / "job.json", tmp_path)
    assert "DS_ENV_FILE" not in capsys.readouterr().out  # one node: its ranks inherit the environment


def test_ray_train_workers_get_them_in_their_runtime_env(home, monkeypatch):
    remote = ClusterConfig(launcher="ray", address="ray://head:10001", num_nodes=2, gpus_per_node=8)
    assert "ATEN_CPU_CAPABILITY" not in worker_env(remote)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    env = worker_env(remote)
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and "OMP_NUM_THREADS" not in env  # Ray sizes an actor's threads
