"""A torch.distributed rendezvous that listens on 127.0.0.1 only, for jobs whose ranks are all on this machine.

torch's ``env://`` and ``tcp://`` rendezvous start a ``TCPStore`` server on rank 0 that listens on every
interface (``::``), whatever ``MASTER_ADDR`` says: on a shared machine or an open network anyone could reach
it. ``loopback_store`` binds the listening socket itself, on ``127.0.0.1:port``, and hands it to the
``TCPStore`` (``master_listen_fd``); the other ranks connect to it as usual. ``init_loopback_group`` makes
the default process group with it (gloo and NCCL keep their own sockets there too: ``LOOPBACK_SOCKETS``).
"""

from __future__ import annotations

import socket
from datetime import timedelta

LOOPBACK = "127.0.0.1"
# the collective libraries' own sockets on the loopback interface, for a one-machine job: gloo's, and NCCL's
# bootstrap and proxy (NCCL otherwise listens on the first interface that is not loopback)
LOOPBACK_SOCKETS = {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"}
LOOPBACK_NAMES = ("127.0.0.1", "localhost")
_LISTENERS: list[socket.socket] = []  # rank 0's listening sockets: the store uses their file descriptors


def loopback_store(port: int, rank: int, world_size: int, timeout: timedelta):
    """A ``TCPStore`` on ``127.0.0.1:port``: its server (rank 0) listens on loopback only."""
    from torch.distributed import TCPStore

    if rank != 0:
        return TCPStore(LOOPBACK, port, world_size, False, timeout)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((LOOPBACK, port))
    listener.listen(max(world_size, 16))
    _LISTENERS.append(listener)
    return TCPStore(LOOPBACK, port, world_size, True, timeout, master_listen_fd=listener.fileno())


def init_loopback_group(backend: str, rank: int, world_size: int, port: int, timeout: timedelta) -> None:
    """The default process group over ``loopback_store``."""
    import torch.distributed as dist

    store = loopback_store(port, rank, world_size, timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
