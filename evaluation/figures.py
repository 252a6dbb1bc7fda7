"""Figures for the report: a grid of samples, and the coarse-to-fine progression of one sample as a
strip PNG and an animated GIF (PIL only). Files are written to a temporary name, then renamed."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from evaluation.images import ImageSet, load_rgb


def _save(image: Image.Image, path: str | Path, fmt: str, **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    image.save(tmp, format=fmt, **kwargs)
    os.replace(tmp, path)
    return path


def _frames(images) -> list[np.ndarray]:
    imgs = ImageSet(images)  # one size, readable
    return [load_rgb(x) for x in imgs.items]


def save_grid(images, path: str | Path, cols: int | None = None, pad: int = 2, background: int = 255) -> Path:
    """All images in a ``cols``-wide grid (default: about square) with ``pad`` pixels between them."""
    frames = _frames(images)
    n, (h, w) = len(frames), frames[0].shape[:2]
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.full((rows * h + (rows + 1) * pad, cols * w + (cols + 1) * pad, 3), background, np.uint8)
    for i, f in enumerate(frames):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        canvas[y : y + h, x : x + w] = f
    return _save(Image.fromarray(canvas), path, "PNG")


def pick_steps(n: int, max_frames: int) -> list[int]:
    """At most ``max_frames`` evenly spaced step indices, always the first and the last."""
    if n <= max_frames:
        return list(range(n))
    return sorted({round(i * (n - 1) / (max_frames - 1)) for i in range(max_frames)})


def save_progression(
    steps: Sequence,
    png_path: str | Path,
    gif_path: str | Path | None = None,
    max_columns: int = 16,
    frame_ms: int = 120,
    final_ms: int = 1500,
    pad: int = 2,
) -> dict:
    """A per-step image list (coarse to fine) -> a one-row strip PNG and, optionally, an animated GIF.

    The strip shows at most ``max_columns`` evenly spaced steps (first and last included); the GIF
    shows every step for ``frame_ms`` and holds the final image for ``final_ms``.
    """
    frames = _frames(steps)
    cols = [frames[i] for i in pick_steps(len(frames), max_columns)]
    out = {"png": save_grid(cols, png_path, cols=len(cols), pad=pad)}
    if gif_path is not None:
        pil = [Image.fromarray(f) for f in frames]
        durations = [frame_ms] * (len(pil) - 1) + [final_ms]
        out["gif"] = _save(pil[0], gif_path, "GIF", save_all=True, append_images=pil[1:], duration=durations, loop=0)
    return out
