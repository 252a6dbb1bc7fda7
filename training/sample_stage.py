"""The ``sample`` stage: the trained model -> images (and token maps) for the evaluation caption set.

Prompts: the synthetic ``eval/`` split's captions when ``data.download.source`` is synthetic (the first
``eval.num_prompts``), else ``evaluation.coco.sample_prompts(eval.coco_captions, eval.num_prompts,
eval.prompt_seed)`` (one random caption per image). The choice is saved as ``prompts.jsonl`` so two runs
compare on the same prompts.

Prompts are cut into fixed chunks of ``sample.batch_size``; chunk c's generator is seeded from
``(sample.seed, c)`` (:func:`chunk_seed`), so an image depends only on its chunk, never on which worker ran
it or in which order. Chunks run in this process, or on Ray actors (one GPU each) when the Ray cluster has
GPUs (``eval.sample_workers``). Layout under ``RUN/sample/``::

    prompts.jsonl             {"index", "prompt", "refs", and "image" (synthetic: the real image, relative to the
                              synthetic stage folder) or "image_id"/"file_name" (COCO)}
    job.json                  what the samples depend on; when it changes, old chunks are removed
    images/NNNNNNNN.png       one per prompt (prompt index)
    steps/chunk_NNNNN.npz     per-step maps (eval.save_step_maps): tokens int16 [B, T, L] (mask id = K where
                              not yet written), states int8 [B, T, L] (0 keep, 1 generate, 2 revise), index [B]
    tokens/chunk_NNNNN.npy    the chunk's final tokens, renamed into place LAST: the chunk's completion mark
    tokens.npy                all final tokens [N, L] (int16 when K <= 32767), assembled at the end

A chunk is finished when its tokens file, all its PNGs and (when asked) its step maps exist; a rerun
redoes only unfinished chunks.

``sample.order: learned`` generates with the position policy a ``train.order: learned`` run exported
beside the model (``policy.safetensors``; ``training.load.load_exported_policy``): at every step the
policy scores the positions from the current state and the sampler writes its top-k (PDM 3.2). Its
absence fails the stage before any sampling. Chunks and their seeds are the same as for every order.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from pipeline.stages import StageContext, StageError, stage

PROMPTS, JOB = "prompts.jsonl", "job.json"
Log = Callable[[str], None]


# ----------------------------------------------------------------------------- prompts

def eval_prompts(cfg, synthetic_dir: Path) -> tuple[list[dict], str]:
    """(prompt records, a description of the source) for the experiment config ``cfg``."""
    ev = cfg.eval
    if cfg.data.download.source == "synthetic":
        import pandas as pd

        split = Path(synthetic_dir) / "eval"
        if not (split / "urls.parquet").is_file():
            raise StageError(f"no synthetic eval split at {split} (urls.parquet missing): rerun the synthetic stage")
        df = pd.read_parquet(split / "urls.parquet", columns=["URL", "TEXT"]).iloc[:ev.num_prompts]
        texts = [str(t) for t in df["TEXT"]]
        files = ["eval/images/" + str(u).rsplit("/", 1)[-1] for u in df["URL"]]
        if not texts:
            raise StageError(f"the prompt set is empty: the synthetic eval split {split} has no captions "
                             f"(data.synthetic.n_eval = {cfg.data.synthetic.n_eval}); set n_eval >= 2")
        recs = [{"index": i, "prompt": t, "refs": [t], "image": f} for i, (t, f) in enumerate(zip(texts, files))]
        return recs, f"synthetic eval split {split} (first {len(recs)} captions)"
    if not ev.coco_captions:
        raise StageError("data.download.source is not synthetic, so the prompts come from MS COCO: set "
                         "eval.coco_captions to captions_val2014.json (from "
                         "http://images.cocodataset.org/annotations/annotations_trainval2014.zip)")
    from evaluation.coco import sample_prompts

    chosen = sample_prompts(ev.coco_captions, n=ev.num_prompts, seed=ev.prompt_seed)
    recs = [{"index": i, "prompt": p.prompt, "refs": list(p.refs), "image_id": p.image_id, "file_name": p.file_name}
            for i, p in enumerate(chosen)]
    return recs, f"MS COCO {ev.coco_captions} ({len(recs)} images, one random caption each, seed {ev.prompt_seed})"


def read_prompts(folder: str | Path) -> list[dict]:
    """The records of ``prompts.jsonl`` in a sample folder."""
    path = Path(folder) / PROMPTS
    if not path.is_file():
        raise StageError(f"{path} is missing: rerun the sample stage")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- chunks

def chunk_seed(seed: int, chunk: int) -> int:
    """The generator seed of chunk ``chunk``: a function of (sample.seed, chunk) only."""
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1, np.uint64)[0] >> np.uint64(1))


@dataclass
class SampleJob:
    """Everything a worker needs (picklable, no config objects)."""
    out_dir: str
    export_dir: str
    tokenizer_dir: str
    text_dir: str
    text_cfg: dict
    sample_cfg: dict
    n_prompts: int
    save_step_maps: str = "first"
    use_ema: bool = True

    @property
    def batch_size(self) -> int:
        return int(self.sample_cfg["batch_size"])

    @property
    def n_chunks(self) -> int:
        return -(-self.n_prompts // self.batch_size)

    def indices(self, chunk: int) -> range:
        return range(chunk * self.batch_size, min((chunk + 1) * self.batch_size, self.n_prompts))

    def wants_steps(self, chunk: int) -> bool:
        return self.sample_cfg["sampler"] == "progressive" and (
            self.save_step_maps == "all" or (self.save_step_maps == "first" and chunk == 0))


def job_for(cfg, out_dir: Path, run_dir: Path, n_prompts: int) -> SampleJob:
    """The job of experiment ``cfg``'s sample folder ``out_dir`` (inputs read from ``run_dir``)."""
    from pipeline.config import to_dict

    run_dir = Path(run_dir)
    return SampleJob(out_dir=str(out_dir), export_dir=str(run_dir / "train" / "export"),
                     tokenizer_dir=str(run_dir / "tokenizer"), text_dir=str(run_dir / "text"),
                     text_cfg=to_dict(cfg.text_encoder), sample_cfg=to_dict(cfg.sample), n_prompts=n_prompts,
                     save_step_maps=cfg.eval.save_step_maps, use_ema=cfg.eval.use_ema)


