"""Retrieval baseline: FAISS search equals brute force; IVF-PQ recall; the CLIP-embedding pipeline."""

import pickle

import numpy as np
import pytest

from evaluation.clip_model import ClipEncoder
from evaluation.retrieval import EmbedBatch, RetrievalBaseline, auto_factory, build_index, embed_image_batches, search
from tests.test_eval_clip_score import PROMPTS, images, make_tiny_clip


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(d=16, clusters=10, per=200, seed=0, spread=0.3):
    rs = np.random.RandomState(seed)
    x = _unit(np.concatenate([c + spread * rs.randn(per, d) for c in rs.randn(clusters, d)]))
    q = _unit(x[rs.choice(len(x), 200, replace=False)] + 0.02 * rs.randn(200, d))
    return x, q


def test_flat_index_equals_numpy_argmax():
    rs = np.random.RandomState(0)
    x, q = _unit(rs.randn(3000, 64)), _unit(rs.randn(100, 64))
    index = build_index(x, "auto", flat_max=10000)
    scores, ids = search(index, q, k=1)
    expected = q @ x.T
    np.testing.assert_array_equal(ids[:, 0], expected.argmax(axis=1))
    np.testing.assert_allclose(scores[:, 0], expected.max(axis=1), rtol=1e-5)


def test_ivf_pq_recall_at_1_with_all_lists_probed():
    """Clustered unit vectors, queries = perturbed database points; bound: recall@1 >= 0.9."""
    import faiss

    x, q = _clustered()
    exact = (q @ x.T).argmax(axis=1)
    index = build_index(x, "IVF8,PQ16x6", nprobe=8)  # nprobe = nlist: only PQ approximates
    assert faiss.extract_index_ivf(index).nprobe == 8
    _, ids = search(index, q)
    assert (ids[:, 0] == exact).mean() >= 0.9


def test_auto_factory():
    assert auto_factory(1000, 512) == "Flat"
    assert auto_factory(1_000_000, 512, flat_max=200000) == "IVF4096,PQ64"
    assert auto_factory(20_000_000, 768, flat_max=200000) == "IVF16384,PQ64"


def test_empty_embeddings_and_prompts_are_errors():
    with pytest.raises(ValueError, match="non-empty"):
        build_index(np.zeros((0, 8), np.float32))
    with pytest.raises(ValueError, match="no training images"):
        embed_image_batches(None, iter([]))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("clip"), seed=1)


def test_baseline_retrieves_argmax_training_image(tiny_clip, tmp_path):
    name, ckpt = tiny_clip
    train = images(10, seed=3)
    embedder = EmbedBatch(name, str(ckpt), device="cpu")
    embedder = pickle.loads(pickle.dumps(embedder))  # as shipped to a Ray worker
    batches = (embedder({"image": train[i : i + 4], "key": list(range(i, i + 4))})["embedding"] for i in (0, 4, 8))
    emb = np.concatenate(list(batches))
    encoder = ClipEncoder(name, ckpt, device="cpu")
    np.testing.assert_allclose(emb, embed_image_batches(encoder, [train[:5], train[5:]]), rtol=1e-5, atol=1e-6)

    items = [f"train/{i:03d}.jpg" for i in range(10)]
    baseline = RetrievalBaseline(build_index(emb, "Flat"), items, encoder, "Flat")
    out = baseline(prompts=PROMPTS)
    expected = (encoder.texts(PROMPTS) @ emb.T).argmax(axis=1)
    assert out["indices"] == expected.tolist() and out["items"] == [items[i] for i in expected]
    assert out["protocol"]["train_images"] == 10

    baseline.save(tmp_path / "idx")
    again = RetrievalBaseline.load(tmp_path / "idx", encoder)
    assert again.retrieve(PROMPTS)["items"] == out["items"]
    with pytest.raises(ValueError, match="prompt set is empty"):
        baseline.retrieve([])
    from evaluation.config import EvalConfig

    cfg = EvalConfig(clip_model=name, clip_checkpoint=str(ckpt), retrieval_index="auto", retrieval_flat_max=100)
    configured = RetrievalBaseline.from_config(cfg, emb, items, device="cpu")
    assert configured.factory == "Flat" and configured.retrieve(PROMPTS)["items"] == out["items"]


@pytest.mark.slow
def test_embed_batch_in_ray_data(tiny_clip, ray_local):
    """The embedding callable in a real (local, 127.0.0.1) Ray Data pipeline; equals the in-process embeddings."""
    import open_clip

    ray = ray_local
    name, ckpt = tiny_clip
    train = images(6, seed=4)
    ds = ray.data.from_items([{"image": im, "key": i} for i, im in enumerate(train)])
    kwargs = {
        "model_name": name,
        "checkpoint": str(ckpt),
        "device": "cpu",
        "model_cfg": open_clip.get_model_config(name),
    }  # the workers never saw add_model_config
    rows = ds.map_batches(EmbedBatch, fn_constructor_kwargs=kwargs, batch_size=4, concurrency=1).take_all()
    got = np.stack([r["embedding"] for r in sorted(rows, key=lambda r: r["key"])])
    expected = ClipEncoder(name, ckpt, device="cpu").images(train)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


