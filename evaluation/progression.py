"""The coarse-to-fine figures of the evaluate stage: per-step token maps decoded to images.

The maps of sample 0 come from the sample stage's ``steps/chunk_00000.npz`` when saved; without them the
progressive chunk 0 is re-sampled in memory with its own seed (the same tokens, since a chunk depends only
on (sample.seed, chunk)); for the autoregressive sampler they are the raster prefixes of the final tokens
(at most ``MAX_GIF_FRAMES`` of the L steps). Positions not written yet are painted black (``MASK_FILL``;
grey is the synthetic background).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

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


def progression_maps(job, device: str = "cpu") -> tuple[np.ndarray, str]:
    """Token maps [T, L] of the first sample of a sample folder (its ``SampleJob``), and where they came from."""
    from evaluation.sample_files import steps_path
    from evaluation.sample_worker import ChunkWorker

    sample_dir = Path(job.out_dir)
    path = steps_path(sample_dir, 0)
    if path.is_file():
        with np.load(path) as data:
            return data["tokens"][0], f"saved step maps {path}"
    if job.sample_cfg["sampler"] == "autoregressive":
        final = np.load(sample_dir / "tokens.npy")[0].astype(np.int64)
        L = final.shape[0]
        keep = sorted({round(i * (L - 1) / (MAX_GIF_FRAMES - 1)) for i in range(min(L, MAX_GIF_FRAMES))})
        pos = np.arange(L)
        return np.stack(
            [np.where(pos <= i, final, 2**30) for i in keep]
        ), f"autoregressive prefixes of sample 0 ({len(keep)} of {L} steps)"
    worker = ChunkWorker(job, device=device)
    res, _ = worker.sample(0, record_steps=True)
    return np.stack([s[0].cpu().numpy() for s in res.steps]), "chunk 0 re-sampled with its seed (no saved step maps)"


def make_figures(out: Path, job, images: list[Path], prompts: list[str], vq, device: str, grid_images: int) -> dict:
    """``samples_grid.png`` (the first ``grid_images`` samples), ``progression.png`` / ``.gif`` of sample 0 of
    the sample folder of ``job`` (its ``SampleJob``)."""
    from evaluation.figures import save_grid, save_progression

    figs = {"grid": str(save_grid(images[:grid_images], out / "samples_grid.png"))}
    maps, source = progression_maps(job, device)
    frames = decode_maps(vq, maps, device)
    paths = save_progression(frames, out / "progression.png", out / "progression.gif")
    figs.update(
        {
            "progression_png": str(paths["png"]),
            "progression_gif": str(paths["gif"]),
            "progression_source": source,
            "progression_steps": len(frames),
            "progression_prompt": prompts[0],
        }
    )
    return figs
