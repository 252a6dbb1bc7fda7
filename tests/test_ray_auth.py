"""The embedded Ray with ``cluster.ray_auth: token`` (the default) refuses a process without its token; once it
has stopped, a Ray call in its process raises instead of starting a default Ray.

The Ray runs in a child process (this session's own embedded Ray is left alone); other processes then try
to join it with no token, a wrong one and the right one. Every socket is on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cluster.deepspeed_launch import PROJECT_ROOT
from cluster.local_ray import auth_env

HOLD = """
import json, os, sys
import ray
from cluster.local_ray import ensure_ray

with ensure_ray(None, num_cpus=1, log_to_driver=False, auth="token"):
    ping = ray.remote(lambda: 1)
    assert ray.get(ping.remote()) == 1
    state = {"gcs": ray.get_runtime_context().gcs_address, "token": os.environ.get("RAY_AUTH_TOKEN")}
    print("STATE " + json.dumps(state), flush=True)
    sys.stdin.readline()  # the test tries to join meanwhile
after = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
try:  # a Ray call after the embedded Ray stopped must not start a default Ray (on the interface address)
    ray.get(ping.remote(), timeout=60)
    after["late_call"] = "ran"
except Exception as e:
    after["late_call"] = f"{type(e).__name__}: {e}"
after["initialized"] = ray.is_initialized()
print("AFTER " + json.dumps(after), flush=True)
"""
JOIN = "import sys, ray; ray.init(address=sys.argv[1], configure_logging=False, log_to_driver=False); print('JOINED')"


def _env(home, **extra) -> dict:
    # no RAY_ENABLE_AUTO_CONNECT either (tests/conftest.py sets it): the child shows what cluster.local_ray does alone
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ENABLE_AUTO_CONNECT"))}
    # HOME: no ~/.ray/auth_token to fall back on; a client of a loopback Ray must not swap 127.0.0.1 for the
    # interface address (cluster/local_ray.py)
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PROJECT_ROOT, os.environ.get("PYTHONPATH")) if p)
    return env


def _joins(gcs: str, *envs: dict) -> list[bool]:
    """Whether a process with each of ``envs`` joins the Ray at ``gcs``; the processes try at the same time (a
    refused one gives up after ~20 s)."""
    procs = [
        subprocess.Popen([sys.executable, "-c", JOIN, gcs], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        for env in envs
    ]
    joined = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        joined.append(proc.returncode == 0 and b"JOINED" in out)
    return joined


def test_auth_env():
    assert auth_env("disabled") == {"RAY_AUTH_MODE": "disabled"}
    a, b = auth_env("token"), auth_env("token")
    assert a["RAY_AUTH_MODE"] == "token" and len(a["RAY_AUTH_TOKEN"]) == 64
    assert a["RAY_AUTH_TOKEN"] != b["RAY_AUTH_TOKEN"]  # a fresh one for every start


@pytest.mark.slow  # four processes importing Ray, one starting it; a refused join gives up after ~20 s
@pytest.mark.timeout(600)
def test_embedded_ray_refuses_a_process_without_its_token(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD],
        env=_env(tmp_path),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = holder.stdout.readline()
        assert line.startswith("STATE "), line
        state = json.loads(line[6:])
        assert state["gcs"].startswith("127.0.0.1:") and len(state["token"]) == 64
        no_token = _env(tmp_path)  # another user's process
        wrong = _env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64)
        assert _joins(state["gcs"], no_token, wrong) == [False, False]
        assert _joins(state["gcs"], _env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=state["token"])) == [True]
        out, _ = holder.communicate("\n", timeout=120)
    finally:
        if holder.poll() is None:
            holder.kill()
    after = json.loads(next(line for line in out.splitlines() if line.startswith("AFTER "))[6:])
    late, initialized = after.pop("late_call"), after.pop("initialized")
    assert after == {"RAY_AUTH_MODE": None, "RAY_AUTH_TOKEN": None}  # the token lived as long as the Ray
    assert late.startswith("RaySystemError") and "Ray has not been started yet" in late, late
    assert not initialized
    assert not (tmp_path / ".ray" / "auth_token").exists()  # and was never written to a file
