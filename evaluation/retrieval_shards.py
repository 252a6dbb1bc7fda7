"""The retrieval baseline's training images when they live in webdataset image shards (the download
stage's img2dataset output, ``NNNNN.tar`` with ``key.jpg``/``.png``/``.webp``, ``key.txt``, ``key.json``),
as for COCO/LAION runs: embedding them is a Ray batch job.

* :func:`worker_pool`: ``eval.retrieval_workers`` :class:`ShardEmbedder` actors (default one per GPU of
  the Ray cluster, else one; ``0``: in this process), each holding the CLIP image tower; one shard per
  task on the shared work queue (``cluster.work_queue``). A shard whose actor dies or runs past
  ``eval.retrieval_shard_timeout_s`` is redone on a replacement; actors the cluster cannot place within
  ``cluster.actor_start_timeout_s`` fail with a message naming what each needs and what the cluster holds.
* :func:`embed_shards`: the driver writes each shard's result to ``CACHE/<shard id>.npz`` (sample keys and
  normalised embeddings; temporary name, then rename) as it arrives. A shard whose file exists with the
  same source stamp (URL, size, mtime) is not redone, so a killed run resumes shard by shard, and results
  travel through Ray's object store, so the actors need no shared disk with the driver.
* :class:`ShardItems` + :func:`shard_chunks`: the training items (``url#key``) and their embeddings read
  block by block (:class:`evaluation.retrieval.Chunks`), so FAISS never needs them all in memory.
* :func:`fetch_images`: after the search, the same actors read the retrieved samples' image bytes back
  from their shards; the driver writes one PNG per prompt.

Shards are read with webdataset's tar iterators over an fsspec stream (local paths and fsspec URLs). A
sample without an image member is skipped; an image that does not decode is skipped and counted.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from core.files import atomic_path
from evaluation.clip_model import ClipEncoder
from evaluation.retrieval import Chunks

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


# ----------------------------------------------------------------------------- shard files


def list_shards(spec: str) -> list[str]:
    """The ``.tar`` shards of a folder, or a brace pattern expanded (``/d/{00000..00009}.tar``); a local
    shard that does not exist is an error."""
    import braceexpand
    import fsspec

    spec = spec if "://" in spec else os.path.expanduser(spec)
    if "{" not in spec:
        fs, path = fsspec.core.url_to_fs(spec)
        if fs.isdir(path):
            found = sorted(fs.glob(path.rstrip("/") + "/*.tar"))
            if not found:
                raise FileNotFoundError(f"no .tar shards in {spec}")
            return [fs.unstrip_protocol(p) if "://" in spec else p for p in found]
    urls = list(braceexpand.braceexpand(spec))
    missing = [u for u in urls if "://" not in u and not Path(u).is_file()]
    if missing and len(urls) == 1:
        raise FileNotFoundError(f"{spec} not found (a folder of .tar shards, or a brace pattern of them)")
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(urls)} shards of {spec} not found, e.g. {missing[0]}")
    return urls


def shard_id(url: str) -> str:
    """A file-name-safe id unique per URL: ``<stem>-<sha1 of the URL>``."""
    stem = url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".tar")
    return f"{stem}-{hashlib.sha1(url.encode()).hexdigest()[:10]}"


def source_stamp(url: str) -> str:
    """What identifies a shard's content: URL, size, modification time."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    info = fs.info(path)
    mtime = info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("created") or ""
    return json.dumps([url, info.get("size"), str(mtime)])


def iter_samples(url: str) -> Iterator[dict]:
    """webdataset samples (``__key__`` + suffix -> bytes) of one shard; a corrupt tar raises."""
    import fsspec
    from webdataset.handlers import reraise_exception
    from webdataset.tariterators import group_by_keys, tar_file_expander

    with fsspec.open(url, "rb") as stream:
        files = tar_file_expander([{"url": url, "stream": stream}], handler=reraise_exception)
        yield from group_by_keys(files, handler=reraise_exception)


def image_member(sample: dict) -> Optional[bytes]:
    return next((sample[s] for s in IMAGE_EXTS if s in sample), None)


def decode_rgb(data: bytes):
    """An RGB PIL image; one over PIL's pixel limit is refused at its header (``ImageRefused``), not decoded."""
    from tokenization.image_limits import open_image

    return open_image(data).convert("RGB")


# ----------------------------------------------------------------------------- the workers


