"""A resumed tokenizer image stream reads at most two epochs of the image shards to find its place, however many
epochs it had consumed (it read every one of them again before: hours of shard reads late in a long run)."""

from __future__ import annotations

import numpy as np

import tokenization.image_shards as image_shards
from tests.image_shard_utils import write_split
from tokenization.image_stream import ImageStream


def _numbers(batch) -> list[int]:
    return [int(img[0, 0, 0]) for img in batch]


def test_a_resume_many_epochs_in_reads_at_most_two_epochs_and_continues_exactly(tmp_path, monkeypatch):
    n, per_shard = 40, 10
    images = np.zeros((n, 8, 8, 3), np.uint8)
    images[:, :, :, 0] = np.arange(n)[:, None, None]
    split = write_split(tmp_path / "train", images, [f"image {i}" for i in range(n)], per_shard)
    shards = [f"{split['folder']}/{s['name']}" for s in split["shards"]]
    a = ImageStream(shards, 8, seed=5, holdout_fraction=0.2, buffer=7)
    it = a.batches(8)
    before = [_numbers(next(it)) for _ in range(60)]  # about 15 epochs of the ~32 training images
    reads = []
    real = image_shards.iter_image_samples
    monkeypatch.setattr(image_shards, "iter_image_samples", lambda url: reads.append(url) or real(url))
    b = ImageStream(shards, 8, seed=5, holdout_fraction=0.2, buffer=7, position=8 * 50)
    resumed = b.batches(8)
    after = [_numbers(next(resumed))]
    # epoch 0 (its length), the epoch of the position, and the next one where the batch crosses into it;
    # about 13 epochs were read before
    assert len(reads) <= 3 * len(shards)
    after += [_numbers(next(resumed)) for _ in range(9)]
    assert after == before[50:]
