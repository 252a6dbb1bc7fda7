"""The held-out references (up to 30k images, rewritten on every evaluate run) are not fsynced one by one:
two fsyncs per PNG added ~8.5 ms each image (over 4 minutes at 30k) before any metric ran."""

import numpy as np

import core.files
from evaluation.heldout import heldout_images
from tests.image_shard_utils import write_download
from tests.own_data import texture


def test_the_held_out_images_are_written_without_an_fsync_each(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = np.stack([texture(i % 9, rng) for i in range(12)])
    manifest = write_download(tmp_path, {"eval": (images, [f"caption {i}" for i in range(12)])})
    calls = []
    monkeypatch.setattr(core.files, "fsync_path", lambda path: calls.append(path))
    out = heldout_images(manifest, tmp_path / "heldout", 32, 12)
    assert len(out) == 12 and all(p.is_file() for p in out.values())
    assert len(calls) <= 1, f"{len(calls)} fsyncs for 12 images"
