"""Pins of ``evaluation.retrieval_shards``' non-Ray logic that the Ray stage test does not reach: per-URL cache
ids, the source stamp that decides re-embedding, image members and RGB decoding, batch sizes, ``fetch`` of
missing keys, and ``fetch_images`` with repeated ids and a resize. A stub encoder: no CLIP weights."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from evaluation import retrieval_shards as rs
from tests.test_eval_retrieval_shards import write_shards


class StubEncoder:
    """``images(batch)`` -> one 2-d row per image (its mean pixel, 1); records batch sizes."""

    def __init__(self, batch_size: int):
        self.batch_size, self.calls = batch_size, []

    def images(self, batch):
        self.calls.append(len(batch))
        return np.array([[np.asarray(im, np.float32).mean(), 1.0] for im in batch], np.float32)


def _embedder(batch_size: int = 2) -> rs.ShardEmbedder:
    e = rs.ShardEmbedder.__new__(rs.ShardEmbedder)  # no CLIP: the stub encoder
    e.encoder = StubEncoder(batch_size)
    return e


def _local(embedder):
    return lambda method, jobs: (getattr(embedder, method)(*job) for job in jobs)


def test_shard_ids_differ_for_same_named_shards_of_different_folders():
    """Pins ``shard_id``: the URL's hash is part of the id (two ``00000.tar`` of two folders share no cache)."""
    a, b = rs.shard_id("/data/a/00000.tar"), rs.shard_id("/data/b/00000.tar")
    assert a != b and a.startswith("00000-") and b.startswith("00000-")
    assert rs.shard_id("/data/a/00000.tar") == a


def test_a_rewritten_shard_is_embedded_again_and_an_unchanged_one_is_not(tmp_path):
    """Pins the source stamp (size and mtime) and ``_cache_done``: a shard rewritten with the same size is redone."""
    write_shards(tmp_path / "s", 2, 3, seed=0)
    shards = rs.list_shards(str(tmp_path / "s"))
    run = _local(_embedder())
    first = rs.embed_shards(run, shards, tmp_path / "cache", lambda m: None)
    assert sorted(first["embedded"]) == shards and first["reused"] == []
    again = rs.embed_shards(run, shards, tmp_path / "cache", lambda m: None)
    assert again["embedded"] == [] and again["reused"] == shards
    st = os.stat(shards[1])
    os.utime(shards[1], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # same size, rewritten later
    third = rs.embed_shards(run, shards, tmp_path / "cache", lambda m: None)
    assert third["embedded"] == [shards[1]] and third["reused"] == [shards[0]]
    assert rs.source_stamp(shards[0]) != rs.source_stamp(shards[1])


def _png(arr, mode=None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "PNG")
    return buf.getvalue()


def test_png_and_webp_members_are_images_and_decode_to_rgb():
    """Pins ``IMAGE_EXTS`` (jpg, jpeg, png, webp) and RGB conversion of grey / alpha images."""
    grey = _png(np.full((4, 4), 7, np.uint8))
    assert rs.image_member({"__key__": "k", "png": grey, "json": b"{}"}) == grey
    assert rs.image_member({"__key__": "k", "webp": b"w"}) == b"w"
    assert rs.image_member({"__key__": "k", "jpeg": b"j"}) == b"j"
    assert rs.image_member({"__key__": "k", "txt": b"t"}) is None
    img = rs.decode_rgb(grey)
    assert img.mode == "RGB" and np.asarray(img).shape == (4, 4, 3)
    rgba = rs.decode_rgb(_png(np.zeros((4, 4, 4), np.uint8)))
    assert rgba.mode == "RGB"


def test_embed_sends_batches_of_the_encoder_batch_size(tmp_path):
    """Pins the flush rule: full batches of ``batch_size``, then the rest."""
    write_shards(tmp_path / "s", 1, 5, seed=1)
    e = _embedder(batch_size=2)
    r = e.embed(str(tmp_path / "s" / "00000.tar"))
    assert e.encoder.calls == [2, 2, 1] and len(r["keys"]) == 5 and r["embeddings"].shape == (5, 2)


def test_fetch_of_a_key_the_shard_lacks_is_an_error(tmp_path):
    write_shards(tmp_path / "s", 1, 3, seed=2)
    with pytest.raises(KeyError, match="not found"):
        _embedder().fetch(str(tmp_path / "s" / "00000.tar"), ["000000000", "nope"])


def test_fetch_images_writes_every_position_of_repeated_ids_resized(tmp_path):
    """Pins ``fetch_images``: each position gets its file even when two prompts retrieve the same image; images
    of another size are center-cropped and resized to the generated size; a non-square size is refused."""
    from evaluation.images import center_crop_resize

    good = write_shards(tmp_path / "s", 2, 2, seed=3)  # 32 px jpgs
    shards = rs.list_shards(str(tmp_path / "s"))
    files = []
    for s in range(len(shards)):
        keys = sorted(k for k in good if k.startswith(f"{s:05d}"))
        files.append(tmp_path / f"{s}.npz")
        np.savez(files[-1], keys=np.array(keys, dtype=str), embeddings=np.zeros((len(keys), 2), np.float32))
    items = rs.ShardItems.from_files(shards, files)
    ids = [3, 0, 3, 1]
    paths = rs.fetch_images(_local(_embedder()), items, ids, tmp_path / "out", (16, 16))
    assert [p.name for p in paths] == [f"{i:08d}.png" for i in range(4)]
    for pos, i in enumerate(ids):
        key = items.locate(i)[1]
        want = center_crop_resize(Image.open(io.BytesIO(good[key])).convert("RGB"), 16)
        assert np.array_equal(np.asarray(Image.open(paths[pos])), want), pos
    with pytest.raises(ValueError, match="not square"):
        rs.fetch_images(_local(_embedder()), items, [0], tmp_path / "out2", (16, 24))
