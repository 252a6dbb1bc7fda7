"""CLIP score through the production open_clip loader, with a tiny randomly initialised CLIP."""

import json
import pickle

import numpy as np
import pytest
import torch

from evaluation.clip_model import ClipEncoder, load_clip
from evaluation.clip_score import ClipScoreEvaluator, clip_scores
from evaluation.config import EvalConfig

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
PROMPTS = ["a dog on the grass", "a red bus", "two cats sleeping", "a bowl of fruit"]


def make_tiny_clip(folder, seed=0):
    """Register the tiny architecture with open_clip and save random weights; returns (name, checkpoint)."""
    import open_clip

    cfg = folder / "tiny-test-clip.json"
    cfg.write_text(json.dumps(TINY))
    open_clip.add_model_config(cfg)
    torch.manual_seed(seed)
    model = open_clip.create_model("tiny-test-clip")
    ckpt = folder / "tiny_clip.pt"
    torch.save(model.state_dict(), ckpt)
    return "tiny-test-clip", ckpt


def images(n, size=40, seed=0):
    rs = np.random.RandomState(seed)
    return rs.randint(0, 256, (n, size, size, 3)).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_clip_score_equals_direct_computation(tiny_clip):
    from PIL import Image

    name, ckpt = tiny_clip
    cfg = EvalConfig(clip_model=name, clip_checkpoint=str(ckpt), clip_batch_size=3)
    out = ClipScoreEvaluator.from_config(cfg, device="cpu")(images(4), PROMPTS)

    model, preprocess, tokenizer = load_clip(name, ckpt)
    saved = torch.load(ckpt)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        x = torch.stack([preprocess(Image.fromarray(im)) for im in images(4)])
        a = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        b = torch.nn.functional.normalize(model.encode_text(tokenizer(PROMPTS)), dim=-1)
    expected = 2.5 * torch.clamp((a * b).sum(-1), min=0)
    np.testing.assert_allclose(out["per_sample"], expected.numpy(), rtol=1e-5, atol=1e-6)
    assert out["clip_score"] == pytest.approx(float(expected.mean()), rel=1e-5, abs=1e-6)
    assert out["protocol"]["clip_checkpoint_sha256"] and "2.5 * max(cos, 0)" in out["protocol"]["formula"]


def test_clamp_at_zero_and_weight():
    img = np.array([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8]])
    txt = np.array([[1.0, 0.0], [-1.0, 0.0], [3.0, 4.0]])  # cos 1, -1 (clamped), 1 (normalised here)
    np.testing.assert_allclose(clip_scores(img, txt, weight=2.5), [2.5, 0.0, 2.5])


def test_encoder_pickles_without_weights(tiny_clip, monkeypatch, tmp_path):
    import tempfile

    import open_clip

    name, ckpt = tiny_clip
    enc = ClipEncoder(name, ckpt, device="cpu")
    first = enc.texts(PROMPTS[:2])
    blob = pickle.dumps(enc)
    monkeypatch.delitem(open_clip.factory._MODEL_CONFIGS, name)  # like a worker that never registered it
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    clone = pickle.loads(blob)
    assert clone._loaded is None
    np.testing.assert_array_equal(clone.texts(PROMPTS[:2]), first)
    assert list(tmp_path.iterdir()) == []  # the architecture file it registered is not left in the temp folder
    open_clip.add_model_config(tmp_path)  # a later registration rescans every path, the removed one included
    assert open_clip.get_model_config(name) == enc.model_cfg


def test_missing_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="eval.clip_checkpoint is not set"):
        ClipEncoder("ViT-B-32", None)
    with pytest.raises(FileNotFoundError, match="CLIP checkpoint not found"):
        ClipEncoder("ViT-B-32", tmp_path / "open_clip_pytorch_model.bin")
    with pytest.raises(ValueError, match="hub"):
        ClipEncoder("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", None)


class _Untouchable:
    protocol = {}

    def images(self, *a):
        raise AssertionError("model used before inputs were checked")

    texts = images


@pytest.mark.parametrize(
    "imgs, prompts, match",
    [
        (images(2), [], "prompt set is empty"),
        (images(2), ["a"], "1 prompts for 2 images"),
        ([images(1)[0], images(1, size=48)[0]], ["a", "b"], "mixed sizes"),
    ],
)
def test_bad_inputs_fail_first(imgs, prompts, match):
    with pytest.raises(ValueError, match=match):
        ClipScoreEvaluator(_Untouchable())(imgs, prompts)


def test_cli_on_a_folder(tiny_clip, tmp_path):
    from PIL import Image

    from evaluation.clip_score import main

    name, ckpt = tiny_clip
    for i, im in enumerate(images(3)):
        Image.fromarray(im).save(tmp_path / f"{i:02d}.png")
    (tmp_path / "prompts.json").write_text(json.dumps([{"prompt": p} for p in PROMPTS[:3]]))
    out = main([str(tmp_path), str(tmp_path / "prompts.json"), "--model", name, "--checkpoint", str(ckpt)])
    direct = ClipScoreEvaluator(ClipEncoder(name, ckpt, device="cpu"))(images(3), PROMPTS[:3])
    assert out["num_images"] == 3 and out["clip_score"] == pytest.approx(direct["clip_score"], abs=1e-6)
