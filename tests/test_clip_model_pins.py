"""Pins of ``evaluation.clip_model``: ``local-dir:`` models need no checkpoint and get ``pretrained=None``, the
model is in eval mode, embeddings are unit rows independent of the batch size and of the image mode (grey, RGBA
-> RGB; open_clip's own preprocess converts too, so that part guards the behaviour, not one line). A tiny random
open_clip model (``tests.test_eval_clip_score.make_tiny_clip``): nothing downloaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.clip_model import ClipEncoder, load_clip
from tests.test_eval_clip_score import PROMPTS, images, make_tiny_clip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("clip"), seed=4)


def test_local_dir_models_need_no_checkpoint_and_load_without_pretrained(monkeypatch):
    import open_clip

    enc = ClipEncoder("local-dir:/models/my-clip", None, device="cpu")
    assert enc.model_cfg is None and enc.protocol["clip_checkpoint_sha256"] is None
    seen = {}

    def create(name, pretrained=None, device=None):
        seen.update(name=name, pretrained=pretrained)
        return torch.nn.Linear(1, 1), None, "preprocess"

    monkeypatch.setattr(open_clip, "create_model_and_transforms", create)
    monkeypatch.setattr(open_clip, "get_tokenizer", lambda name: "tokenizer")
    model, preprocess, tok = load_clip("local-dir:/models/my-clip", None)
    assert seen == {"name": "local-dir:/models/my-clip", "pretrained": None}
    assert (preprocess, tok) == ("preprocess", "tokenizer") and not model.training


def test_embeddings_are_unit_rows_independent_of_batch_size_and_image_mode(tiny_clip):
    name, ckpt = tiny_clip
    assert not load_clip(name, ckpt)[0].training
    small, big = ClipEncoder(name, ckpt, "cpu", batch_size=3), ClipEncoder(name, ckpt, "cpu", batch_size=64)
    imgs = images(5, seed=7)
    a, b = small.images(imgs), big.images(imgs)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    assert a.dtype == np.float32 and a.shape == (5, 16)
    t_small, t_big = small.texts(PROMPTS + ["one more"]), big.texts(PROMPTS + ["one more"])
    np.testing.assert_allclose(t_small, t_big, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(t_small, axis=1), 1.0, rtol=1e-5)
    assert t_small.shape == (5, 16)
    grey = Image.fromarray(imgs[0, :, :, 0])
    rgba = np.concatenate([imgs[1], np.full((40, 40, 1), 255, np.uint8)], axis=2)
    got = big.images([grey, rgba])
    want = big.images([grey.convert("RGB"), Image.fromarray(rgba).convert("RGB")])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
