"""Test data in the download stage's layout: webdataset image shards as img2dataset writes them
(``KEY.jpg``/``.png``, ``KEY.txt``, ``KEY.json``) and a download manifest listing them."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def write_image_shard(path: Path, images, captions, fmt: str = "PNG", first_key: int = 0, order=None) -> Path:
    """One image shard of ``images`` (uint8 [N, H, W, 3]) with their ``captions``; keys are 9 digits, written in
    ``order`` (indices; default in key order: img2dataset writes them in the order their downloads finish)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i in order if order is not None else range(len(images)):
            img, cap, key = images[i], captions[i], f"{first_key + i:09d}"
            buf = io.BytesIO()
            Image.fromarray(np.asarray(img, np.uint8)).save(buf, format=fmt)
            ext = "jpg" if fmt == "JPEG" else fmt.lower()
            for name, data in (
                (f"{key}.{ext}", buf.getvalue()),
                (f"{key}.txt", cap.encode()),
                (f"{key}.json", json.dumps({"key": key, "caption": cap}).encode()),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def write_split(folder: Path, images, captions, per_shard: int, shuffle: bool = False) -> dict:
    """Shards ``folder/NNNNN.tar`` of ``per_shard`` samples (``shuffle``: each in reverse key order); the
    split's entry of a download manifest."""
    shards = []
    for s, start in enumerate(range(0, len(images), per_shard)):
        end = start + per_shard
        n = len(images[start:end])
        order = list(range(n))[::-1] if shuffle else None
        write_image_shard(folder / f"{s:05d}.tar", images[start:end], captions[start:end], first_key=start, order=order)
        shards.append({"name": f"{s:05d}.tar", "count": n, "success": n})
    return {"folder": str(folder), "shards": shards}


def write_download(run: Path, splits: dict[str, tuple], per_shard: int = 10, shuffle: bool = False) -> dict:
    """The download stage's shards of {split: (images, captions)} and its ``manifest.json``, where the stage
    writes them: ``run/download/<split>/``, or ``run/download/sources/<source>/<split>/`` for ``<split>/<source>``
    (every source's keys start at 0)."""

    def folder(name: str) -> Path:
        split, _, source = name.partition("/")
        return run / "download" / ("sources/" + source + "/" + split if source else split)

    manifest = {"splits": {name: write_split(folder(name), *data, per_shard, shuffle) for name, data in splits.items()}}
    (run / "download").mkdir(parents=True, exist_ok=True)
    (run / "download" / "manifest.json").write_text(json.dumps(manifest))
    return manifest
