"""The tokenizer's image stream over webdataset image shards: held-out images never trained on, every other
one once per epoch, and a resumed stream continuing exactly."""

from __future__ import annotations

import numpy as np

from tests.image_shard_utils import write_split
from tokenization.heldout_rows import is_held_out
from tokenization.image_shards import sample_id
from tokenization.image_stream import ImageStream, held_out_images


def _shards(tmp_path, n=200, per_shard=50):
    images = np.zeros((n, 8, 8, 3), np.uint8)
    images[:, :, :, 0] = np.arange(n)[:, None, None]  # the red value is the image's number
    split = write_split(tmp_path / "train", images, [f"image {i}" for i in range(n)], per_shard)
    shards = [f"{split['folder']}/{s['name']}" for s in split["shards"]]
    ids = [sample_id(shards[i // per_shard], f"{i:09d}") for i in range(n)]
    return shards, ids


def _numbers(batch) -> list[int]:
    return [int(img[0, 0, 0]) for img in batch]


def test_held_out_images_are_never_streamed_and_the_others_once_per_epoch(tmp_path):
    shards, ids = _shards(tmp_path)
    held = {i for i, sid in enumerate(ids) if is_held_out(sid, 0.2)}
    assert 20 <= len(held) <= 60
    got = held_out_images(shards, 8, 0.2, limit=1000)
    assert sorted(_numbers(got)) == sorted(held)
    assert len(held_out_images(shards, 8, 0.2, limit=5)) == 5
    stream = ImageStream(shards, 8, seed=1, holdout_fraction=0.2, buffer=30)
    n = 200 - len(held)
    first_epoch = []
    for batch in stream.batches(1):
        first_epoch += _numbers(batch)
        if len(first_epoch) == n:
            break
    assert sorted(first_epoch) == sorted(set(range(200)) - held)  # every training image once, none held out
    assert first_epoch != sorted(first_epoch)  # shuffled


def test_a_stream_built_at_a_position_continues_exactly(tmp_path):
    shards, _ = _shards(tmp_path)
    a = ImageStream(shards, 8, seed=3, holdout_fraction=0.1, buffer=20)
    it = a.batches(16)
    before = [_numbers(next(it)) for _ in range(20)]  # past the first epoch
    b = ImageStream(shards, 8, seed=3, holdout_fraction=0.1, buffer=20, position=16 * 12)
    after = [_numbers(batch) for batch, _ in zip(b.batches(16), range(8))]
    assert after == before[12:]
    other = ImageStream(shards, 8, seed=4, holdout_fraction=0.1, buffer=20)
    assert _numbers(next(other.batches(16))) != before[0]  # the seed picks the order


def test_each_epoch_has_its_own_order_and_a_buffer_larger_than_the_data_still_shuffles(tmp_path):
    """Epoch e is permuted with (seed, e): two epochs differ; with a shuffle buffer larger than the whole set
    (the default 1000 against a small download) everything passes through the epoch-end flush, which must
    shuffle too."""
    shards, _ = _shards(tmp_path, n=60, per_shard=20)
    stream = ImageStream(shards, 8, seed=5, buffer=1000)
    it = stream.batches(60)
    one, two = _numbers(next(it)), _numbers(next(it))
    assert sorted(one) == sorted(two) == list(range(60))
    assert one != two and one != sorted(one)
    shard = [n // 20 for n in one]  # read shard by shard, the flush must mix them: not 3 runs of 20
    assert sum(a != b for a, b in zip(shard, shard[1:])) > 10
