"""The retrieval baseline (first row of the paper's Tables 1-2): for each prompt, the training image
whose CLIP image embedding has the highest cosine similarity with the prompt's CLIP text embedding.

  1. :func:`embed_image_batches` / :class:`EmbedBatch` embed the training images (an iterator of
     batches; ``EmbedBatch`` is a callable class for Ray Data ``map_batches`` or a Ray actor: it pickles
     without weights and loads the checkpoint in the worker);
  2. :func:`build_index` makes a FAISS inner-product index over the L2-normalised embeddings (inner
     product = cosine): exact ``Flat`` for small sets, ``IVF{nlist},PQ{m}`` (index factory) for large,
     replicated on all GPUs by :func:`to_gpus` when ``faiss.get_num_gpus() > 0`` (the CPU index when that
     fails); the embeddings are an array or, when they do not fit in memory, :class:`Chunks` (read block by
     block: a training sample, then added per block); :func:`cpu_index` turns it back for saving;
  3. :class:`RetrievalBaseline` embeds the prompts and returns the top training image of each; those
     images then go through the FID and captioning evaluators like generated ones.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from evaluation.clip_model import ClipEncoder
from evaluation.images import check_prompts


def embed_image_batches(encoder: ClipEncoder, batches: Iterable) -> np.ndarray:
    """``float32 [N, D]`` normalised embeddings of an iterator of image batches (arrays or PIL lists)."""
    out = [encoder.images(b) for b in batches]
    if not out:
        raise ValueError("no training images to embed")
    return np.concatenate(out).astype(np.float32)


class EmbedBatch:
    """Ray Data ``map_batches`` callable: adds ``batch["embedding"]`` from ``batch[image_key]``.

    ``ds.map_batches(EmbedBatch, fn_constructor_kwargs={"model_name": ..., "checkpoint": ...},
    concurrency=k)``; the constructor is cheap, the model loads on the worker's first batch. A custom
    architecture unknown to the workers' open_clip goes in ``model_cfg`` (its config dict).
    """

    def __init__(
        self,
        model_name: str,
        checkpoint: str,
        device: str | None = None,
        image_key: str = "image",
        batch_size: int = 64,
        model_cfg: dict | None = None,
    ):
        self.encoder = ClipEncoder(model_name, checkpoint, device, batch_size, model_cfg)
        self.image_key = image_key

    def __call__(self, batch: dict) -> dict:
        return {**batch, "embedding": self.encoder.images(list(batch[self.image_key]))}


def auto_factory(n: int, d: int, flat_max: int = 200000) -> str:
    """``Flat`` up to ``flat_max`` vectors, else IVF with ~4 sqrt(n) lists and PQ with <= 64 sub-quantisers."""
    if n <= flat_max:
        return "Flat"
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    m = max(k for k in range(1, 65) if d % k == 0)
    return f"IVF{nlist},PQ{m}"


def _no_polysemous(index) -> None:
    """The factory turns on polysemous training for 8-bit PQ: slow, and only for Hamming filtering we don't use."""
    import faiss

    try:
        inner = faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:  # not an IVF index
        inner = faiss.downcast_index(index)
    if hasattr(inner, "do_polysemous_training"):
        inner.do_polysemous_training = False


def set_nprobe(index, nprobe: int) -> None:
    """Set ``nprobe`` on an IVF index (CPU, GPU, replicated); no-op for flat indexes."""
    import faiss

    try:
        faiss.extract_index_ivf(index).nprobe = nprobe
        return
    except RuntimeError:  # flat, a GPU index, or replicas
        pass
    try:  # GPU indexes need GpuParameterSpace; both walk IndexReplicas/IndexShards
        getattr(faiss, "GpuParameterSpace", faiss.ParameterSpace)().set_index_parameter(index, "nprobe", nprobe)
    except RuntimeError:  # no IVF inside
        pass


@dataclass
class Chunks:
    """``n`` embeddings of dimension ``d`` too many for memory: ``read()`` yields ``[n_i, D]`` blocks, the
    same blocks in the same order on every call."""

    n: int
    d: int
    read: Callable[[], Iterable[np.ndarray]]


def _train_sample(chunks: Chunks, size: int, seed: int) -> np.ndarray:
    """``size`` rows drawn without replacement (all rows when ``size >= n``), in one pass over the blocks."""
    if size >= chunks.n:
        return np.concatenate([np.asarray(c, np.float32) for c in chunks.read()])
    pick = np.sort(np.random.default_rng(seed).choice(chunks.n, size, replace=False))
    out, start = [], 0
    for c in chunks.read():
        lo, hi = np.searchsorted(pick, [start, start + len(c)])
        out.append(np.asarray(c[pick[lo:hi] - start], np.float32))
        start += len(c)
    return np.concatenate(out)