def image_path(out_dir: str | Path, index: int) -> Path:
    return Path(out_dir) / "images" / f"{index:08d}.png"


def tokens_path(out_dir: str | Path, chunk: int) -> Path:
    return Path(out_dir) / "tokens" / f"chunk_{chunk:05d}.npy"


def steps_path(out_dir: str | Path, chunk: int) -> Path:
    return Path(out_dir) / "steps" / f"chunk_{chunk:05d}.npz"


def chunk_done(job: SampleJob, chunk: int) -> bool:
    if not tokens_path(job.out_dir, chunk).is_file():
        return False
    if job.wants_steps(chunk) and not steps_path(job.out_dir, chunk).is_file():
        return False
    return all(image_path(job.out_dir, i).is_file() for i in job.indices(chunk))


def to_uint8(images) -> np.ndarray:
    """VQ-GAN output [B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3]."""
    import torch

    x = ((images.float().clamp(-1, 1) + 1.0) * 127.5).round().clamp(0, 255)
    return x.to("cpu", dtype=torch.uint8).permute(0, 2, 3, 1).numpy()


class ChunkWorker:
    """Samples chunks of a :class:`SampleJob`; loads the models on first use (in a Ray actor: on the worker)."""

    def __init__(self, job: SampleJob, device: Optional[str] = None, threads: Optional[int] = None):
        self.job, self.device, self.threads = job, device, threads
        self.model = None

    def _load(self) -> None:
        import torch

        from tokenization.text import TextEncoderConfig, load_text_encoder
        from tokenization.vqgan import load_tokenizer_dir
        from training.load import load_exported_model
        from training.sampling import SampleConfig, kmeans_codebook

        if self.threads:
            torch.set_num_threads(self.threads)
        self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        job = self.job
        self.cfg = SampleConfig(**job.sample_cfg)
        self.vq = load_tokenizer_dir(job.tokenizer_dir).to(self.device).eval()
        text_cfg = TextEncoderConfig(**{**job.text_cfg, "device": self.device})
        self.text = load_text_encoder(text_cfg, job.text_dir)
        self.model, model_cfg, meta = load_exported_model(job.export_dir, tokenizer=self.vq, text_dim=self.text.dim,
                                                          device=self.device, prefer_ema=job.use_ema)
        want = "ar" if self.cfg.sampler == "autoregressive" else "pdm"
        if meta["kind"] != want:
            raise StageError(f"sample.sampler is {self.cfg.sampler!r} but {meta['weights']} holds a "
                             f"{'autoregressive' if meta['kind'] == 'ar' else 'progressive'} model "
                             f"(train.mode {meta['train_mode']!r}); set sample.sampler accordingly")
        self.order = None                      # None: generate() follows sample.order
        if self.cfg.order == "learned":        # the trained policy picks the positions at every step
            from training.load import load_exported_policy
            from training.order_learner import Learned

            policy, _ = load_exported_policy(job.export_dir, model_cfg=model_cfg, model_meta=meta, device=self.device)
            self.order = Learned(policy, self.model)
        self.clusters = None
        if self.cfg.cluster_sampling:
            g = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
            self.clusters = kmeans_codebook(self.vq.codebook.detach(), self.cfg.n_clusters, g)
        self.prompts = [r["prompt"] for r in read_prompts(job.out_dir)]

    def sample(self, chunk: int, record_steps: bool = False):
        """(SampleResult, uint8 images [B, H, W, 3]) of chunk ``chunk``, in memory (nothing written)."""
        import torch

        from training.sampling import generate

        if self.model is None:
            self._load()
        idx = list(self.job.indices(chunk))
        cfg = replace(self.cfg, record_steps=record_steps)
        with torch.no_grad():
            ids, mask = self.text.tokenize([self.prompts[i] for i in idx])
            states = self.text.encode(ids.to(self.device), mask.to(self.device))
            g = torch.Generator(device=self.device).manual_seed(chunk_seed(cfg.seed, chunk))
            res = generate(self.model, states, mask.to(self.device), cfg, generator=g, clusters=self.clusters,
                           order=self.order)
            return res, to_uint8(self.vq.decode(res.tokens))

    def run(self, chunk: int) -> dict:
        """Sample chunk ``chunk`` unless it is finished; returns what was done and how long it took."""
        if chunk_done(self.job, chunk):
            return {"chunk": chunk, "skipped": True, "images": 0, "seconds": 0.0}
        if self.model is None:
            self._load()
        t0 = time.time()
        steps = self.job.wants_steps(chunk)
        res, images = self.sample(chunk, steps)
        idx = list(self.job.indices(chunk))
        self._write(chunk, idx, res, images, steps)
        return {"chunk": chunk, "skipped": False, "images": len(idx), "seconds": time.time() - t0}

    def _write(self, chunk: int, idx: list[int], res, images: np.ndarray, steps: bool) -> None:
        from PIL import Image

        out = Path(self.job.out_dir)
        for i, img in zip(idx, images):
            path = image_path(out, i)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            Image.fromarray(img).save(tmp, format="PNG")
            os.replace(tmp, path)
        dtype = np.int16 if self.model.codebook_size < 32767 else np.int32
        if steps:
            import torch

            path = steps_path(out, chunk)
            tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npz")
            np.savez_compressed(tmp, tokens=torch.stack(list(res.steps), 1).cpu().numpy().astype(dtype),
                                states=torch.stack(list(res.states), 1).cpu().numpy().astype(np.int8),
                                index=np.asarray(idx, np.int64))
            os.replace(tmp, path)
        path = tokens_path(out, chunk)
        tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npy")
        np.save(tmp, res.tokens.cpu().numpy().astype(dtype))
        os.replace(tmp, path)            # last: the chunk is finished


