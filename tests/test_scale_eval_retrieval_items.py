"""The retrieval baseline over many image shards: naming the retrieved items reads each shard's keys once,
whatever the order of the search results (the keys of a shard are cached for 64 shards only)."""

import io

import numpy as np
import pytest
from PIL import Image

import evaluation.retrieval_shards as rs
from evaluation.retrieval import RetrievalBaseline
from evaluation.retrieval_shards import ShardItems, fetch_images

SHARDS, PER, QUERIES = 100, 3, 300


@pytest.fixture
def items(tmp_path):
    files = []
    for s in range(SHARDS):
        f = tmp_path / f"{s:05d}.npz"
        np.savez(f, keys=np.array([f"{s:05d}{i:04d}" for i in range(PER)]), embeddings=np.zeros((PER, 2), np.float32))
        files.append(f)
    return ShardItems([f"/shards/{s:05d}.tar" for s in range(SHARDS)], files, [PER] * SHARDS)


@pytest.fixture
def ids():
    return np.random.default_rng(0).integers(0, SHARDS * PER, QUERIES)


def _count_loads(monkeypatch):
    calls = []
    real = np.load

    def load(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(rs.np, "load", load)
    return calls


class _Index:
    def __init__(self, ids):
        self.ids, self.ntotal = ids, SHARDS * PER

    def search(self, q, k):
        return np.ones((len(q), 1), np.float32), self.ids[: len(q), None]


class _Encoder:
    protocol: dict = {}

    def texts(self, prompts):
        return np.zeros((len(prompts), 2), np.float32)


def test_the_retrieved_items_read_each_shard_once(items, ids, monkeypatch):
    loads = _count_loads(monkeypatch)
    res = RetrievalBaseline(_Index(ids), items, _Encoder()).retrieve([f"p{i}" for i in range(QUERIES)])
    assert len(loads) <= SHARDS, f"{len(loads)} key reads for {SHARDS} shards"
    assert res["items"] == [f"/shards/{i // PER:05d}.tar#{i // PER:05d}{i % PER:04d}" for i in ids]


def test_fetching_the_retrieved_images_reads_each_shard_once(items, ids, monkeypatch, tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="PNG")

    def run(method, jobs):
        for url, keys in jobs:
            yield {"url": url, "images": {k: buf.getvalue() for k in keys}}

    loads = _count_loads(monkeypatch)
    paths = fetch_images(run, items, ids, tmp_path / "images", (8, 8))
    assert len(loads) <= SHARDS, f"{len(loads)} key reads for {SHARDS} shards"
    assert len(paths) == QUERIES and all(p.is_file() for p in paths)
