"""``pt2i generate``: images for your own prompts from a run's trained models.

The run directory's models (``train/export``, or with ``--checkpoint`` a kept training checkpoint's weights;
``tokenizer``, ``text``, and ``superres`` when ``sr.enabled``) and its config's ``sample`` section (``--set
sample.KEY=VALUE`` and ``eval.use_ema`` may change it; nothing else, since the models are fixed) sample the
prompts exactly as the ``sample`` stage samples the evaluation prompts: in chunks of ``sample.batch_size`` seeded
from (``sample.seed``, chunk), so an image depends only on the prompt list, its place in it and the settings,
never on the device count or an earlier call. The evaluation prompts, given in their order, give the sample
stage's images.

The folder (``RUN/generate/NAME``; NAME is a hash of what the images depend on unless given; or ``--out``) is a
sample folder (``evaluation.sample_files``) plus ``config.yaml`` (the resolved config), ``samples_grid.png``
(each image under its prompt) and ``progression.png`` / ``.gif`` (the first four images coarse to fine). Asked
again for the same prompts and settings it samples nothing; interrupted, it redoes only the unfinished chunks.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Optional

from core.config import ConfigError, to_yaml
from core.files import write_text_atomic
from evaluation.sample_files import JOB, PROMPTS, image_path, read_prompts
from evaluation.sample_folder import fingerprint, prepare, prompts_body, require_export
from evaluation.sample_worker import ChunkWorker, assemble_tokens, chunk_done, job_for, run_chunks_local

ALLOWED_OVERRIDES = ("sample.", "eval.use_ema")
GRID_IMAGES = 64
PROGRESSION_IMAGES = 4


def check_overrides(overrides: list[str]) -> None:
    """``--set`` may change the sampler (``sample.*``) and ``eval.use_ema``; any other key would describe
    another model than the one the run trained."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if not any(key == a or (a.endswith(".") and key.startswith(a)) for a in ALLOWED_OVERRIDES):
            raise ConfigError(
                f"--set {key}: generate takes sample.* and eval.use_ema only (the run's models are fixed; "
                f"change {key} with `pt2i run CONFIG --set {key}=...`)"
            )


def read_prompt_args(prompts: list[str], prompts_file: Optional[str]) -> list[str]:
    """The prompts of ``--prompt`` (in order) then of ``--prompts-file`` (one per line, blank lines skipped)."""
    out = [p.strip() for p in prompts]
    if prompts_file:
        path = Path(prompts_file)
        if not path.is_file():
            raise ConfigError(f"--prompts-file {path}: no such file")
        out += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not out or any(not p for p in out):
        raise ConfigError("give at least one non-empty prompt (--prompt TEXT, repeatable, or --prompts-file FILE)")
    return out


def checkpoint_export(run_dir: Path, checkpoint: str) -> tuple[Path, dict]:
    """The folder of a complete training checkpoint (``step_00000500`` or ``500``) and what identifies it (its tag
    and ``COMPLETE`` record): its ``model.safetensors`` and ``config.yaml`` are an export's."""
    from training.checkpoint import COMPLETE, complete_tags, tag_for

    ckpt_dir = run_dir / "train" / "checkpoints"
    tag = tag_for(int(checkpoint)) if checkpoint.isdigit() else checkpoint
    tags = complete_tags(ckpt_dir)
    if tag not in tags:
        kept = ", ".join(tags) if tags else "none"
        raise ConfigError(f"--checkpoint {checkpoint}: no complete checkpoint {tag} in {ckpt_dir} (kept: {kept})")
    return ckpt_dir / tag, {"tag": tag, "complete": json.loads((ckpt_dir / tag / COMPLETE).read_text())}


