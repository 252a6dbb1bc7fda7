"""FID protocol for the generated side (``evaluation.fid``): a set of another size is center-cropped and resized to
``eval.fid_resize`` exactly like the references before the extractor sees it; each mode is compared with its
own reference statistics."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.fid import FIDEvaluator, reference_stats
from evaluation.frechet import feature_stats, stats_distance
from evaluation.images import center_crop_resize
from tests.test_eval_fid import FakeExtractor


def _images(n: int, seed: int, h: int, w: int) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (n, h, w, 3)).astype(np.uint8)


def test_generated_images_of_another_size_are_preprocessed_like_the_references(tmp_path):
    ext = FakeExtractor()
    ref = reference_stats(list(_images(12, 0, 40, 40)), ext, tmp_path, "r", 12, resize=32, batch_size=5)
    fid = FIDEvaluator(ref, ext, resize=32, batch_size=5)
    gen = _images(10, 1, 48, 64)  # not square, not 32 px: cropped to 48x48, then resized to 32x32
    got = fid(gen)
    seen = np.stack([center_crop_resize(x, 32) for x in gen])
    for mode in ("fid", "clean_fid"):
        want = stats_distance(feature_stats(ext(seen, mode)), ref[mode])
        assert got[mode] == pytest.approx(want, rel=1e-12), mode
    assert got["num_images"] == 10 and got["protocol"]["num_generated"] == 10


def test_each_mode_is_measured_against_its_own_reference(tmp_path):
    ext = FakeExtractor()  # clean_fid features are the fid ones + 1: a cross-mode comparison is 12 away
    imgs = _images(16, 2, 32, 32)
    ref = reference_stats(list(imgs), ext, tmp_path, "r", 16, resize=32)
    out = FIDEvaluator(ref, ext, resize=32)(imgs)
    assert abs(out["fid"]) < 1e-6 and abs(out["clean_fid"]) < 1e-6
    only_clean = FIDEvaluator({"clean_fid": ref["clean_fid"]}, ext, resize=32)(imgs)
    assert set(only_clean) >= {"clean_fid"} and "fid" not in only_clean and abs(only_clean["clean_fid"]) < 1e-6
