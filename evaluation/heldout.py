"""Evaluation on the held-out split of the user's own data (the download stage's ``eval`` split, every
source: ``data.download.eval_split`` of the url lists' rows, or their ``eval_url_list``), used exactly as the
synthetic eval split is: its captions are the evaluation prompts, its images the FID reference set and
the prompts' ground truth (the "Ground Truth (upper bound)" row and the retrieval baseline's queries).

With ``eval.coco_captions`` set, MS COCO is used instead (the paper's protocol).
"""

from __future__ import annotations

from pathlib import Path

from core.files import atomic_path
from tokenization.image_shards import read_images, split_shards


def uses_heldout(cfg) -> bool:
    """Whether the evaluation prompts come from the downloaded eval split with this experiment config."""
    return cfg.data.download.source != "synthetic" and not cfg.eval.coco_captions


def _samples(download_manifest: dict, size, limit: int):
    """(sample id, image, caption) of the first ``limit`` held-out samples with a caption and a readable image."""
    shards = split_shards(download_manifest, "eval")
    if not shards:
        raise ValueError(
            "the download stage has no eval split to take the evaluation prompts from: set "
            "data.download.eval_split (e.g. 0.01) or an eval_url_list, or eval.coco_captions for MS COCO"
        )
    n = 0
    for sample in read_images(shards, size):
        if n >= limit:
            return
        if sample[2]:
            n += 1
            yield sample


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
        with atomic_path(path) as tmp:
            Image.fromarray(img).save(tmp, format="PNG")
        out[sid] = path
    return out