def generate(
    cfg,
    prompts: list[str],
    inputs: dict,
    copies: int = 1,
    out: Optional[Path] = None,
    name: Optional[str] = None,
    device: Optional[str] = None,
    log: Callable[[str], None] = print,
    checkpoint: Optional[str] = None,
) -> dict:
    """Sample ``copies`` images of each of ``prompts`` (prompt-major: image i is prompt i // copies) with the
    models of the run directory ``cfg.run_dir`` (``inputs``: the fingerprints of their stages,
    ``sample_folder.model_stages``), the generator's weights those of the train stage's export or of its
    ``checkpoint`` (:func:`checkpoint_export`); returns what was written and how long it took."""
    if copies < 1:
        raise ConfigError(f"--copies must be >= 1, got {copies}")
    run_dir = Path(cfg.run_dir)
    export = run_dir / "train" / "export"
    if checkpoint is not None:
        export, which = checkpoint_export(run_dir, checkpoint)
        inputs = {**inputs, "checkpoint": which}
    require_export(export, cfg.sample.order)
    recs = [{"index": i, "prompt": p, "refs": [p]} for i, p in enumerate(p for p in prompts for _ in range(copies))]
    body = prompts_body(recs)
    record = fingerprint(cfg, inputs, body)
    if out is None:
        digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:12]
        out = run_dir / "generate" / (name or digest)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    job = replace(  # the progression figure reads chunk 0's step maps
        job_for(cfg.sample, cfg.text_encoder, cfg.eval, out, run_dir, len(recs), cfg.sr),
        export_dir=str(export),
        save_step_maps="first",
    )
    prepare(out, record, body, log, "generate")
    write_text_atomic(out / "config.yaml", to_yaml(cfg))
    todo = [c for c in range(job.n_chunks) if not chunk_done(job, c)]
    log(
        f"[generate] {len(prompts)} prompt(s) x {copies} from {export} into {out}: {job.n_chunks} chunk(s) of "
        f"{job.batch_size}, {len(todo)} to do; {cfg.sample.sampler} sampler, T={cfg.sample.steps}"
    )
    t0 = time.time()
    worker = ChunkWorker(job, device=device)
    try:
        run_chunks_local(job, todo, log, worker, "generate")
    except FileNotFoundError:
        if checkpoint is not None and not export.is_dir():  # pruned by a training still running (train.keep_last)
            checkpoint_export(run_dir, checkpoint)  # names the checkpoints kept now
        raise
    assemble_tokens(job)
    figures = _figures(out, job, worker, device)
    return {
        "out": str(out),
        "images": len(recs),
        "images_done_now": sum(len(job.indices(c)) for c in todo),
        "seconds": round(time.time() - t0, 3),
        **figures,
    }


def _figures(out: Path, job, worker: ChunkWorker, device: Optional[str]) -> dict:
    from evaluation.progression import make_figures
    from tokenization.vqgan import load_tokenizer_dir

    if worker.model is not None:
        vq, device = worker.vq, worker.device
    else:  # nothing sampled now: the figures need only the tokenizer
        import torch

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        vq = load_tokenizer_dir(job.tokenizer_dir).to(device).eval()
    recs = read_prompts(out)
    images = [image_path(out, r["index"]) for r in recs[:GRID_IMAGES]]
    figs = make_figures(
        out, job, images, [r["prompt"] for r in recs], vq, device, GRID_IMAGES, None, PROGRESSION_IMAGES
    )
    return {k: figs[k] for k in ("grid", "progression_png", "progression_gif")}


def describe_folders(run_dir: Path) -> list[str]:
    """One line per folder of ``run_dir/generate`` (``pt2i status``): its name, images done of those asked, and the
    checkpoint it sampled when not the export."""
    root = Path(run_dir) / "generate"
    lines = []
    for folder in sorted(p for p in root.iterdir() if (p / JOB).is_file()) if root.is_dir() else []:
        record = json.loads((folder / JOB).read_text())
        n = len(read_prompts(folder)) if (folder / PROMPTS).is_file() else 0
        done = sum(1 for _ in (folder / "images").glob("*.png")) if (folder / "images").is_dir() else 0
        ckpt = record.get("inputs", {}).get("checkpoint")
        source = f", checkpoint {ckpt['tag']}" if ckpt else ""
        lines.append(f"{folder.name}: {done}/{n} images, T={record['sample'].get('steps')}{source}")
    return lines
