"""MS COCO evaluation prompts from ``captions_val2014.json``.

Layout expected (the official captions file)::

    {"images": [{"id": int, "file_name": str, ...}, ...],
     "annotations": [{"image_id": int, "id": int, "caption": str}, ...], ...}

:func:`sample_prompts` picks ``n`` captioned images with a seeded permutation (so the first ``k`` of a
larger draw are the ``k`` of a smaller one), one random caption per image as the prompt (seeded per
image: independent of ``n``), and keeps all the image's captions as references (5 for most images,
a few have 6 or 7). Captions are reduced to single-spaced one-liners.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class CocoLayoutError(ValueError):
    """The JSON file is not in the captions_val2014.json layout."""


@dataclass(frozen=True)
class CocoPrompt:
    image_id: int
    file_name: str
    prompt: str
    refs: tuple[str, ...]


def _fail(path, msg: str):
    raise CocoLayoutError(
        f"{path}: {msg} (expected the captions_val2014.json layout: "
        f'{{"images": [{{"id", "file_name"}}], "annotations": [{{"image_id", "caption"}}]}})'
    )


def load_captions(path: str | Path) -> dict[int, tuple[str, list[str]]]:
    """``image_id -> (file_name, captions)`` for every image with at least one caption."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO captions file not found: {path} (eval.coco_captions)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        _fail(path, f"not valid JSON ({exc})")
    if not isinstance(data, dict):
        _fail(path, f"top level is a {type(data).__name__}, not an object")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            _fail(path, f"missing the list {key!r}")
    files = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not isinstance(im.get("id"), int) or not isinstance(im.get("file_name"), str):
            _fail(path, f"images[{i}] needs an integer 'id' and a string 'file_name'")
        files[im["id"]] = im["file_name"]
    caps: dict[int, list[str]] = {}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "caption" not in ann:
            kind = (
                " (this looks like an instances/keypoints file)"
                if isinstance(ann, dict) and ("bbox" in ann or "segmentation" in ann)
                else ""
            )
            _fail(path, f"annotations[{i}] has no 'caption'{kind}")
        if not isinstance(ann.get("image_id"), int) or not isinstance(ann["caption"], str):
            _fail(path, f"annotations[{i}] needs an integer 'image_id' and a string 'caption'")
        if ann["image_id"] not in files:
            _fail(path, f"annotations[{i}] refers to image_id {ann['image_id']}, which is not in 'images'")
        text = " ".join(ann["caption"].split())
        if text:
            caps.setdefault(ann["image_id"], []).append(text)
    if not caps:
        _fail(path, "no captions")
    return {k: (files[k], v) for k, v in sorted(caps.items())}


def sample_prompts(path: str | Path, n: int, seed: int = 0) -> list[CocoPrompt]:
    """``n`` prompts from distinct images, reproducible from ``seed``."""
    if n < 1:
        raise ValueError(f"num_prompts must be >= 1, got {n}: the prompt set would be empty")
    captions = load_captions(path)
    if n > len(captions):
        raise ValueError(f"asked for {n} prompts but {path} has only {len(captions)} captioned images")
    ids = list(captions)
    chosen = np.random.default_rng(seed).permutation(len(ids))[:n]
    out = []
    for j in chosen:
        image_id = ids[j]
        file_name, caps = captions[image_id]
        pick = int(np.random.default_rng([seed, image_id]).integers(len(caps)))
        out.append(CocoPrompt(image_id, file_name, caps[pick], tuple(caps)))
    return out


def image_paths(prompts: list[CocoPrompt], images_dir: str | Path) -> list[Path]:
    """The real images of ``prompts`` (FID reference set); all must exist."""
    folder = Path(images_dir)
    paths = [folder / p.file_name for p in prompts]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} COCO images missing under {folder} "
            f"(eval.coco_images), e.g. {missing[0].name}"
        )
    return paths
