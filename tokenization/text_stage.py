"""The ``text`` stage: makes the frozen text encoder available to later stages.

With ``text_encoder.path`` set (a real T5 folder or an open_clip checkpoint) it loads it once to check
it and records its identity. Without a path it builds a tiny random T5 and a tokenizer fitted on the
captions of the download stage's ``train`` image shards, every source (at most ``tiny_max_captions``), into
``text/encoder`` (``build_tiny_t5``): for small experiments only (real runs use a real T5, which cannot be
downloaded on offline machines). With ``text_encoder.tiny_pretrain_steps`` > 0 that T5 is then pretrained
to restate the captions (``tokenization.t5_pretrain``: the synthetic ones with their shapes in position
order), which makes its states tell apart captions with the same words in another order. Later stages
load it with ``load_text_encoder(cfg.text_encoder, ctx.input_dir("text"))``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from core.files import sha256_of
from core.stage import StageContext, StageError, stage
from tokenization.image_shards import read_captions, split_shards
from tokenization.t5_pretrain import RECIPE_FILE, OtherRecipe, pretrain_on_captions
from tokenization.text import build_tiny_t5, load_text_encoder, tiny_t5_kwargs


def _needs(cfg) -> tuple[str, ...]:
    return () if cfg.text_encoder.path else ("download",)


def _sections(cfg) -> tuple[str, ...]:
    """The top-level ``seed`` initialises (and pretrains) the tiny T5: part of the output only when one is built."""
    return ("text_encoder",) if cfg.text_encoder.path else ("text_encoder", "seed")


@stage("text", inputs=("download",), sections=_sections, needs=_needs)
def text_stage(ctx: StageContext) -> dict:
    """Check the configured text encoder, or build a tiny one from the downloaded captions (small experiments)."""
    cfg = ctx.config.text_encoder
    if cfg.path:
        source = Path(cfg.path)
        built = False
    else:  # kind t5 (a clip encoder needs a path: TextEncoderConfig)
        shards = split_shards(ctx.input_manifest("download"), "train")
        captions = read_captions(shards, cfg.tiny_max_captions)
        if not captions:
            raise StageError(
                f"text_encoder.path is empty and the download stage's {len(shards)} train image shards hold no "
                "caption to build a tiny T5 from; set text_encoder.path to a T5 folder (save_pretrained)"
            )
        ctx.log(
            f"[text] no text_encoder.path: building a tiny T5 from {len(captions)} downloaded captions "
            "(for small experiments; real runs set text_encoder.path to a T5)"
        )
        source = _tiny_t5(ctx, captions)
        built = True
    enc = load_text_encoder(cfg, ctx.out_dir if built else None)
    sha = sha256_of(source)
    return {
        "identity": sha,
        "counts": {"vocab_size": enc.vocab_size, "dim": enc.dim},
        "outputs": {"encoder": str(source)},
        "metrics": {"built_tiny": built, "sha256": sha, **_pretrain_metrics(source)},
    }


def _tiny_t5(ctx: StageContext, captions: list[str]) -> Path:
    """Build (or keep) the tiny T5 in ``text/encoder``; pretrain it when ``tiny_pretrain_steps`` > 0.
    A kept folder made with another recipe (other steps, or pretrained when 0 are asked) is rebuilt."""
    cfg, seed = ctx.config.text_encoder, ctx.config.seed
    folder = ctx.out_dir / "encoder"

    def build() -> Path:
        return build_tiny_t5(captions, folder, **tiny_t5_kwargs(cfg), seed=seed)

    def fresh() -> Path:
        shutil.rmtree(folder, ignore_errors=True)
        return build()

    source = build()
    if not cfg.tiny_pretrain_steps:
        return fresh() if (source / RECIPE_FILE).exists() else source
    try:
        pretrain_on_captions(source, captions, cfg.tiny_pretrain_steps, seed=seed, log=ctx.log)
    except OtherRecipe:
        source = fresh()
        pretrain_on_captions(source, captions, cfg.tiny_pretrain_steps, seed=seed, log=ctx.log)
    return source


def _pretrain_metrics(folder: Path) -> dict:
    stamp = folder / RECIPE_FILE
    return {"pretrain_loss": json.loads(stamp.read_text())["loss"]} if stamp.is_file() else {}
