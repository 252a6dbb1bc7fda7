"""Every evaluator pass over its images shows a progress bar on stderr, counting the images it has scored (at
COCO's 30k images one pass takes minutes); the bar advances as each batch is scored, not as it is read."""

from __future__ import annotations

import re
import types

import numpy as np
import torch

import evaluation.images
from evaluation.captioner import Captioner
from evaluation.clip_score import ClipScoreEvaluator
from evaluation.fd_vq import VQFrechetEvaluator
from evaluation.fid import FIDEvaluator, reference_stats
from evaluation.images import ImageSet


def images(n: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def bar_ends(err: str, name: str) -> list[str]:
    """The counts (``done/total``) the bar named ``name`` showed."""
    return re.findall(rf"{re.escape(name)}: [^|]*\|[^|]*\| (\d+/\d+)", err)


def test_a_named_pass_counts_its_images_as_each_batch_is_scored(capsys, monkeypatch):
    monkeypatch.setattr(evaluation.images, "PROGRESS_INTERVAL_S", 0.0)  # every update drawn
    shown = []
    for batch in ImageSet(images(10)).batches(4, desc="pass"):
        shown.append((len(batch), bar_ends(capsys.readouterr().err, "pass")[-1:]))
    assert [n for n, _ in shown] == [4, 4, 2]
    assert shown[1][1] == ["4/10"]  # while the second batch is scored: the first one counted, not the second
    assert bar_ends(capsys.readouterr().err, "pass")[-1] == "10/10"
    list(ImageSet(images(3)).batches(2))
    assert capsys.readouterr().err == ""  # no name: no bar


class FakeExtractor:
    protocol = {"extractor": "fake"}

    def __call__(self, batch, mode="fid"):
        return batch.reshape(len(batch), -1)[:, :4].astype(np.float64) + np.arange(4)


def test_fid_reference_and_generated_passes_show_progress(tmp_path, capsys):
    ref = reference_stats(list(images(6)), FakeExtractor(), tmp_path, "ref", 6, resize=8, modes=("fid",), batch_size=4)
    assert bar_ends(capsys.readouterr().err, "FID reference fid")[-1] == "6/6"
    FIDEvaluator(ref, FakeExtractor(), resize=8, batch_size=2)(images(5))
    assert bar_ends(capsys.readouterr().err, "FID fid")[-1] == "5/5"


def test_clip_score_and_fd_vq_passes_show_progress(capsys):
    encoder = types.SimpleNamespace(
        images=lambda b: np.ones((len(b), 3)), texts=lambda p: np.ones((len(p), 3)), protocol={}
    )
    ClipScoreEvaluator(encoder, batch_size=2)(images(3), ["a red circle"] * 3)
    assert bar_ends(capsys.readouterr().err, "CLIP score")[-1] == "3/3"

    vq = types.SimpleNamespace(cfg=types.SimpleNamespace(image_size=8), features=lambda x: x[:, :2] + x[:, 2:3])
    ev = VQFrechetEvaluator(vq, images(6), batch_size=4)
    assert bar_ends(capsys.readouterr().err, "FD-VQ reference")[-1] == "6/6"
    ev(images(7))
    assert bar_ends(capsys.readouterr().err, "FD-VQ")[-1] == "7/7"


def test_captioning_shows_progress(capsys):
    cap = object.__new__(Captioner)  # the decoding loop alone: a stand-in processor, model and tokenizer
    cap.batch_size, cap.device, cap.max_new_tokens, cap.num_beams = 2, "cpu", 4, 1
    cap.image_processor = lambda images, return_tensors: {"pixel_values": torch.zeros(len(images), 3, 8, 8)}
    cap.model = types.SimpleNamespace(generate=lambda pixel_values, **k: torch.zeros(len(pixel_values), 2))
    cap.tokenizer = types.SimpleNamespace(batch_decode=lambda out, skip_special_tokens: [" a caption "] * len(out))
    assert cap(images(5)) == ["a caption"] * 5
    assert bar_ends(capsys.readouterr().err, "captioning")[-1] == "5/5"
