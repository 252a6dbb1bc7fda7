"""The ``train`` stage: token shards + frozen text encoder -> checkpoints and a safetensors export.

Reads ``tokenize/<train.train_split>/*.tar`` (every split but the held-out ``eval`` when that one is
missing; several sources mixed by ``data.mixing``, ``training.mixing``) and the ``text`` stage's folder
(the frozen text encoder); writes under ``RUN/train/``: ``job.json`` (what every rank runs),
``checkpoints/`` (``training.checkpoint``), ``metrics.jsonl`` + ``tb/`` (``training.metrics_log``; with
``train.eval_every`` the held-out losses on ``tokenize/eval`` too, ``training.heldout``),
``export/model.safetensors`` + ``export/config.yaml``, ``summary.json``.

``cluster.launcher`` picks how it runs, with no code change:
  local      this process, the plain PyTorch engine (``training.engine.LocalEngine``)
  deepspeed  ``deepspeed`` launcher with a hostfile (``cluster.deepspeed_launch``), DeepSpeed engine
  slurm      ``srun`` in the Slurm allocation this runs in (``cluster.slurm_launch``), DeepSpeed engine
  ray        Ray Train ``TorchTrainer`` workers (``cluster.ray_train``), DeepSpeed engine
A re-run continues from the latest complete checkpoint (``train.resume``); when that is the final step's and
the trainer that wrote it finished (``summary.json`` names it: the stage was stopped after the trainer, or only
a setting out of the lineage changed), it publishes the export again without launching anything.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from core.files import sha256_of
from core.stage import StageContext, StageError, stage
from training.data import list_shards
from training.mixing import mix_shards


def shards_for(tokenize_dir: Path, manifest: dict, split: str | None) -> list[str]:
    """Token shards of ``split`` (the tokenize manifest's ``splits`` folders), else of every split but ``eval``
    (the held-out one)."""
    splits = manifest.get("splits") or {}
    if split and split in splits:
        folders = [splits[split]]
    elif splits:
        folders = [splits[k] for k in sorted(splits) if k != "eval" or len(splits) == 1]
    else:
        folders = [str(tokenize_dir)]
    shards = [s for f in folders for s in list_shards(f)]
    if not shards:
        raise StageError(f"no token shards (*.tar) under {', '.join(folders)}; run the tokenize stage first")
    return shards


def heldout_shards(manifest: dict, t) -> list[str]:
    """The token shards of the tokenize stage's ``eval`` split, whose first samples ``train.eval_every`` scores."""
    folder = (manifest.get("splits") or {}).get("eval")
    if t.train_split == "eval":
        raise StageError("train.eval_every scores the eval split, which train.train_split trains on: unset one")
    shards = list_shards(folder) if folder else []
    if not shards:
        raise StageError(
            "train.eval_every reads the tokenize stage's eval split, which holds no token shards (the download has "
            "no eval split: set data.download.eval_split or a source's eval_url_list); or set train.eval_every: 0"
        )
    return shards


@stage(
    "train",
    inputs=("tokenize", "text", "tokenizer"),
    sections=("model", "train", "text_encoder", "tokenizer", "data.mixing"),
    uses_ray=lambda cfg: cfg.cluster.launcher == "ray",
)
def train_stage(ctx: StageContext) -> dict:
    """Train the PDM (or the AR / Emage baselines) on the token shards with the configured launcher."""
    from training.checkpoint import ResumeRefused, choose_resume, move_aside, publish_export
    from training.divergence import Diverged
    from training.trainer import (
        LINEAGE_IGNORED,
        TrainJob,
        finished_summary,
        refuse_past_the_end,
        run_job,
        run_training,
        train_lineage,
        trainer_sections,
    )

    cfg = ctx.config
    out = ctx.out_dir
    tok_dir = ctx.input_dir("tokenize")
    tokens = ctx.input_manifest("tokenize")
    text = ctx.input_manifest("text")
    shards = shards_for(tok_dir, tokens, cfg.train.train_split)
    split_dir = (tokens.get("splits") or {}).get(cfg.train.train_split or "train")
    mix = None
    if split_dir:  # sources in tokenize/<split>/<source>/
        try:
            shards, mix = mix_shards(shards, split_dir, cfg.data.mixing, ctx.log)
        except ValueError as exc:
            raise StageError(str(exc)) from None
    launcher = cfg.cluster.launcher
    heldout = heldout_shards(tokens, cfg.train) if cfg.train.eval_every else []
    job = TrainJob(
        sections=trainer_sections(cfg),
        out_dir=str(out),
        shards=shards,
        text_encoder=str(ctx.input_dir("text")),
        tokenizer=str(ctx.input_dir("tokenizer")),
        engine="local" if launcher == "local" else "deepspeed",
        host_allocator=cfg.cluster.host_allocator,
        heldout_shards=heldout,
        inputs={
            "tokens": tokens.get("identity") or tokens.get("fingerprint"),
            "text": text.get("identity") or text.get("fingerprint"),
        },
    )
    try:  # the ranks apply the same rule; here it fails before any launch, with the message in the log
        lineage = train_lineage(job.trainer_config(), job.inputs, job.shards)
        tag, changes = choose_resume(out / "checkpoints", lineage, cfg.train.resume, ctx.log, LINEAGE_IGNORED)
        refuse_past_the_end(out / "checkpoints", tag, cfg.train.steps)
    except ResumeRefused as exc:
        raise StageError(str(exc)) from None
    if cfg.train.resume == "never" and changes:
        move_aside(out / "checkpoints", ctx.log)
    job.save(out / "job.json")
    ctx.log(f"[train] {len(shards)} token shards, launcher {launcher}")
    done = finished_summary(out, cfg.train.steps, tag) if cfg.train.resume != "never" and not changes else None
    if done is not None:  # the trainer finished (the stage was stopped after it, or a log setting changed)
        ctx.log(f"[train] {out / 'checkpoints' / tag} is this run's final checkpoint: nothing to train; export again")
        publish_export(out / "checkpoints" / tag, out / "export")
        summary = {**done, "resumed_from": cfg.train.steps}
    elif launcher in ("deepspeed", "slurm"):
        from cluster import deepspeed_launch, slurm_launch
        from cluster.launcher_run import save_cluster_section

        save_cluster_section(cfg.cluster, out / "job.json")
        (slurm_launch if launcher == "slurm" else deepspeed_launch).run(cfg.cluster, out / "job.json", out, ctx.log)
        summary = json.loads((out / "summary.json").read_text())
    else:
        try:  # ResumeRefused: a data stream that differs although the lineage matches
            if launcher == "local":
                summary = run_training(job, log=ctx.log)
            else:
                from cluster.ray_train import run_ray_training

                summary = run_ray_training(cfg.cluster, asdict(job), run_job, ctx.log, (ResumeRefused, Diverged))
        except (ResumeRefused, Diverged) as exc:
            raise StageError(str(exc)) from None
    last = summary.get("last_metrics", {})
    return {
        "identity": sha256_of(out / "export"),  # the trained weights: a rerun that changes nothing keeps readers
        "counts": {
            "steps": summary["steps"],
            "shards": len(shards),
            "world_size": summary["world_size"],
            "bad_shards": int(last.get("data/bad_shards", 0)),
            "bad_samples": int(last.get("data/bad_samples", 0)),
        },
        "metrics": {k: v for k, v in last.items() if isinstance(v, (int, float))},
        "outputs": {
            "export": summary["export"],
            "config": str(out / "export" / "config.yaml"),
            "checkpoints": str(out / "checkpoints"),
            "metrics": str(out / "metrics.jsonl"),
        },
        "launcher": launcher,
        **({"trainer_environment": summary["environment"]} if "environment" in summary else {}),
        **({"trainer_ranks": summary["ranks"]} if "ranks" in summary else {}),
        **({"mixing": mix} if mix else {}),
        "resumed_from": summary["resumed_from"],
    }
