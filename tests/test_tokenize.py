"""Token shards and the tokenize stage on Ray, with tiny stand-ins for the VQ-GAN and the text tokenizer
(same interface: ``encode(images) -> (ids, qerr)``, ``tokenize(captions) -> (ids, mask)``)."""

from __future__ import annotations

import functools
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.actor_hooks import Pace, pid_of
from tests.data_utils import shard_keys
from tokenization.shards import read_token_shard, write_token_shard

ROOT = Path(__file__).resolve().parents[1]


class TinyVQ:
    """Stand-in VQ encoder: 8x8 average pooling, nearest of 64 fixed colours. Each batch begins with
    ``tests.actor_hooks.Pace(delay, pid_file).begin()`` (its pid file lets a test kill the actor, its
    ``.begun`` file says how many batches the actor has begun, then it sleeps ``delay`` seconds)."""

    def __init__(self, delay: float = 0.0, pid_file: str | None = None):
        self.codebook = torch.rand(64, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
        self.pace = Pace(delay, pid_file)

    def encode(self, images: torch.Tensor):
        self.pace.begin()
        z = torch.nn.functional.avg_pool2d(images, 8).flatten(2).transpose(1, 2)  # [B, L, 3]
        d = ((z[:, :, None, :] - self.codebook[None, None]) ** 2).sum(-1)
        qerr, ids = d.min(-1)
        return ids, qerr


class CharText:
    """Stand-in text tokenizer: one id per character, right-padded, with a mask."""

    def tokenize(self, captions):
        ids = [[ord(c) % 500 + 1 for c in cap[:40]] for cap in captions]
        n = max(len(x) for x in ids)
        out = torch.zeros(len(ids), n, dtype=torch.long)
        mask = torch.zeros(len(ids), n, dtype=torch.bool)
        for i, x in enumerate(ids):
            out[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = True
        return out, mask


def _jpg(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def make_image_shard(path: Path, shard: int, n: int, corrupt=(), failed=()) -> dict[str, str]:
    """An img2dataset-like webdataset tar; returns key -> caption of the good samples."""
    good = {}
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            key = f"{shard:05d}{i:04d}"
            members = {"json": json.dumps({"key": key}).encode()}
            if i not in failed:
                members["jpg"] = b"\xff\xd8 not really a jpeg" if i in corrupt else _jpg(shard * 1000 + i)
                members["txt"] = f"caption {shard} {i}".encode()
                if i not in corrupt:
                    good[key] = members["txt"].decode()
            for suffix in ("jpg", "txt", "json"):
                if suffix in members:
                    info = tarfile.TarInfo(f"{key}.{suffix}")
                    info.size = len(members[suffix])
                    tar.addfile(info, io.BytesIO(members[suffix]))
    return good


def _jobs(src: Path, out: Path, names):
    out.mkdir(parents=True, exist_ok=True)
    return [(str(src / n), str(out / n), f"train/{n}") for n in names]


def _tokenize(jobs, delay=0.0, pid_file=None, batch_size=4, ray_address=None, num_actors=1, lineage=None, **kw):
    from tokenization.shard_encoder import TokenizeConfig, run_tokenize

    cfg = TokenizeConfig(batch_size=batch_size, num_actors=num_actors, cpus_per_actor=1, **kw)
    return run_tokenize(
        cfg,
        jobs,
        functools.partial(TinyVQ, delay, pid_file),
        CharText,
        image_size=32,
        ray_address=ray_address,
        lineage=lineage,
    )


# ----------------------------------------------------------------------------- token shard files


def test_token_shard_roundtrip_is_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    samples = [
        {
            "key": f"{i:09d}",
            "tokens": rng.integers(0, 16384, 16),
            "qerr": rng.random(16),
            "text_ids": rng.integers(0, 32000, 7),
            "txt": f"caption é {i}",
            "source_shard": "train/00000.tar",
            "grid": [4, 4],
        }
        for i in range(5)
    ]
    assert write_token_shard(tmp_path / "a.tar", samples) == 5
    time.sleep(1.1)  # a different wall-clock second must not change the bytes
    write_token_shard(tmp_path / "b.tar", samples)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert not list(tmp_path.glob("*.tmp"))
    back = list(read_token_shard(tmp_path / "a.tar"))
    assert [s["key"] for s in back] == [s["key"] for s in samples]
    for s, b in zip(samples, back):
        assert b["tokens"].dtype == np.int16 and np.array_equal(b["tokens"], s["tokens"])
        assert b["qerr"].dtype == np.float16 and np.allclose(b["qerr"], s["qerr"], atol=1e-3)
        assert b["text_ids"].dtype == np.int32 and np.array_equal(b["text_ids"], s["text_ids"])
        assert b["txt"] == s["txt"]
        assert b["meta"] == {"key": s["key"], "source_shard": "train/00000.tar", "grid": [4, 4]}
    import webdataset as wds

    from tokenization.shards import decode_sample

    via_wds = list(wds.WebDataset(str(tmp_path / "a.tar"), shardshuffle=False).map(decode_sample))
    assert [s["key"] for s in via_wds] == [s["key"] for s in samples]
    with pytest.raises(ValueError, match="int16"):
        write_token_shard(tmp_path / "c.tar", [{**samples[0], "tokens": np.array([16384])}])


# ----------------------------------------------------------------------------- the stage on Ray


def test_embedded_ray_listens_on_loopback_only(ray_local):
    """Every socket the embedded Ray's processes (children of this one) listen on is 127.0.0.1."""
    import psutil

    from cluster.local_ray import node_addresses

    assert node_addresses() == ["127.0.0.1"]
    procs = psutil.Process().children(recursive=True)
    listening = [
        (p.pid, c.laddr) for p in procs for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
    ]
    assert listening, "expected Ray's GCS/raylet sockets"
    assert all(addr.ip in ("127.0.0.1", "::ffff:127.0.0.1") for _, addr in listening), listening


def test_tokenize_counts_corrupt_and_fails_a_truncated_shard_by_name(tmp_path, ray_local):
    src = tmp_path / "images"
    src.mkdir()
    good = make_image_shard(src / "00000.tar", 0, 10)
    good.update(make_image_shard(src / "00001.tar", 1, 9, corrupt=(3,), failed=(5,)))
    make_image_shard(tmp_path / "whole.tar", 2, 12)
    data = (tmp_path / "whole.tar").read_bytes()
    (src / "00002.tar").write_bytes(data[: len(data) // 2])  # cut inside a member
    jobs = _jobs(src, tmp_path / "tokens", ["00000.tar", "00001.tar", "00002.tar"])
    out = tmp_path / "tokens"

    with pytest.raises(RuntimeError, match=r"train/00002.tar"):  # read, reread, then failed by name
        _tokenize(jobs, read_retries=1, retry_wait_s=0.0)
    assert not (out / "00002.tar").exists() and not list(out.glob(".*"))  # no partial token shard kept
    assert (out / "00000.tar").exists() and (out / "00001.tar").exists()  # the other shards are done

    (src / "00002.tar").write_bytes(data)  # the source repaired: a rerun does only that shard
    report = _tokenize(jobs)
    assert report["counts"] == {
        "shards": 3,
        "shards_done_now": 1,
        "samples": 10 + 7 + 12,
        "corrupt_images": 1,
        "resized_images": 0,
        "shards_reused": 2,
    }
    assert report["corrupt"] == {"train/00001.tar": ["000010003"]}

    vq, text = TinyVQ(), CharText()
    for sample in read_token_shard(out / "00001.tar"):
        key = sample["key"]
        img = np.array(Image.open(io.BytesIO(_jpg(1000 + int(key[5:])))).convert("RGB"))
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1
        ids, qerr = vq.encode(x)
        assert np.array_equal(sample["tokens"], ids[0].numpy())
        assert np.allclose(sample["qerr"], qerr[0].numpy(), atol=2e-3, rtol=1e-2)
        t_ids, t_mask = text.tokenize([good[key]])
        assert np.array_equal(sample["text_ids"], t_ids[0][t_mask[0]].numpy())
        assert sample["txt"] == good[key]
        assert sample["meta"] == {"key": key, "source_shard": "train/00001.tar", "grid": [4, 4]}

    before = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    again = _tokenize(jobs)  # idempotent: nothing redone
    assert again["counts"]["shards_done_now"] == 0 and again["counts"]["samples"] == report["counts"]["samples"]
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == before
    assert again["identity"] == report["identity"]  # the content hash of the token shards


def test_a_read_error_is_retried_then_fails_naming_the_file(tmp_path, monkeypatch):
    """In-process (no Ray): a passing read error is retried and the shard is complete; a persistent one
    fails the shard naming the image file, and leaves no partial token shard."""
    import tokenization.shard_encoder as se

    src = tmp_path / "00000.tar"
    make_image_shard(src, 0, 10)
    real = se.iter_image_samples
    failures = {"left": 1}

    def flaky(url):
        for i, item in enumerate(real(url)):
            if i == 5 and failures["left"]:
                failures["left"] -= 1
                raise se.ShardReadError(f"{url}: OSError: [Errno 5] Input/output error")
            yield item

    monkeypatch.setattr(se, "iter_image_samples", flaky)
    enc = se.ShardEncoder(TinyVQ, CharText, 4, 32)
    stats = enc.encode_shard(str(src), str(tmp_path / "a.tar"), "train/00000.tar", None, read_retries=1)
    assert stats["read_attempts"] == 2 and stats["samples"] == 10
    assert len(shard_keys(tmp_path / "a.tar")) == 10

    failures["left"] = 5
    with pytest.raises(se.ShardReadError, match=r"00000.tar: OSError"):
        enc.encode_shard(str(src), str(tmp_path / "b.tar"), "train/00000.tar", None, read_retries=2)
    assert not (tmp_path / "b.tar").exists() and not list(tmp_path.glob(".b*"))


def test_decoding_threads_change_nothing_in_the_token_shard(tmp_path, monkeypatch):
    """In process (no Ray): one or three image decoding threads give the same token shard, byte for byte, and
    the same corrupt keys and counts; with three, the images are decoded on more than one thread."""
    import tokenization.shard_encoder as se

    src = tmp_path / "00000.tar"
    good = make_image_shard(src, 0, 23, corrupt=(2, 9, 17), failed=(5,))
    real, threads_used = se.decode_image, set()

    def decode(*args, **kw):
        threads_used.add(threading.get_ident())
        time.sleep(0.005)  # long enough for the pool's threads to overlap
        return real(*args, **kw)

    monkeypatch.setattr(se, "decode_image", decode)
    stats, used = {}, {}
    for n in (1, 3):
        threads_used.clear()
        enc = se.ShardEncoder(TinyVQ, CharText, 4, 16, decode_threads=n)  # 32 px images resized to 16
        stats[n] = enc.encode_shard(str(src), str(tmp_path / f"{n}.tar"), "train/00000.tar")
        used[n] = len(threads_used)
    assert (tmp_path / "1.tar").read_bytes() == (tmp_path / "3.tar").read_bytes()
    assert shard_keys(tmp_path / "3.tar") == sorted(good)
    for key in ("samples", "corrupt_keys", "resized", "sha256"):
        assert stats[1][key] == stats[3][key], key
    assert stats[3]["corrupt_keys"] == ["000000002", "000000009", "000000017"] and stats[3]["resized"] == 19
    assert used == {1: 1, 3: 3}


def test_a_shard_redone_and_killed_before_its_rename_is_not_reused(tmp_path, monkeypatch):
    """A token shard's stats are written before its tar is renamed into place: a worker killed in between,
    while it redoes a shard made with another tokenizer, must not leave the old tar beside the new stats."""
    import tokenization.shard_encoder as se

    src = tmp_path / "00000.tar"
    make_image_shard(src, 0, 6)
    dst = tmp_path / "out.tar"
    enc = se.ShardEncoder(TinyVQ, CharText, 4, 16)
    enc.encode_shard(str(src), str(dst), "train/00000.tar", lineage='{"tokenizer": "old"}')  # JSON, as in a job
    assert se.finished_stats(str(dst), {"tokenizer": "old"}) is not None

    def killed(self):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(se.TokenShardWriter, "commit", killed)  # the tar's rename, after its stats
    with pytest.raises(KeyboardInterrupt):
        enc.encode_shard(str(src), str(dst), "train/00000.tar", lineage='{"tokenizer": "new"}')
    assert se.finished_stats(str(dst), {"tokenizer": "new"}) is None  # redone next time, not the old tokens


def test_token_shards_are_redone_when_the_tokenizer_changes(tmp_path, ray_local):
    """A token shard records what made it; another tokenizer, or a regenerated image shard, redoes it."""
    src = tmp_path / "images"
    src.mkdir()
    names = ["00000.tar", "00001.tar"]
    for i, n in enumerate(names):
        make_image_shard(src / n, i, 6)
    jobs = _jobs(src, tmp_path / "tokens", names)
    tok_a = {"tokenizer": {"config_hash": "a", "checkpoint_sha256": "1"}, "text": "t"}
    tok_b = {"tokenizer": {"config_hash": "a", "checkpoint_sha256": "2"}, "text": "t"}
    first = _tokenize(jobs, lineage=tok_a)
    assert first["counts"]["shards_done_now"] == 2
    assert _tokenize(jobs, lineage=tok_a)["counts"]["shards_done_now"] == 0
    assert _tokenize(jobs, lineage=tok_b)["counts"]["shards_done_now"] == 2  # another tokenizer: all redone
    time.sleep(0.01)
    make_image_shard(src / "00001.tar", 7, 6)  # a regenerated image shard under the same name
    again = _tokenize(jobs, lineage=tok_b)
    assert again["counts"]["shards_done_now"] == 1 and again["counts"]["shards_reused"] == 1
    assert again["identity"] != first["identity"]
    stats = json.loads((tmp_path / "tokens" / "00001_stats.json").read_text())
    assert stats["lineage"]["tokenizer"]["checkpoint_sha256"] == "2" and stats["lineage"]["source"]["size"] > 0


def _same_outputs(a: Path, b: Path, names, per_shard: int = 12) -> None:
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n
    keys = [k for n in names for k in shard_keys(b / n)]
    assert len(keys) == len(set(keys)) == len(names) * per_shard  # no duplicated, no missing sample
    assert not list(b.glob("*.tmp"))


def test_tokenize_actor_killed_midway_gives_identical_shards(tmp_path, ray_local):
    src = tmp_path / "images"
    src.mkdir()
    names = [f"{i:05d}.tar" for i in range(4)]
    for i, n in enumerate(names):
        make_image_shard(src / n, i, 12)
    _tokenize(_jobs(src, tmp_path / "ref", names))

    pid_file = tmp_path / "actor.pid"
    out = tmp_path / "killed"
    result: dict = {}
    worker = threading.Thread(
        target=lambda: result.update(_tokenize(_jobs(src, out, names), delay=0.3, pid_file=str(pid_file)))
    )
    worker.start()
    deadline = time.time() + 120
    while not (out / names[0]).exists() and time.time() < deadline:  # first shard done, second under way
        time.sleep(0.05)
    victim = pid_of(pid_file)
    os.kill(victim, signal.SIGKILL)  # the encoder actor process this test's Ray started
    worker.join(180)
    assert not worker.is_alive()
    assert pid_of(pid_file) != victim  # the actor was restarted
    assert result["counts"]["shards_done_now"] == 4 and result["counts"]["samples"] == 48
    _same_outputs(tmp_path / "ref", out, names)


_DRIVER = """
import sys
sys.path.insert(0, {root!r})
from tests.test_tokenize import _tokenize, _jobs
from pathlib import Path
_tokenize(_jobs(Path({src!r}), Path({out!r}), {names!r}), delay=0.4)
"""


@pytest.mark.slow
def test_tokenize_driver_killed_then_rerun_gives_identical_shards(tmp_path, ray_local):
    src = tmp_path / "images"
    src.mkdir()
    names = [f"{i:05d}.tar" for i in range(4)]
    for i, n in enumerate(names):
        make_image_shard(src / n, i, 12)
    _tokenize(_jobs(src, tmp_path / "ref", names))

    out = tmp_path / "killed"
    script = _DRIVER.format(root=str(ROOT), src=str(src), out=str(out), names=names)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 180
        while not (out / names[0]).exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the driver finished before it could be killed"
    finally:
        # the driver (its own session, started here) and the embedded Ray it started (same group)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    done_before = [n for n in names if (out / n).exists()]
    assert 1 <= len(done_before) < 4
    report = _tokenize(_jobs(src, out, names))
    assert report["counts"]["shards_done_now"] == 4 - len(done_before)
    _same_outputs(tmp_path / "ref", out, names)


@pytest.mark.slow
def test_download_then_tokenize_stages_with_real_vqgan(tmp_path, ray_local):
    """The two stage functions as the runner calls them: synthetic folder -> download (loopback server,
    img2dataset) -> tokenize (a saved tiny VQModel and the text stage's tiny T5 tokenizer, loaded in
    the Ray actor)."""
    import hashlib
    from types import SimpleNamespace

    from core.stage import Stage, StageContext
    from tokenization.download_config import DownloadConfig
    from tokenization.download_stage import download_stage
    from tokenization.shard_encoder import TokenizeConfig
    from tokenization.synthetic import write_dataset
    from tokenization.tokenize_stage import tokenize_stage
    from tokenization.vqgan import TokenizerConfig, VQModel, save_tokenizer

    run = tmp_path / "run"
    write_dataset(run / "synthetic" / "train", 24, seed=0, size=32)
    write_dataset(run / "synthetic" / "eval", 8, seed=1, size=32)
    torch.manual_seed(0)
    tok_cfg = TokenizerConfig(image_size=16)  # tokenized at 16 px (8 x 8 tokens at its training resolution, 32)
    save_tokenizer(VQModel(tok_cfg).eval(), tok_cfg, run / "tokenizer")
    from tokenization.synthetic import load_images
    from tokenization.text import TextEncoderConfig, build_tiny_t5, load_text_encoder, tiny_t5_kwargs

    text_cfg = TextEncoderConfig()
    build_tiny_t5(load_images(run / "synthetic" / "train")[1], run / "text", **tiny_t5_kwargs(text_cfg))
    for name in ("synthetic", "tokenizer", "text"):
        (run / name / "manifest.json").write_text("{}")
    config = SimpleNamespace(
        data=SimpleNamespace(
            download=DownloadConfig(samples_per_shard=10, threads=4, min_success_ratio=1.0),
            tokenize=TokenizeConfig(batch_size=8, num_actors=1),
        ),
        tokenizer=tok_cfg,
        text_encoder=text_cfg,
        cluster=SimpleNamespace(address=None),
    )

    def ctx(name, fn, inputs):
        (run / name).mkdir(exist_ok=True)
        return StageContext(config, run, Stage(name, fn, inputs), run / name)

    dl = download_stage(ctx("download", download_stage, ("synthetic",)))
    assert dl["counts"]["success"] == 32 and sorted(dl["splits"]) == ["eval", "train"]
    (run / "download" / "manifest.json").write_text(json.dumps(dl))

    tk = tokenize_stage(ctx("tokenize", tokenize_stage, ("download", "tokenizer", "text")))
    assert tk["counts"]["samples"] == 32 and tk["counts"]["shards"] == 4  # train 10+10+4, eval 8
    weights = (run / "tokenizer" / "vqgan.safetensors").read_bytes()
    assert tk["tokenizer"]["checkpoint_sha256"] == hashlib.sha256(weights).hexdigest()
    samples = list(read_token_shard(run / "tokenize" / "train" / "00000.tar"))
    assert len(samples) == 10
    assert all(s["tokens"].shape == (16,) and s["meta"]["grid"] == [4, 4] for s in samples)
    assert all(s["tokens"].max() < tok_cfg.n_embed for s in samples)
    text = load_text_encoder(text_cfg, run / "text")
    ids, mask = text.tokenize([s["txt"] for s in samples])
    for i, s in enumerate(samples):
        assert s["text_ids"].dtype == np.int32 and np.array_equal(s["text_ids"], ids[i][mask[i]].numpy())


def test_image_shards_are_read_in_key_order_whatever_order_the_download_wrote(tmp_path):
    """img2dataset writes a shard's samples as their downloads finish: every reader sees them sorted by key, so
    token shards, the tokenizer's and the text encoder's training do not change from run to run."""
    from tests.image_shard_utils import write_split
    from tokenization.shard_encoder import iter_image_samples

    images, captions = np.zeros((6, 8, 8, 3), np.uint8), [f"caption {i}" for i in range(6)]
    write_split(tmp_path / "a", images, captions, 6)
    write_split(tmp_path / "b", images, captions, 6, shuffle=True)  # written in reverse key order
    a, b = ([(k, g["txt"]) for k, g in iter_image_samples(str(tmp_path / d / "00000.tar"))] for d in "ab")
    assert a == b and [k for k, _ in a] == sorted(k for k, _ in a) and len(a) == 6


def test_token_shard_lineage_holds_the_text_settings_that_cut_the_ids(tmp_path, monkeypatch):
    """The lineage every token shard records names the text settings its caption ids depend on (``max_length``),
    so another value redoes the shards; settings that cannot change the ids (truncation policy, dtype) and the
    tokenizer's checkpoint cadence leave it as it was."""
    from tests.image_shard_utils import tokenize_lineage_probe

    lineage = tokenize_lineage_probe(tmp_path / "run", monkeypatch)
    base = lineage()
    assert base["text_ids"]["max_length"] == 32
    assert lineage("text_encoder.max_length=8") != base
    same = ("text_encoder.truncation=silent", "text_encoder.dtype=bfloat16", "tokenizer.checkpoint_every=7")
    assert all(lineage(s) == base for s in same)
