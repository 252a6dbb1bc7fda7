"""A one-node Slurm cluster on 127.0.0.1 for the tests: Debian's munge and slurm-wlm (``.ci/run`` installs them).

``local_slurm(root)`` starts ``munged`` (its own socket and key), ``slurmctld`` and ``slurmd`` (node ``localhost``,
``NodeAddr=127.0.0.1``; ``NoInAddrAny,NoCtldInAddrAny`` bind every daemon to that address, and srun binds its own
ports to what this machine's host name resolves to, so the tests run only where that is loopback), yields the
environment for ``srun``/``salloc``/``squeue`` of this cluster, and at the end cancels its jobs and stops the
three daemons by their process ids.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd", "srun", "salloc", "scontrol", "squeue", "scancel")


def skip_reason() -> str | None:
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge; .ci/run installs them)"
    if os.geteuid() != 0:
        return "slurmd runs as root"
    addrs = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None)}
    if not all(a.startswith("127.") or a == "::1" for a in addrs):
        return f"srun listens on what {socket.gethostname()} resolves to ({', '.join(sorted(addrs))}), not loopback"
    return None


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def slurm_conf(root: Path, ctld_port: int, slurmd_port: int) -> str:
    return f"""ClusterName=pt2itest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
AuthType=auth/munge
AuthInfo=socket={root}/munge.socket
CredType=cred/munge
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ReturnToService=2
KillWait=5
MailProg=/bin/true
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def _pid(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().split()[0])
    return None


def _stop(pid: int | None, timeout_s: float = 15.0) -> None:
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


def wait_until(check, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while not check():
        if time.time() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def jobs(env: dict) -> list[str]:
    """The cluster's jobs (pending, running or completing), as ``squeue`` lists them."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %T"], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split("\n")[:-1]


@contextlib.contextmanager
def local_slurm(root: Path) -> Iterator[dict]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    root.mkdir(parents=True, exist_ok=True)
    for d in ("state", "spool"):
        (root / d).mkdir(exist_ok=True)
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, *free_ports(2)))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    for k in [k for k in env if k.startswith(("SLURM_", "SALLOC_", "SBATCH_", "SRUN_")) and k != "SLURM_CONF"]:
        del env[k]  # a test run inside someone's allocation must not reach it
    started = []
    try:
        subprocess.run(
            ["munged", "-f", f"--socket={root}/munge.socket", f"--key-file={key}", f"--log-file={root}/munged.log"]
            + [f"--pid-file={root}/munged.pid", f"--seed-file={root}/munged.seed"],
            check=True,
        )
        started.append(root / "munged.pid")
        subprocess.run(["slurmctld", "-i"], env=env, check=True)
        started.append(root / "slurmctld.pid")
        subprocess.run(["slurmd", "-N", "localhost"], env=env, check=True)
        started.append(root / "slurmd.pid")
        idle = ["sinfo", "-h", "-o", "%T"]
        wait_until(
            lambda: subprocess.run(idle, env=env, capture_output=True, text=True).stdout.strip() == "idle",
            60,
            f"the local Slurm node never became idle; see {root}/slurmctld.log and slurmd.log",
        )
        yield env
    finally:
        if started[1:]:
            subprocess.run(["scancel", "--user", str(os.getuid())], env=env, capture_output=True)
            with contextlib.suppress(TimeoutError):
                wait_until(lambda: not jobs(env), 30, "jobs left")
        for pid_file in reversed(started):
            _stop(_pid(pid_file))
