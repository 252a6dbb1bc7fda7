"""Figures for the report: a grid of samples, and the coarse-to-fine progression of one sample as a
strip PNG and an animated GIF (PIL); the report's readable versions (every image at least 128 px, each
under its prompt; the progression of several prompts) and the training loss curve (matplotlib). Files
are written through ``core.files.atomic_path``."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from core.files import atomic_path
from evaluation.images import ImageSet, load_rgb


def _save(image: Image.Image, path: str | Path, fmt: str, **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt, **kwargs)
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


# ----------------------------------------------------------------------------- readable figures (report)

MIN_SIDE = 128  # every image of the report's figures is shown at least this large


def upscale(frame: np.ndarray, min_side: int = MIN_SIDE) -> np.ndarray:
    """Nearest-neighbour enlargement by a whole factor so that the shorter side is at least ``min_side``."""
    k = max(1, math.ceil(min_side / min(frame.shape[:2])))
    return frame.repeat(k, 0).repeat(k, 1) if k > 1 else frame


def _font(size: int = 12):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(text: str, width: int, font, max_lines: int) -> list[str]:
    """``text`` in lines that fit ``width`` pixels (at most ``max_lines``; the last ends with '...' if cut)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        while lines[-1] and font.getlength(lines[-1] + "...") > width:
            lines[-1] = lines[-1][:-1]
        lines[-1] += "..."
    return lines


def _captioned(frame: np.ndarray, text: str, width: int, font, max_lines: int, line_h: int) -> Image.Image:
    """An image with ``text`` under it, on white, ``width`` pixels wide."""
    from PIL import ImageDraw

    h = frame.shape[0]
    cell = Image.new("RGB", (width, h + 4 + max_lines * line_h), (255, 255, 255))
    cell.paste(Image.fromarray(frame), ((width - frame.shape[1]) // 2, 0))
    draw = ImageDraw.Draw(cell)
    for i, line in enumerate(_wrap(text, width, font, max_lines)):
        draw.text((0, h + 4 + i * line_h), line, fill=(0, 0, 0), font=font)
    return cell


def _tile(cells: list[Image.Image], cols: int, pad: int) -> Image.Image:
    w, h = cells[0].size
    rows = math.ceil(len(cells) / cols)
    canvas = Image.new("RGB", (cols * w + (cols + 1) * pad, rows * h + (rows + 1) * pad), (255, 255, 255))
    for i, c in enumerate(cells):
        r, col = divmod(i, cols)
        canvas.paste(c, (pad + col * (w + pad), pad + r * (h + pad)))
    return canvas


def save_captioned_grid(
    images, captions: Sequence[str], path: str | Path, cols: int | None = None, min_side: int = MIN_SIDE, pad: int = 8
) -> Path:
    """The images (at least ``min_side`` px, enlarged without smoothing) in a grid, each with its prompt under it."""
    frames = [upscale(f, min_side) for f in _frames(images)]
    font, line_h = _font(), 14
    cells = [_captioned(f, str(t), max(f.shape[1], 160), font, 3, line_h) for f, t in zip(frames, captions)]
    return _save(_tile(cells, cols or math.ceil(math.sqrt(len(cells))), pad), path, "PNG")


def save_progression_rows(
    rows: Sequence[Sequence],
    captions: Sequence[str],
    png_path: str | Path,
    gif_path: str | Path | None = None,
    max_columns: int = 8,
    min_side: int = MIN_SIDE,
    frame_ms: int = 400,
    final_ms: int = 2000,
    pad: int = 8,
) -> dict:
    """The coarse-to-fine steps of several samples: a PNG with one row per sample (at most ``max_columns``
    evenly spaced steps, first and last included) and its prompt under the row; a GIF showing every step
    of all samples side by side, each under its prompt."""
    per_row = [[upscale(f, min_side) for f in _frames(r)] for r in rows]
    n = min(len(r) for r in per_row)
    font, line_h = _font(), 14
    keep = pick_steps(n, max_columns)
    strips = []
    for frames, text in zip(per_row, captions):
        strip = _tile([Image.fromarray(frames[i]) for i in keep], len(keep), pad)
        strips.append(
            _captioned(
                np.asarray(strip),
                f"{text} (steps {', '.join(str(i + 1) for i in keep)})",
                strip.size[0],
                font,
                2,
                line_h,
            )
        )
    out = {"png": _save(_tile(strips, 1, pad), png_path, "PNG")}
    if gif_path is not None:
        width = max(per_row[0][0].shape[1], 160)
        pil = [
            _tile(
                [_captioned(frames[t], str(text), width, font, 3, line_h) for frames, text in zip(per_row, captions)],
                len(per_row),
                pad,
            )
            for t in range(n)
        ]
        durations = [frame_ms] * (n - 1) + [final_ms]
        out["gif"] = _save(pil[0], gif_path, "GIF", save_all=True, append_images=pil[1:], duration=durations, loop=0)
    return out


@contextlib.contextmanager
def default_style_pyplot():
    """``pyplot`` on the Agg backend in matplotlib's default style: no matplotlibrc (the user's, ``$MATPLOTLIBRC``'s,
    the working directory's) changes a figure, so the same records always draw the same PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({k: v for k, v in matplotlib.rcParamsDefault.items() if k != "backend"}):
        yield plt


def save_pyplot_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG through ``atomic_path`` and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


LOSS_CURVE_KEYS = ("loss", "token_loss", "state_loss", "token_acc", "val/loss", "val_ema/loss")  # what it draws


def save_loss_curve(records: Sequence[dict], path: str | Path) -> Path:
    """The training curves of ``metrics.jsonl`` records: loss (and its token / state parts), the held-out loss
    (``train.eval_every``; the EMA weights' too with ``train.ema_decay``) and token accuracy against the step."""
    with default_style_pyplot() as plt:
        return _draw_loss_curve(plt, records, path)


def _draw_loss_curve(plt, records: Sequence[dict], path: str | Path) -> Path:
    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for key in ("loss", "token_loss", "state_loss"):
        if any(key in r for r in records):
            ax.plot(steps, [r.get(key, float("nan")) for r in records], label=key, lw=1.5 if key == "loss" else 1)
    for key, color, label in (("val/loss", "tab:red", "held-out loss"), ("val_ema/loss", "tab:purple", "EMA's")):
        held = [(r["step"], r[key]) for r in records if key in r]
        if held:
            ax.plot(*zip(*held), "o-", color=color, ms=3, lw=1.5, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if any("token_acc" in r for r in records):
        acc = ax.twinx()
        acc.plot(
            steps, [r.get("token_acc", float("nan")) for r in records], color="tab:green", ls="--", label="token_acc"
        )
        acc.set_ylabel("token accuracy")
        acc.set_ylim(0, 1)
        acc.legend(loc="center right")
    ax.legend(loc="upper right")
    fig.tight_layout()
    return save_pyplot_figure(fig, path)
