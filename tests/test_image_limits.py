"""The pixel limit is read from the header: a decompression bomb is refused before any pixel is decoded,
wherever PIL opens downloaded images (the tokenize stage's decoder, the evaluators' readers)."""

from __future__ import annotations

import io
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from evaluation.images import ImageSet, load_rgb
from evaluation.retrieval_shards import decode_rgb
from tests.hostile_server import png_bomb
from tokenization.image_limits import (
    DEFAULT_MAX_PIXELS,
    REASON_TOO_MANY_PIXELS,
    REASON_UNKNOWN_FORMAT,
    ImageRefused,
    open_image,
    pixels_over_limit,
)
from tokenization.shard_encoder import decode_image


@pytest.fixture(autouse=True)
def pil_limit():
    saved = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = saved


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return png_bomb(20000, 20000)  # 1.2 GB of pixels in ~1.2 MB


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


def test_the_limit_is_exact_and_read_from_the_header():
    data = _png(200, 100)
    assert pixels_over_limit(data, 20000) is None
    assert pixels_over_limit(data, 19999) == REASON_TOO_MANY_PIXELS
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS  # a lower limit leaves PIL's own alone
    stream = io.BytesIO(data)
    stream.seek(0)
    assert pixels_over_limit(stream, 20000) is None and stream.tell() == 0  # left where it was
    assert pixels_over_limit(b"<html>not an image</html>", 20000) == REASON_UNKNOWN_FORMAT
    assert open_image(data, 20000).size == (200, 100)


def test_a_bomb_is_refused_without_decoding_it(bomb, tmp_path):
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ImageRefused, match="max_image_pixels"):
            decode_image(bomb, 32)  # the tokenize stage's decoder
        with pytest.raises(ImageRefused, match="max_image_pixels"):
            decode_rgb(bomb)  # the retrieval baseline's reader
        path = tmp_path / "bomb.png"
        path.write_bytes(bomb)
        with pytest.raises(ImageRefused):
            load_rgb(path)  # the evaluators' file reader
        with pytest.raises(ValueError, match="not a readable image"):
            ImageSet([path])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20  # the decoded image would be 1.2 GB
    assert time.perf_counter() - t0 < 5
    assert DEFAULT_MAX_PIXELS < 20000 * 20000


def test_a_raised_limit_decodes_what_it_allows(monkeypatch):
    img, resized = decode_image(_png(300, 200), 32, max_pixels=60000)
    assert img.shape == (32, 32, 3) and resized and np.all(img == (1, 2, 3))
    with pytest.raises(ImageRefused):
        decode_image(_png(300, 200), 32, max_pixels=59999)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20000)  # PIL alone would refuse 300 x 200 (> twice that)
    assert decode_image(_png(300, 200), 32, max_pixels=60000)[0].shape == (32, 32, 3)
    assert Image.MAX_IMAGE_PIXELS == 60000  # raised to the configured limit