class ShardEmbedder:
    """Embeds whole shards with a CLIP image tower (a Ray actor, or used in-process)."""

    def __init__(
        self, model_name: str, checkpoint: str, device: str, batch_size: int, model_cfg: Optional[dict] = None
    ):
        self.encoder = ClipEncoder(model_name, checkpoint, device, batch_size, model_cfg)

    def embed(self, url: str) -> dict:
        """``{"url", "keys", "embeddings" float32 [n, D], "corrupt", "pid", "seconds"}`` of one shard."""
        t0 = time.time()
        keys, parts, batch, batch_keys, corrupt = [], [], [], [], 0

        def flush():
            if batch:
                parts.append(self.encoder.images(batch))
                keys.extend(batch_keys)
                batch.clear(), batch_keys.clear()

        try:
            for sample in iter_samples(url):
                data = image_member(sample)
                if data is None:  # img2dataset keeps failed downloads as json-only samples
                    continue
                try:
                    batch.append(decode_rgb(data))
                except Exception:  # noqa: BLE001  (PIL raises several types for a corrupt image)
                    corrupt += 1
                    continue
                batch_keys.append(sample["__key__"])
                if len(batch) == self.encoder.batch_size:
                    flush()
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            raise RuntimeError(
                f"retrieval baseline: image shard {url} is unreadable ({type(exc).__name__}: {exc}); "
                f"the shards embedded so far are kept, rerun after repairing or removing it"
            ) from None
        flush()
        emb = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 0), np.float32)
        return {
            "url": url,
            "keys": keys,
            "embeddings": emb,
            "corrupt": corrupt,
            "pid": os.getpid(),
            "seconds": time.time() - t0,
        }

    def fetch(self, url: str, keys: list[str]) -> dict:
        """``{"url", "images": {key: image bytes}}`` of the samples ``keys`` of one shard."""
        want, images = set(keys), {}
        for sample in iter_samples(url):
            if sample["__key__"] in want:
                images[sample["__key__"]] = image_member(sample)
                if len(images) == len(want):
                    break
        missing = want - set(images)
        if missing:
            raise KeyError(f"{url}: samples {sorted(missing)[:5]} not found (the shard changed since it was embedded)")
        return {"url": url, "images": images}


Map = Callable[[str, list[tuple]], Iterator[dict]]


@contextlib.contextmanager
def worker_pool(
    encoder: ClipEncoder,
    workers: Optional[int],
    address: Optional[str],
    shard_timeout_s: Optional[float] = None,
    start_timeout_s: Optional[float] = None,
    log: Callable[[str], None] = print,
) -> Iterator[Map]:
    """``run(method, [args, ...])`` -> results in completion order, on a ``cluster.work_queue.WorkQueue`` of
    ``workers`` Ray actors (None: one per GPU of the cluster, else 1) or, for ``workers == 0``, in this
    process. A shard whose actor dies or runs past ``shard_timeout_s`` is redone on a replacement (3 tries);
    actors not up within ``start_timeout_s`` raise ``PlacementError`` (None: the queue's defaults); an
    error inside a task is raised as it is."""
    args = (encoder.model_name, str(encoder.checkpoint) if encoder.checkpoint else None)
    rest = (encoder.batch_size, encoder.model_cfg)
    if workers == 0:
        local = ShardEmbedder(*args, encoder.device, *rest)
        yield lambda method, jobs: (getattr(local, method)(*job) for job in jobs)
        return
    from cluster.local_ray import cluster_gpus, ensure_ray
    from cluster.work_queue import ActorSpec, QueuePolicy, WorkQueue

    with ensure_ray(address):
        gpus = cluster_gpus()
        n = workers or max(1, int(gpus))
        spec = ActorSpec(ShardEmbedder, (*args, "cuda" if gpus else "cpu", *rest), num_gpus=1 if gpus else 0)
        policy = QueuePolicy(
            item_timeout_s=shard_timeout_s,
            item_key="eval.retrieval_shard_timeout_s",
            workers_key="eval.retrieval_workers",
            start_timeout_s=start_timeout_s,
        )
        with WorkQueue(spec, n, policy, "retrieval", log) as queue:
            yield lambda method, jobs: (
                r for _, r in queue.map(method, jobs, label=lambda job: f"shard {job[0]}", stop_on_error=True)
            )


# ----------------------------------------------------------------------------- embedding, items, images


def _cache_done(path: Path, stamp: str) -> bool:
    if not path.is_file():
        return False
    try:
        with np.load(path) as f:
            return str(f["stamp"]) == stamp
    except (OSError, ValueError, KeyError):
        return False