# ----------------------------------------------------------------------------- running chunks

def run_chunks_local(job: SampleJob, chunks: list[int], log: Log) -> list[dict]:
    """Sample ``chunks`` in this process, in order."""
    worker, results = ChunkWorker(job), []
    for n, c in enumerate(chunks, 1):
        results.append(worker.run(c))
        log(f"[sample] chunk {c} ({n}/{len(chunks)}): {results[-1]['images']} images "
            f"in {results[-1]['seconds']:.1f}s")
    return results


def run_chunks_ray(job: SampleJob, chunks: list[int], workers: Optional[int], address: Optional[str],
                   log: Log) -> Optional[list[dict]]:
    """Sample ``chunks`` on Ray actors (one GPU each when the cluster has GPUs), a chunk at a time each.
    Returns None, having done nothing, when ``workers`` is None and the cluster has no GPU."""
    import ray

    from cluster.local_ray import alive_hosts, cluster_gpus, ensure_ray
    from tokenization.download import check_shared_output

    results: list[dict] = []
    with ensure_ray(address):
        gpus = cluster_gpus()
        if workers is None and gpus < 1:
            log("[sample] the Ray cluster has no GPU: sampling in this process")
            return None
        try:
            check_shared_output(job.out_dir, alive_hosts(), False)
        except ValueError:
            raise StageError(f"the Ray cluster spans {alive_hosts()} machines but {job.out_dir} is on a local disk: set "
                             f"run_dir to storage every node mounts at the same path") from None
        n = max(1, min(workers or int(gpus) or 1, len(chunks)))
        cls = ray.remote(ChunkWorker).options(num_gpus=1 if gpus >= 1 else 0, num_cpus=1, max_restarts=2,
                                              max_task_retries=2)
        actors = [cls.remote(job, "cuda" if gpus >= 1 else "cpu", None if gpus >= 1 else 1) for _ in range(n)]
        log(f"[sample] {len(chunks)} chunks on {n} Ray {'GPU' if gpus >= 1 else 'CPU'} actor(s)")
        queue, pending, idle = list(chunks), {}, list(actors)
        try:
            while queue or pending:
                while queue and idle:
                    a = idle.pop()
                    pending[a.run.remote(queue.pop(0))] = a
                done, _ = ray.wait(list(pending), num_returns=1)
                idle.append(pending.pop(done[0]))
                results.append(ray.get(done[0]))
        finally:
            for a in actors:
                ray.kill(a)
    return results