class _FakeGpus:
    """faiss's GPU helpers on a CPU-only machine: ``index_cpu_to_all_gpus`` returns what two GPUs give, an
    ``IndexReplicas`` (here of CPU clones), or raises ``fail``; it records the cloner options it got."""

    class GpuMultipleClonerOptions:  # faiss's defaults
        shard = False
        useFloat16 = False

    def __init__(self, fail: str | None = None):
        self.fail, self.options, self.moved = fail, [], []

    def get_num_gpus(self):
        return 2

    def index_cpu_to_all_gpus(self, index, co=None, ngpu=-1):
        import faiss

        self.options.append(co)
        self.moved.append(index)
        if self.fail:
            raise RuntimeError(self.fail)
        replicas = faiss.IndexReplicas()
        for _ in range(2):
            replicas.addIndex(faiss.clone_index(index))
        return replicas


class _StubEncoder:
    protocol = {"clip_model": "stub"}

    def __init__(self, q):
        self.q = q

    def texts(self, prompts):
        return self.q[: len(prompts)]


def test_gpu_move_sets_float16_lookup_tables_for_ivfpq_only():
    """64 sub-quantisers x 8 bits need 64 KiB of GPU shared memory in float32 (limit 48 KiB): IVF-PQ is cloned
    with the cloner's useFloat16 (-> GpuIndexIVFPQConfig.useFloat16LookupTables); exact Flat stays float32."""
    import faiss

    x, q = _clustered()
    gpus = _FakeGpus()
    index = build_index(x, "IVF8,PQ16x6", nprobe=8, gpu=gpus)
    (co,) = gpus.options
    assert co.useFloat16 is True and co.shard is False
    assert isinstance(index, faiss.IndexReplicas) and index.ntotal == len(x)
    assert all(faiss.extract_index_ivf(index.at(i)).nprobe == 8 for i in range(index.count()))
    _, ids = search(index, q)
    assert (ids[:, 0] == (q @ x.T).argmax(axis=1)).mean() >= 0.9
    flat = _FakeGpus()
    build_index(x, "Flat", gpu=flat)
    assert flat.options[0].useFloat16 is False


def test_train_size_comes_from_the_cpu_index_before_the_gpu_move(monkeypatch):
    """IVF4096 trains on 64 x 4096 = 262144 vectors; after the move extract_index_ivf fails (GPU index,
    replicas) and the size fell to 10000."""
    import evaluation.retrieval as retrieval

    class Stop(Exception):
        pass

    sizes = []

    def sample(chunks, size, seed):
        sizes.append(size)
        raise Stop

    monkeypatch.setattr(retrieval, "_train_sample", sample)
    gpus = _FakeGpus()
    chunks = retrieval.Chunks(2_000_000, 512, lambda: iter(()))
    assert auto_factory(chunks.n, chunks.d) == "IVF4096,PQ64"
    with pytest.raises(Stop):
        build_index(chunks, "auto", gpu=gpus)
    assert len(gpus.moved) == 1 and sizes == [262144]


def test_save_and_load_a_replicated_index(tmp_path):
    """With 2+ GPUs the index is an IndexReplicas, which write_index cannot serialise: save converts it."""
    import faiss

    x, q = _clustered()
    index = build_index(x, "IVF8,PQ16x6", nprobe=8, gpu=_FakeGpus())
    items = [f"train/{i:04d}.jpg" for i in range(len(x))]
    baseline = RetrievalBaseline(index, items, _StubEncoder(q), "IVF8,PQ16x6")
    prompts = [f"p{i}" for i in range(len(q))]
    baseline.save(tmp_path / "idx")
    again = RetrievalBaseline.load(tmp_path / "idx", _StubEncoder(q), nprobe=8)
    assert isinstance(again.index, faiss.IndexIVFPQ) and again.index.ntotal == len(x)
    assert again.retrieve(prompts)["indices"] == baseline.retrieve(prompts)["indices"]


def test_failed_gpu_move_falls_back_to_the_cpu_index_with_one_log_line():
    import faiss

    x, q = _clustered()
    gpus = _FakeGpus(fail="Device 0 has 49152 bytes of shared memory, while ... requires 65536 bytes")
    lines = []
    index = build_index(x, "IVF8,PQ16x6", nprobe=8, gpu=gpus, log=lines.append)
    assert len(gpus.moved) == 1 and index is gpus.moved[0]
    assert len(lines) == 1 and "using the CPU index" in lines[0] and "49152 bytes" in lines[0]
    assert faiss.extract_index_ivf(index).nprobe == 8 and index.ntotal == len(x)
    _, ids = search(index, q)
    assert (ids[:, 0] == (q @ x.T).argmax(axis=1)).mean() >= 0.9
