"""The shared Ray work queue (``cluster.work_queue``) on the session's loopback Ray (2 CPUs): a dead actor's
item is redone by its replacement, an item that keeps killing its actor or hangs fails after
``max_attempts``, a task's own error is not retried, actors that cannot be placed fail within the start
deadline, a replacement that cannot be placed leaves the work to the survivors, every actor is killed."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster.work_queue import ActorSpec, PlacementError, QueuePolicy, WorkFailed, WorkQueue


class Worker:
    """``work(x, mode, marks)``: ``x * x`` and the pid, after doing what ``mode`` says. ``*_once`` modes act
    only on the first call for ``x`` (a file under ``marks`` remembers it) and record the pid there."""

    def pid(self) -> int:
        return os.getpid()

    def work(self, x: int, mode: str = "ok", marks: str = "") -> tuple[int, int]:
        mark = Path(marks) / f"{x}.{mode}" if marks else None
        first = mark is not None and not mark.exists()
        if mark is not None:
            with mark.open("a") as f:
                f.write(f"{os.getpid()}\n")
        if mode == "die" or (mode == "die_once" and first):
            os._exit(1)
        if mode == "hang" or (mode == "hang_once" and first):
            time.sleep(3600)
        if mode == "slow":
            time.sleep(0.1)
        if mode.startswith("sleep"):
            time.sleep(float(mode[len("sleep") :]))
        if mode == "raise":
            raise ValueError(f"bad item {x}")
        return x * x, os.getpid()


@dataclass
class FirstPlaceable(ActorSpec):
    """The first ``placeable`` actors start normally; later ones (replacements) ask for a resource no node
    has, as when the node they would need is gone."""

    placeable: int = 2

    def create(self):
        if self.placeable > 0:
            self.placeable -= 1
            return super().create()
        return ActorSpec(self.cls, self.args, self.num_cpus, resources={"gone_node": 1}).create()


def _run(spec, n, policy, items, logs, **kw):
    """(results by x, every actor made, the error raised or None); the queue is closed before returning."""
    results, error = {}, None
    queue = WorkQueue(spec, n, policy, "test", logs.append)
    try:
        with queue:
            for item, res in queue.map("work", items, label=lambda it: f"item {it[0]}", **kw):
                results[item[0]] = res
    except Exception as exc:  # noqa: BLE001  (returned to the test)
        error = exc
    return results, queue.every, error


def _all_killed(ray, actors) -> None:
    """Every actor is dead (``ray.kill`` is asynchronous: a call may still be answered just after it)."""
    assert actors
    deadline = time.time() + 60
    for a in actors:
        while True:
            try:
                ray.get(a.pid.remote(), timeout=60)
            except ray.exceptions.RayActorError:
                break
            assert time.time() < deadline, f"actor {a} still alive"
            time.sleep(0.2)


def test_dead_actor_item_redone_by_replacement_and_actors_killed(tmp_path, ray_local):
    ray, logs = ray_local, []
    items = [(x, "die_once" if x == 3 else "ok", str(tmp_path)) for x in range(6)]
    results, made, error = _run(ActorSpec(Worker), 2, QueuePolicy(max_attempts=2), items, logs)
    assert error is None, error
    assert {x: sq for x, (sq, _) in results.items()} == {x: x * x for x in range(6)}
    died = int((tmp_path / "3.die_once").read_text().split()[0])
    assert results[3][1] != died  # done by another process: the replacement
    assert len(made) == 3 and any("item 3: its worker was lost" in line and "requeued" in line for line in logs)
    _all_killed(ray, made)


def test_item_that_always_kills_its_actor_fails_after_max_attempts(tmp_path, ray_local):
    ray, logs = ray_local, []
    items = [(x, "die" if x == 2 else "ok", str(tmp_path)) for x in range(5)]
    results, made, error = _run(ActorSpec(Worker), 2, QueuePolicy(max_attempts=3), items, logs)
    assert sorted(results) == [0, 1, 3, 4]  # the others are done
    assert isinstance(error, WorkFailed) and list(error.failures) == ["item 2"]
    assert "test: 1 of 5 items failed: item 2: its worker was lost" in str(error) and "(3 tries)" in str(error)
    assert len((tmp_path / "2.die").read_text().split()) == 3  # tried exactly max_attempts times
    _all_killed(ray, made)


def test_task_error_is_not_retried_collected_or_raised(tmp_path, ray_local):
    ray, logs = ray_local, []
    items = [(x, "raise" if x == 1 else "ok", str(tmp_path)) for x in range(4)]
    results, made, error = _run(ActorSpec(Worker), 2, QueuePolicy(), items, logs)
    assert sorted(results) == [0, 2, 3]
    assert isinstance(error, WorkFailed) and error.failures == {"item 1": "ValueError: bad item 1"}
    assert len((tmp_path / "1.raise").read_text().split()) == 1 and len(made) == 2  # no retry, no replacement
    _all_killed(ray, made)

    (tmp_path / "1.raise").unlink()
    _, made, error = _run(ActorSpec(Worker), 1, QueuePolicy(), items, logs, stop_on_error=True)
    assert type(error) is ValueError and str(error) == "bad item 1"  # the task's own exception, at once
    _all_killed(ray, made)


def test_hung_task_is_requeued_then_fails_past_its_deadline(tmp_path, ray_local):
    ray, logs = ray_local, []
    items = [(0, "hang_once", str(tmp_path)), (1, "hang", str(tmp_path)), (2, "ok", "")]
    policy = QueuePolicy(max_attempts=2, item_timeout_s=1.5, item_key="x.item_timeout_s")
    t0 = time.time()
    results, made, error = _run(ActorSpec(Worker), 2, policy, items, logs)
    assert sorted(results) == [0, 2]  # the item that hung once is done by a replacement
    assert isinstance(error, WorkFailed) and error.failures == {
        "item 1": "no result within x.item_timeout_s = 1.5 s (2 tries)"
    }
    assert len((tmp_path / "0.hang_once").read_text().split()) == 2
    assert time.time() - t0 < 60
    _all_killed(ray, made)


def test_hung_item_is_requeued_while_other_results_keep_arriving(tmp_path, ray_local, monkeypatch):
    """With many workers a result is ready at nearly every poll; a hung item is still requeued once past its
    deadline, not when the stream of results ends. Each poll here waits at least 0.5 s, long enough for the
    other worker's next 0.1-s item, as a poll over many workers would find one."""
    ray, logs, results = ray_local, [], []
    real_wait = ray.wait
    monkeypatch.setattr(
        ray,
        "wait",
        lambda refs, num_returns, timeout: real_wait(refs, num_returns=num_returns, timeout=max(timeout, 0.5)),
    )
    items = [(0, "hang_once", str(tmp_path))] + [(x, "slow", "") for x in range(1, 61)]
    queue = WorkQueue(
        ActorSpec(Worker), 2, QueuePolicy(item_timeout_s=1.0), "test", lambda m: logs.append((m, len(results)))
    )
    with queue:
        for item, _ in queue.map("work", items, label=lambda it: f"item {it[0]}"):
            results.append(item[0])
    assert sorted(results) == list(range(61))
    requeued = [n for m, n in logs if m.startswith("[test] item 0: no result within")]
    assert len(requeued) == 1 and requeued[0] < 40, (requeued, logs)  # at ~1 s, with most of the 6 s of items to go
    _all_killed(ray, queue.every)


