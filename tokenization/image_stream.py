"""Images streamed from webdataset image shards to train the tokenizer: shuffled, endless, resumable.

Epoch e reads the shards in an order permuted with (seed, e) through a shuffle buffer seeded with (seed, e),
so the stream is a function of (shards, seed) alone. It counts the samples it has consumed (``position``):
a stream built with ``position=n`` replays the first n samples without decoding them and continues exactly
where the first one stopped; the replay reads at most two epochs of the shards (the first one gives the epoch's
length, whole epochs after it are skipped unread). A ``holdout_fraction`` of the samples (chosen by a hash of their id,
``tokenization.heldout_rows.is_held_out``) is never trained on: :func:`held_out_images` returns them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Optional

import numpy as np

from tokenization.heldout_rows import is_held_out
from tokenization.image_shards import decode, iter_raw


class NoImages(RuntimeError):
    """A whole pass over the shards gave no image to train on."""


def held_out_images(shards: list[str], size: Optional[int], fraction: float, limit: int) -> np.ndarray:
    """Up to ``limit`` held-out images (uint8 [N, size, size, 3]), read from the shards in order."""
    out = []
    for sid, data, _ in iter_raw(shards):
        if len(out) >= limit:
            break
        if is_held_out(sid, fraction):
            img = decode(data, size)
            if img is not None:
                out.append(img)
    return np.stack(out) if out else np.zeros((0, size or 0, size or 0, 3), np.uint8)


class ImageStream:
    """Batches of uint8 [B, size, size, 3] training images from ``shards`` (see the module docstring)."""

    def __init__(
        self,
        shards: list[str],
        size: Optional[int],
        seed: int = 0,
        holdout_fraction: float = 0.0,
        buffer: int = 1000,
        position: int = 0,
    ):
        if not shards:
            raise NoImages("no image shards to train the tokenizer on")
        self.shards, self.size, self.seed = list(shards), size, seed
        self.fraction, self.buffer = holdout_fraction, max(1, buffer)
        self.start = self.position = position

    def _raw(self, skip: int = 0) -> Iterator[bytes]:
        """The endless raw stream after its first ``skip`` items: those are read but not yielded, and the whole
        epochs among them after the first (each of its length; epoch e's order depends on (seed, e) alone) are
        not read at all: a resume reads at most two epochs of the shards however far it is."""
        epoch = 0
        while True:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.shards))
            buf: list[bytes] = []
            seen = 0
            for sid, data, _ in iter_raw(self.shards[i] for i in order):
                if self.fraction and is_held_out(sid, self.fraction):
                    continue
                seen += 1
                if len(buf) < self.buffer:
                    buf.append(data)
                    continue
                j = int(rng.integers(len(buf)))
                if skip:
                    skip -= 1
                else:
                    yield buf[j]
                buf[j] = data
            if not seen:
                raise NoImages(f"the {len(self.shards)} image shards hold no image outside the held-out ones")
            for i in rng.permutation(len(buf)):
                if skip:
                    skip -= 1
                else:
                    yield buf[i]
            epoch += 1
            epoch, skip = epoch + skip // seen, skip % seen

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        raw = self._raw(self.start)
        bad = 0
        while True:
            batch = []
            while len(batch) < batch_size:
                img = decode(next(raw), self.size)
                self.position += 1
                bad = 0 if img is not None else bad + 1
                if bad > 1000:
                    raise NoImages("more than 1000 images in a row do not decode; check the download stage's shards")
                if img is not None:
                    batch.append(img)
            yield np.stack(batch)
