"""The Ray download distributor: a progress bar over the shards, the failed ones reported as lost, and one
``ray.wait`` per poll over the pending tasks rather than one ``ray.get`` per shard in submission order."""

from __future__ import annotations

import sys
import types

import pytest

from tokenization.download_hooks import ray_pool_distributor


class RayError(Exception):
    pass


class FakeRay(types.ModuleType):
    """Tasks finish two per poll, in reverse order of submission; shard 3's task died."""

    def __init__(self):
        super().__init__("ray")
        self.exceptions = types.SimpleNamespace(RayError=RayError)
        self.waits: list[int] = []

    def wait(self, pending, num_returns, timeout):
        assert num_returns == len(pending) and timeout > 0  # everything ready by the deadline, not one at a time
        self.waits.append(len(pending))
        return pending[-2:], pending[:-2]

    def get(self, ref):
        if ref == "task-3":
            raise RayError("the worker died")
        return ref


@pytest.fixture
def fake_ray(monkeypatch):
    ray = FakeRay()
    distributor = types.ModuleType("img2dataset.distributor")
    distributor.ray_download = types.SimpleNamespace(remote=lambda downloader, row: f"task-{row[0]}")
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setitem(sys.modules, "img2dataset.distributor", distributor)
    return ray


def test_ray_distributor_shows_progress_and_reports_the_lost_shards(fake_ray, capsys):
    lost: list = []
    ray_pool_distributor(4, None, [(i, "row") for i in range(7)], 1, 0, lost=lost, poll_s=0.01)
    assert lost == [3]
    assert fake_ray.waits == [7, 5, 3, 1]  # one wait per poll over what is still pending
    err = capsys.readouterr().err
    assert "download" in err and "7/7" in err and "shard" in err