def test_results_that_finished_in_time_while_the_caller_was_busy_are_not_lost(ray_local):
    """The caller spends 3.5 s on the first result; meanwhile two items finish well inside their 3-s deadline.
    When the queue polls again both are ready but past their deadlines: Ray reports one per poll, and the other
    must not be taken for a hung item (its worker killed, its result thrown away, a try spent)."""
    ray, logs = ray_local, []
    items = [(0, "sleep0.2", ""), (1, "sleep1.5", ""), (2, "sleep2.0", "")]
    queue = WorkQueue(ActorSpec(Worker, num_cpus=0), 3, QueuePolicy(item_timeout_s=3.0), "test", logs.append)
    got = []
    with queue:
        for item, _ in queue.map("work", items, label=lambda it: f"item {it[0]}"):
            got.append(item[0])
            if len(got) == 1:
                time.sleep(3.5)
    assert sorted(got) == [0, 1, 2] and not [m for m in logs if "no result within" in m], logs
    _all_killed(ray, queue.every)


def test_unplaceable_actor_fails_within_the_start_deadline(ray_local):
    spec = ActorSpec(Worker, resources={"nonexistent": 1})
    policy = QueuePolicy(start_timeout_s=2.0, workers_key="x.workers")
    t0 = time.time()
    with pytest.raises(PlacementError) as err:
        with WorkQueue(spec, 2, policy, "test"):
            pass
    took = time.time() - t0
    assert 2.0 <= took < 10, took
    msg = str(err.value)
    assert msg.startswith("test: 0 of 2 workers up within cluster.actor_start_timeout_s = 2 s;"), msg
    assert "each needs {CPU: 1, nonexistent: 1}" in msg and "can hold 0 (total {CPU: 2, nonexistent: 0}" in msg
    assert msg.endswith("no alive node has that much: add such a node or lower what each worker asks for"), msg
    deadline = time.time() + 30  # the pending actors were killed: the CPUs are free again
    while ray_local.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.2)
    assert ray_local.available_resources().get("CPU", 0) == 2


def test_unplaceable_replacement_leaves_the_work_to_the_survivors(tmp_path, ray_local):
    """As when a node is gone: its actor's replacement never starts, so never holds an item; the survivor
    does the rest. With no survivor the queue fails with the placement error within the start deadline."""
    ray, logs = ray_local, []
    items = [(x, "die_once" if x == 0 else "ok", str(tmp_path)) for x in range(5)]
    results, made, error = _run(FirstPlaceable(Worker), 2, QueuePolicy(start_timeout_s=10.0), items, logs)
    assert error is None and sorted(results) == list(range(5))
    assert len({pid for _, pid in results.values()}) == 1  # all by the survivor
    _all_killed(ray, made)

    (tmp_path / "0.die_once").unlink()
    t0 = time.time()  # the start deadline (6 s: room for a slow first start) holds for the replacement too
    results, made, error = _run(FirstPlaceable(Worker, placeable=1), 1, QueuePolicy(start_timeout_s=6.0), items, logs)
    assert isinstance(error, PlacementError) and "test: 0 of 1 workers up" in str(error), error
    assert results == {} and 6.0 <= time.time() - t0 < 40
