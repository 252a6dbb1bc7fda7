"""Pins of ``evaluation.retrieval_run``: which training images ``eval.retrieval_images`` picks (auto / download /
synthetic / a shard spec), the synthetic split's file names and its empty case, the embedding cache folder
keyed by the CLIP protocol, and ``sources`` / ``train_set`` of the result. Stubs only: no CLIP, no Ray."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

import evaluation.retrieval_run as rr
from core.stage import StageError


def _ctx(spec: str, synthetic_dir: Path | None = None):
    return SimpleNamespace(
        config=SimpleNamespace(eval=SimpleNamespace(retrieval_images=spec)),
        input_manifest=lambda name: {"download": True},
        input_dir=lambda name: synthetic_dir,
    )


@pytest.mark.parametrize(
    "spec, shards, synthetic, want",
    [
        ("auto", ["a.tar"], True, ("shards", ["a.tar"])),
        ("auto", [], True, ("files", ["f.png"])),
        ("auto", [], False, StageError),
        ("download", ["a.tar"], True, ("shards", ["a.tar"])),
        ("download", [], True, StageError),
        ("synthetic", ["a.tar"], True, ("files", ["f.png"])),
        ("/data/{0..1}.tar", ["a.tar"], True, ("shards", ["/data/0.tar"])),
    ],
)
def test_resolve_source_picks_the_training_images(monkeypatch, spec, shards, synthetic, want):
    """Pins ``resolve_source``'s table (module docstring): auto = download shards if listed, else synthetic."""
    import evaluation.retrieval_shards as rs

    monkeypatch.setattr(rr, "download_train_shards", lambda manifest: list(shards))
    monkeypatch.setattr(rr, "synthetic_train_images", lambda folder: ["f.png"])
    monkeypatch.setattr(rs, "list_shards", lambda s: ["/data/0.tar"])
    if want is StageError:
        with pytest.raises(StageError, match="lists no train shards"):
            rr.resolve_source(_ctx(spec), synthetic)
    else:
        src = rr.resolve_source(_ctx(spec), synthetic)
        assert (src.kind, src.items) == want


def test_synthetic_train_images_are_the_url_file_names_and_an_empty_split_is_an_error(tmp_path):
    split = tmp_path / "train"
    (split / "images").mkdir(parents=True)
    for name in ("00000002.png", "00000001.png"):
        (split / "images" / name).write_bytes(b"x")
    urls = ["images/00000002.png", "https://host.invalid/split/images/00000001.png"]  # write_dataset's two forms
    pd.DataFrame({"URL": urls}).to_parquet(split / "urls.parquet")
    assert rr.synthetic_train_images(tmp_path) == [split / "images" / "00000002.png", split / "images" / "00000001.png"]
    pd.DataFrame({"URL": pd.Series([], dtype=str)}).to_parquet(split / "urls.parquet")
    with pytest.raises(FileNotFoundError, match="0 of 0 train images"):
        rr.synthetic_train_images(tmp_path)


def test_shard_embedding_cache_is_keyed_by_the_clip_protocol(monkeypatch, tmp_path):
    """Pins ``retrieve_shards``: embeddings of another CLIP checkpoint (same model name) never share a cache; the
    retrieved images are fetched in prompt order."""
    import contextlib

    import evaluation.clip_model as cm
    import evaluation.retrieval as r
    import evaluation.retrieval_shards as rs

    caches, fetched = [], []

    class Enc:
        def __init__(self, name, ckpt, device, batch):
            self.protocol = {"clip_model": name, "clip_checkpoint": ckpt, "clip_checkpoint_sha256": f"sha-{ckpt}"}

    class Base:
        def save(self, out):
            pass

        def retrieve(self, prompts):
            return {"items": ["s#k"] * len(prompts), "indices": [2, 0, 1][: len(prompts)], "protocol": {}}

    def embed(run, shards, cache, log):
        caches.append(cache)
        return {"files": [], "embedded": [], "reused": [], "corrupt": {}, "workers": 0}

    monkeypatch.setattr(cm, "ClipEncoder", Enc)
    monkeypatch.setattr(rs, "worker_pool", lambda *a: contextlib.nullcontext(None))
    monkeypatch.setattr(rs, "embed_shards", embed)
    monkeypatch.setattr(rs.ShardItems, "from_files", classmethod(lambda cls, s, f: []))
    monkeypatch.setattr(rs, "shard_chunks", lambda items: None)
    monkeypatch.setattr(rs, "fetch_images", lambda run, items, ids, out, size: fetched.append(ids) or [out / "0.png"])
    monkeypatch.setattr(r.RetrievalBaseline, "from_config", classmethod(lambda cls, *a, **k: Base()))

    def ev(ckpt):
        return SimpleNamespace(
            clip_model="m", clip_checkpoint=ckpt, clip_batch_size=2, retrieval_workers=0, retrieval_shard_timeout_s=None
        )

    out = rr.retrieve_shards(ev("a.pt"), ["x.tar"], ["p"], tmp_path, "cpu", (8, 8), log=lambda m: None)
    rr.retrieve_shards(ev("a.pt"), ["x.tar"], ["p"], tmp_path, "cpu", (8, 8), log=lambda m: None)
    rr.retrieve_shards(ev("b.pt"), ["x.tar"], ["p"], tmp_path, "cpu", (8, 8), log=lambda m: None)
    assert caches[0] == caches[1] and caches[0] != caches[2]
    assert all(c.parent == tmp_path / "embeddings" for c in caches)
    assert out["sources"] == ["s#k"] and out["items"] == [tmp_path / "images" / "0.png"]
    assert out["embedding"]["shards"] == 1 and "files" not in out["embedding"]
    three = rr.retrieve_shards(ev("a.pt"), ["x.tar"], ["p", "q", "r"], tmp_path, "cpu", (8, 8), log=lambda m: None)
    assert fetched[-1] == [2, 0, 1] and three["sources"] == ["s#k"] * 3  # images fetched in prompt order


def test_file_sources_are_reported_as_strings_with_the_train_set(monkeypatch):
    monkeypatch.setattr(rr, "retrieve", lambda *a: {"items": [Path("/t/a.png")], "protocol": {"k": 1}})
    src = rr.Source("files", [Path("/t/a.png")], "synthetic train split")
    res = rr.run_retrieval(None, src, ["p"], Path("/out"), "cpu", (8, 8))
    assert res["sources"] == ["/t/a.png"] and res["protocol"] == {"k": 1, "train_set": "synthetic train split"}
