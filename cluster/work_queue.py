"""One work queue over a pool of Ray actors, with bounded waits: the tokenize, sample and retrieval jobs.

    spec = ActorSpec(ShardEncoder, (factory, ...), num_cpus=1, num_gpus=1)
    policy = QueuePolicy(max_attempts=4, item_timeout_s=3600, start_timeout_s=300)
    with WorkQueue(spec, n_actors=8, policy=policy, what="tokenize", log=print) as queue:
        for item, result in queue.map("encode_shard", [(src, dst, name), ...], label=lambda j: j[2]):
            ...  # results in completion order

* One item in flight per actor; the queue creates every actor itself (``ActorSpec``), so it knows what
  each needs and can say why one cannot be placed.
* Start: all ``n_actors`` must be placed and constructed within ``start_timeout_s``, else
  :class:`PlacementError` names how many were asked, how many started, what each needs and how many
  the cluster's alive nodes can hold. An actor whose constructor dies is replaced (a few times).
* Lost actor (its process or node died, an object lost with it) or an item past ``item_timeout_s``: the
  actor is killed and replaced, the item goes back to the front of the queue; after ``max_attempts``
  tries the item fails. A replacement gets work only once it is up, so one that cannot be placed (its
  node is gone) never holds an item and the surviving actors finish; only when no actor has been up
  for ``start_timeout_s`` does the queue give up with the same :class:`PlacementError`.
* An error raised by the task itself: the item fails at once (no retry); with ``stop_on_error`` the
  original exception is raised, else the other items go on and :class:`WorkFailed` lists every failed
  item with its error at the end.
* Every ``ray.wait`` and ``ray.get`` has a timeout; ``WorkQueue.__exit__`` kills every actor it made.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from cluster.config import ClusterConfig

Log = Callable[[str], None]


@dataclass
class ActorSpec:
    """The actor class, its constructor arguments and the resources one actor takes."""

    cls: type
    args: tuple = ()
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)

    def needs(self) -> dict[str, float]:
        """Resources one actor asks the cluster for (only those above zero)."""
        want = {"CPU": self.num_cpus, "GPU": self.num_gpus, **self.resources}
        return {k: float(v) for k, v in want.items() if v > 0}

    def create(self):
        """A new actor (Ray restarts nothing itself: the queue replaces lost actors)."""
        import ray

        if not hasattr(self, "_remote"):
            self._remote = ray.remote(self.cls)
        return self._remote.options(
            num_cpus=self.num_cpus,
            num_gpus=self.num_gpus,
            resources=dict(self.resources) or None,
            max_restarts=0,
            max_task_retries=0,
        ).remote(*self.args)


@dataclass
class QueuePolicy:
    """Tries and deadlines; the ``*_key`` strings name the config keys behind them in error messages."""

    max_attempts: int = 3  # tries of an item whose actor died or ran past item_timeout_s
    item_timeout_s: Optional[float] = None  # None: 3600 s
    start_timeout_s: Optional[float] = None  # None: cluster.actor_start_timeout_s's default
    get_timeout_s: float = 120.0  # fetching a result Ray already reported ready
    item_key: str = "item_timeout_s"
    start_key: str = "cluster.actor_start_timeout_s"
    workers_key: str = "workers"

    def __post_init__(self):
        self.item_timeout_s = self.item_timeout_s or 3600.0
        self.start_timeout_s = self.start_timeout_s or ClusterConfig.actor_start_timeout_s


class PlacementError(RuntimeError):
    """The actors could not be placed and started within the start deadline."""


class WorkFailed(RuntimeError):
    """Items that failed (``failures``: label -> error), after the others were done."""

    def __init__(self, what: str, failures: dict[str, str], total: int):
        self.failures = dict(failures)
        listed = "; ".join(f"{k}: {v}" for k, v in list(self.failures.items())[:10])
        more = f" (and {len(failures) - 10} more)" if len(failures) > 10 else ""
        super().__init__(f"{what}: {len(failures)} of {total} items failed: {listed}{more}")


def _lost_errors() -> tuple:
    """Ray errors meaning the actor (its process or node) or its result is gone: requeue the item."""
    from ray import exceptions as e

    return (e.RayActorError, e.ObjectLostError, e.WorkerCrashedError, e.NodeDiedError, e.GetTimeoutError)


def _fmt(res: dict) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(res.items())) + "}"


def placement_report(needs: dict[str, float]) -> tuple[Optional[int], dict, dict]:
    """(how many actors needing ``needs`` the alive nodes can hold (None: any number), their total
    resources, the resources free now), restricted to the resource kinds in ``needs``."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    total = {k: sum(n.get(k, 0.0) for n in nodes) for k in needs}
    free = ray.available_resources()
    free = {k: float(free.get(k, 0.0)) for k in needs}
    if not needs:
        return None, total, free
    fits = sum(int(min(n.get(k, 0.0) / v + 1e-9 for k, v in needs.items())) for n in nodes)
    return fits, total, free


