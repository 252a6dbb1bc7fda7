"""The ``sample`` stage: the trained model -> images (and token maps) for the evaluation caption set.

Prompts: the first ``eval.num_prompts`` captions of the download stage's eval split (``evaluation.heldout``:
the synthetic eval split as downloaded, or the held-out rows of the url lists), or, for a url-list source
with ``eval.coco_captions`` set, ``evaluation.coco.sample_prompts(eval.coco_captions, eval.num_prompts,
eval.prompt_seed)`` (one random caption per image). A synthetic run whose download lists no eval shards
reads the synthetic ``eval/`` split's files. The choice is saved as ``prompts.jsonl`` so two runs
compare on the same prompts. The files are ``evaluation.sample_files``; the seeded chunks and their workers
(this process, or Ray actors with one GPU each when the cluster has GPUs, ``eval.sample_workers``, on the
shared work queue ``cluster.work_queue``: a chunk whose actor dies or runs past
``eval.sample_chunk_timeout_s`` is redone on a replacement, and actors the cluster cannot place within
``cluster.actor_start_timeout_s`` fail the stage with a clear error) are ``evaluation.sample_worker``.
When the model, the prompts or a sampler setting changes, old chunks are removed before sampling
(``job.json`` records what they were made from).

``sample.order: learned`` generates with the position policy a ``train.order: learned`` run exported
beside the model (``policy.safetensors``; ``training.export_loader.load_exported_policy``): at every step the
policy scores the positions from the current state and the sampler writes its top-k (PDM 3.2). Its
absence fails the stage before any sampling. Chunks and their seeds are the same as for every order.

``sr.enabled`` (CogView2's hierarchical generation): the generator's low-resolution tokens of each chunk go
through the ``superres`` stage's SR model (direct super-resolution, then LoPAR) and the images are decoded by
its high-resolution tokenizer; ``tokens/`` and the step maps keep the generator's tokens.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Optional

from core.config import identity_dict
from core.files import write_text_atomic
from core.stage import StageContext, StageError, stage
from evaluation.heldout import has_heldout, heldout_prompts, reads_download, uses_heldout
from evaluation.sample_files import JOB, PROMPTS
from evaluation.sample_worker import (
    Log,
    assemble_tokens,
    chunk_done,
    job_for,
    run_chunks_local,
    run_chunks_ray,
    use_ray,
)
from tokenization.text import WEIGHT_KEYS, TextEncoderConfig

# ----------------------------------------------------------------------------- prompts


def eval_prompts(cfg, synthetic_dir: Path, download: Optional[dict] = None) -> tuple[list[dict], str]:
    """(prompt records, a description of the source) for the experiment config ``cfg`` (``download``: the
    download stage's manifest, for its held-out split)."""
    ev = cfg.eval
    if uses_heldout(cfg) or has_heldout(download):
        try:
            return heldout_prompts(download or {}, ev.num_prompts)
        except ValueError as exc:
            raise StageError(str(exc)) from None
    if cfg.data.download.source == "synthetic":
        import pandas as pd

        split = Path(synthetic_dir) / "eval"
        if not (split / "urls.parquet").is_file():
            raise StageError(f"no synthetic eval split at {split} (urls.parquet missing): rerun the synthetic stage")
        df = pd.read_parquet(split / "urls.parquet", columns=["URL", "TEXT"]).iloc[: ev.num_prompts]
        texts = [str(t) for t in df["TEXT"]]
        files = ["eval/images/" + str(u).rsplit("/", 1)[-1] for u in df["URL"]]
        if not texts:
            raise StageError(
                f"the prompt set is empty: the synthetic eval split {split} has no captions "
                f"(data.synthetic.n_eval = {cfg.data.synthetic.n_eval}); set n_eval >= 2"
            )
        recs = [{"index": i, "prompt": t, "refs": [t], "image": f} for i, (t, f) in enumerate(zip(texts, files))]
        return recs, f"synthetic eval split {split} (first {len(recs)} captions)"
    if not ev.coco_captions:
        raise StageError(
            "data.download.source is not synthetic, so the prompts come from MS COCO: set "
            "eval.coco_captions to captions_val2014.json (from "
            "http://images.cocodataset.org/annotations/annotations_trainval2014.zip)"
        )
    from evaluation.coco import sample_prompts

    chosen = sample_prompts(ev.coco_captions, n=ev.num_prompts, seed=ev.prompt_seed)
    recs = [
        {"index": i, "prompt": p.prompt, "refs": list(p.refs), "image_id": p.image_id, "file_name": p.file_name}
        for i, p in enumerate(chosen)
    ]
    return recs, f"MS COCO {ev.coco_captions} ({len(recs)} images, one random caption each, seed {ev.prompt_seed})"


def _reset_if_changed(out: Path, fingerprint: dict, log: Log) -> None:
    """Remove chunks sampled under another model / prompt set / sampler setting."""
    path = out / JOB
    old = json.loads(path.read_text()) if path.is_file() else None
    if old != fingerprint:
        stale = [d for d in ("images", "tokens", "steps") if (out / d).exists()]
        if stale and old is not None:
            log(f"[sample] model, prompts or sampler changed: removing old {', '.join(stale)}")
        for d in stale:
            shutil.rmtree(out / d)
        (out / "tokens.npy").unlink(missing_ok=True)
        write_text_atomic(path, json.dumps(fingerprint, indent=2))
    for d in ("images", "tokens", "steps"):
        (out / d).mkdir(exist_ok=True)


# ``text_encoder`` keys that cannot change the samples: the encoder's files and the tiny T5's recipe reach them
# through the text stage's fingerprint (an input), the worker puts the encoder on its own device, and the
# truncation policy only warns or fails. Every other key (max_length, dtype, kind, ...) changes the prompts' states.
_TEXT_KEYS_NOT_IN_SAMPLES = WEIGHT_KEYS | {"device", "truncation"}
TEXT_SECTIONS = tuple(
    f"text_encoder.{f.name}" for f in dataclasses.fields(TextEncoderConfig) if f.name not in _TEXT_KEYS_NOT_IN_SAMPLES
)


def _text_settings(text_cfg: dict) -> dict:
    """The ``text_encoder`` settings a sample chunk depends on (``TEXT_SECTIONS``), from the job's ``text_cfg``."""
    return {k: v for k, v in text_cfg.items() if f"text_encoder.{k}" in TEXT_SECTIONS}


def _models(cfg) -> tuple[str, ...]:
    """The stages whose models the samples come from: the generator's, and the SR model's when ``sr.enabled``."""
    return ("train", "tokenizer", "text") + (("superres",) if cfg.sr.enabled else ())


def _prompt_inputs(cfg) -> tuple[str, ...]:
    """Where the prompts come from: the downloaded eval split (the synthetic files as a fallback), or MS COCO."""
    return (("synthetic",) if cfg.data.download.source == "synthetic" else ()) + (
        ("download",) if reads_download(cfg) else ()
    )


@stage(
    "sample",
    inputs=("train", "tokenizer", "text", "synthetic", "download", "superres"),
    sections=("sample", "eval", *TEXT_SECTIONS),
    uses_ray=lambda cfg: use_ray(cfg.eval.sample_workers, cfg.cluster.address),
    needs=lambda cfg: _models(cfg) + _prompt_inputs(cfg),
)
def sample_stage(ctx: StageContext) -> dict:
    """Generate images for the evaluation captions (synthetic or downloaded eval split, or MS COCO) in seeded chunks."""
    cfg, out = ctx.config, ctx.out_dir  # sample.n_candidates is 1: pipeline.checks
    export = ctx.input_dir("train") / "export"
    for name in ("model.safetensors", "config.yaml"):
        if not (export / name).is_file():
            raise StageError(f"{export / name} is missing: rerun the train stage (`pt2i run CONFIG --stage train`)")
    if cfg.sample.order == "learned":
        from training.export_loader import ExportError, require_policy

        try:
            require_policy(export)
        except ExportError as exc:
            raise StageError(str(exc)) from None
    synthetic = ctx.input_dir("synthetic") if cfg.data.download.source == "synthetic" else None
    recs, source = eval_prompts(cfg, synthetic, ctx.input_manifest("download") if reads_download(cfg) else None)
    body = "".join(json.dumps(r) + "\n" for r in recs)
    inputs = {n: ctx.input_manifest(n).get("fingerprint") for n in _models(cfg)}
    job = job_for(cfg.sample, cfg.text_encoder, cfg.eval, out, ctx.run_dir, len(recs), cfg.sr)
    fingerprint = {
        "sample": identity_dict(cfg.sample),  # a new key at its neutral default changes no sample
        "use_ema": cfg.eval.use_ema,
        "text_encoder": _text_settings(job.text_cfg),  # max_length, dtype, ...: how the prompts are encoded
        "inputs": inputs,
        "prompts_sha256": hashlib.sha256(body.encode()).hexdigest(),
    }
    _reset_if_changed(out, fingerprint, ctx.log)
    if not (out / PROMPTS).is_file() or (out / PROMPTS).read_text() != body:
        write_text_atomic(out / PROMPTS, body)
    todo = [c for c in range(job.n_chunks) if not chunk_done(job, c)]
    ctx.log(
        f"[sample] {len(recs)} prompts from {source}; {job.n_chunks} chunks of {job.batch_size}, "
        f"{len(todo)} to do; {cfg.sample.sampler} sampler, T={cfg.sample.steps}"
    )
    t0 = time.time()
    results = None
    if todo and use_ray(cfg.eval.sample_workers, cfg.cluster.address):
        ev = cfg.eval
        results = run_chunks_ray(
            job,
            todo,
            ev.sample_workers,
            cfg.cluster.address,
            ctx.log,
            ev.sample_chunk_timeout_s,
            cfg.cluster.actor_start_timeout_s,
        )
    ray_used = results is not None
    if results is None:
        results = run_chunks_local(job, todo, ctx.log) if todo else []
    wall = time.time() - t0
    missing = [c for c in range(job.n_chunks) if not chunk_done(job, c)]
    if missing:
        raise StageError(f"chunks {missing[:10]} are unfinished after sampling; rerun the stage to redo only them")
    assemble_tokens(job)
    new = sum(r["images"] for r in results)
    busy = sum(r["seconds"] for r in results)
    return {
        "counts": {
            "prompts": len(recs),
            "chunks": job.n_chunks,
            "chunks_done_now": sum(not r["skipped"] for r in results),
            "images_done_now": new,
            "step_map_chunks": sum(job.wants_steps(c) for c in range(job.n_chunks)),
        },
        "metrics": {
            "seconds_wall": round(wall, 3),
            "seconds_sampling": round(busy, 3),
            "seconds_per_image": round(busy / new, 5) if new else None,
            "images_per_second": round(new / wall, 3) if new and wall > 0 else None,
        },
        "prompt_source": source,
        "workers": "ray" if ray_used else "in-process",
        "outputs": {
            "prompts": str(out / PROMPTS),
            "images": str(out / "images"),
            "tokens": str(out / "tokens.npy"),
            "steps": str(out / "steps"),
        },
    }