def use_ray(workers: Optional[int], address: Optional[str]) -> bool:
    """Ray actors when asked (workers >= 1), or by default when there is a cluster or several local GPUs."""
    if workers is not None:
        return workers >= 1
    if address:
        return True
    import torch

    return torch.cuda.device_count() > 1


def assemble_tokens(job: SampleJob) -> Path:
    """``tokens.npy`` [N, L] from the chunk files (tmp + rename)."""
    parts = [np.load(tokens_path(job.out_dir, c)) for c in range(job.n_chunks)]
    path = Path(job.out_dir) / "tokens.npy"
    tmp = path.with_name(f".tokens.tmp{os.getpid()}.npy")
    np.save(tmp, np.concatenate(parts))
    os.replace(tmp, path)
    return path


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
        _write_text(path, json.dumps(fingerprint, indent=2))
    for d in ("images", "tokens", "steps"):
        (out / d).mkdir(exist_ok=True)
        for tmp in (out / d).glob(".*.tmp*"):   # debris of a killed run (no worker is running yet)
            tmp.unlink(missing_ok=True)


@stage("sample", inputs=("train", "tokenizer", "text", "synthetic"), sections=("sample", "eval"),
       uses_ray=lambda cfg: use_ray(cfg.eval.sample_workers, cfg.cluster.address))
def sample_stage(ctx: StageContext) -> dict:
    """Generate images for the evaluation captions (synthetic eval split or MS COCO) in seeded chunks."""
    from pipeline.config import to_dict

    cfg, out = ctx.config, ctx.out_dir
    if cfg.sample.n_candidates > 1:
        raise StageError("sample.n_candidates > 1 needs a reranking scorer, which the sample stage does not "
                         "provide; set sample.n_candidates: 1")
    export = ctx.input_dir("train") / "export"
    for name in ("model.safetensors", "config.yaml"):
        if not (export / name).is_file():
            raise StageError(f"{export / name} is missing: rerun the train stage (`pt2i run CONFIG --stage train`)")
    if cfg.sample.order == "learned":
        from training.load import ExportError, require_policy

        try:
            require_policy(export)
        except ExportError as exc:
            raise StageError(str(exc)) from None
    recs, source = eval_prompts(cfg, ctx.input_dir("synthetic"))
    body = "".join(json.dumps(r) + "\n" for r in recs)
    inputs = {n: ctx.input_manifest(n).get("fingerprint") for n in ("train", "tokenizer", "text")}
    fingerprint = {"sample": to_dict(cfg.sample), "use_ema": cfg.eval.use_ema, "inputs": inputs,
                   "prompts_sha256": hashlib.sha256(body.encode()).hexdigest()}
    _reset_if_changed(out, fingerprint, ctx.log)
    if not (out / PROMPTS).is_file() or (out / PROMPTS).read_text() != body:
        _write_text(out / PROMPTS, body)
    job = job_for(cfg, out, ctx.run_dir, len(recs))
    todo = [c for c in range(job.n_chunks) if not chunk_done(job, c)]
    ctx.log(f"[sample] {len(recs)} prompts from {source}; {job.n_chunks} chunks of {job.batch_size}, "
            f"{len(todo)} to do; {cfg.sample.sampler} sampler, T={cfg.sample.steps}")
    t0 = time.time()
    results = None
    if todo and use_ray(cfg.eval.sample_workers, cfg.cluster.address):
        results = run_chunks_ray(job, todo, cfg.eval.sample_workers, cfg.cluster.address, ctx.log)
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
    return {"counts": {"prompts": len(recs), "chunks": job.n_chunks,
                       "chunks_done_now": sum(not r["skipped"] for r in results), "images_done_now": new,
                       "step_map_chunks": sum(job.wants_steps(c) for c in range(job.n_chunks))},
            "metrics": {"seconds_wall": round(wall, 3), "seconds_sampling": round(busy, 3),
                        "seconds_per_image": round(busy / new, 5) if new else None,
                        "images_per_second": round(new / wall, 3) if new and wall > 0 else None},
            "prompt_source": source, "workers": "ray" if ray_used else "in-process",
            "outputs": {"prompts": str(out / PROMPTS), "images": str(out / "images"), "tokens": str(out / "tokens.npy"),
                        "steps": str(out / "steps")}}
