"""Test-only hooks in the actors of the shared work queue (tokenize's encoder, sample's ``ChunkWorker``,
retrieval's ``ShardEmbedder``): a test sees each actor's pid and how far it got, and slows it down, so that
it can kill an actor, or the node under it, while the actor is known to be mid-item."""

from __future__ import annotations

import os
import time
from pathlib import Path


class Pace:
    """One actor's progress, seen from outside. Writes the actor's pid and its Ray node's id to ``pid_file``
    when made (``{pid}`` in the name gives each actor its own file); :meth:`begin`, called at the start of each
    unit of work (an encoder batch, a sample chunk, a retrieval shard), writes how many units the actor has begun to
    ``pid_file + ".begun"``, then sleeps ``delay`` seconds: a unit counted there is still in flight for at
    least ``delay`` seconds."""

    def __init__(self, delay: float = 0.0, pid_file: str | None = None):
        self.delay = delay
        self.pid_file = pid_file.format(pid=os.getpid()) if pid_file else None
        self.begun = 0
        if self.pid_file:
            Path(self.pid_file).write_text(f"{os.getpid()} {_node_id()}")

    def begin(self) -> None:
        self.begun += 1
        if self.pid_file:
            Path(self.pid_file + ".begun").write_text(str(self.begun))
        if self.delay:
            time.sleep(self.delay)


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def pid_of(pid_file: Path) -> int:
    """The pid that :class:`Pace` wrote to ``pid_file``."""
    return int(Path(pid_file).read_text().split()[0])


def on_node(folder: Path, node_id: str) -> list[Path]:
    """The ``pid_file`` of each actor in ``folder`` that runs on the Ray node ``node_id``."""
    return [p for p in Path(folder).iterdir() if p.suffix != ".begun" and p.read_text().split()[1:] == [node_id]]


def begun(folder: Path) -> list[int]:
    """The units begun by each actor whose ``pid_file`` is in ``folder``."""
    return [int(p.read_text() or 0) for p in Path(folder).glob("*.begun")]  # "": read while being written


def paced(cls: type, method: str, delay: float, pid_file: str) -> type:
    """A subclass of the actor class ``cls`` with a :class:`Pace` whose ``begin`` starts every call of
    ``method``. Made at run time, so Ray ships the class by value, with ``delay`` and ``pid_file``."""

    def __init__(self, *args, **kwargs):
        cls.__init__(self, *args, **kwargs)
        self.pace = Pace(delay, pid_file)

    def paced_method(self, *args, **kwargs):
        self.pace.begin()
        return getattr(cls, method)(self, *args, **kwargs)

    return type(f"Paced{cls.__name__}", (cls,), {"__init__": __init__, method: paced_method})