def default_train_size(index, n: int) -> int:
    """Training vectors for an untrained index: 64 per IVF list (faiss wants >= 39), at least 10000 (PQ)."""
    import faiss

    try:
        nlist = faiss.extract_index_ivf(index).nlist
    except RuntimeError:
        nlist = 0
    return min(n, max(64 * nlist, 10000))


def _is_ivfpq(index) -> bool:
    import faiss

    try:
        return isinstance(faiss.downcast_index(faiss.extract_index_ivf(index)), faiss.IndexIVFPQ)
    except RuntimeError:  # not an IVF index
        return False


def to_gpus(index, gpu=None, log: Callable[[str], None] = print):
    """``index`` (a CPU index) replicated on all GPUs, or ``index`` itself with one logged line when that fails.

    ``gpu`` holds faiss's GPU helpers (``index_cpu_to_all_gpus``, ``GpuMultipleClonerOptions``; default: the
    faiss module; tests pass fakes). IVF-PQ gets float16 lookup tables (the cloner's ``useFloat16``; it has no
    ``useFloat16LookupTables`` field): in float32, 64 sub-quantisers x 8 bits need 64 KiB of shared memory,
    over faiss's 48 KiB limit (faiss issue #1178). Flat keeps float32 storage: it is the exact baseline.
    """
    if gpu is None:
        import faiss as gpu
    try:
        co = gpu.GpuMultipleClonerOptions()
        co.shard = False  # replicate: every GPU holds the whole index, queries are split between them
        co.useFloat16 = _is_ivfpq(index)
        return gpu.index_cpu_to_all_gpus(index, co=co)
    except Exception as e:  # any failure to place it (no GPU build, out of memory, unsupported) keeps the CPU index
        log(f"[retrieval] could not move the FAISS index to the GPUs ({type(e).__name__}: {e}); using the CPU index")
        return index


def cpu_index(index, gpu=None):
    """``index`` as a plain CPU index that ``faiss.write_index`` takes: GPU indexes and the
    ``IndexReplicas``/``IndexShards`` that :func:`to_gpus` makes go through ``index_gpu_to_cpu`` (from
    ``gpu``, default the faiss module); CPU indexes are returned as they are."""
    import faiss

    gpu = faiss if gpu is None else gpu
    multi = (faiss.IndexReplicas, faiss.IndexShards)
    if not (isinstance(index, multi) or type(index).__name__.startswith("Gpu")):
        return index
    if hasattr(gpu, "index_gpu_to_cpu"):
        return gpu.index_gpu_to_cpu(index)
    if isinstance(index, faiss.IndexReplicas) and index.count() > 0:  # CPU-only faiss: replicas of CPU indexes
        return cpu_index(faiss.downcast_index(index.at(0)), gpu)
    raise TypeError(f"cannot turn a {type(index).__name__} into a CPU index without faiss.index_gpu_to_cpu")


def build_index(
    embeddings: Union[np.ndarray, Chunks],
    factory: str = "auto",
    flat_max: int = 200000,
    nprobe: int = 32,
    use_gpu: bool | None = None,
    train_size: int | None = None,
    seed: int = 0,
    gpu=None,
    log: Callable[[str], None] = print,
):
    """A trained, filled FAISS inner-product index over ``embeddings`` (normalised rows; an array or
    :class:`Chunks`). IVF/PQ indexes train on ``train_size`` rows (array default: all; chunks default:
    :func:`default_train_size`). ``use_gpu`` (default: when ``gpu.get_num_gpus() > 0``) moves it with
    :func:`to_gpus`; ``gpu`` is faiss's GPU helpers (default: the faiss module)."""
    import faiss

    if isinstance(embeddings, Chunks):
        chunks = embeddings
    else:
        x = np.ascontiguousarray(embeddings, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"need a non-empty [N, D] embedding matrix, got {x.shape}")
        chunks = Chunks(len(x), x.shape[1], lambda: [x])
        train_size = len(x) if train_size is None else train_size
    n, d = chunks.n, chunks.d
    if n == 0:
        raise ValueError(f"need a non-empty [N, D] embedding matrix, got ({n}, {d})")
    factory = auto_factory(n, d, flat_max) if factory == "auto" else factory
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    _no_polysemous(index)
    train_size = train_size or default_train_size(index, n)  # on the CPU index: extract_index_ivf fails on GPU ones
    gpu = faiss if gpu is None else gpu
    if use_gpu is None:
        use_gpu = gpu.get_num_gpus() > 0
    if use_gpu:
        index = to_gpus(index, gpu, log)
    if not index.is_trained:
        index.train(_train_sample(chunks, train_size, seed))
    for c in chunks.read():
        if len(c):
            index.add(np.ascontiguousarray(c, dtype=np.float32))
    set_nprobe(index, nprobe)
    return index


