"""A launcher started by the pipeline (DeepSpeed's, and the ranks it starts) never outlives the process that
started it: not when that process stops it, and not when it is killed outright (SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]

# a command that starts a grandchild (as DeepSpeed's runner starts launch.py, which starts the ranks)
FAMILY = (
    "import subprocess, sys, time; "
    "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
    "open(sys.argv[1], 'w').write(str(c.pid)); time.sleep(300)"
)


def _wait_for(path: Path, timeout: float = 30.0) -> int:
    deadline = time.time() + timeout
    while not (path.is_file() and path.read_text()):
        assert time.time() < deadline, "the command did not start"
        time.sleep(0.05)
    return int(path.read_text())


def _gone(pids: list[int], timeout: float = 10.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
            return True
        time.sleep(0.05)
    return False


def test_a_killed_parent_leaves_no_launcher_or_rank(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    parent_code = (
        f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); from cluster.guard import start_guarded; "
        f"start_guarded([sys.executable, '-c', {FAMILY!r}, {str(pid_file)!r}]); time.sleep(300)"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code])
    try:
        grandchild = _wait_for(pid_file)
        family = [p.pid for p in psutil.Process(parent.pid).children(recursive=True)]
        assert grandchild in family and len(family) == 3  # the guard, the command, its child
        os.kill(parent.pid, signal.SIGKILL)  # as when `pt2i run` is killed outright
        parent.wait()
        assert _gone(family), [p for p in family if psutil.pid_exists(p)]
    finally:
        parent.kill()


def test_stop_guarded_stops_the_whole_family(tmp_path):
    from cluster.guard import start_guarded, stop_guarded

    pid_file = tmp_path / "grandchild.pid"
    proc = start_guarded([sys.executable, "-c", FAMILY, str(pid_file)])
    grandchild = _wait_for(pid_file)
    family = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)] + [proc.pid]
    assert grandchild in family
    stop_guarded(proc)
    assert _gone(family)
    stop_guarded(proc)  # finished already: nothing to do
