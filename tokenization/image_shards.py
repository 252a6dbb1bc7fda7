"""Reading the download stage's image shards (img2dataset's webdataset output: ``key.jpg``, ``key.txt``, ...).

The download manifest names a split ``train``/``eval`` for one source and ``train/<source>``/``eval/<source>``
for several (``tokenization.download_sources``); :func:`split_shards` takes both. A sample is identified by
:func:`sample_id` (its shard's source folder, shard name and key), which stays the same when the run
directory moves.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Optional

import numpy as np

from tokenization.shard_encoder import IMAGE_EXTS, decode_image, iter_image_samples


def split_names(manifest: dict, split: str) -> list[str]:
    """The manifest's split names of ``split``: ``split`` itself and every ``split/<source>``, sorted."""
    return sorted(n for n in manifest.get("splits", {}) if n == split or n.startswith(f"{split}/"))


def split_shards(manifest: dict, split: str) -> list[str]:
    """URLs of the image shards of ``split`` (all its sources) holding at least one image, in order."""
    out = []
    for name in split_names(manifest, split):
        info = manifest["splits"][name]
        out += [f"{info['folder'].rstrip('/')}/{s['name']}" for s in info["shards"] if s.get("success", 1) > 0]
    return out


def sample_id(url: str, key: str) -> str:
    """``<source>/<split>/<shard>#<key>``: unique across the sources of a run (each source's keys start at 0,
    in ``sources/<name>/<split>/``), independent of where the run directory lives."""
    return "/".join(url.rstrip("/").split("/")[-3:]) + "#" + key


def image_bytes(group: dict) -> Optional[bytes]:
    return next((group[s] for s in IMAGE_EXTS if s in group), None)


def iter_raw(shards: Iterable[str]) -> Iterator[tuple[str, bytes, str]]:
    """(sample id, image bytes, caption) of every sample with an image, shard by shard."""
    for url in shards:
        for key, group in iter_image_samples(url):
            data = image_bytes(group)
            if data is not None:
                yield sample_id(url, key), data, group.get("txt", b"").decode("utf-8", "replace").strip()


def decode(data: bytes, size: Optional[int]) -> Optional[np.ndarray]:
    """uint8 [size, size, 3] (center crop and resize when needed), or None when the bytes do not decode."""
    try:
        return decode_image(data, size)[0]
    except Exception:  # noqa: BLE001  (a corrupt image is skipped, as the tokenize stage does)
        return None


def read_captions(shards: Iterable[str], limit: Optional[int] = None) -> list[str]:
    """The non-empty captions of the shards' samples, in order (at most ``limit``)."""
    out = []
    for _, _, caption in iter_raw(shards):
        if caption:
            out.append(caption)
            if limit is not None and len(out) >= limit:
                break
    return out


def read_images(shards: Iterable[str], size: Optional[int], limit: Optional[int] = None) -> Iterator[tuple]:
    """(sample id, uint8 image, caption) of the samples whose image decodes, in order (at most ``limit``)."""
    n = 0
    for sid, data, caption in iter_raw(shards):
        if limit is not None and n >= limit:
            return
        img = decode(data, size)
        if img is not None:
            n += 1
            yield sid, img, caption
