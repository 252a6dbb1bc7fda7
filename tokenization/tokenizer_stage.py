"""The ``tokenizer`` pipeline stage: provide the image tokenizer that later stages load.

* ``tokenizer.ckpt_path`` set: load the published (or any pretrained) VQ-GAN through ``load_vqgan`` and
  re-save it in the stage folder as ``vqgan.safetensors`` + ``tokenizer.yaml`` (pickle-free; the
  architecture resolved from ``tokenizer.yaml_path``).
* otherwise: train a small VQ tokenizer on the download stage's ``train`` image shards, every source
  (``train_tokenizer_on_shards``: streamed, resumable, measured on held-out images).

Later stages load the result with ``tokenization.vqgan.load_tokenizer_dir(run_dir / "tokenizer")``.
A finished training (``metrics.json`` with the same config and image shards next to the weights) is not
redone.
"""

from __future__ import annotations

from core.files import sha256_of
from core.stage import StageContext, StageError, stage
from tokenization.image_shards import split_shards
from tokenization.shard_encoder import source_identity
from tokenization.vqgan.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_vqgan, resolve_config, save_tokenizer
from tokenization.vqgan.train import METRICS_FILE, finished_metrics, train_tokenizer_on_shards


def _needs(cfg) -> tuple[str, ...]:
    return () if cfg.tokenizer.ckpt_path else ("download",)


@stage("tokenizer", inputs=("download",), sections=("tokenizer",), needs=_needs)
def tokenizer_stage(ctx: StageContext) -> dict:
    """Train a small VQ tokenizer on the downloaded images (any source), or import a pretrained VQ-GAN."""
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
    shards = split_shards(ctx.input_manifest("download"), "train")
    if not shards:
        raise StageError(
            "tokenizer.ckpt_path is empty and the download stage lists no train image shards to train a tokenizer "
            "on; rerun `pt2i run CONFIG --stage download`, or set tokenizer.ckpt_path to a VQ-GAN checkpoint"
        )
    data = [[url, source_identity(url)] for url in shards]
    metrics = finished_metrics(out, cfg, data)
    if metrics is not None:
        ctx.log("[tokenizer] trained tokenizer with this config and these image shards found; not retrained")
    else:
        ctx.log(f"[tokenizer] training on the images of {len(shards)} image shards for {cfg.steps} steps")
        metrics = train_tokenizer_on_shards(cfg, shards, out, data, progress=True, log=ctx.log)
    if metrics["mae"] is not None:
        ctx.log(f"[tokenizer] held-out MAE {metrics['mae']:.4f}, codebook usage {metrics['codebook_usage']:.2f}")
    return {
        "identity": sha256_of(out / WEIGHTS_FILE),
        "counts": {
            "train_images": metrics["n_train"],
            "holdout_images": metrics["n_holdout"],
            "codebook_size": cfg.n_embed,
        },
        "metrics": {
            k: metrics[k] for k in ("mae", "codebook_usage", "train_mae", "steps", "seconds", "d_loss") if k in metrics
        },
        "outputs": [WEIGHTS_FILE, CONFIG_FILE, METRICS_FILE],
    }
