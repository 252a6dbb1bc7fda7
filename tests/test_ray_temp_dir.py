"""``cluster.ray_temp_dir``: where the embedded Ray writes its session files (logs, sockets, spilled objects)
instead of Ray's default /tmp/ray; a folder too long for Ray's socket paths fails when the config loads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cluster.deepspeed_launch import PROJECT_ROOT
from cluster.local_ray import MAX_SOCKET_PATH, RAY_SOCKET_SUFFIX
from core.config import ConfigError
from pipeline.experiment import load_config, submitted_yaml

TINY = Path(PROJECT_ROOT) / "configs" / "tiny.yaml"


def test_a_folder_too_long_for_ray_sockets_fails_at_load_naming_the_key():
    room = MAX_SOCKET_PATH - RAY_SOCKET_SUFFIX
    fits = "/" + "r" * (room - 1)
    assert load_config(TINY, [f"cluster.ray_temp_dir={fits}"]).cluster.ray_temp_dir == fits
    with pytest.raises(ConfigError) as err:
        load_config(TINY, [f"cluster.ray_temp_dir={fits}x"])
    msg = str(err.value)
    assert "cluster.ray_temp_dir" in msg and f"at most {room} bytes" in msg and "\n" not in msg.strip()


@pytest.fixture
def short_dir():
    """A folder of its own under the system's temp dir, short enough for Ray's socket paths (a pytest
    ``tmp_path`` is not); removed at teardown."""
    root = Path(tempfile.mkdtemp(prefix="pt2i-ray-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_a_file_is_refused_and_a_relative_folder_travels_absolute(short_dir, monkeypatch):
    monkeypatch.chdir(short_dir)
    (short_dir / "f").write_text("")
    with pytest.raises(ConfigError, match="cluster.ray_temp_dir.*is a file"):
        load_config(TINY, ["cluster.ray_temp_dir=f"])
    cfg = load_config(TINY, ["cluster.ray_temp_dir=ray"])
    assert load_config(TINY).cluster.ray_temp_dir is None  # default: Ray's own (/tmp/ray)
    assert f"ray_temp_dir: {short_dir / 'ray'}" in submitted_yaml(cfg, short_dir)


START = """
import json, sys
import ray
from pipeline.experiment import load_config
from pipeline.runner import _default_ray_session
from cluster.local_ray import session_dir

cfg = load_config(sys.argv[1], ["cluster.ray_temp_dir=" + sys.argv[2], "cluster.num_cpus=1"])
with _default_ray_session(cfg, log=lambda line: print("LOG " + line, flush=True)):
    assert ray.get(ray.remote(lambda: 1).remote()) == 1
    print("SESSION " + json.dumps(session_dir()), flush=True)
"""


@pytest.mark.slow  # starts a Ray (in a child process: this session's own Ray is left alone)
@pytest.mark.timeout(300)
def test_the_embedded_ray_writes_its_session_under_the_folder(short_dir):
    temp_dir = short_dir / "sessions"  # made by the start
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PROJECT_ROOT, env.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, "-c", START, str(TINY), str(temp_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=PROJECT_ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    session = json.loads(next(x for x in lines if x.startswith("SESSION "))[8:])
    assert Path(session).parent == temp_dir and Path(session).name.startswith("session_")
    assert (Path(session) / "logs").is_dir() and (Path(session) / "sockets").is_dir()
    assert f"LOG [ray] session files (logs, sockets, spilled objects): {session}" in lines
