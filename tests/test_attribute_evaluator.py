"""``evaluation.attributes.AttributeEvaluator`` on rendered synthetic scenes: each image is scored against its own
caption, ``match`` is the exact-scene fraction (``all``), and another size is read at the synthetic size."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.attributes import ATTRIBUTES, AttributeEvaluator
from tokenization.synthetic import attribute_scores, render_dataset


def test_each_image_is_scored_against_its_own_caption():
    images, captions = render_dataset(6, seed=3, size=32)
    assert len(set(captions)) == 6
    ev = AttributeEvaluator(32, batch_size=4)  # two batches
    out = ev(images, captions)
    assert out["match"] == 1.0 and out["per_sample"] == [1.0] * 6 and out["num_images"] == 6
    assert out["per_attribute"] == {a: 1.0 for a in ATTRIBUTES}

    shifted = captions[1:] + captions[:1]  # every image against another scene's caption
    out = ev(images, shifted)
    want = [attribute_scores(im, c) for im, c in zip(images, shifted)]
    assert out["per_sample"] == [w["all"] for w in want]
    assert out["match"] == pytest.approx(np.mean([w["all"] for w in want])) and out["match"] < 1
    assert out["per_attribute"] == pytest.approx({a: np.mean([w[a] for w in want]) for a in ATTRIBUTES})


def test_another_size_is_read_at_the_synthetic_size():
    images, captions = render_dataset(4, seed=5, size=32)
    big = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)  # 64 px, the same scenes
    out = AttributeEvaluator(32)(big, captions)
    assert out["match"] == 1.0 and out["protocol"]["image_size"] == 64 and out["protocol"]["read_at"] == 32
