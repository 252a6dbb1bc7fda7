"""One image shard through ``ShardEncoder`` in process (no Ray): the centre crop, the [-1, 1] pixel range the
VQ-GAN is given, the unpadded caption ids written to the token shard and the count of resized images."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tokenization.shard_encoder import ShardEncoder, decode_image
from tokenization.shards import read_token_shard


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_decode_keeps_the_centre_of_a_wide_image():
    img = np.zeros((10, 30, 3), np.uint8)
    img[:, :10] = (255, 0, 0)
    img[:, 10:20] = (0, 255, 0)
    img[:, 20:] = (0, 0, 255)
    out, resized = decode_image(_png(img), 10)
    assert resized and out.shape == (10, 10, 3) and (out == (0, 255, 0)).all()
    tall = np.transpose(img, (1, 0, 2)).copy()  # 30 x 10: the middle rows
    assert (decode_image(_png(tall), 10)[0] == (0, 255, 0)).all()


class _RecordingVQ:
    """Token = the position's first channel > 0; records the pixel range it was given."""

    seen: list = []

    def encode(self, x: torch.Tensor):
        type(self).seen.append((float(x.min()), float(x.max())))
        z = torch.nn.functional.avg_pool2d(x, 8)[:, 0].flatten(1)  # [B, L]
        return (z > 0).long(), z.abs().float()


class _PaddedText:
    """Pads every caption to 6 ids with id 0, mask False on the padding."""

    def tokenize(self, captions):
        ids = torch.zeros(len(captions), 6, dtype=torch.long)
        mask = torch.zeros(len(captions), 6, dtype=torch.bool)
        for i, c in enumerate(captions):
            n = min(len(c.split()), 6)
            ids[i, :n] = torch.arange(1, n + 1) + 10 * i
            mask[i, :n] = True
        return ids, mask


def test_encoder_sees_minus_one_to_one_and_the_shard_keeps_unpadded_ids(tmp_path: Path):
    black_white = np.zeros((16, 16, 3), np.uint8)
    black_white[:, 8:] = 255
    wide = np.full((16, 24, 3), 255, np.uint8)  # resized (cropped) to 16 x 16
    src = tmp_path / "00000.tar"
    with tarfile.open(src, "w") as tar:
        for key, img, cap in (("000000000", black_white, "one two"), ("000000001", wide, "a b c d")):
            for suffix, data in (("png", _png(img)), ("txt", cap.encode())):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    _RecordingVQ.seen = []
    enc = ShardEncoder(_RecordingVQ, _PaddedText, batch_size=2, image_size=16)
    stats = enc.encode_shard(str(src), str(tmp_path / "out.tar"), "train/00000.tar")
    assert stats["samples"] == 2 and stats["resized"] == 1 and stats["corrupt"] == 0
    assert _RecordingVQ.seen == [(-1.0, 1.0)]
    back = list(read_token_shard(tmp_path / "out.tar"))
    assert [list(s["text_ids"]) for s in back] == [[1, 2], [11, 12, 13, 14]]  # no padding ids
    assert list(back[0]["tokens"]) == [0, 1, 0, 1] and back[0]["meta"]["grid"] == [2, 2]
