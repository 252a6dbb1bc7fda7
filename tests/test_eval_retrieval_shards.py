"""The retrieval baseline over the download stage's webdataset image shards: a Ray batch job on the
session loopback Ray embeds each train shard once (and resumes per shard), and the image retrieved for
each prompt is the brute-force argmax over embeddings computed here by the same CLIP."""

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluation.retrieval import Chunks, build_index, search
from evaluation.retrieval_shards import ShardEmbedder, ShardItems, list_shards, shard_chunks
from tests.eval_utils import load, make_run, one_thread, run  # noqa: F401
from tests.test_evaluate_stage import FakeExtractor, fake_fid  # noqa: F401  (fixture)

RETRIEVAL = "Retrieval Baseline"


def _jpg(seed: int, size: int = 32) -> bytes:
    rs = np.random.RandomState(seed)
    img = np.kron(rs.randint(0, 256, (4, 4, 3)), np.ones((size // 4, size // 4, 1))).astype(np.uint8)  # blocky
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def write_shards(folder, n_shards: int, per: int, seed: int, corrupt=(), failed=()) -> dict[str, bytes]:
    """img2dataset-like shards ``folder/NNNNN.tar`` (webdataset ShardWriter): key.jpg, key.txt, key.json;
    ``corrupt`` samples have undecodable jpg bytes, ``failed`` ones only a json (a failed download).
    Returns key -> jpg bytes of the good samples."""
    import webdataset as wds

    folder.mkdir(parents=True)
    good = {}
    with wds.ShardWriter(str(folder / "%05d.tar"), maxcount=per, verbose=0) as sink:
        for i in range(n_shards * per):
            key = f"{i // per:05d}{i % per:04d}"
            sample = {"__key__": key, "json": {"key": key, "status": "failed" if i in failed else "success"}}
            if i not in failed:
                sample["jpg"] = b"\xff\xd8 not a jpeg" if i in corrupt else _jpg(seed + i)
                sample["txt"] = f"training caption {i}"
                if i not in corrupt:
                    good[key] = sample["jpg"]
            sink.write(sample)
    assert sorted(p.name for p in folder.glob("*.tar")) == [f"{s:05d}.tar" for s in range(n_shards)]
    return good


def download_manifest(run_dir, splits: dict) -> None:
    """The download stage's manifest (as ``tokenization.download.run_download`` writes it) for ``splits``:
    name -> (folder, n_shards, successes per shard)."""
    m = {
        "stage": "download",
        "fingerprint": "download-fp",
        "splits": {
            name: {"folder": str(folder), "shards": [{"name": f"{s:05d}.tar", "success": ok} for s in range(n)]}
            for name, (folder, n, ok) in splits.items()
        },
    }
    (run_dir / "download" / "manifest.json").write_text(json.dumps(m))


def test_list_shards_folder_and_brace_pattern(tmp_path):
    write_shards(tmp_path / "s", 3, 2, seed=0)
    assert list_shards(str(tmp_path / "s")) == [str(tmp_path / "s" / f"{i:05d}.tar") for i in range(3)]
    assert list_shards(str(tmp_path / "s" / "{00001..00002}.tar")) == [
        str(tmp_path / "s" / f"{i:05d}.tar") for i in (1, 2)
    ]
    with pytest.raises(FileNotFoundError, match="1 of 4 shards"):
        list_shards(str(tmp_path / "s" / "{00000..00003}.tar"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        list_shards(str(tmp_path / "empty"))


def test_chunked_index_and_shard_items(tmp_path):
    """Per-shard embedding files: the lazy item list maps ids to shard#key, and the index built block by
    block equals the in-memory one (flat: identical search; IVF-PQ: trained on a sample across blocks)."""
    rs = np.random.RandomState(0)
    counts, files, keys = [5, 0, 7, 3], [], []
    for s, c in enumerate(counts):
        k = [f"k{s}_{i}" for i in range(c)]
        e = rs.randn(c, 8).astype(np.float32)
        e /= np.linalg.norm(e, axis=1, keepdims=True) if c else 1
        files.append(tmp_path / f"{s}.npz")
        np.savez(files[-1], keys=np.array(k, dtype=str), embeddings=e if c else np.zeros((0, 0), np.float32))
        keys += [(f"shard{s}", x) for x in k]
    items = ShardItems.from_files([f"shard{s}" for s in range(4)], files)
    assert len(items) == 15 and [items[i] for i in range(15)] == [f"{s}#{k}" for s, k in keys]
    assert (
        items.locate(12) == (3, "k3_0")
        and ShardItems.from_json(json.loads(json.dumps(items.to_json())))[5] == "shard2#k2_0"
    )
    with pytest.raises(IndexError):
        items[15]
    chunks = shard_chunks(items)
    full = np.concatenate(list(chunks.read()))
    assert (chunks.n, chunks.d) == (15, 8) and full.shape == (15, 8)
    q = rs.randn(6, 8).astype(np.float32)
    assert (search(build_index(chunks, "Flat"), q)[1] == search(build_index(full, "Flat"), q)[1]).all()
    big = rs.randn(3000, 16).astype(np.float32)
    blocks = Chunks(3000, 16, lambda: (big[i : i + 700] for i in range(0, 3000, 700)))
    ivf = build_index(blocks, "IVF4,Flat", nprobe=4, train_size=500)  # every list probed: exact
    assert ivf.ntotal == 3000 and (search(ivf, q.repeat(2, 1))[1][:, 0] == (q.repeat(2, 1) @ big.T).argmax(1)).all()


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from tests.test_eval_clip_score import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("clip"), seed=2)


def test_in_process_worker_embeds_and_fetches_and_names_a_broken_shard(tmp_path, tiny_clip):
    """eval.retrieval_workers: 0 (no Ray): the same worker class; a truncated tar fails naming the shard."""
    from evaluation.clip_model import ClipEncoder
    from evaluation.retrieval_shards import worker_pool

    name, ckpt = tiny_clip
    good = write_shards(tmp_path / "s", 1, 5, seed=3, corrupt=(1,), failed=(2,))
    shard = str(tmp_path / "s" / "00000.tar")
    data = (tmp_path / "s" / "00000.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2 + 100])
    enc = ClipEncoder(name, ckpt, device="cpu", batch_size=2)
    with worker_pool(enc, 0, None) as run_:
        (r,) = run_("embed", [(shard,)])
        assert r["keys"] == sorted(good) and r["corrupt"] == 1
        expected = enc.images([np.asarray(Image.open(io.BytesIO(good[k])).convert("RGB")) for k in r["keys"]])
        np.testing.assert_allclose(r["embeddings"], expected, rtol=1e-5, atol=1e-6)
        (f,) = run_("fetch", [(shard, [r["keys"][1]])])
        assert f["images"] == {r["keys"][1]: good[r["keys"][1]]}
        with pytest.raises(RuntimeError, match="image shard .*cut.tar is unreadable"):
            list(run_("embed", [(str(tmp_path / "cut.tar"),)]))


class DyingEmbedder(ShardEmbedder):
    """Its process exits (as if killed) the first time any actor starts embedding shard 00001.tar."""

    def embed(self, url: str) -> dict:
        mark = Path(url).with_suffix(".died")
        if url.endswith("00001.tar") and not mark.exists():
            mark.write_text("")
            os._exit(1)
        return super().embed(url)


@pytest.mark.slow
def test_ray_embedding_redoes_the_shard_of_a_dead_actor(tmp_path, tiny_clip, ray_local, monkeypatch):
    """Two Ray actors embed 3 shards; the one holding shard 1 dies: the work queue redoes that shard on a
    replacement and every cache file equals the in-process worker's."""
    import evaluation.retrieval_shards as rs
    from evaluation.clip_model import ClipEncoder

    name, ckpt = tiny_clip
    write_shards(tmp_path / "s", 3, 4, seed=5)
    shards = list_shards(str(tmp_path / "s"))
    enc = ClipEncoder(name, ckpt, device="cpu", batch_size=3)
    with rs.worker_pool(enc, 0, None) as local:
        ref = rs.embed_shards(local, shards, tmp_path / "ref", lambda m: None)
    monkeypatch.setattr(rs, "ShardEmbedder", DyingEmbedder)
    logs = []
    with rs.worker_pool(enc, 2, None, log=logs.append) as on_ray:
        job = rs.embed_shards(on_ray, shards, tmp_path / "ray", logs.append)
    assert (tmp_path / "s" / "00001.died").exists() and sorted(job["embedded"]) == shards
    assert any(f"shard {shards[1]}: its worker was lost" in line and "requeued" in line for line in logs), logs
    for a, b in zip(ref["files"], job["files"]):
        with np.load(a) as x, np.load(b) as y:
            assert list(x["keys"]) == list(y["keys"]) and len(x["keys"]) == 4
            np.testing.assert_allclose(x["embeddings"], y["embeddings"], rtol=1e-5, atol=1e-6)


def test_stage_retrieves_from_download_shards_on_ray(tmp_path, fake_fid, tiny_clip, ray_local):
    from evaluation.clip_model import ClipEncoder

    name, ckpt = tiny_clip
    rd = tmp_path / "run"
    cfg = make_run(
        tmp_path,
        [
            f"eval.clip_model={name}",
            f"eval.clip_checkpoint={ckpt}",
            "eval.clip_batch_size=3",
            "eval.metrics=[fid,retrieval]",  # the prompts: the eval shards written below, not shapes
            "eval.retrieval_workers=1",
        ],
    )
    train = rd / "download" / "train"
    good = write_shards(train, n_shards=3, per=4, seed=10, corrupt=(5,), failed=(9,))
    write_shards(rd / "download" / "eval", n_shards=1, per=4, seed=99)  # never indexed: not training data
    download_manifest(rd, {"train": (train, 3, 4), "eval": (rd / "download" / "eval", 1, 4)})
    run(cfg, "sample")
    m = run(cfg, "evaluate")

    out = rd / "evaluate"
    rep = json.loads((out / "report.json").read_text())
    retr = rep["runs"][RETRIEVAL]
    shards = [str(train / f"{s:05d}.tar") for s in range(3)]
    job = retr["retrieval"]["embedding"]
    assert sorted(job["embedded"]) == shards and job["reused"] == [] and job["shards"] == 3  # each shard once
    assert job["corrupt"] == {shards[1]: 1} and job["workers"] == 1
    assert retr["retrieval"]["protocol"]["train_images"] == len(good) == 10
    assert "download stage, train split (3 shards)" in retr["retrieval"]["protocol"]["train_set"]

    # brute force here: the same CLIP over the decoded training images, argmax of text . image
    prompts = [json.loads(line)["prompt"] for line in (rd / "sample" / "prompts.jsonl").read_text().splitlines()]
    keys = sorted(good)
    images = [np.asarray(Image.open(io.BytesIO(good[k])).convert("RGB")) for k in keys]
    enc = ClipEncoder(name, ckpt, device="cpu")
    best = (enc.texts(prompts) @ enc.images(images).T).argmax(axis=1)
    assert retr["retrieval"]["sources"] == [f"{shards[int(keys[b][:5])]}#{keys[b]}" for b in best]
    from evaluation.retrieval import RetrievalBaseline

    saved = RetrievalBaseline.load(out / "retrieval", enc)  # the index + the lazy shard#key items
    assert isinstance(saved.items, ShardItems) and saved.retrieve(prompts)["items"] == retr["retrieval"]["sources"]
    for i, b in enumerate(best):  # the written image is the retrieved training image, pixel for pixel
        assert np.array_equal(np.asarray(Image.open(out / "retrieval" / "images" / f"{i:08d}.png")), images[b])
    assert retr["fid"]["num_images"] == len(prompts) == 4 and np.isfinite(retr["fid"]["fid"])  # the eval shard's
    md = (out / "report.md").read_text()
    assert md.count(f"| {RETRIEVAL} |") == 1 and "Retrieval baseline not measured" not in md  # FID
    assert not any("retrieval" in n.lower() for n in m["notes"])

    # resume: a rerun (another figure setting makes the stage stale) embeds nothing; a removed cache file is
    # redone, alone. (--force would start from an empty folder, cache included.)
    from dataclasses import replace

    def rerun(n: int) -> None:
        run(replace(cfg, eval=replace(cfg.eval, grid_images=cfg.eval.grid_images + n)), "evaluate")

    rerun(1)
    job2 = json.loads((out / "report.json").read_text())["runs"][RETRIEVAL]["retrieval"]
    assert job2["embedding"]["embedded"] == [] and sorted(job2["embedding"]["reused"]) == shards
    assert job2["sources"] == retr["retrieval"]["sources"]
    cache = sorted((out / "retrieval" / "embeddings").glob("*/*.npz"))
    assert len(cache) == 3
    next(p for p in cache if p.name.startswith("00002-")).unlink()
    rerun(2)
    job3 = json.loads((out / "report.json").read_text())["runs"][RETRIEVAL]["retrieval"]
    assert job3["embedding"]["embedded"] == [shards[2]] and job3["sources"] == retr["retrieval"]["sources"]


def test_missing_retrieval_shards_fail_before_heavy_work(tmp_path, fake_fid, tiny_clip, monkeypatch):
    import evaluation.evaluate_stage as es

    name, ckpt = tiny_clip
    base = [f"eval.clip_model={name}", f"eval.clip_checkpoint={ckpt}", "eval.metrics=[fid,retrieval]"]
    cfg = make_run(tmp_path, base + ["eval.retrieval_images=download"])
    run(cfg, "sample")
    heavy = []
    monkeypatch.setattr(es, "run_metrics", lambda *a, **k: heavy.append(1))
    with pytest.raises(Exception, match="lists no train shards"):
        run(cfg, "evaluate")
    (tmp_path / "0.tar").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="1 of 2 shards .* not found, e.g. .*1.tar"):
        run(load(tmp_path / "run", base + [f"eval.retrieval_images={tmp_path}/{{0..1}}.tar"]), "evaluate")
    (tmp_path / "1.tar").write_bytes(b"")
    run(load(tmp_path / "run", base + [f"eval.retrieval_images={tmp_path}/{{0..1}}.tar"]), "evaluate")
    assert heavy == [1] and fake_fid.calls == 0
