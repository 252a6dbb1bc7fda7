"""``ClipScoreEvaluator.from_config`` uses the configured ``eval.clip_score_weight`` (w in w * max(cos, 0)) and
scores each image against its own prompt; a stand-in encoder with fixed embeddings, no CLIP weights."""

from __future__ import annotations

import numpy as np
import pytest

import evaluation.clip_score as cs
from evaluation.config import EvalConfig

IMG = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
TXT = {"a": [3.0, 0.0], "b": [0.0, -1.0], "c": [1.0, 0.0]}  # cos: 1, -1 (clamped to 0), 1/sqrt(2)


class _Encoder:
    protocol = {"clip_model": "stand-in"}

    def __init__(self, *args, **kwargs):
        pass

    def images(self, batch):
        return IMG[[int(x[0, 0, 0]) for x in batch]]

    def texts(self, prompts):
        return np.array([TXT[p] for p in prompts])


def test_the_configured_weight_and_each_images_own_prompt(monkeypatch):
    monkeypatch.setattr(cs, "ClipEncoder", _Encoder)
    images = np.zeros((3, 4, 4, 3), np.uint8)
    images[:, 0, 0, 0] = [0, 1, 2]  # image i has embedding IMG[i]
    cos = np.array([1.0, 0.0, 1 / np.sqrt(2)])
    for weight in (2.5, 1.0):
        cfg = EvalConfig(clip_score_weight=weight, clip_batch_size=2)
        out = cs.ClipScoreEvaluator.from_config(cfg, device="cpu")(images, ["a", "b", "c"])
        np.testing.assert_allclose(out["per_sample"], weight * cos)
        assert out["clip_score"] == pytest.approx(weight * cos.mean())  # (0 .. w), not x100
        assert out["protocol"]["formula"] == f"{weight} * max(cos, 0), mean over pairs"
