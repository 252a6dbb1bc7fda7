"""FID of a COCO-30k-sized set holds its features once: each mode's rows are written into one array, not kept
as a list of batches and then copied into another (7.6 GB instead of 3.8 GB at 118k images, two modes)."""

import tracemalloc

import numpy as np

from evaluation.fid import FIDEvaluator
from evaluation.frechet import GaussianStats

N, D = 2000, 256


class _Extractor:
    protocol = {"extractor": "fake"}

    def __call__(self, batch, mode):
        rng = np.random.default_rng(int(batch[0, 0, 0, 0]) + len(mode))
        return rng.standard_normal((len(batch), D))


def test_the_features_are_held_once():
    ref = {m: GaussianStats(np.zeros(D), np.eye(D), 10) for m in ("fid", "clean_fid")}
    images = np.random.default_rng(0).integers(0, 255, (N, 4, 4, 3), dtype=np.uint8)
    ev = FIDEvaluator(ref, _Extractor(), resize=4, batch_size=100)
    tracemalloc.start()
    try:
        feats = ev.features(images)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    held = sum(f.nbytes for f in feats.values())
    assert held == 2 * N * D * 8
    assert peak < 1.3 * held, f"peak {peak / 1e6:.1f} MB for {held / 1e6:.1f} MB of features"
    expect = np.concatenate([_Extractor()(images[i : i + 100], "fid") for i in range(0, N, 100)])
    assert np.array_equal(feats["fid"], expect)
