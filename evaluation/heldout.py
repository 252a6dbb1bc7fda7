"""Evaluation on the held-out split of the user's own data (the download stage's ``eval`` split, every
source: ``data.download.eval_split`` of the url lists' rows, or their ``eval_url_list``), used exactly as the
synthetic eval split is: its captions are the evaluation prompts, its images the FID reference set and
the prompts' ground truth (the "Ground Truth (upper bound)" row and the retrieval baseline's queries).

The synthetic source's eval split is downloaded like any other and goes the same way (the demo runs this
code); only a run whose download stage lists no eval shards reads the synthetic files themselves. With
``eval.coco_captions`` set, a url-list source is evaluated on MS COCO instead (the paper's protocol).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Optional

from core.files import atomic_path
from tokenization.image_shards import decode, iter_raw, split_shards


def uses_heldout(cfg) -> bool:
    """Whether the evaluation prompts of a url-list source come from the downloaded eval split (else MS COCO)."""
    return cfg.data.download.source != "synthetic" and not cfg.eval.coco_captions


def reads_download(cfg) -> bool:
    """Whether the sample stage reads the download stage's manifest: for the held-out split of a url-list
    source, and for the synthetic eval split as it was downloaded (used when the manifest lists it)."""
    return cfg.data.download.source == "synthetic" or uses_heldout(cfg)


def has_heldout(download_manifest: Optional[dict]) -> bool:
    return bool(download_manifest) and bool(split_shards(download_manifest, "eval"))


def _samples(download_manifest: dict, size, limit: int):
    """(sample id, image, caption) of the first ``limit`` held-out samples with a caption and a readable image,
    in the order of their shards and, within a shard, of their keys (``iter_raw`` reads each shard sorted by
    key: img2dataset writes a shard's samples in the order their downloads finish)."""
    shards = split_shards(download_manifest, "eval")
    if not shards:
        raise ValueError(
            "the download stage has no eval split to take the evaluation prompts from: set "
            "data.download.eval_split (e.g. 0.01) or an eval_url_list, or eval.coco_captions for MS COCO"
        )
    readable = ((sid, decode(data, size), caption) for sid, data, caption in iter_raw(shards) if caption)
    yield from itertools.islice(((sid, img, c) for sid, img, c in readable if img is not None), limit)


def heldout_prompts(download_manifest: dict, n: int) -> tuple[list[dict], str]:
    """(prompt records, a description): the first ``n`` held-out samples with a caption and a readable image,
    in shard order; each record names its sample (``heldout``) for the evaluate stage."""
    recs = [
        {"index": i, "prompt": caption, "refs": [caption], "heldout": sid}
        for i, (sid, _, caption) in enumerate(_samples(download_manifest, None, n))
    ]
    return recs, f"the held-out eval split of the downloaded data (first {len(recs)} captions)"


def heldout_images(download_manifest: dict, folder: Path, side: int, limit: int) -> dict[str, Path]:
    """The images of the first ``limit`` held-out samples with a caption (the prompts' ground truth and, as for
    COCO, the FID reference set), center-cropped and resized to ``side`` (the generated images'), written to
    ``folder/NNNNNNNN.png`` (emptied first); sample id -> path, in shard order."""
    import shutil

    from PIL import Image

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    out = {}
    for sid, img, _ in _samples(download_manifest, side, limit):
        path = folder / f"{len(out):08d}.png"
        with atomic_path(path, fsync=False) as tmp:  # rewritten whole on every run: not fsynced one by one
            Image.fromarray(img).save(tmp, format="PNG")
        out[sid] = path
    return out
