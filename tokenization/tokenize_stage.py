"""The ``tokenize`` stage: the download stage's image shards -> token shards with the tokenizer stage's VQ-GAN
and the text stage's tokenizer (``tokenization.shard_encoder``). The manifest counts the shards each Ray node
did and names the VQ-GAN (config hash, checkpoint sha256) and the text encoder that made the tokens."""

from __future__ import annotations

from pathlib import Path

from core.config import config_hash
from core.stage import StageContext, stage
from tokenization.shard_encoder import (
    TextFactory,
    TokenizeConfig,
    VQGANFactory,
    run_tokenize,
    tokenizer_identity,
)
from tokenization.text import text_id_settings


def jobs_from_download(manifest: dict, out_dir: Path) -> tuple[list[tuple[str, str, str]], int]:
    """[(source tar, token tar, "split/NNNNN.tar")] for every image shard the download stage listed,
    and the number of images it downloaded."""
    jobs, expected = [], 0
    for split, info in sorted(manifest.get("splits", {}).items()):
        (out_dir / split).mkdir(parents=True, exist_ok=True)
        for shard in info["shards"]:
            jobs.append(
                (
                    f"{info['folder'].rstrip('/')}/{shard['name']}",
                    str(out_dir / split / shard["name"]),
                    f"{split}/{shard['name']}",
                )
            )
            expected += shard["success"]
    return jobs, expected


@stage(
    "tokenize",
    inputs=("download", "tokenizer", "text"),
    sections=("data.tokenize", "tokenizer", "text_encoder"),
    uses_ray=lambda cfg: True,
)
def tokenize_stage(ctx: StageContext) -> dict:
    """Encode image shards into token shards with the VQ-GAN (and caption ids with the text tokenizer).

    The text ids come from the tokenizer the ``text`` stage provides (the one the trainer encodes them with)."""

    cfg: TokenizeConfig = ctx.config.data.tokenize
    tok_dir = ctx.input_dir("tokenizer")
    folder = tok_dir if (tok_dir / "tokenizer.yaml").is_file() else None
    identity = tokenizer_identity(ctx.config.tokenizer, folder)
    text = ctx.input_manifest("text")
    lineage = {  # what every token shard is made with (each adds its image shard's identity)
        "tokenizer": {k: identity[k] for k in ("config_hash", "checkpoint_sha256")},
        "text": text.get("identity") or text.get("fingerprint"),
        "text_ids": text_id_settings(ctx.config.text_encoder),  # max_length, ...: what else cuts the caption ids
        "image_size": ctx.config.tokenizer.pixels,  # image_size, or resolution when unset
    }
    jobs, expected = jobs_from_download(ctx.input_manifest("download"), ctx.out_dir)
    cluster = getattr(ctx.config, "cluster", None)
    report = run_tokenize(
        cfg,
        jobs,
        VQGANFactory(ctx.config.tokenizer, str(folder) if folder else None),
        TextFactory(ctx.config.text_encoder, str(ctx.input_dir("text"))),
        ctx.config.tokenizer.pixels,
        getattr(cluster, "address", None),
        expected,
        ctx.log,
        getattr(cluster, "actor_start_timeout_s", None),
        lineage=lineage,
        max_pixels=ctx.config.data.download.max_image_pixels,
    )
    report["tokenizer"] = identity
    report["text_encoder"] = {"config_hash": config_hash(ctx.config.text_encoder)}
    report["splits"] = {s: str(ctx.out_dir / s) for s in sorted({j[2].split("/")[0] for j in jobs})}
    return report
