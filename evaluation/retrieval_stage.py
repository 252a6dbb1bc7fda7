"""The retrieval baseline inside the evaluate stage (PDM Tables 1-2, first row).

For each prompt, the training image with the highest CLIP cosine similarity (``evaluation.retrieval``:
a FAISS inner-product index over the training images' CLIP embeddings). The retrieved images are then
scored by the same metrics as the generated ones. Training images: the synthetic ``train/`` split (the
url-list sources keep their training images inside download shards, which the evaluate stage does not
read: not supported yet, reported as a note).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from evaluation.images import batched


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
        raise FileNotFoundError(f"retrieval baseline: {len(missing)} of {len(paths)} train images missing under "
                                f"{split / 'images'}" + (f", e.g. {missing[0].name}" if missing else ""))
    return paths


def retrieve(ev, train_images: Sequence[Path], prompts: Sequence[str], out_dir: Path, device: str,
             log: Callable[[str], None] = print) -> dict:
    """Index ``train_images`` with CLIP (eval.clip_model / clip_checkpoint), retrieve one per prompt.
    Returns ``RetrievalBaseline.retrieve``'s dict (``items`` = the retrieved image paths); the index is
    saved under ``out_dir``."""
    from evaluation.clip_model import ClipEncoder
    from evaluation.images import load_rgb
    from evaluation.retrieval import RetrievalBaseline, embed_image_batches

    encoder = ClipEncoder(ev.clip_model, ev.clip_checkpoint, device, ev.clip_batch_size)
    log(f"[evaluate] retrieval baseline: embedding {len(train_images)} training images")
    emb = embed_image_batches(encoder, ([load_rgb(p) for p in b] for b in batched(train_images, ev.clip_batch_size)))
    base = RetrievalBaseline.from_config(ev, emb, [str(p) for p in train_images], device)
    base.save(out_dir)
    return base.retrieve(list(prompts))
