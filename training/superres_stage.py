"""The ``superres`` stage (``sr.enabled``): CogView2's hierarchical super-resolution model (CogView2 3.3).

  1. the training scenes of ``data.synthetic`` rendered at ``sr.image_size`` (``sr.n_images`` of them);
  2. the high-resolution tokenizer: ``sr.tokenizer.ckpt_path`` loaded, or trained on those images like the toy
     one (``tokenization.vqgan.train_tokenizer``; a finished training with the same config is kept);
  3. pairs of token grids of the same images: high-res tokens, and the generator tokenizer's tokens of the image
     box-downsampled to its resolution (``pairs.npz``, reused while the tokenizers and images are the same);
  4. the SR model (``training.superres``), resumed from its checkpoints unless the model, the optimisation or
     the pairs changed, or ``sr.train.steps`` was lowered below them (then trained from scratch).

Writes under ``RUN/superres/``: ``tokenizer/``, ``pairs.npz``, ``checkpoints/``, ``export/`` (model.safetensors +
config.yaml). The ``sample`` stage chains it after the generator.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from core.config import identity_dict, to_dict
from core.files import atomic_path, sha256_of, write_text_atomic
from core.stage import StageContext, stage

PAIRS, STATE = "pairs.npz", "checkpoints/made_from.json"


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _tokenizer(sr, images: np.ndarray, folder: Path, log) -> dict:
    """Provide the high-resolution tokenizer in ``folder``; returns its metrics ({} when loaded)."""
    from tokenization.vqgan import load_vqgan, save_tokenizer, train_tokenizer
    from tokenization.vqgan.checkpoint import resolve_config
    from tokenization.vqgan.train import finished_metrics

    if sr.tokenizer.ckpt_path:
        save_tokenizer(load_vqgan(sr.tokenizer), resolve_config(sr.tokenizer), folder)
        log(f"[superres] high-resolution tokenizer imported from {sr.tokenizer.ckpt_path}")
        return {}
    metrics = finished_metrics(folder, sr.tokenizer)
    if metrics is not None:
        log("[superres] high-resolution tokenizer with this config found; not retrained")
        return metrics
    log(f"[superres] training the {sr.image_size} px tokenizer on {len(images)} images for {sr.tokenizer.steps} steps")
    return train_tokenizer(sr.tokenizer, images, folder, progress=True)


def _pairs(out: Path, made_from: dict, make) -> dict:
    """``pairs.npz`` when it was made from ``made_from``, else ``make()`` saved there."""
    path = out / PAIRS
    if path.is_file():
        with np.load(path) as f:
            if str(f["made_from"]) == _hash(made_from):
                return {"lo": f["lo"], "hi": f["hi"]}
    pairs = make()
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, made_from=np.asarray(_hash(made_from)), **pairs)
    return pairs


def _reset_checkpoints(out: Path, made_from: dict, log) -> None:
    """Remove checkpoints of another SR model, optimisation or pair set (a resume continues only the same run)."""
    path = out / STATE
    if path.is_file() and json.loads(path.read_text()) == made_from:
        return
    if (out / "checkpoints").exists():
        log("[superres] the SR model, its optimisation or its pairs changed: training from scratch")
        shutil.rmtree(out / "checkpoints")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(made_from, indent=2, sort_keys=True))


@stage(
    "superres",
    inputs=("tokenizer", "text"),
    sections=("sr", "tokenizer", "text_encoder", "data.synthetic"),
    enabled=lambda cfg: cfg.sr.enabled,
)
def superres_stage(ctx: StageContext) -> dict:
    """Train CogView2's super-resolution model (high-res tokenizer, token-grid pairs, SR transformer)."""
    from tokenization.synthetic import downsample, render_dataset
    from tokenization.vqgan import load_tokenizer_dir
    from tokenization.vqgan.checkpoint import WEIGHTS_FILE
    from training.superres import token_pairs, train_super_resolution
    from training.trainer import load_text_encoder

    cfg, out = ctx.config, ctx.out_dir
    sr, syn = cfg.sr, cfg.data.synthetic
    n = sr.n_images or syn.n_train
    images, captions = render_dataset(n, syn.seed, sr.image_size, syn.min_objects, syn.max_objects)
    tok_metrics = _tokenizer(sr, images, out / "tokenizer", ctx.log)
    lo_dir = ctx.input_dir("tokenizer")
    hi_vq, lo_vq = load_tokenizer_dir(out / "tokenizer").eval(), load_tokenizer_dir(lo_dir).eval()
    made_from = {
        "images": {"n": n, "size": sr.image_size, "synthetic": to_dict(syn)},
        "hi_tokenizer": sha256_of(out / "tokenizer" / WEIGHTS_FILE),
        "lo_tokenizer": sha256_of(lo_dir / WEIGHTS_FILE),
    }
    pairs = _pairs(out, made_from, lambda: token_pairs(images, downsample(images, lo_vq.cfg.pixels), hi_vq, lo_vq))
    train_id = {k: v for k, v in to_dict(sr.train).items() if k not in ("steps", "log_every", "checkpoint_every")}
    _reset_checkpoints(out, {"pairs": made_from, "model": to_dict(sr.model), "train": train_id}, ctx.log)
    encoder = load_text_encoder(cfg.text_encoder, str(ctx.input_dir("text")))
    summary = train_super_resolution(sr, pairs, captions, encoder, out, ctx.log, (lo_vq.codebook, hi_vq.codebook))
    last = summary["last_metrics"]
    return {
        "identity": {"weights": sha256_of(out / "export" / "model.safetensors"), "sample": identity_dict(sr.sample)},
        "counts": {"pairs": n, "steps": summary["steps"]},
        "metrics": {
            **{f"tokenizer_{k}": tok_metrics[k] for k in ("mae", "codebook_usage") if k in tok_metrics},
            **{k: v for k, v in last.items() if isinstance(v, (int, float))},
            "train_seconds": summary["seconds"],
        },
        "resumed_from": summary["resumed_from"],
        "outputs": {"tokenizer": str(out / "tokenizer"), "pairs": str(out / PAIRS), "export": str(out / "export")},
    }
