"""The tokenize stage's bookkeeping grows linearly with the shards: a rerun with most shards finished (thousands of
them at LAION scale) must not compare every job against every unfinished one."""

from __future__ import annotations

import contextlib
import json

from core.files import write_json_atomic


class CountingStr(str):
    """A job's source URL that counts the comparisons made with it."""

    compared = 0

    def __eq__(self, other):
        CountingStr.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


class FakeQueue:
    """``cluster.work_queue.WorkQueue`` without Ray: each job's token shard is "made" by writing its stats."""

    def __init__(self, *a, **k):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, method, items, label=str):
        for item in items:
            _finish(item[1], json.loads(item[3]))
            yield item, {"samples": 3, "skipped": False}


def _finish(dst: str, lineage: dict, corrupt: int = 0) -> None:
    open(dst, "wb").close()
    write_json_atomic(
        dst[: -len(".tar")] + "_stats.json",
        {"source": dst, "samples": 3, "corrupt": corrupt, "corrupt_keys": ["k"] * corrupt, "resized": 0, "sha256": "0"}
        | {"lineage": lineage},
    )


def _no_ray(monkeypatch):
    import ray

    import cluster.local_ray as local_ray
    import cluster.shared_storage as shared_storage
    import cluster.work_queue as work_queue
    import tokenization.shard_encoder as se

    monkeypatch.setattr(local_ray, "ensure_ray", lambda address=None: contextlib.nullcontext())
    monkeypatch.setattr(local_ray, "alive_hosts", lambda: 1)
    monkeypatch.setattr(shared_storage, "require_shared", lambda *a, **k: None)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 1.0})
    monkeypatch.setattr(work_queue, "WorkQueue", FakeQueue)
    monkeypatch.setattr(se, "source_identity", lambda url: {"size": 1, "stamp": "0"})
    return se


def test_a_rerun_with_most_shards_finished_does_not_scan_the_unfinished_list_per_shard(tmp_path, monkeypatch):
    se = _no_ray(monkeypatch)
    n = 200
    jobs = [(CountingStr(f"img/{i:05d}.tar"), str(tmp_path / f"{i:05d}.tar"), f"train/{i:05d}.tar") for i in range(n)]
    lineage = {"tokenizer": "t"}
    for _, dst, _ in jobs[: n // 2]:  # half finished by an earlier run
        _finish(dst, {**lineage, "source": {"size": 1, "stamp": "0"}})
    CountingStr.compared = 0
    report = se.run_tokenize(se.TokenizeConfig(), jobs, None, None, lineage=lineage, log=lambda m: None)
    assert report["counts"]["shards_reused"] == n // 2 and report["counts"]["shards_done_now"] == n // 2
    assert report["counts"]["samples"] == 3 * n
    # the old code tested each job for membership in the list of unfinished ones: n * n / 2 string comparisons
    assert CountingStr.compared < n


def test_corrupt_images_are_logged_in_one_line_not_one_per_shard(tmp_path, monkeypatch):
    se = _no_ray(monkeypatch)
    jobs = [(f"img/{i:05d}.tar", str(tmp_path / f"{i:05d}.tar"), f"train/{i:05d}.tar") for i in range(50)]
    for _, dst, _ in jobs:
        _finish(dst, {"source": {"size": 1, "stamp": "0"}}, corrupt=2)
    logs = []
    report = se.run_tokenize(se.TokenizeConfig(), jobs, None, None, log=logs.append)
    assert report["counts"]["corrupt_images"] == 100 and len(report["corrupt"]) == 50
    lines = [m for m in logs if "corrupt" in m]
    assert len(lines) == 1 and "100 corrupt image(s) skipped in 50 shard(s)" in lines[0]
