"""A Ray head started with the ``ray`` CLI by a test, on 127.0.0.1 only, and stopped by the test.

(``ray start --address`` refuses to add a worker node while ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
and without it the node swaps 127.0.0.1 for the interface address: multi-node tests use
``ray.util.cluster_utils.Cluster`` in a child process instead, see tests/test_two_nodes.py.)
Every port the head opens is chosen free here. Ray's dashboard agent otherwise listens on the fixed
port 52365: a second Ray on the same machine (the session's embedded Ray, or a second node) then
has no job agent, and job submission fails with "No available agent to submit job".
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_env(pythonpath: str | None = None) -> dict:
    """Environment of a loopback-only test node; its workers run this environment's ``python`` (and
    import from ``pythonpath`` when given: for drivers that ship no working directory)."""
    extra = (
        {"PYTHONPATH": os.pathsep.join(p for p in (pythonpath, os.environ.get("PYTHONPATH")) if p)}
        if pythonpath
        else {}
    )
    return {
        **os.environ,
        **extra,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "RAY_AUTH_MODE": "disabled",  # a loopback-only test cluster
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }


class RayNode:
    """One ``ray start --block`` process (its own process group, so it is stopped with all it started)."""

    def __init__(self, args: list[str], temp: str):
        self.temp = temp
        self.proc = subprocess.Popen(
            [
                str(BIN / "ray"),
                "start",
                "--block",
                "--node-ip-address=127.0.0.1",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--metrics-export-port={free_port()}",
                f"--temp-dir={temp}",
                *args,
            ],
            env=node_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal this node's process group: only processes this node started."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``: the raylet and workers exit within a few seconds, but the
        GCS server and the autoscaler monitor of a ``--block`` head linger ~30 s more (measured), and this
        throwaway node's state goes with its temp dir anyway."""
        self.kill(signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.proc.wait(30)


@contextlib.contextmanager
def ray_head(cpus: int = 2):
    """Yield ``(gcs_address, dashboard_url, head)`` of a one-node cluster with the job server on 127.0.0.1;
    stopped at exit."""
    port, dash = free_port(), free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's unix socket paths must stay < 108 chars
    nodes: list[RayNode] = []
    try:
        head = RayNode(
            [
                "--head",
                f"--port={port}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash}",
                "--include-dashboard=true",
                f"--num-cpus={cpus}",
            ],
            temp,
        )
        nodes.append(head)
        url = f"http://127.0.0.1:{dash}"
        _wait(lambda: urllib.request.urlopen(f"{url}/api/version", timeout=2), head, "the Ray dashboard")
        yield f"127.0.0.1:{port}", url, head
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(temp, ignore_errors=True)


def _wait(probe, head: RayNode, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            probe()
            return
        except Exception:  # noqa: BLE001  (connection refused, JSON of a half-up server)
            if not head.alive():
                raise RuntimeError("ray start (head) exited") from None
            time.sleep(1)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f} s")
