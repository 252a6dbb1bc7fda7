"""The sample stage's files (``RUN/sample/``), as the evaluate stage and the human evaluation read them::

prompts.jsonl             {"index", "prompt", "refs", and "image" (synthetic: the real image, relative to the
                          synthetic stage folder) or "image_id"/"file_name" (COCO)}
job.json                  what the samples depend on; when it changes, old chunks are removed
images/NNNNNNNN.png       one per prompt (prompt index)
steps/chunk_NNNNN.npz     per-step maps (eval.save_step_maps): tokens int16 [B, T, L] (mask id = K where
                          not yet written), states int8 [B, T, L] (0 keep, 1 generate, 2 revise), index [B]
tokens/chunk_NNNNN.npy    the chunk's final tokens, renamed into place LAST: the chunk's completion mark
tokens.npy                all final tokens [N, L] (int16 when K <= 32767), assembled at the end
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from core.stage import StageError

PROMPTS, JOB = "prompts.jsonl", "job.json"


def read_prompts(folder: str | Path) -> list[dict]:
    """The records of ``prompts.jsonl`` in a sample folder."""
    path = Path(folder) / PROMPTS
    if not path.is_file():
        raise StageError(f"{path} is missing: rerun the sample stage")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def image_path(out_dir: str | Path, index: int) -> Path:
    return Path(out_dir) / "images" / f"{index:08d}.png"


def tokens_path(out_dir: str | Path, chunk: int) -> Path:
    return Path(out_dir) / "tokens" / f"chunk_{chunk:05d}.npy"


def steps_path(out_dir: str | Path, chunk: int) -> Path:
    return Path(out_dir) / "steps" / f"chunk_{chunk:05d}.npz"


def to_uint8(images) -> np.ndarray:
    """VQ-GAN output [B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3]."""
    import torch

    x = ((images.float().clamp(-1, 1) + 1.0) * 127.5).round().clamp(0, 255)
    return x.to("cpu", dtype=torch.uint8).permute(0, 2, 3, 1).numpy()