def search(index, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(scores [Q, k], ids [Q, k])``, best first."""
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def items_of(items: Sequence, ids: Sequence[int]) -> list:
    """``[items[i] for i in ids]``, looked up in the order of the ids: a lazy item list
    (``evaluation.retrieval_shards.ShardItems``) then reads each shard's keys once, however the ids are spread
    over thousands of shards."""
    out: list = [None] * len(ids)
    for pos in np.argsort(np.asarray(ids), kind="stable"):
        out[pos] = items[ids[pos]]
    return out


class RetrievalBaseline:
    """``baseline.retrieve(prompts)`` -> the top training item per prompt, with its cosine score."""

    name = "retrieval"

    def __init__(self, index, items: Sequence, encoder: ClipEncoder, factory: str = "?"):
        if index.ntotal != len(items):
            raise ValueError(f"index holds {index.ntotal} vectors but {len(items)} training items were given")
        self.index, self.encoder, self.factory = index, encoder, factory
        self.items = items if hasattr(items, "to_json") else list(items)

    def retrieve(self, prompts: Sequence[str]) -> dict:
        prompts = check_prompts(prompts)
        scores, ids = search(self.index, self.encoder.texts(prompts), k=1)
        return {
            "indices": ids[:, 0].tolist(),
            "scores": scores[:, 0].tolist(),
            "items": items_of(self.items, ids[:, 0]),
            "protocol": {**self.encoder.protocol, "index": self.factory, "train_images": len(self.items)},
        }

    def __call__(self, images=None, prompts: Sequence[str] | None = None, refs=None) -> dict:
        if images is not None:
            raise ValueError("the retrieval baseline produces images; pass prompts only")
        return self.retrieve(prompts)

    @classmethod
    def from_config(
        cls,
        cfg,
        embeddings: Union[np.ndarray, Chunks],
        items: Sequence,
        device: str | None = None,
        model_cfg: dict | None = None,
        log: Callable[[str], None] = print,
    ) -> RetrievalBaseline:
        """Index ``embeddings`` (from :func:`embed_image_batches`, or :class:`Chunks`) as the ``eval``
        section says."""
        encoder = ClipEncoder(cfg.clip_model, cfg.clip_checkpoint, device, cfg.clip_batch_size, model_cfg)
        factory = cfg.retrieval_index
        if factory == "auto":
            n, d = (embeddings.n, embeddings.d) if isinstance(embeddings, Chunks) else embeddings.shape
            factory = auto_factory(n, d, cfg.retrieval_flat_max)
        return cls(build_index(embeddings, factory, nprobe=cfg.retrieval_nprobe, log=log), items, encoder, factory)

    def save(self, folder: str | Path) -> None:
        import faiss

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(cpu_index(self.index), str(folder / "index.faiss.tmp"))
        (folder / "index.faiss.tmp").replace(folder / "index.faiss")
        items = self.items.to_json() if hasattr(self.items, "to_json") else [str(i) for i in self.items]
        meta = {"factory": self.factory, "items": items, "protocol": self.encoder.protocol}
        (folder / "items.json.tmp").write_text(json.dumps(meta))
        (folder / "items.json.tmp").replace(folder / "items.json")

    @classmethod
    def load(cls, folder: str | Path, encoder: ClipEncoder, nprobe: int = 32) -> RetrievalBaseline:
        import faiss

        folder = Path(folder)
        meta = json.loads((folder / "items.json").read_text())
        index = faiss.read_index(str(folder / "index.faiss"))
        set_nprobe(index, nprobe)
        items = meta["items"]
        if isinstance(items, dict):  # a lazy item list (evaluation.retrieval_shards.ShardItems)
            from evaluation.retrieval_shards import ShardItems

            items = ShardItems.from_json(items)
        return cls(index, items, encoder, meta["factory"])
