"""The figures of the evaluate stage: the captioned sample grid, the loss curve, and the coarse-to-fine
progression (per-step token maps decoded to images) of the first few samples.

The maps come from the sample stage's ``steps/chunk_00000.npz`` when saved; without them the
progressive chunk 0 is re-sampled in memory with its own seed (the same tokens, since a chunk depends only
on (sample.seed, chunk)); for the autoregressive sampler they are the raster prefixes of the final tokens
(at most ``MAX_GIF_FRAMES`` of the L steps). Positions not written yet are painted black (``MASK_FILL``;
grey is the synthetic background).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from training.metrics_log import read_metrics

MASK_FILL = 0
MAX_GIF_FRAMES = 64


def decode_maps(vq, maps: np.ndarray, device: str, batch: int = 16) -> list[np.ndarray]:
    """Token maps [T, L] (ids >= codebook size = not written yet) -> T uint8 images, unwritten patches black."""
    import torch

    from evaluation.sample_files import to_uint8

    ids = torch.from_numpy(np.asarray(maps, np.int64))
    masked = ids >= vq.codebook_size
    ids = ids.masked_fill(masked, 0)
    with torch.no_grad():
        imgs = np.concatenate([to_uint8(vq.decode(ids[i : i + batch].to(device))) for i in range(0, len(ids), batch)])
    (h, w), (H, W) = vq.grid_size, imgs.shape[1:3]
    pix = masked.view(-1, h, w).repeat_interleave(H // h, 1).repeat_interleave(W // w, 2).numpy()
    imgs[pix] = MASK_FILL
    return list(imgs)


def progression_maps(job, device: str = "cpu", count: Optional[int] = None) -> tuple[np.ndarray, str]:
    """Token maps [T, L] of the first sample of a sample folder (its ``SampleJob``), or [k, T, L] of its first
    ``count`` samples (k <= count: those of chunk 0), and where they came from."""
    from evaluation.sample_files import steps_path
    from evaluation.sample_worker import ChunkWorker

    k = count or 1
    sample_dir = Path(job.out_dir)
    path = steps_path(sample_dir, 0)
    if path.is_file():
        with np.load(path) as data:
            maps, source = data["tokens"][:k], f"saved step maps {path}"
    elif job.sample_cfg["sampler"] == "autoregressive":
        final = np.load(sample_dir / "tokens.npy")[:k].astype(np.int64)
        L = final.shape[1]
        keep = sorted({round(i * (L - 1) / (MAX_GIF_FRAMES - 1)) for i in range(min(L, MAX_GIF_FRAMES))})
        pos = np.arange(L)
        maps = np.stack([np.where(pos <= i, final, 2**30) for i in keep], 1)
        source = f"autoregressive prefixes of the samples ({len(keep)} of {L} steps)"
    else:
        worker = ChunkWorker(job, device=device)
        res, _ = worker.sample(0, record_steps=True)
        maps = np.stack([s[:k].cpu().numpy() for s in res.steps], 1)
        source = "chunk 0 re-sampled with its seed (no saved step maps)"
    return (maps if count else maps[0]), source


def make_figures(
    out: Path,
    job,
    images: list[Path],
    prompts: list[str],
    vq,
    device: str,
    grid_images: int,
    metrics: Optional[Path] = None,
    progression_prompts: int = 4,
) -> dict:
    """``samples_grid.png`` (the first ``grid_images`` samples, each under its prompt), ``progression.png`` /
    ``.gif`` of the first ``progression_prompts`` samples of the sample folder of ``job`` (its ``SampleJob``),
    and ``loss_curve.png`` from the training's ``metrics`` (``metrics.jsonl``) when it has records."""
    from evaluation.figures import LOSS_CURVE_KEYS, save_captioned_grid, save_loss_curve, save_progression_rows

    figs = {"grid": str(save_captioned_grid(images[:grid_images], prompts[:grid_images], out / "samples_grid.png"))}
    maps, source = progression_maps(job, device, count=progression_prompts)
    rows = [decode_maps(vq, m, device) for m in maps]
    paths = save_progression_rows(rows, prompts[: len(rows)], out / "progression.png", out / "progression.gif")
    figs.update(
        {
            "progression_png": str(paths["png"]),
            "progression_gif": str(paths["gif"]),
            "progression_source": source,
            "progression_steps": len(rows[0]),
            "progression_prompts": prompts[: len(rows)],
        }
    )
    records = list(read_metrics(metrics, LOSS_CURVE_KEYS).values()) if metrics is not None else []
    if records:
        figs["loss_curve"] = str(save_loss_curve(records, out / "loss_curve.png"))
    return figs
