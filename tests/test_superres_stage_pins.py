"""Pins of the ``superres`` stage's bookkeeping (``training.superres_stage``) with every heavy part replaced by a
recording fake: when ``pairs.npz`` is remade, when checkpoints are dropped, what the tokenizers are fed and
what the manifest carries. The real stage runs in ``tests/test_superres_stage.py``."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from core.config import identity_dict
from tests.eval_utils import load
from tests.test_superres_stage import SR


class FakeVQ:
    def __init__(self, pixels: int, tag: str):
        self.cfg = SimpleNamespace(pixels=pixels)
        self.codebook = tag

    def eval(self):
        return self


class Fakes:
    """Records the stage's calls; ``lo_bytes``/``hi_bytes`` are the two tokenizers' weight files."""

    def __init__(self, tmp_path, monkeypatch):
        import tokenization.synthetic
        import tokenization.vqgan
        import training.superres
        import training.superres_stage as st
        import training.trainer

        self.tmp, self.lo_bytes, self.hi_bytes = tmp_path, b"lo-1", b"hi-1"
        self.pairs_made, self.downsampled, self.trained, self.rendered = 0, [], [], []
        self.lo_dir = tmp_path / "in" / "tokenizer"
        self.lo_dir.mkdir(parents=True)

        def tokenizer(sr, images, folder, log):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "vqgan.safetensors").write_bytes(self.hi_bytes)
            return {"mae": 0.25, "codebook_usage": 0.5, "loss": 9.0}

        def render(n, seed, size, lo, hi):
            self.rendered.append((n, seed, size))
            return np.zeros((n, size, size, 3), np.uint8), ["c"] * n

        def downsample(images, size):
            self.downsampled.append(size)
            return images[:, :size, :size]

        def load_dir(path):
            return FakeVQ(16, "lo-book") if str(path).startswith(str(self.lo_dir)) else FakeVQ(64, "hi-book")

        def token_pairs(hi_images, lo_images, hi_vq, lo_vq):
            self.pairs_made += 1
            n = len(hi_images)
            return {"lo": np.zeros((n, 4), np.int16), "hi": np.ones((n, 16), np.int16)}

        def train(sr, pairs, captions, encoder, out, log, codebooks):
            ck = out / "checkpoints"
            self.trained.append({"kept": (ck / "marker").exists(), "codebooks": codebooks})
            ck.mkdir(parents=True, exist_ok=True)
            (ck / "marker").write_text("x")
            (out / "export").mkdir(exist_ok=True)
            (out / "export" / "model.safetensors").write_bytes(b"w")
            return {"steps": sr.train.steps, "resumed_from": 0, "seconds": 0.5, "last_metrics": {"loss": 1.5}}

        monkeypatch.setattr(st, "_tokenizer", tokenizer)
        monkeypatch.setattr(tokenization.synthetic, "render_dataset", render)
        monkeypatch.setattr(tokenization.synthetic, "downsample", downsample)
        monkeypatch.setattr(tokenization.vqgan, "load_tokenizer_dir", load_dir)
        monkeypatch.setattr(training.superres, "token_pairs", token_pairs)
        monkeypatch.setattr(training.superres, "train_super_resolution", train)
        monkeypatch.setattr(training.trainer, "load_text_encoder", lambda cfg, path: None)

    def run(self, overrides=()) -> dict:
        from training.superres_stage import superres_stage

        (self.lo_dir / "vqgan.safetensors").write_bytes(self.lo_bytes)
        cfg = load(self.tmp / "run", SR + list(overrides))
        ctx = SimpleNamespace(
            config=cfg, out_dir=self.tmp / "out", log=lambda m: None, input_dir=lambda name: self.tmp / "in" / name
        )
        return superres_stage(ctx)


@pytest.fixture
def fakes(tmp_path, monkeypatch):
    return Fakes(tmp_path, monkeypatch)


def test_pairs_are_kept_only_while_both_tokenizers_and_the_images_are_the_same(fakes):
    """Pins the ``pairs.npz`` fingerprint: low- and high-res tokenizer weights and the synthetic section."""
    fakes.run()
    fakes.run()
    assert fakes.pairs_made == 1  # unchanged: kept
    fakes.lo_bytes = b"lo-2"
    fakes.run()
    assert fakes.pairs_made == 2  # another generator tokenizer
    fakes.hi_bytes = b"hi-2"
    fakes.run()
    assert fakes.pairs_made == 3  # another high-resolution tokenizer
    fakes.run(["data.synthetic.max_objects=3"])
    assert fakes.pairs_made == 4  # other scenes


def test_checkpoints_are_dropped_when_pairs_or_optimisation_change_not_for_more_steps(fakes):
    """Pins the resume fingerprint: pairs + model + train settings except steps / log_every / checkpoint_every."""
    fakes.run()
    fakes.run(["sr.train.steps=5", "sr.train.log_every=1", "sr.train.checkpoint_every=1"])
    assert [t["kept"] for t in fakes.trained] == [False, True]
    fakes.run(["sr.train.lr=0.001"])
    assert fakes.trained[-1]["kept"] is False  # other optimisation: from scratch
    fakes.run(["sr.train.lr=0.001"])
    assert fakes.trained[-1]["kept"] is True
    fakes.lo_bytes = b"lo-2"
    fakes.run(["sr.train.lr=0.001"])
    assert fakes.trained[-1]["kept"] is False  # other pairs: from scratch


def test_stage_feeds_the_generator_tokenizer_side_and_codebooks_and_reports_identity(fakes):
    """Pins: images rendered at sr.image_size (sr.n_images of them) and downsampled to the generator tokenizer's
    side; codebooks (lo, hi) start the model; the manifest's identity carries sr.sample; tokenizer metrics."""
    m = fakes.run()
    cfg = load(fakes.tmp / "run", SR)
    assert fakes.rendered == [(12, cfg.data.synthetic.seed, 64)]
    assert fakes.downsampled == [16]
    assert fakes.trained[0]["codebooks"] == ("lo-book", "hi-book")
    assert m["identity"]["sample"] == identity_dict(cfg.sr.sample) and "top_p" not in m["identity"]["sample"]
    other = fakes.run(["sr.sample.temperature=0.5"])
    assert other["identity"] != m["identity"]
    assert fakes.run(["sr.sample.top_p=0.9"])["identity"]["sample"]["top_p"] == 0.9
    assert m["metrics"]["tokenizer_mae"] == 0.25 and m["metrics"]["tokenizer_codebook_usage"] == 0.5
    assert "tokenizer_loss" not in m["metrics"] and m["metrics"]["loss"] == 1.5


def test_a_finished_tokenizer_with_this_config_is_not_retrained(tmp_path, monkeypatch):
    """Pins ``_tokenizer``: ``finished_metrics`` found -> those metrics, no training; none -> trained."""
    import tokenization.vqgan
    import tokenization.vqgan.train
    from training.superres_stage import _tokenizer

    sr = load(tmp_path / "run", SR).sr
    trained = []
    monkeypatch.setattr(tokenization.vqgan, "train_tokenizer", lambda *a, **k: trained.append(1) or {"mae": 2.0})
    monkeypatch.setattr(tokenization.vqgan.train, "finished_metrics", lambda folder, cfg: {"mae": 1.0})
    assert _tokenizer(sr, np.zeros((2, 64, 64, 3), np.uint8), tmp_path / "tok", lambda m: None) == {"mae": 1.0}
    assert trained == []
    monkeypatch.setattr(tokenization.vqgan.train, "finished_metrics", lambda folder, cfg: None)
    assert _tokenizer(sr, np.zeros((2, 64, 64, 3), np.uint8), tmp_path / "tok", lambda m: None) == {"mae": 2.0}
    assert trained == [1]
