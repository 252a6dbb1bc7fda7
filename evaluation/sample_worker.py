"""Sampling the evaluation prompts in fixed, seeded chunks, in this process or on Ray actors.

Prompts are cut into fixed chunks of ``sample.batch_size``; chunk c's generator is seeded from
``(sample.seed, c)`` (:func:`chunk_seed`), so an image depends only on its chunk, never on which worker ran
it or in which order; with ``sample.rng: per_prompt`` each prompt's generator is seeded from
``(sample.seed, its place)``, so its image does not depend on the chunk size either. A chunk is finished when
its tokens file, all its PNGs and (when asked) its step maps exist (``evaluation.sample_files``); a rerun redoes
only unfinished chunks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np

from core.config import to_dict
from core.files import atomic_path
from core.stage import StageError
from evaluation.sample_files import image_path, read_prompts, steps_path, to_uint8, tokens_path

Log = Callable[[str], None]


def chunk_seed(seed: int, chunk: int) -> int:
    """The generator seed of chunk ``chunk``: a function of (sample.seed, chunk) only."""
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def chunk_generator(seed: int, rng: str, chunk: int, places: list[int], device):
    """The generator chunk ``chunk`` samples with: one seeded from (seed, chunk) (``rng: per_chunk``), or one per
    prompt seeded from (seed, its place ``places[i]`` in the prompt list) (``rng: per_prompt``)."""
    from training.model.seeded_random import sampling_generator

    return sampling_generator(rng, seed if rng == "per_prompt" else chunk_seed(seed, chunk), places, device)


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
    sr_dir: Optional[str] = None  # the superres stage's folder: chain its SR model after the generator
    sr_sample_cfg: Optional[dict] = None

    @property
    def batch_size(self) -> int:
        return int(self.sample_cfg["batch_size"])

    @property
    def n_chunks(self) -> int:
        return -(-self.n_prompts // self.batch_size)

    def indices(self, chunk: int) -> range:
        return range(chunk * self.batch_size, min((chunk + 1) * self.batch_size, self.n_prompts))

    def wants_steps(self, chunk: int) -> bool:
        return self.sample_cfg["sampler"] != "autoregressive" and (
            self.save_step_maps == "all" or (self.save_step_maps == "first" and chunk == 0)
        )


def job_for(sample_cfg, text_cfg, eval_cfg, out_dir: Path, run_dir: Path, n_prompts: int, sr_cfg=None) -> SampleJob:
    """The job of a sample folder ``out_dir`` (the ``sample``, ``text_encoder`` and ``eval`` sections, and ``sr``
    when it is enabled; the models, tokenizers and text encoder read from the stage folders of ``run_dir``)."""
    run_dir = Path(run_dir)
    sr = sr_cfg if sr_cfg is not None and sr_cfg.enabled else None
    return SampleJob(
        out_dir=str(out_dir),
        export_dir=str(run_dir / "train" / "export"),
        tokenizer_dir=str(run_dir / "tokenizer"),
        text_dir=str(run_dir / "text"),
        text_cfg=to_dict(text_cfg),
        sample_cfg=to_dict(sample_cfg),
        n_prompts=n_prompts,
        save_step_maps=eval_cfg.save_step_maps,
        use_ema=eval_cfg.use_ema,
        sr_dir=str(run_dir / "superres") if sr else None,
        sr_sample_cfg=to_dict(sr.sample) if sr else None,
    )


def chunk_done(job: SampleJob, chunk: int) -> bool:
    if not tokens_path(job.out_dir, chunk).is_file():
        return False
    if job.wants_steps(chunk) and not steps_path(job.out_dir, chunk).is_file():
        return False
    return all(image_path(job.out_dir, i).is_file() for i in job.indices(chunk))


class ChunkWorker:
    """Samples chunks of a :class:`SampleJob`; loads the models on first use (in a Ray actor: on the worker)."""

    def __init__(self, job: SampleJob, device: Optional[str] = None, threads: Optional[int] = None):
        self.job, self.device, self.threads = job, device, threads
        self.model = None

    def _load(self) -> None:
        import torch

        from tokenization.text import TextEncoderConfig, load_text_encoder
        from tokenization.vqgan import load_tokenizer_dir
        from training.export_loader import load_exported_model
        from training.model import KIND_SAMPLERS
        from training.model.sampling import SampleConfig, kmeans_codebook

        if self.threads:
            torch.set_num_threads(self.threads)
        self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        job = self.job
        self.cfg = SampleConfig(**job.sample_cfg)
        self.vq = load_tokenizer_dir(job.tokenizer_dir).to(self.device).eval()
        text_cfg = TextEncoderConfig(**{**job.text_cfg, "device": self.device})
        self.text = load_text_encoder(text_cfg, job.text_dir)
        self.model, model_cfg, meta = load_exported_model(
            job.export_dir, tokenizer=self.vq, text_dim=self.text.dim, device=self.device, prefer_ema=job.use_ema
        )
        if KIND_SAMPLERS[meta["kind"]] != self.cfg.sampler:
            raise StageError(
                f"sample.sampler is {self.cfg.sampler!r} but {meta['weights']} holds a {meta['kind']} model "
                f"(train.mode {meta['train_mode']!r}); set sample.sampler: {KIND_SAMPLERS[meta['kind']]}"
            )
        self.order = None  # None: generate() follows sample.order
        if self.cfg.order == "learned":  # the trained policy picks the positions at every step
            from training.export_loader import load_exported_policy
            from training.model.order_learner import Learned

            policy, _ = load_exported_policy(job.export_dir, model_cfg=model_cfg, model_meta=meta, device=self.device)
            self.order = Learned(policy, self.model)
        self.clusters = None
        if self.cfg.cluster_sampling:
            g = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
            self.clusters = kmeans_codebook(self.vq.codebook.detach(), self.cfg.n_clusters, g)
        self.sr = None
        if job.sr_dir:  # CogView2: the generator's low-resolution tokens -> the SR model -> high resolution
            from training.model.super_resolution.config import SRSampleConfig
            from training.superres import load_sr_export

            self.sr = load_sr_export(Path(job.sr_dir) / "export", self.device)
            self.sr_vq = load_tokenizer_dir(Path(job.sr_dir) / "tokenizer").to(self.device).eval()
            self.sr_cfg = SRSampleConfig(**job.sr_sample_cfg)
        self.prompts = [r["prompt"] for r in read_prompts(job.out_dir)]

    def sample(self, chunk: int, record_steps: bool = False):
        """(SampleResult, uint8 images [B, H, W, 3]) of chunk ``chunk``, in memory (nothing written). With an SR
        model the images are its high-resolution ones; the result's tokens stay the generator's."""
        import torch

        from training.model.sampling import generate

        if self.model is None:
            self._load()
        idx = list(self.job.indices(chunk))
        cfg = replace(self.cfg, record_steps=record_steps)
        with torch.no_grad():
            ids, mask = self.text.tokenize([self.prompts[i] for i in idx])
            states = self.text.encode(ids.to(self.device), mask.to(self.device))
            g = chunk_generator(cfg.seed, cfg.rng, chunk, idx, self.device)
            res = generate(
                self.model, states, mask.to(self.device), cfg, generator=g, clusters=self.clusters, order=self.order
            )
            if self.sr is not None:  # the same generator continues: the chunk stays a function of its seed
                from training.model.super_resolution.sampling import super_resolve

                hi = super_resolve(self.sr, res.tokens, states, mask.to(self.device), self.sr_cfg, g).tokens
                return res, self._decode(self.sr_vq, hi)
            return res, self._decode(self.vq, res.tokens)

    def _decode(self, vq, tokens) -> np.ndarray:
        """uint8 images of ``tokens``; with ``rng: per_prompt`` one at a time: a batched decode's pixels move by
        ~1e-5 with the batch size (the kernels sum in another order), enough to change a PNG."""
        import torch

        if self.cfg.rng == "per_prompt":
            return to_uint8(torch.cat([vq.decode(tokens[i : i + 1]) for i in range(tokens.shape[0])]))
        return to_uint8(vq.decode(tokens))

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
            with atomic_path(path) as tmp:
                Image.fromarray(img).save(tmp, format="PNG")
        dtype = np.int16 if self.model.codebook_size < 32767 else np.int32
        if steps:
            import torch

            path = steps_path(out, chunk)
            with atomic_path(path) as tmp:
                np.savez_compressed(
                    tmp,
                    tokens=torch.stack(list(res.steps), 1).cpu().numpy().astype(dtype),
                    states=torch.stack(list(res.states), 1).cpu().numpy().astype(np.int8),
                    index=np.asarray(idx, np.int64),
                )
        path = tokens_path(out, chunk)
        with atomic_path(path) as tmp:  # last: the chunk is finished
            np.save(tmp, res.tokens.cpu().numpy().astype(dtype))


def run_chunks_local(
    job: SampleJob, chunks: list[int], log: Log, worker: Optional[ChunkWorker] = None, tag: str = "sample"
) -> list[dict]:
    """Sample ``chunks`` in this process, in order (on ``worker``, else a new one), a log line per chunk with the
    time left at the sampling pace so far."""
    from training.progress import eta

    worker, results, busy = worker or ChunkWorker(job), [], 0.0
    for n, c in enumerate(chunks, 1):
        r = worker.run(c)
        results.append(r)
        busy += r["seconds"]  # sampling only: not the models' loading
        left = busy / n * (len(chunks) - n)
        log(f"[{tag}] chunk {c} ({n}/{len(chunks)}): {r['images']} images in {r['seconds']:.1f}s, ETA {eta(left)}")
    return results


def run_chunks_ray(
    job: SampleJob,
    chunks: list[int],
    workers: Optional[int],
    address: Optional[str],
    log: Log,
    chunk_timeout_s: float,
    start_timeout_s: Optional[float] = None,
) -> Optional[list[dict]]:
    """Sample ``chunks`` on a ``cluster.work_queue.WorkQueue`` of Ray actors (one GPU each when the cluster
    has GPUs), a chunk at a time each: a chunk whose actor dies or runs past ``chunk_timeout_s`` is redone
    on a replacement (3 tries); actors not up within ``start_timeout_s`` (default
    ``cluster.actor_start_timeout_s``'s) fail the stage with a clear :class:`StageError`. Returns None,
    having done nothing, when ``workers`` is None and the cluster has no GPU."""
    from cluster.local_ray import alive_hosts, cluster_gpus, ensure_ray
    from cluster.shared_storage import require_shared
    from cluster.work_queue import ActorSpec, PlacementError, QueuePolicy, WorkFailed, WorkQueue

    with ensure_ray(address):
        gpus = cluster_gpus()
        if workers is None and gpus < 1:
            log("[sample] the Ray cluster has no GPU: sampling in this process")
            return None
        try:
            require_shared(job.out_dir, alive_hosts(), "run_dir")
        except ValueError as exc:
            raise StageError(str(exc)) from None
        n = max(1, min(workers or int(gpus) or 1, len(chunks)))
        spec = ActorSpec(ChunkWorker, (job, "cuda", None) if gpus >= 1 else (job, "cpu", 1), num_gpus=int(gpus >= 1))
        policy = QueuePolicy(
            item_timeout_s=chunk_timeout_s,
            item_key="eval.sample_chunk_timeout_s",
            workers_key="eval.sample_workers",
            start_timeout_s=start_timeout_s,
        )
        log(f"[sample] {len(chunks)} chunks on {n} Ray {'GPU' if gpus >= 1 else 'CPU'} actor(s)")
        try:
            with WorkQueue(spec, n, policy, "sample", log) as queue:
                done = queue.map("run", [(c,) for c in chunks], lambda item: f"chunk {item[0]}", stop_on_error=True)
                results = [r for _, r in done]
        except PlacementError as exc:
            raise StageError(str(exc)) from None
        except WorkFailed as exc:
            raise StageError(f"{exc}; rerun the stage to redo only them") from None
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
    with atomic_path(path) as tmp:
        np.save(tmp, np.concatenate(parts))
    return path
