"""The shard encoder resizes a (centre-cropped) image to ``tokenizer.resolution`` with PIL's BICUBIC filter: the
pixels ``decode_image`` returns, and those the image encoder is given, are the bicubic ones (which differ from
the bilinear, Lanczos, box and nearest ones on this image)."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import torch
from PIL import Image

from tokenization.shard_encoder import ShardEncoder, decode_image

SIZE = 16


def _image() -> np.ndarray:
    """A 24 x 36 image of noise and sharp edges (a blurred or aliased resize shows)."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (24, 36, 3), dtype=np.uint8)
    img[:, 14:17] = 255
    img[5:7] = 0
    return img


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _expected(img: np.ndarray, resample) -> np.ndarray:
    """Centre 24 x 24 crop (columns 6..29 of 36), resized to SIZE x SIZE with ``resample``."""
    return np.array(Image.fromarray(img[:, 6:30]).resize((SIZE, SIZE), resample))


def test_decode_image_resizes_with_bicubic():
    img = _image()
    want = _expected(img, Image.BICUBIC)
    others = (Image.BILINEAR, Image.LANCZOS, Image.BOX, Image.HAMMING, Image.NEAREST)
    assert all(not np.array_equal(want, _expected(img, f)) for f in others)  # the filter shows in the pixels
    out, resized = decode_image(_png(img), SIZE)
    assert resized and out.dtype == np.uint8 and out.shape == (SIZE, SIZE, 3)
    assert np.array_equal(out, want)


class _RecordingVQ:
    """Records the pixels it is given; one token per 8 x 8 patch."""

    seen: list = []

    def encode(self, x: torch.Tensor):
        type(self).seen.append(x.clone())
        z = torch.nn.functional.avg_pool2d(x, 8)[:, 0].flatten(1)
        return (z > 0).long(), z.abs().float()


class _Text:
    def tokenize(self, captions):
        return torch.ones(len(captions), 2, dtype=torch.long), torch.ones(len(captions), 2, dtype=torch.bool)


def test_the_encoder_is_given_the_bicubic_pixels(tmp_path, monkeypatch):
    import tokenization.shard_encoder as se

    monkeypatch.setattr(se, "_node_id", lambda: None)  # outside Ray anyway: skip importing it (seconds)
    img = _image()
    src = tmp_path / "00000.tar"
    with tarfile.open(src, "w") as tar:
        for suffix, data in (("png", _png(img)), ("txt", b"noise")):
            info = tarfile.TarInfo(f"000000000.{suffix}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    _RecordingVQ.seen = []
    enc = ShardEncoder(_RecordingVQ, _Text, batch_size=1, image_size=SIZE)
    stats = enc.encode_shard(str(src), str(tmp_path / "out.tar"), "train/00000.tar")
    assert stats["samples"] == 1 and stats["resized"] == 1
    (x,) = _RecordingVQ.seen
    want = torch.from_numpy(_expected(img, Image.BICUBIC)).permute(2, 0, 1).float() / 127.5 - 1.0
    assert x.shape == (1, 3, SIZE, SIZE) and torch.allclose(x[0], want, atol=1e-6)
