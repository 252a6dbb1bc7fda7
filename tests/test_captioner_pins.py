"""Pins of ``evaluation.captioner.Captioner``: what reaches ``generate`` (every image once, in order, in batches;
the configured beams and length; no sampling), how captions are decoded (special tokens dropped, stripped),
eval mode, the protocol line and the folder check. The real tiny folder's tokenizer and image processor
(``tests.test_eval_captioning.tiny_captioner_dir``) with a recording stand-in model class."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from evaluation.captioner import Captioner
from tests.test_eval_captioning import tiny_captioner_dir  # noqa: F401  (fixture)


class RecordingModel:
    """``generate`` returns, per image, ``<eos> caption N<eos>`` (N counts images), padded with eos."""

    instances: list = []

    def __init__(self, tokenizer):
        self.tokenizer, self.calls, self.eval_called, self.n = tokenizer, [], False, 0
        RecordingModel.instances.append(self)

    def to(self, device):
        return self

    def eval(self):
        self.eval_called = True
        return self

    def generate(self, pixel_values, **kwargs):
        self.calls.append((pixel_values.clone(), kwargs))
        eos = self.tokenizer.eos_token_id
        rows = []
        for _ in range(len(pixel_values)):
            rows.append([eos] + self.tokenizer.encode(f" caption {self.n}") + [eos] * (1 + self.n % 2))
            self.n += 1
        width = max(map(len, rows))
        return torch.tensor([r + [eos] * (width - len(r)) for r in rows])


@pytest.fixture
def recording(monkeypatch, tiny_captioner_dir):  # noqa: F811
    import transformers
    from transformers import AutoTokenizer

    path, _ = tiny_captioner_dir
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    RecordingModel.instances = []
    stub = SimpleNamespace(from_pretrained=lambda p, local_files_only: RecordingModel(tok))
    monkeypatch.setattr(transformers, "VisionEncoderDecoderModel", stub)
    return path


def _imgs(n):
    return np.stack([np.full((40, 40, 3), 20 * i, np.uint8) for i in range(n)])


def test_generate_sees_every_image_in_order_with_the_configured_decoding(recording):
    cfg = SimpleNamespace(
        captioner_path=recording,
        captioner_class="VisionEncoderDecoderModel",
        caption_max_new_tokens=7,
        caption_num_beams=3,
        caption_batch_size=2,
    )
    cap = Captioner.from_config(cfg, device="cpu")
    (model,) = RecordingModel.instances
    assert model.eval_called
    captions = cap(_imgs(5))
    assert captions == [f"caption {i}" for i in range(5)]  # special tokens skipped, whitespace stripped
    assert [len(px) for px, _ in model.calls] == [2, 2, 1]
    assert all(kw == {"max_new_tokens": 7, "num_beams": 3, "do_sample": False} for _, kw in model.calls)
    from PIL import Image

    want = cap.image_processor(images=[Image.fromarray(im) for im in _imgs(5)], return_tensors="pt")["pixel_values"]
    assert torch.equal(torch.cat([px for px, _ in model.calls]), want)
    assert cap.protocol["decoding"] == "beam search, num_beams=3, max_new_tokens=7"


def test_greedy_protocol_and_a_folder_without_config_json(recording, tmp_path):
    cap = Captioner(recording, device="cpu", num_beams=1, max_new_tokens=4)
    assert cap.protocol["decoding"] == "greedy, num_beams=1, max_new_tokens=4"
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="must be a folder written by save_pretrained"):
        Captioner(tmp_path)
