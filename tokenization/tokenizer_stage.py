"""The ``tokenizer`` pipeline stage: provide the image tokenizer that later stages load.

* ``tokenizer.ckpt_path`` set: load the published (or any pretrained) VQ-GAN through ``load_vqgan`` and
  re-save it in the stage folder as ``vqgan.safetensors`` + ``tokenizer.yaml`` (pickle-free; the
  architecture resolved from ``tokenizer.yaml_path``).
* otherwise: train the toy tokenizer on the images of the ``synthetic`` stage (``train_tokenizer``).

Later stages load the result with ``tokenization.vqgan.load_tokenizer_dir(run_dir / "tokenizer")``.
A finished training (``metrics.json`` with the same config next to the weights) is not redone.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from core.files import sha256_of
from core.stage import StageContext, StageError, stage
from tokenization.vqgan.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_vqgan, resolve_config, save_tokenizer
from tokenization.vqgan.train import METRICS_FILE, train_tokenizer


def _synthetic_images(src: Path):
    """Images of the synthetic stage: ``src/urls.parquet`` or ``src/train/urls.parquet``."""
    from tokenization.synthetic import load_images

    for folder in (src, src / "train"):
        if (folder / "urls.parquet").is_file():
            images, _ = load_images(folder)
            return images
    raise StageError(f"no urls.parquet in {src} or {src / 'train'}: rerun the synthetic stage")


def _finished(out: Path, cfg) -> dict | None:
    path = out / METRICS_FILE
    if not (path.is_file() and (out / WEIGHTS_FILE).is_file() and (out / CONFIG_FILE).is_file()):
        return None
    done = json.loads(path.read_text())
    return done["metrics"] if done.get("config") == asdict(cfg) else None


def _needs(cfg) -> tuple[str, ...]:
    return ("synthetic",) if not cfg.tokenizer.ckpt_path and cfg.data.download.source == "synthetic" else ()


@stage("tokenizer", inputs=("synthetic",), sections=("tokenizer",), needs=_needs)
def tokenizer_stage(ctx: StageContext) -> dict:
    """Train the toy VQ tokenizer on the synthetic images, or import a pretrained VQ-GAN."""
    cfg = ctx.config.tokenizer
    out = ctx.out_dir
    if cfg.ckpt_path:
        model = load_vqgan(cfg)
        save_tokenizer(model, resolve_config(cfg), out)
        ctx.log(
            f"[tokenizer] imported {cfg.ckpt_path} ({cfg.kind}, {model.codebook_size} codes, grid {model.grid_size})"
        )
        return {
            "identity": sha256_of(out / WEIGHTS_FILE),
            "counts": {"codebook_size": model.codebook_size},
            "metrics": {},
            "outputs": [WEIGHTS_FILE, CONFIG_FILE],
            "pretrained": str(cfg.ckpt_path),
        }
    if ctx.config.data.download.source != "synthetic":
        raise StageError(
            f"tokenizer.ckpt_path is empty: the toy tokenizer trains on the synthetic set, and data.download.source "
            f"is {ctx.config.data.download.source!r}; set tokenizer.ckpt_path to a VQ-GAN checkpoint"
        )
    metrics = _finished(out, cfg)
    if metrics is not None:
        ctx.log("[tokenizer] trained tokenizer with this config found; not retrained")
    else:
        images = _synthetic_images(ctx.input_dir("synthetic"))
        ctx.log(f"[tokenizer] training on {len(images)} images for {cfg.steps} steps")
        metrics = train_tokenizer(cfg, images, out, progress=True)
    ctx.log(f"[tokenizer] held-out MAE {metrics['mae']:.4f}, codebook usage {metrics['codebook_usage']:.2f}")
    return {
        "identity": sha256_of(out / WEIGHTS_FILE),
        "counts": {
            "train_images": metrics["n_train"],
            "holdout_images": metrics["n_holdout"],
            "codebook_size": cfg.n_embed,
        },
        "metrics": {k: metrics[k] for k in ("mae", "codebook_usage", "steps", "seconds")},
        "outputs": [WEIGHTS_FILE, CONFIG_FILE, METRICS_FILE],
    }