def _write_npz(path: Path, **arrays) -> None:
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def embed_shards(run: Map, shards: list[str], cache_dir: Path, log: Callable[[str], None] = print) -> dict:
    """Embed every shard whose cache file is missing or stale; returns ``{"files", "embedded", "reused",
    "corrupt", "workers"}`` (``files`` in shard order)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    files = [cache_dir / f"{shard_id(u)}.npz" for u in shards]
    stamps = [source_stamp(u) for u in shards]
    todo = [(u,) for u, f, s in zip(shards, files, stamps) if not _cache_done(f, s)]
    by_url = {u: (f, s) for u, f, s in zip(shards, files, stamps)}
    log(
        f"[evaluate] retrieval baseline: embedding {len(todo)} of {len(shards)} image shards "
        f"({len(shards) - len(todo)} done already)"
    )
    embedded, corrupt, pids = [], {}, set()
    for r in run("embed", todo):
        f, stamp = by_url[r["url"]]
        _write_npz(f, keys=np.array(r["keys"], dtype=str), embeddings=r["embeddings"], stamp=np.array(stamp))
        embedded.append(r["url"])
        pids.add(r["pid"])
        if r["corrupt"]:
            corrupt[r["url"]] = r["corrupt"]
        log(f"[evaluate] retrieval baseline: {r['url']}: {len(r['keys'])} images in {r['seconds']:.1f}s")
    done = set(embedded)
    return {
        "files": files,
        "embedded": embedded,
        "reused": [u for u in shards if u not in done],
        "corrupt": corrupt,
        "workers": len(pids),
    }


class ShardItems(Sequence):
    """The training items of a set of embedded shards: ``items[i]`` -> ``"<shard url>#<sample key>"``
    (keys read from the cache files on demand)."""

    def __init__(self, shards: list[str], files: list[str | Path], counts: list[int]):
        self.shards, self.files, self.counts = list(shards), [str(f) for f in files], [int(c) for c in counts]
        self.offsets = np.cumsum([0] + self.counts)

    @classmethod
    def from_files(cls, shards: list[str], files: list[Path]) -> ShardItems:
        counts = []
        for f in files:
            with np.load(f) as z:
                counts.append(len(z["keys"]))
        return cls(shards, files, counts)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @functools.lru_cache(maxsize=64)  # noqa: B019 (one object per stage run)
    def keys(self, shard: int) -> list[str]:
        with np.load(self.files[shard]) as z:
            return [str(k) for k in z["keys"]]

    def locate(self, i: int) -> tuple[int, str]:
        """(shard index, sample key) of item ``i``."""
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(i)
        shard = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return shard, self.keys(shard)[i - int(self.offsets[shard])]

    def __getitem__(self, i):
        shard, key = self.locate(i)
        return f"{self.shards[shard]}#{key}"

    def to_json(self) -> dict:
        return {"shards": self.shards, "files": self.files, "counts": self.counts}

    @classmethod
    def from_json(cls, d: dict) -> ShardItems:
        return cls(d["shards"], d["files"], d["counts"])


def shard_chunks(items: ShardItems) -> Chunks:
    """The cached embeddings as blocks, one per non-empty shard."""
    nonempty = [f for f, c in zip(items.files, items.counts) if c]
    if not nonempty:
        raise ValueError(f"no training images in {len(items.files)} shards")
    with np.load(nonempty[0]) as z:
        d = z["embeddings"].shape[1]

    def read():
        for f in nonempty:
            with np.load(f) as z:
                yield z["embeddings"]

    return Chunks(len(items), d, read)


def fetch_images(run: Map, items: ShardItems, ids: Sequence[int], out_dir: Path, size: tuple[int, int]) -> list[Path]:
    """``out_dir/NNNNNNNN.png`` for each position of ``ids``: the training image ``items[id]``, center-cropped
    and resized (PIL bicubic) to ``size`` (H, W) when it differs, like the generated images it stands for."""
    from PIL import Image

    from evaluation.images import center_crop_resize

    out_dir.mkdir(parents=True, exist_ok=True)
    wanted: dict[int, dict[str, list[int]]] = {}
    for pos in np.argsort(np.asarray(ids), kind="stable"):  # in id order: each shard's keys are read once
        shard, key = items.locate(ids[pos])
        wanted.setdefault(shard, {}).setdefault(key, []).append(int(pos))
    index = {items.shards[s]: s for s in wanted}
    paths = [out_dir / f"{pos:08d}.png" for pos in range(len(ids))]
    for r in run("fetch", [(items.shards[s], sorted(keys)) for s, keys in wanted.items()]):
        for key, data in r["images"].items():
            img = decode_rgb(data)
            if (img.height, img.width) != tuple(size):
                if size[0] != size[1]:
                    raise ValueError(f"generated images are {size[0]}x{size[1]}: not square, cannot match them")
                img = Image.fromarray(center_crop_resize(img, size[0]))
            for pos in wanted[index[r["url"]]][key]:
                with atomic_path(paths[pos], fsync=False) as tmp:  # thousands of images: not fsynced one by one
                    img.save(tmp, format="PNG")
    return paths
