"""A network guard for tests: made-up host names resolve to the addresses a test gives, and a connection to
any address that is not loopback fails before it is made (and is written to a log the test reads).

In the test's process: ``install(hosts, log)``. In processes it spawns (img2dataset's workers): set
``env(hosts, log)`` in the environment and put ``SITE_DIR`` first on ``PYTHONPATH``; its
``sitecustomize`` installs the same guard when such a process starts, and notes its pid in the log.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

SITE_DIR = str(Path(__file__).resolve().parent / "net_guard_site")
HOSTS_ENV, LOG_ENV = "PT2I_TEST_FAKE_HOSTS", "PT2I_TEST_NET_GUARD_LOG"


def _note(log: str, record: dict) -> None:
    with open(log, "a") as f:
        f.write(json.dumps(record) + "\n")


def _loopback(host) -> bool:
    try:
        return ipaddress.ip_address(str(host).split("%", 1)[0]).is_loopback
    except ValueError:
        return host == "localhost"


def install(hosts: dict[str, str], log: str) -> Callable[[], None]:
    """Patch ``socket.getaddrinfo`` (``hosts``: name -> IPv4 address) and ``socket.socket.connect``/
    ``connect_ex`` (non-loopback inet addresses are refused and logged) in this process; returns the undo."""
    real_getaddrinfo = socket.getaddrinfo
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def getaddrinfo(host, port, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if isinstance(name, str) and name.lower() in hosts:
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (hosts[name.lower()], int(port)))]
        return real_getaddrinfo(host, port, *args, **kwargs)

    def check(sock, address) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            _note(log, {"pid": os.getpid(), "blocked": list(address[:2])})
            raise ConnectionRefusedError(f"net guard: a connection to {address[0]} was attempted")

    def connect(self, address):
        check(self, address)
        return real_connect(self, address)

    def connect_ex(self, address):
        check(self, address)
        return real_connect_ex(self, address)

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex

    def undo() -> None:
        socket.getaddrinfo = real_getaddrinfo
        socket.socket.connect, socket.socket.connect_ex = real_connect, real_connect_ex

    return undo


def env(hosts: dict[str, str], log: str) -> dict[str, str]:
    """The environment that makes a spawned process install the guard (with ``SITE_DIR`` on PYTHONPATH)."""
    return {
        HOSTS_ENV: json.dumps(hosts),
        LOG_ENV: log,
        "PYTHONPATH": os.pathsep.join(p for p in (SITE_DIR, os.environ.get("PYTHONPATH")) if p),
    }


def install_from_env() -> None:
    if HOSTS_ENV in os.environ and LOG_ENV in os.environ:
        install(json.loads(os.environ[HOSTS_ENV]), os.environ[LOG_ENV])
        _note(os.environ[LOG_ENV], {"pid": os.getpid(), "installed": True})


def read_log(log: str) -> list[dict]:
    p = Path(log)
    return [json.loads(line) for line in p.read_text().splitlines()] if p.is_file() else []
