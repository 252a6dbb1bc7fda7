"""Child processes that never outlive the process that started them.

    proc = start_guarded(["deepspeed", ...], stdout=subprocess.PIPE)   # instead of subprocess.Popen
    ...
    stop_guarded(proc)                                                  # on any exit path of the caller

``start_guarded`` runs ``python -m cluster.guard -- CMD``: the guard leads a new process group, runs CMD in
it and kills the whole group (CMD and everything it started, e.g. DeepSpeed's ranks) when it gets SIGTERM or
SIGINT, and when its parent dies, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``). A killed ``pt2i run`` so
leaves no launcher or rank behind.

With ``grace_s`` the guard first sends CMD SIGTERM and gives it that long to end what it started elsewhere before
the group is killed: Slurm's ``srun`` cancels its job step on SIGTERM, while a killed ``srun`` leaves the step's
ranks running on the nodes (``python -m cluster.guard --grace S -- CMD``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1


def start_guarded(cmd: list[str], grace_s: float = 0.0, **popen_kwargs) -> subprocess.Popen:
    """Start ``cmd`` under the guard; with ``grace_s`` a stop first asks ``cmd`` (SIGTERM) to end its work."""
    guard = [sys.executable, "-m", "cluster.guard", *(["--grace", str(grace_s)] if grace_s else []), "--"]
    proc = subprocess.Popen([*guard, *cmd], start_new_session=True, **popen_kwargs)
    proc.pt2i_grace_s = grace_s
    return proc


def stop_guarded(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """Stop a guarded command and everything it started (no-op when it has finished)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the guard kills its group (after its own grace, if it has one)
    except ProcessLookupError:
        return
    deadline = time.time() + grace_s + getattr(proc, "pt2i_grace_s", 0.0)
    while proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def signal_when_parent_dies(parent: int, sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent (pid ``parent``) dies, even by SIGKILL.
    Returns False when the parent is already gone; True otherwise (also where the request is not supported,
    not Linux: the parent's own exit paths must then stop this process)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig)
    except (OSError, AttributeError):
        return True
    return os.getppid() == parent  # else the parent died before the request took effect


def _die_with_parent(parent: int) -> None:
    if not signal_when_parent_dies(parent):
        os.killpg(0, signal.SIGKILL)


def main(argv: list[str]) -> int:
    grace_s = 0.0
    if argv[:1] == ["--grace"] and len(argv) > 1:
        grace_s, argv = float(argv[1]), argv[2:]
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        print("usage: python -m cluster.guard [--grace S] -- CMD [ARG ...]", file=sys.stderr)
        return 2
    cmd = argv[argv.index("--") + 1 :]
    parent = os.getppid()
    child: subprocess.Popen | None = None

    def stop(signum, frame):
        if grace_s and child is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group's SIGTERM reached the guard and CMD at once
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace_s  # not child.wait: the interrupted main wait holds Popen's lock
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(child.pid, os.WNOHANG) == (0, 0) and time.monotonic() < deadline:
                    time.sleep(0.05)
        os.killpg(0, signal.SIGKILL)  # the group: the command, its descendants and this guard

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    _die_with_parent(parent)
    child = subprocess.Popen(cmd)
    return child.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