class WorkQueue:
    """A pool of ``n_actors`` actors of ``spec`` running items one at a time each (see the module doc)."""

    def __init__(self, spec: ActorSpec, n_actors: int, policy: QueuePolicy, what: str = "work", log: Log = print):
        if n_actors < 1:
            raise ValueError(f"{what}: at least one worker is needed, got {n_actors}")
        self.spec, self.n_actors, self.policy, self.what, self.log = spec, n_actors, policy, what, log
        self.every: list = []  # every actor made (killed at exit)
        self.starting: dict = {}  # ready ref -> actor not up yet
        self.idle: list = []  # actors up and without an item
        self.busy = 0  # actors up and holding an item
        self.start_failures = 0
        self.nobody_up_since = time.time()
        self.closed = False

    # ------------------------------------------------------------------ actors

    def __enter__(self) -> WorkQueue:
        t0 = time.time()
        try:
            for _ in range(self.n_actors):
                self._start_one()
            while self.starting:
                self._wait_starting(t0 + self.policy.start_timeout_s)
        except BaseException:
            self.close()
            raise
        self.log(f"[{self.what}] {self.n_actors} worker(s) up in {time.time() - t0:.1f} s")
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Kill every actor made (``every`` keeps their handles)."""
        import ray

        self.closed = True
        for actor in self.every:
            ray.kill(actor)
        self.starting, self.idle, self.busy = {}, [], 0

    @property
    def up(self) -> int:
        return len(self.idle) + self.busy

    def _start_one(self) -> None:
        if self.closed:  # e.g. an abandoned map() finishing after the queue was closed
            return
        actor = self.spec.create()
        self.every.append(actor)
        self.starting[actor.__ray_ready__.remote()] = actor

    def _wait_starting(self, deadline: float) -> None:
        """Wait (until ``deadline``) for one starting actor; raise :class:`PlacementError` past it."""
        import ray

        done, _ = ray.wait(list(self.starting), num_returns=1, timeout=max(0.0, deadline - time.time()))
        if done:
            self._started(done[0])
        elif time.time() >= deadline:
            raise self._placement_error()

    def _started(self, ref) -> None:
        """A starting actor's ready ref resolved: the actor is up, or its constructor died."""
        import ray

        actor = self.starting.pop(ref)
        try:
            ray.get(ref, timeout=self.policy.get_timeout_s)
        except _lost_errors() as exc:  # a broken constructor, or its node went away while it started
            ray.kill(actor)
            self.start_failures += 1
            if self.start_failures > max(self.n_actors, self.policy.max_attempts):
                raise RuntimeError(
                    f"{self.what}: workers keep dying while starting ({self.start_failures} times): "
                    f"{type(exc).__name__}: {exc}"
                ) from None
            self._start_one()
            return
        self.idle.append(actor)

    def _placement_error(self) -> PlacementError:
        p = self.policy
        fits, total, free = placement_report(self.spec.needs())
        can = "any number" if fits is None else str(fits)
        if fits == 0:
            hint = "no alive node has that much: add such a node or lower what each worker asks for"
        elif fits is not None and fits < self.n_actors:
            hint = f"set {p.workers_key} to at most {fits}, or add nodes"
        else:
            hint = f"other work holds the resources: free them or raise {p.start_key}"
        return PlacementError(
            f"{self.what}: {self.up} of {self.n_actors} workers up within {p.start_key} = "
            f"{p.start_timeout_s:g} s; each needs {_fmt(self.spec.needs())} and the cluster's alive nodes can "
            f"hold {can} (total {_fmt(total)}, free now {_fmt(free)}): {hint}"
        )

    def _lose(self, actor) -> None:
        """Kill ``actor`` (it held an item) and start its replacement."""
        import ray

        ray.kill(actor)
        self.busy -= 1
        if not self.up:
            self.nobody_up_since = time.time()
        self._start_one()

    # ------------------------------------------------------------------ items

    def map(
        self,
        method: str,
        items: Sequence[tuple],
        label: Callable[[tuple], str] = str,
        stop_on_error: bool = False,
    ) -> Iterator[tuple[tuple, Any]]:
        """``(item, result)`` of ``actor.method(*item)`` for every item, in completion order. Raises
        :class:`WorkFailed` at the end if any item failed (at once with the task's own error when
        ``stop_on_error``)."""
        import ray
        from ray.exceptions import RayTaskError

        items = list(items)
        p = self.policy
        todo = collections.deque(range(len(items)))
        attempts: collections.Counter = collections.Counter()
        failures: dict[str, str] = {}
        pending: dict = {}  # task ref -> (actor, item index, deadline)

        def lost(i: int, why: str) -> None:
            attempts[i] += 1
            name = label(items[i])
            if attempts[i] >= p.max_attempts:
                failures[name] = f"{why} ({attempts[i]} tries)"
                self.log(f"[{self.what}] {name} failed {attempts[i]} times: {why}")
            else:
                todo.appendleft(i)
                self.log(f"[{self.what}] {name}: {why}; requeued, its worker replaced")

        try:
            while todo or pending:
                while todo and self.idle:
                    actor, i = self.idle.pop(), todo.popleft()
                    self.busy += 1
                    pending[getattr(actor, method).remote(*items[i])] = (actor, i, time.time() + p.item_timeout_s)
                deadlines = [d for _, _, d in pending.values()]
                if not self.up:  # every worker lost: a replacement must come up within the start deadline
                    if time.time() - self.nobody_up_since >= p.start_timeout_s:
                        raise self._placement_error()
                    deadlines.append(self.nobody_up_since + p.start_timeout_s)
                deadline = min(deadlines)
                done, _ = ray.wait(
                    list(pending) + list(self.starting), num_returns=1, timeout=max(0.0, deadline - time.time())
                )
                # Items past their deadline are lost, checked after every wait: with many workers a result
                # may be ready at every poll, and a hung item must not wait for the stream to end.
                now = time.time()
                overdue = [r for r, (_, _, d) in pending.items() if d <= now and r not in done]
                if overdue:  # one that finished while nobody polled (the caller was busy) is not lost
                    ready, _ = ray.wait(overdue, num_returns=len(overdue), timeout=0)
                    overdue = [r for r in overdue if r not in ready]
                for ref in overdue:
                    actor, i, _ = pending.pop(ref)
                    self._lose(actor)
                    lost(i, f"no result within {p.item_key} = {p.item_timeout_s:g} s")
                if not done:
                    continue
                ref = done[0]
                if ref in self.starting:
                    self._started(ref)
                    continue
                actor, i, _ = pending.pop(ref)
                try:
                    result = ray.get(ref, timeout=p.get_timeout_s)
                except RayTaskError as exc:  # raised by the task itself: not retried
                    self.busy -= 1
                    self.idle.append(actor)
                    cause = exc.cause if isinstance(exc.cause, BaseException) else exc
                    if stop_on_error:
                        raise cause from None
                    failures[label(items[i])] = f"{type(cause).__name__}: {cause}"
                    self.log(f"[{self.what}] {label(items[i])} failed: {type(cause).__name__}: {cause}")
                    continue
                except _lost_errors() as exc:  # the process or its node is gone
                    self._lose(actor)
                    lost(i, f"its worker was lost ({type(exc).__name__})")
                    continue
                self.busy -= 1
                self.idle.append(actor)
                yield items[i], result
        finally:  # items still in flight (the caller stopped early or an error is raised): replace their actors
            for actor, _, _ in pending.values():
                self._lose(actor)
        if failures:
            raise WorkFailed(self.what, failures, len(items))
