"""The FID reference cache key (``evaluation.fid``) holds the reference files' contents: a file rewritten in place
with other pixels but the same byte size (an uncompressed format) is another reference set, and the same images
written again (the evaluate stage rewrites its held-out references on every run) hit the cache."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from evaluation.fid import reference_stats
from tests.test_eval_fid import FakeExtractor


def test_a_same_size_rewrite_in_place_invalidates_the_cache(tmp_path):
    paths = [tmp_path / "refs" / f"{i:08d}.bmp" for i in range(4)]
    paths[0].parent.mkdir()
    rs = np.random.RandomState(0)
    for p in paths:
        Image.fromarray(rs.randint(0, 100, (40, 40, 3)).astype(np.uint8)).save(p)
    sizes = [os.stat(p).st_size for p in paths]
    first = reference_stats(paths, FakeExtractor(), tmp_path / "cache", "heldout", 4, resize=32, modes=["fid"])
    for i, p in enumerate(paths):  # other pixels, the same names and byte sizes, a later mtime
        Image.fromarray(rs.randint(150, 256, (40, 40, 3)).astype(np.uint8)).save(p)
        os.utime(p, ns=(os.stat(p).st_atime_ns, os.stat(p).st_mtime_ns + 10**9 + i))
    assert [os.stat(p).st_size for p in paths] == sizes
    ext = FakeExtractor()
    again = reference_stats(paths, ext, tmp_path / "cache", "heldout", 4, resize=32, modes=["fid"])
    assert ext.calls > 0 and again["fid"].mu.min() > 140 > first["fid"].mu.max()


def test_the_same_images_written_again_hit_the_cache(tmp_path):
    """The evaluate stage writes its held-out references anew on every run: keyed on modification times, the
    cache never hit and grew by one statistics file per run (33.5 MB each for the tiny config's Inception)."""
    paths = [tmp_path / "refs" / f"{i:08d}.png" for i in range(4)]
    paths[0].parent.mkdir()
    rs = np.random.RandomState(0)
    pixels = [rs.randint(0, 256, (40, 40, 3)).astype(np.uint8) for _ in paths]
    for p, px in zip(paths, pixels):
        Image.fromarray(px).save(p)
    first = reference_stats(paths, FakeExtractor(), tmp_path / "cache", "heldout", 4, resize=32, modes=["fid"])
    for i, (p, px) in enumerate(zip(paths, pixels)):  # deleted and written again: the same bytes, a later mtime
        p.unlink()
        Image.fromarray(px).save(p)
        os.utime(p, ns=(os.stat(p).st_atime_ns, os.stat(p).st_mtime_ns + 10**9 + i))
    ext = FakeExtractor()
    again = reference_stats(paths, ext, tmp_path / "cache", "heldout", 4, resize=32, modes=["fid"])
    assert ext.calls == 0 and np.array_equal(again["fid"].mu, first["fid"].mu)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1 and not list((tmp_path / "cache").glob(".*"))
