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
(``job.json`` records what they were made from; ``evaluation.sample_folder``, shared with ``pt2i generate``).

``sample.order: learned`` generates with the position policy a ``train.order: learned`` run exported
beside the model (``policy.safetensors``; ``training.export_loader.load_exported_policy``): at every step the
policy scores the positions from the current state and the sampler writes its top-k (PDM 3.2). Its
absence fails the stage before any sampling. Chunks and their seeds are the same as for every order.

``sr.enabled`` (CogView2's hierarchical generation): the generator's low-resolution tokens of each chunk go
through the ``superres`` stage's SR model (direct super-resolution, then LoPAR) and the images are decoded by
its high-resolution tokenizer; ``tokens/`` and the step maps keep the generator's tokens.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from core.stage import StageContext, StageError, stage
from evaluation.heldout import has_heldout, heldout_prompts, reads_download, uses_heldout
from evaluation.sample_files import PROMPTS
from evaluation.sample_folder import TEXT_SECTIONS, fingerprint, model_stages, prepare, prompts_body, require_export
from evaluation.sample_worker import (
    assemble_tokens,
    chunk_done,
    job_for,
    run_chunks_local,
    run_chunks_ray,
    use_ray,
)

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
    needs=lambda cfg: model_stages(cfg) + _prompt_inputs(cfg),
)
def sample_stage(ctx: StageContext) -> dict:
    """Generate images for the evaluation captions (synthetic or downloaded eval split, or MS COCO) in seeded chunks."""
    cfg, out = ctx.config, ctx.out_dir  # sample.n_candidates is 1: pipeline.checks
    require_export(ctx.input_dir("train") / "export", cfg.sample.order)
    synthetic = ctx.input_dir("synthetic") if cfg.data.download.source == "synthetic" else None
    recs, source = eval_prompts(cfg, synthetic, ctx.input_manifest("download") if reads_download(cfg) else None)
    body = prompts_body(recs)
    inputs = {n: ctx.input_manifest(n).get("fingerprint") for n in model_stages(cfg)}
    job = job_for(cfg.sample, cfg.text_encoder, cfg.eval, out, ctx.run_dir, len(recs), cfg.sr)
    prepare(out, fingerprint(cfg, inputs, body), body, ctx.log, "sample")
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
