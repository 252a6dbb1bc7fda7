"""The retrieval baseline inside the evaluate stage (PDM Tables 1-2, first row).

For each prompt, the training image with the highest CLIP cosine similarity (``evaluation.retrieval``:
a FAISS inner-product index over the training images' CLIP embeddings). The retrieved images are then
scored by the same metrics as the generated ones. ``eval.retrieval_images`` picks the training images
(:func:`resolve_source`):

  download   the download stage's ``train`` shards, every source (img2dataset's output), embedded by a Ray
             batch job, resumable per shard (``evaluation.retrieval_shards``); the retrieved images are
             written to ``OUT/images/NNNNNNNN.png`` at the generated images' size;
  synthetic  the synthetic ``train/`` split's image files, embedded in this process;
  auto       download when that stage listed train shards, else synthetic;
  other      webdataset shards given by the user: a folder of ``.tar`` files or a brace pattern.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from evaluation.images import batched


@dataclass
class Source:
    """The training images: ``files`` (image paths) or ``shards`` (webdataset URLs)."""

    kind: Literal["files", "shards"]
    items: list
    name: str


def synthetic_train_images(synthetic_dir: Path) -> list[Path]:
    """The synthetic train split's image files in url order (they must all exist)."""
    import pandas as pd

    split = Path(synthetic_dir) / "train"
    if not (split / "urls.parquet").is_file():
        raise FileNotFoundError(f"retrieval baseline: no synthetic train split at {split} (urls.parquet)")
    urls = pd.read_parquet(split / "urls.parquet", columns=["URL"])["URL"]
    paths = [split / "images" / str(u).rsplit("/", 1)[-1] for u in urls]
    missing = [p for p in paths if not p.is_file()]
    if not paths or missing:
        raise FileNotFoundError(
            f"retrieval baseline: {len(missing)} of {len(paths)} train images missing under "
            f"{split / 'images'}" + (f", e.g. {missing[0].name}" if missing else "")
        )
    return paths


def download_train_shards(manifest: dict) -> list[str]:
    """The ``train`` shards the download stage's manifest lists, every source (those with at least one image)."""
    from tokenization.image_shards import split_shards

    return split_shards(manifest, "train")


def resolve_source(ctx, synthetic: bool) -> Source:
    """``eval.retrieval_images`` -> the training images (cheap: lists files, reads no pixels)."""
    from core.stage import StageError
    from evaluation.retrieval_shards import list_shards

    spec = ctx.config.eval.retrieval_images
    if spec in ("auto", "download"):
        shards = download_train_shards(ctx.input_manifest("download"))
        if shards:
            return Source("shards", shards, f"download stage, train split ({len(shards)} shards)")
        if spec == "download" or not synthetic:
            raise StageError(
                "retrieval baseline: the download stage's manifest lists no train shards; rerun "
                "`pt2i run CONFIG --stage download`, or point eval.retrieval_images at the shards"
            )
    if spec in ("auto", "synthetic"):
        return Source("files", synthetic_train_images(ctx.input_dir("synthetic")), "synthetic train split")
    return Source("shards", list_shards(spec), spec)


def retrieve(
    ev,
    train_images: Sequence[Path],
    prompts: Sequence[str],
    out_dir: Path,
    device: str,
    log: Callable[[str], None] = print,
) -> dict:
    """Index ``train_images`` (files) with CLIP (eval.clip_model / clip_checkpoint) in this process, retrieve
    one per prompt. Returns ``RetrievalBaseline.retrieve``'s dict (``items`` = the retrieved image paths);
    the index is saved under ``out_dir``."""
    from evaluation.clip_model import ClipEncoder
    from evaluation.images import load_rgb
    from evaluation.retrieval import RetrievalBaseline, embed_image_batches

    encoder = ClipEncoder(ev.clip_model, ev.clip_checkpoint, device, ev.clip_batch_size)
    log(f"[evaluate] retrieval baseline: embedding {len(train_images)} training images")
    emb = embed_image_batches(encoder, ([load_rgb(p) for p in b] for b in batched(train_images, ev.clip_batch_size)))
    base = RetrievalBaseline.from_config(ev, emb, [str(p) for p in train_images], device, log=log)
    base.save(out_dir)
    return base.retrieve(list(prompts))


def retrieve_shards(
    ev,
    shards: list[str],
    prompts: Sequence[str],
    out_dir: Path,
    device: str,
    size: tuple[int, int],
    address: Optional[str] = None,
    log: Callable[[str], None] = print,
    start_timeout_s: Optional[float] = None,
) -> dict:
    """Embed ``shards`` on Ray workers (cached per shard under ``out_dir/embeddings/<CLIP protocol hash>``),
    index them, retrieve one image per prompt and write it to ``out_dir/images``. Returns
    ``RetrievalBaseline.retrieve``'s dict with ``items`` = the written images, ``sources`` = the retrieved
    ``shard#key`` and ``embedding`` = what the batch job did (shards embedded / reused, corrupt images)."""
    from evaluation.clip_model import ClipEncoder
    from evaluation.retrieval import RetrievalBaseline
    from evaluation.retrieval_shards import ShardItems, embed_shards, fetch_images, shard_chunks, worker_pool

    encoder = ClipEncoder(ev.clip_model, ev.clip_checkpoint, device, ev.clip_batch_size)
    key = hashlib.sha256(json.dumps(encoder.protocol, sort_keys=True).encode()).hexdigest()[:12]
    pool = worker_pool(encoder, ev.retrieval_workers, address, ev.retrieval_shard_timeout_s, start_timeout_s, log)
    with pool as run:
        job = embed_shards(run, shards, out_dir / "embeddings" / key, log)
        items = ShardItems.from_files(shards, job["files"])
        log(f"[evaluate] retrieval baseline: indexing {len(items)} training images")
        base = RetrievalBaseline.from_config(ev, shard_chunks(items), items, device, log=log)
        base.save(out_dir)
        res = base.retrieve(list(prompts))
        paths = fetch_images(run, items, res["indices"], out_dir / "images", size)
    job = {k: v for k, v in job.items() if k != "files"}
    return {**res, "sources": res["items"], "items": paths, "embedding": {**job, "shards": len(shards)}}


def run_retrieval(
    ev,
    source: Source,
    prompts: Sequence[str],
    out_dir: Path,
    device: str,
    size: tuple[int, int],
    address: Optional[str] = None,
    log: Callable[[str], None] = print,
    start_timeout_s: Optional[float] = None,
) -> dict:
    """The baseline over ``source``; ``items`` are image files to score like generated samples."""
    if source.kind == "shards":
        res = retrieve_shards(ev, source.items, prompts, out_dir, device, size, address, log, start_timeout_s)
    else:
        res = retrieve(ev, source.items, prompts, out_dir, device, log)
        res["sources"] = [str(p) for p in res["items"]]
    res["protocol"] = {**res["protocol"], "train_set": source.name}
    return res
