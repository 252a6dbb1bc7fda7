"""The download stage's worker pool: a worker killed mid-shard (as by the out-of-memory killer) is noticed and
its shard rerun, shards that keep losing their worker fail by name, and Ctrl-C stops the pool quietly."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.hostile_server import HostileHandler, write_site
from tests.project_env import project_env
from tokenization.download import run_download
from tokenization.download_config import DownloadConfig


@pytest.mark.slow  # two img2dataset runs, each spawning a process that imports torch
@pytest.mark.timeout(400)  # img2dataset's own multiprocessing pool would wait for the killed worker forever
def test_a_download_worker_killed_mid_shard_is_noticed_and_its_shard_rerun(tmp_path, http_server, monkeypatch):
    root = tmp_path / "www"
    root.mkdir()
    write_site(root, goods=5)
    base = http_server(root, HostileHandler)
    urls = [f"{base}/good{i}.png" for i in range(5)]
    urls.insert(2, f"{base}/serve/kill.png")  # its worker is SIGKILLed (as by the out-of-memory killer) once
    pq.write_table(pa.table({"URL": urls, "TEXT": [f"c{i}" for i in range(6)]}), tmp_path / "l.parquet")
    monkeypatch.setattr(HostileHandler, "kills_left", 1)
    monkeypatch.setattr(HostileHandler, "killed", 0)
    cfg = DownloadConfig(
        source="laion",
        url_list=str(tmp_path / "l.parquet"),
        serve_local=False,
        samples_per_shard=3,
        threads=2,
        shard_retries=1,
        distributor="multiprocessing",
        allow_hosts=["127.0.0.1"],
        min_success_ratio=1.0,
    )
    logs: list = []
    report = run_download(cfg, tmp_path / "run", log=logs.append)
    assert HostileHandler.killed == 1
    assert any("a download worker died" in m for m in logs), logs
    assert report["counts"] == {"count": 6, "success": 6, "failed_to_download": 0, "failed_to_resize": 0, "shards": 2}


def test_shards_of_a_dead_worker_fail_by_name_after_the_retries(tmp_path, monkeypatch):
    """Every attempt loses shard 00000 to a dead worker: the stage reruns it ``shard_retries`` times, then
    fails naming it and the likely cause."""
    import tokenization.download as dl

    calls = []

    def dies(**kw):
        calls.append(kw)
        return ["00000"]  # what the distributors report: the shard was left without stats

    monkeypatch.setattr(dl, "call_img2dataset", dies)
    pq.write_table(pa.table({"URL": ["http://127.0.0.1:9/0.png"], "TEXT": ["c"]}), tmp_path / "l.parquet")
    cfg = DownloadConfig(source="laion", url_list=str(tmp_path / "l.parquet"), shard_retries=2)
    with pytest.raises(RuntimeError, match=r"shards \['00000'\] .* after 3 attempts; a download worker died in 3"):
        run_download(cfg, tmp_path / "run", log=lambda m: None)
    assert len(calls) == 3 and calls[0]["guard"].max_pixels == cfg.max_image_pixels


POOL_SCRIPT = """
import os, signal, sys, time
from pathlib import Path

# Ctrl-C as in a terminal's foreground job, whatever the disposition this process inherited from the test runner
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def shard(row):
    (Path(sys.argv[1]) / f"started-{os.getpid()}").write_text("")
    time.sleep(60)


if __name__ == "__main__":
    from tokenization.download_hooks import pool_distributor

    try:
        pool_distributor(2, shard, [(i,) for i in range(4)], 1, 0, lost=[])
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
"""


def _start_pool(tmp_path: Path):
    """The pool script in its own process group (as a terminal's foreground job), once both of its workers
    have started a shard; returns the process and the workers' pids."""
    import subprocess
    import sys
    import time

    (tmp_path / "pool.py").write_text(POOL_SCRIPT)
    root = Path(__file__).resolve().parents[1]
    env = project_env(OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "pool.py"), str(tmp_path)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 60
    while len(list(tmp_path.glob("started-*"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    return proc, [int(p.name.split("-")[1]) for p in tmp_path.glob("started-*")]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has ended (its new parent reaps it)


def _stop(proc, workers: list[int]) -> None:
    """Kill what a test left running: only the processes it started, by their ids."""
    import signal

    for w in workers:
        if _alive(w):
            os.kill(w, signal.SIGKILL)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


@pytest.mark.slow  # two spawned workers import img2dataset: 10-30 s on 2 shared cores
def test_ctrl_c_stops_the_download_pool_without_a_traceback_per_worker(tmp_path):
    """Ctrl-C signals the whole process group: the download workers end quietly and the parent stops at once
    (each worker printed a KeyboardInterrupt traceback, went on to the next shard, and the parent waited)."""
    import signal
    import time

    proc, workers = _start_pool(tmp_path)
    try:
        assert len(workers) == 2, proc.stderr.read() if proc.poll() is not None else ""
        t0 = time.time()
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        _stop(proc, workers)
    assert proc.returncode == 130 and out == "interrupted\n", (out, err)
    assert "Traceback" not in err and time.time() - t0 < 15, err


@pytest.mark.slow  # two spawned workers import img2dataset: 10-30 s on 2 shared cores
def test_download_workers_die_with_the_run_killed_by_sigkill(tmp_path):
    """``pt2i run`` itself killed (the out-of-memory killer, ``kill -9``): its download workers die with it.
    Orphans went on with their shards after the stage's loopback server was gone and wrote stats of failed
    images, which the rerun took for finished shards."""
    import signal
    import time

    proc, workers = _start_pool(tmp_path)
    try:
        assert len(workers) == 2 and all(_alive(w) for w in workers)
        os.kill(proc.pid, signal.SIGKILL)  # the parent alone, not its process group
        proc.wait(timeout=30)
        deadline = time.time() + 15
        while any(_alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers), "download workers outlived their parent"
    finally:
        _stop(proc, workers)
