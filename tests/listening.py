"""Which inet sockets the processes below this one listen on, sampled while a job runs (psutil)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import psutil

LOOPBACK_IPS = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def listening(procs) -> set[tuple[int, str, int]]:
    """``{(pid, ip, port)}`` of the LISTEN inet sockets of ``procs``."""
    found = set()
    for p in procs:
        with contextlib.suppress(psutil.Error):
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    found.add((p.pid, c.laddr.ip, c.laddr.port))
    return found


@contextlib.contextmanager
def sampled(every_s: float = 0.1) -> Iterator[set]:
    """Yields a set that a thread fills, every ``every_s`` s until the block ends, with the listening sockets
    of every process below this one."""
    seen: set = set()
    stop = threading.Event()

    def run() -> None:
        me = psutil.Process()
        while not stop.is_set():
            seen.update(listening(me.children(recursive=True)))
            stop.wait(every_s)

    thread = threading.Thread(target=run, name="listening", daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(10)


def not_loopback(found: set) -> list:
    return sorted(s for s in found if s[1] not in LOOPBACK_IPS)
