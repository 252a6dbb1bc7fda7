"""Image shards -> token shards (layout in ``tokenization.shards``) on a pool of encoder actors.

One Ray task per image shard, run by a pool of encoder actors (``num_gpus=1`` each on a cluster with
GPUs, CPU actors otherwise; locally an embedded Ray on 127.0.0.1) through the shared work queue
(``cluster.work_queue``). An actor that dies (node lost, process killed) or holds a shard longer than
``data.tokenize.shard_timeout_s`` is replaced and its shard goes back to the queue (``max_restarts``
retries per shard); the other shards are untouched and the surviving actors carry on. Actors that cannot
be placed within ``cluster.actor_start_timeout_s`` fail the stage with a message naming what each needs
and what the cluster holds. Each token shard is written to a temporary file and renamed when complete,
after its ``NAME_stats.json``, which records the shard's sha256 and its lineage (tokenizer, text encoder,
image shard): a finished shard is reused only when its lineage still matches, so a killed run restarted
later gives byte-identical shards and a changed tokenizer redoes every shard. A corrupt image is skipped
and counted; an image shard that cannot be read to its end is reread ``read_retries`` times and then
fails, by name, with no partial token shard kept.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import queue
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from core.files import read_json, sha256_of, write_json_atomic
from tokenization.image_limits import DEFAULT_MAX_PIXELS, open_image
from tokenization.shards import TokenShardWriter

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
MAX_LISTED = 100  # corrupt keys listed in the manifest


@dataclass
class TokenizeConfig:
    """Config of the ``tokenize`` stage (experiment key ``data.tokenize``)."""

    batch_size: int = field(default=64, metadata={"min": 1, "help": "images per encoder forward"})
    num_actors: Optional[int] = field(
        default=None,
        metadata={"min": 1, "help": "encoder actors; default one per GPU, else one per cpus_per_actor CPUs"},
    )
    cpus_per_actor: float = field(default=1.0, metadata={"min": 0.0})
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: Optional[int] = field(
        default=None, metadata={"min": 1, "help": "intra-op threads per CPU actor; default max(1, cpus_per_actor)"}
    )
    decode_threads: Optional[int] = field(
        default=None,
        metadata={
            "min": 1,
            "help": "threads per actor decoding and resizing images, ahead of the encoder; default "
            "max(1, cpus_per_actor) on a GPU actor, 1 on a CPU actor (its cores run the encoder). "
            "The token shards are the same for any number",
        },
    )
    max_restarts: int = field(
        default=3, metadata={"min": 0, "help": "retries of a shard whose actor died or ran past shard_timeout_s"}
    )
    shard_timeout_s: float = field(
        default=3600.0,
        metadata={
            "min": 0.1,
            "help": "seconds one shard may take on an actor; past it the actor is replaced and the shard redone",
        },
    )
    read_retries: int = field(
        default=2,
        metadata={
            "min": 0,
            "help": "rereads of an image shard after a read error (a network blip); then the shard fails, "
            "naming the file, and no partial token shard is kept",
        },
    )
    retry_wait_s: float = field(default=2.0, metadata={"min": 0.0, "help": "pause before each reread"})


# ----------------------------------------------------------------------------- reading image shards


class ShardReadError(RuntimeError):
    """An image shard could not be read to its end (the message names the file and the error)."""


READ_ERRORS = (tarfile.TarError, EOFError, OSError, ValueError)


def iter_image_samples(url: str) -> Iterator[tuple[str, dict]]:
    """Complete samples (``key``, {suffix: bytes}) of a webdataset tar, in key order: img2dataset writes a
    shard's samples in the order their downloads finish, which changes from run to run, so every reader
    (tokenize, the tokenizer's and the text encoder's training, the held-out split) sees them sorted. The
    shard is read whole first (one shard's bytes in memory). A truncated or unreadable tar raises
    ``ShardReadError`` naming it (the caller rereads it or fails the shard)."""
    import fsspec

    groups: dict[str, dict] = {}
    try:
        with fsspec.open(url, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                base = info.name.rsplit("/", 1)[-1]
                k, _, suffix = base.partition(".")
                data = tar.extractfile(info).read()
                if len(data) != info.size:
                    raise tarfile.ReadError(f"member {info.name} cut at {len(data)}/{info.size} bytes")
                groups.setdefault(k, {})[suffix.lower()] = data
    except READ_ERRORS as e:
        raise ShardReadError(f"{url}: {type(e).__name__}: {e}") from e
    for key in sorted(groups):
        yield key, groups[key]


def source_identity(url: str) -> dict:
    """What a token shard is made from on the image side: the image shard's size and modification time
    (or ETag), read without opening it; a regenerated shard under the same name has another."""
    from cluster.shared_storage import url_to_fs

    fs, path = url_to_fs(url)
    info = fs.info(path)
    stamp = info.get("mtime") or info.get("ETag") or info.get("LastModified") or info.get("created")
    return {"size": int(info.get("size") or 0), "stamp": str(stamp)}


def _image_suffix(group: dict) -> Optional[str]:
    return next((s for s in IMAGE_EXTS if s in group), None)


def decode_image(data: bytes, size: Optional[int], max_pixels: int = DEFAULT_MAX_PIXELS):
    """bytes -> uint8 array [H, W, 3]; center-cropped and resized to ``size`` if it differs. An image over
    ``max_pixels`` is refused at its header (``ImageRefused``), before decoding."""
    import numpy as np
    from PIL import Image

    img = open_image(data, max_pixels).convert("RGB")
    resized = False
    if size and img.size != (size, size):
        w, h = img.size
        s = min(w, h)
        img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        img = img.resize((size, size), Image.BICUBIC)
        resized = True
    return np.asarray(img), resized


# ----------------------------------------------------------------------------- the encoder actor


class ShardEncoder:
    """Holds an image encoder and a text tokenizer; turns one image shard into one token shard.

    ``make_image_encoder()`` -> object with ``encode(images float [-1,1] [B,3,H,W]) -> (ids [B,L], qerr [B,L])``;
    ``make_text_tokenizer()`` -> object with ``tokenize(captions) -> (ids [B,S], mask [B,S])``.
    Both factories are called inside the actor (pickled, so module-level callables or partials).
    """

    def __init__(
        self,
        make_image_encoder: Callable,
        make_text_tokenizer: Callable,
        batch_size: int,
        image_size: Optional[int],
        torch_threads: Optional[int] = None,
        device: str = "cpu",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        decode_threads: int = 1,
    ):
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.device = torch.device("cuda" if device == "cuda" and torch.cuda.is_available() else "cpu")
        self.model = make_image_encoder()
        if hasattr(self.model, "to"):
            self.model = self.model.to(self.device)
        if hasattr(self.model, "eval"):
            self.model.eval()
        self.text = make_text_tokenizer()
        self.batch_size = batch_size
        self.image_size = image_size
        self.max_pixels = max_pixels
        self.decode_threads = decode_threads

    def pid(self) -> int:
        return os.getpid()

    def _encode(self, batch: list[tuple[str, object, str]], source: str) -> list[dict]:
        import numpy as np
        import torch

        keys, images, captions = zip(*batch)
        x = torch.from_numpy(np.stack(images)).to(self.device).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        t0 = time.perf_counter()
        with torch.inference_mode():
            ids, qerr = self.model.encode(x)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the encoder's time, not its launch's
        self.encode_seconds += time.perf_counter() - t0
        text_ids, mask = self.text.tokenize(list(captions))
        ids, qerr = ids.cpu().numpy(), qerr.float().cpu().numpy()
        text_ids = np.asarray(text_ids.cpu() if hasattr(text_ids, "cpu") else text_ids)
        mask = np.asarray(mask.cpu() if hasattr(mask, "cpu") else mask).astype(bool)
        height, width = x.shape[2], x.shape[3]
        f = int(round((height * width / ids.shape[1]) ** 0.5))
        grid = [height // f, width // f]
        return [
            {
                "key": key,
                "tokens": ids[i],
                "qerr": qerr[i],
                "text_ids": text_ids[i][mask[i]],
                "txt": captions[i],
                "source_shard": source,
                "grid": grid,
            }
            for i, key in enumerate(keys)
        ]

    def _decode(self, data: bytes):
        """(uint8 image, resized) or None for an image that cannot be decoded (counted corrupt)."""
        try:
            return decode_image(data, self.image_size, self.max_pixels)
        except Exception:  # noqa: BLE001  (PIL raises many types for broken files)
            return None

    def _samples(self, src: str, stats: dict, decode_many: Callable) -> Iterator[tuple]:
        """(key, uint8 image, caption) of an image shard's complete samples, in key order; the images of
        ``batch_size`` samples at a time go through ``decode_many`` (an ordered map); counts into ``stats``."""
        chunk: list = []

        def decoded() -> Iterator[tuple]:
            for (key, _, caption), image in zip(chunk, decode_many(self._decode, [c[1] for c in chunk])):
                if image is None:
                    stats["corrupt_keys"].append(key)
                    continue
                stats["resized"] += image[1]
                yield key, image[0], caption

        for key, group in iter_image_samples(src):
            suffix = _image_suffix(group)
            if suffix is None or "txt" not in group:
                continue  # failed downloads have no image; a cut sample is incomplete
            chunk.append((key, group[suffix], group["txt"].decode("utf-8", errors="replace")))
            if len(chunk) == self.batch_size:
                yield from decoded()
                chunk = []
        yield from decoded()

    def _batches(self, src: str, stats: dict) -> Iterator[list]:
        """Decoded batches [(key, uint8 image, caption)] of an image shard; counts into ``stats``. The images
        are decoded on ``decode_threads`` threads (PIL releases the GIL while it decodes and resizes); the
        batches do not depend on their number."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.decode_threads, "decode") as pool:
            batch = []
            for sample in self._samples(src, stats, pool.map if self.decode_threads > 1 else map):
                batch.append(sample)
                if len(batch) == self.batch_size:
                    yield batch
                    batch = []
            if batch:
                yield batch

    def encode_shard(
        self,
        src: str,
        dst: str,
        source_name: str,
        lineage: Optional[str] = None,
        read_retries: int = 0,
        retry_wait_s: float = 0.0,
    ) -> dict:
        """Tokenize ``src`` into ``dst`` unless ``dst`` exists with the same ``lineage`` (what made it: the
        tokenizer, the text encoder, the image shard); returns the shard's stats. Reading and decoding run in a
        thread ahead of the encoder; samples stream into a temporary file renamed at the end. A read error
        rereads the whole shard up to ``read_retries`` times, then raises ``ShardReadError``: a token shard
        is written complete or not at all."""
        t0, self.encode_seconds = time.time(), 0.0
        dst_p = Path(dst)
        lineage = json.loads(lineage) if lineage else None  # JSON text in the job: jobs stay hashable
        done = finished_stats(dst, lineage)
        if done is not None:
            return {**done, "skipped": True}
        dst_p.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(read_retries + 1):
            try:
                stats = self._encode_shard(src, dst_p, source_name, lineage)
                break
            except ShardReadError:
                if attempt == read_retries:
                    raise
                time.sleep(retry_wait_s)
        return {
            **stats,
            "seconds": time.time() - t0,
            "encode_seconds": self.encode_seconds,
            "read_attempts": attempt + 1,
            "skipped": False,
            "node": _node_id(),
        }

    def _encode_shard(self, src: str, dst_p: Path, source_name: str, lineage: Optional[dict]) -> dict:
        info: dict = {"corrupt_keys": [], "resized": 0}
        dst_p.unlink(missing_ok=True)  # a shard being redone: a kill after the new stats must not leave the old tar
        with TokenShardWriter(dst_p) as writer:
            for batch in prefetch(self._batches(src, info), depth=2):
                for sample in self._encode(batch, source_name):
                    writer.write(sample)
            writer.close()
            stats = {
                "name": dst_p.name,
                "source": source_name,
                "samples": writer.count,
                "corrupt": len(info["corrupt_keys"]),
                "corrupt_keys": info["corrupt_keys"][:MAX_LISTED],
                "resized": info["resized"],
                "sha256": writer.sha256,
                "lineage": lineage,
            }
            write_json_atomic(_stats_name(str(dst_p)), stats)  # before the tar's rename: a tar always has its stats
        return stats


def finished_stats(dst: str, lineage: Optional[dict]) -> Optional[dict]:
    """The stats of a finished token shard made with ``lineage``; None when it is missing or made otherwise."""
    stats = read_json(_stats_name(dst))
    if not Path(dst).exists() or not isinstance(stats, dict):
        return None
    return stats if stats.get("lineage") == lineage else None


def _node_id() -> Optional[str]:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001  (outside Ray)
        return None


def prefetch(items: Iterator, depth: int = 2) -> Iterator:
    """Iterate ``items`` in a background thread, ``depth`` items ahead (order kept, errors re-raised)."""
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()
    error: list = []

    def run():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as e:  # noqa: BLE001  (handed to the consumer)
            error.append(e)
        while not stop.is_set():
            try:
                q.put(end, timeout=0.1)
                return
            except queue.Full:
                continue

    thread = threading.Thread(target=run, name="prefetch", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not end:
            yield item
    finally:
        stop.set()  # the consumer is done (or gave up): let the producer finish
        thread.join(5)
    if error:
        raise error[0]


# ----------------------------------------------------------------------------- driver


def _stats_name(tar_path: str) -> str:
    return tar_path[: -len(".tar")] + "_stats.json"


def token_shard_samples(tar_path: str) -> int:
    """The samples of a finished token shard (its stats file's count; 0 without one)."""
    return int((read_json(_stats_name(tar_path)) or {}).get("samples", 0))


def decode_threads(cfg: TokenizeConfig, gpu: bool) -> int:
    """Image decoding threads per actor: ``cfg.decode_threads``, else the actor's CPUs on a GPU actor and one on
    a CPU actor (whose cores run the encoder)."""
    return cfg.decode_threads or (max(1, int(cfg.cpus_per_actor)) if gpu else 1)


def _pool_size(cfg: TokenizeConfig, gpus: float, cpus: float, jobs: int) -> int:
    if cfg.num_actors:
        n = cfg.num_actors
    elif gpus >= 1 and cfg.device != "cpu":
        n = int(gpus)
    else:
        n = int(cpus // cfg.cpus_per_actor) if cfg.cpus_per_actor > 0 else 1
    return max(1, min(n, jobs))


def run_tokenize(
    cfg: TokenizeConfig,
    jobs: list[tuple[str, str, str]],
    make_image_encoder: Callable,
    make_text_tokenizer: Callable,
    image_size: Optional[int] = None,
    ray_address: Optional[str] = None,
    expected_samples: Optional[int] = None,
    log: Callable[[str], None] = print,
    start_timeout_s: Optional[float] = None,
    lineage: Optional[dict] = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> dict:
    """Tokenize ``jobs`` = [(source tar URL, destination token tar path, source name)] on a
    ``cluster.work_queue.WorkQueue`` of encoder actors (one shard each at a time; a shard past
    ``cfg.shard_timeout_s`` or whose actor died is redone on a replacement, up to ``cfg.max_restarts``
    times; the actors must be up within ``start_timeout_s``, default ``cluster.actor_start_timeout_s``'s); an
    image with more than ``max_pixels`` pixels is counted corrupt without being decoded.

    ``lineage``: what the tokens are made with (the tokenizer, the text encoder, the settings); each token
    shard records it with its image shard's identity, and a finished shard is reused only when both still
    match (the log says how many were reused and redone). Returns ``{"counts", "corrupt", "metrics",
    "identity"}`` over all jobs (``identity``: a hash of every token shard's sha256). Raises
    ``RuntimeError`` listing shards that failed (a rerun redoes only those).
    """
    import ray
    from tqdm import tqdm

    from cluster.local_ray import alive_hosts, ensure_ray
    from cluster.shared_storage import require_shared
    from cluster.work_queue import ActorSpec, QueuePolicy, WorkFailed, WorkQueue

    t0 = time.time()
    jobs = [
        (
            *j[:3],
            json.dumps({**(lineage or {}), "source": source_identity(j[0])}, sort_keys=True),
            cfg.read_retries,
            cfg.retry_wait_s,
        )
        for j in jobs
    ]
    finished = [finished_stats(j[1], json.loads(j[3])) for j in jobs]  # read once: reused below
    todo = [j for j, done in zip(jobs, finished) if done is None]
    redo = sum(1 for j in todo if Path(j[1]).exists())
    if len(todo) < len(jobs) or redo:
        log(
            f"[tokenize] {len(jobs) - len(todo)} shard(s) reused (same tokenizer, text encoder and image shard), "
            f"{redo} redone (made from something else), {len(todo) - redo} new"
        )
    results: list[dict] = []
    with ensure_ray(ray_address):
        require_shared(str(Path(jobs[0][1]).parent) if jobs else ".", alive_hosts(), "run_dir")
        if todo:
            gpus = float(ray.cluster_resources().get("GPU", 0))
            use_gpu = cfg.device == "cuda" or (cfg.device == "auto" and gpus >= 1)
            n = _pool_size(cfg, gpus, float(ray.cluster_resources().get("CPU", 1)), len(todo))
            threads = cfg.torch_threads or max(1, int(cfg.cpus_per_actor))
            decoders = decode_threads(cfg, use_gpu)
            args = (make_image_encoder, make_text_tokenizer, cfg.batch_size, image_size)
            args += ((None, "cuda") if use_gpu else (threads, "cpu")) + (max_pixels, decoders)
            spec = ActorSpec(ShardEncoder, args, num_cpus=cfg.cpus_per_actor, num_gpus=1 if use_gpu else 0)
            policy = QueuePolicy(
                max_attempts=cfg.max_restarts + 1,
                item_timeout_s=cfg.shard_timeout_s,
                item_key="data.tokenize.shard_timeout_s",
                workers_key="data.tokenize.num_actors",
                start_timeout_s=start_timeout_s,
            )
            log(
                f"[tokenize] {len(todo)}/{len(jobs)} shards on {n} {'GPU' if use_gpu else 'CPU'} actor(s), "
                f"{decoders} image decoding thread(s) each"
            )
            done_before = sum(done["samples"] for done in finished if done is not None)
            bar = tqdm(total=expected_samples, initial=done_before, unit="img", desc="tokenize", smoothing=0.1)
            try:
                with WorkQueue(spec, n, policy, "tokenize", log) as queue:
                    for _, res in queue.map("encode_shard", todo, label=lambda job: f"shard {job[2]}"):
                        results.append(res)
                        bar.update(res["samples"])
                        bar.set_postfix(shards=f"{len(results)}/{len(todo)}")
            except WorkFailed as exc:
                raise RuntimeError(f"{exc}; rerun the stage to redo only them") from None
            finally:
                bar.close()
    seconds = time.time() - t0
    all_stats = [read_json(_stats_name(j[1])) for j in jobs]
    corrupt = [s for s in all_stats if s["corrupt"]]
    if corrupt:  # one line, not one per shard (tens of thousands at LAION scale); the manifest lists them all
        named = ", ".join(f"{s['source']} ({s['corrupt']})" for s in corrupt[:5])
        log(
            f"[tokenize] {sum(s['corrupt'] for s in corrupt)} corrupt image(s) skipped in {len(corrupt)} shard(s): "
            f"{named}{', ...' if len(corrupt) > 5 else ''}"
        )
    return {
        "counts": {
            "shards": len(jobs),
            "shards_done_now": len(results),
            "samples": sum(s["samples"] for s in all_stats),
            "corrupt_images": sum(s["corrupt"] for s in all_stats),
            "resized_images": sum(s["resized"] for s in all_stats),
            "shards_reused": len(jobs) - len(todo),
        },
        "corrupt": {s["source"]: s["corrupt_keys"] for s in all_stats if s["corrupt"]},
        "identity": hashlib.sha256("".join(s["sha256"] for s in all_stats).encode()).hexdigest(),
        "shards_sha256": {s["source"]: s["sha256"] for s in all_stats},
        "metrics": shard_metrics(results, seconds),
    }


def shard_metrics(results: list[dict], seconds: float) -> dict:
    """Throughput of a tokenize run from its shards' stats (``ShardEncoder.encode_shard``) and its wall time."""
    new = sum(r["samples"] for r in results)
    busy = sum(r.get("seconds", 0.0) for r in results if not r.get("skipped"))
    return {
        "seconds": round(seconds, 3),
        "new_samples": new,
        "images_per_s": round(new / seconds, 2) if new else None,
        "actor_seconds": round(busy, 3),  # summed shard task time: steady-state speed per actor
        "actor_images_per_s": round(new / busy, 2) if busy else None,
        "encode_fraction": round(sum(r.get("encode_seconds", 0.0) for r in results) / busy, 4) if busy else None,
        "shards_per_node": dict(collections.Counter(r.get("node") or "?" for r in results)),
    }


# ----------------------------------------------------------------------------- the stage


class VQGANFactory:
    """Picklable ``() -> VQModel``: from the tokenizer stage's folder if it saved one, else ``load_vqgan(cfg)``."""

    def __init__(self, tokenizer_cfg, folder: Optional[str] = None):
        self.cfg, self.folder = tokenizer_cfg, folder

    def __call__(self):
        from tokenization.vqgan import load_tokenizer_dir, load_vqgan

        return load_tokenizer_dir(self.folder) if self.folder else load_vqgan(self.cfg)


class TextFactory:
    """Picklable ``() -> object with tokenize(captions) -> (ids, mask)``: the text stage's encoder's tokenizer
    alone (``load_text_tokenizer(cfg, folder)``: no actor loads the encoder's weights)."""

    def __init__(self, text_cfg, folder: Optional[str] = None):
        self.cfg, self.folder = text_cfg, folder

    def __call__(self):
        from tokenization.text import load_text_tokenizer

        return load_text_tokenizer(self.cfg, self.folder)


def tokenizer_identity(tokenizer_cfg, folder: Optional[Path]) -> dict:
    """Config hash (of the keys that can change the weights: ``tokenization.vqgan.train.weights_config``) and
    checkpoint sha256 of the VQ-GAN that will be used."""
    from core.config import config_hash, to_dict
    from tokenization.vqgan.train import weights_config

    if folder is not None:
        import yaml

        doc = yaml.safe_load((folder / "tokenizer.yaml").read_text()) or {}
        ckpt = folder / "vqgan.safetensors"
        ckpt = ckpt if ckpt.is_file() else Path(doc.get("ckpt_path") or "")
        doc.pop("ckpt_path", None)
        return {
            "config_hash": config_hash(weights_config(doc)),
            "checkpoint": str(ckpt),
            "checkpoint_sha256": sha256_of(ckpt) if ckpt.is_file() else None,
        }
    ckpt = getattr(tokenizer_cfg, "ckpt_path", None)
    return {
        "config_hash": config_hash(weights_config(to_dict(tokenizer_cfg))),
        "checkpoint": ckpt,
        "checkpoint_sha256": sha256_of(ckpt) if ckpt and Path(ckpt).is_file() else None,
    }
