"""A two-node Ray cluster on this machine, both nodes on 127.0.0.1 (``ray.util.cluster_utils.Cluster``
in a child process) runs the download stage (img2dataset's Ray distributor) and the three jobs that map
items over a pool of actors through the shared work queue (``cluster.work_queue``): tokenize (image
shards), sample (prompt chunks) and the retrieval baseline's embedding (image shards).

Each node has one CPU and each job two one-CPU actors: one actor on each node. In each job the worker node
is killed once both actors are mid-item (``tests.actor_hooks.Pace``: each actor has finished one item and
begun the next), and a new worker node joins before the next job. For each job this is the queue's
node-loss test: the lost actor's item is requeued (the log says so), its replacement cannot be placed (its
node is gone, the head's CPU is busy) and never holds an item, the survivor finishes the lost item and
every other one, and the output equals a one-node run's: byte-identical token shards and images,
identical embeddings and retrieval results."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cluster.local_ray import LOOPBACK
from tests.actor_hooks import begun, on_node, paced, pid_of
from tests.eval_utils import one_thread  # noqa: F401  (fixture)
from tests.ray_nodes import free_port, node_env
from tests.test_eval_clip_score import PROMPTS, TINY, make_tiny_clip
from tests.test_eval_retrieval_shards import write_shards
from tests.test_sample_stage import _files, sampled_then_cleared
from tests.test_tokenize import _jobs, _same_outputs, _tokenize, make_image_shard

ROOT = Path(__file__).resolve().parents[1]
SHARDS = [f"{i:05d}.tar" for i in range(8)]  # tokenize: 12 images each, 3 batches of 4
SAMPLE = ["sample.batch_size=2"]  # 10 prompts: 5 chunks
N_CHUNKS = 5
N_EMBED = 5  # retrieval: image shards of 3 images, one CLIP batch each
DELAY = 1.0  # seconds each actor sleeps as it begins a unit of work (a batch, a chunk, a shard): the kill lands in it


def _kill_mid_stage(cluster, worker, folder: Path, stage: Callable[[str], dict], done: Callable[[], int], units: int):
    """Run ``stage(pid_file)`` in a thread; once each of its two actors has finished an item (of ``units``
    units of work) and begun the next, remove ``worker`` (the worker node, with the actor on it). Returns
    ``{"result" (or "error"), "done_at_kill": done() then, "begun": units begun by each actor, "alive": alive
    nodes once the stage is over and the GCS has seen the loss (at most a minute later)}``."""
    import ray

    folder.mkdir(parents=True)
    out: dict = {}

    def target():
        try:
            out["result"] = stage(str(folder / "{pid}"))
        except Exception as exc:  # noqa: BLE001  (reported to the test)
            out["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=target)
    thread.start()
    deadline = time.time() + 180
    while not (len(begun(folder)) == 2 and min(begun(folder)) > units) and time.time() < deadline and thread.is_alive():
        time.sleep(0.05)
    # and for the worker node's actor to be at most DELAY / 2 into a unit: it sleeps DELAY in it, so it is mid-item
    actors = on_node(folder, worker.node_id)
    mine = [Path(f"{p}.begun") for p in actors]

    def age() -> float:
        return min(time.time() - p.stat().st_mtime for p in mine)

    while age() > DELAY / 2 and time.time() < deadline and thread.is_alive():
        time.sleep(0.02)
    out["done_at_kill"] = done()
    # the node's actor is frozen before the node goes and killed after: a node lost stops everything on it at
    # once, while an actor outlives its killed raylet until it notices (0.3-0.8 s here; once on CI long
    # enough to write the item it was on, which the survivor then found done)
    frozen = [pid_of(p) for p in actors]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    cluster.remove_node(worker, allow_graceful=False)
    for pid in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    thread.join(300)
    deadline = time.time() + 60
    while (alive := sum(n["Alive"] for n in ray.nodes())) > 1 and time.time() < deadline:
        time.sleep(0.2)
    return {**out, "begun": begun(folder), "alive": alive}


def _drive(a: dict) -> None:
    """The child process's driver: the cluster, the download stage, then tokenize, sample and retrieval, each
    with a fresh worker node killed mid-job. Prints ``STAGE <job> (at <seconds>)`` before each job's log and
    ``REPORT <json>`` at the end. (Here ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is set before ``import ray``: every
    node address is 127.0.0.1.)"""
    import ray
    import torch
    from ray.cluster_utils import Cluster

    import evaluation.retrieval_shards as rs
    import evaluation.sample_worker as sw
    from evaluation.clip_model import ClipEncoder
    from tests.eval_utils import load, run
    from tokenization.download import run_download
    from tokenization.download_config import DownloadConfig
    from tokenization.synthetic import write_dataset

    torch.set_num_threads(1)
    tmp, report = Path(a["tmp"]), {}
    head = dict(num_cpus=1, node_ip_address=LOOPBACK, include_dashboard=False, dashboard_agent_listen_port=a["agent"])
    # the GCS reports a killed node dead after 3 failed health checks a second apart (Ray's default: 5, 3 s apart,
    # some 20 s after the kill), so each job's check that its node is gone waits a few seconds at most
    health = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={**head, "_system_config": health})
    t0 = time.time()

    def section(name: str) -> None:
        print(f"STAGE {name} (at {time.time() - t0:.1f} s)", flush=True)

    try:
        worker = cluster.add_node(num_cpus=1, node_ip_address=LOOPBACK)
        ray.init(address=cluster.address, log_to_driver=False)
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {LOOPBACK}, ray.nodes()
        assert len(ray.nodes()) == 2
        section("download")
        syn = tmp / "synthetic"
        write_dataset(syn / "train", 24, seed=0, size=32)
        write_dataset(syn / "eval", 4, seed=1, size=32)
        served = dict(source="synthetic", serve_local=True, samples_per_shard=4, threads=4, timeout=10)
        dl_cfg = DownloadConfig(**served, distributor="ray", min_success_ratio=1.0)
        dl = run_download(dl_cfg, tmp / "download", syn, ray_address=cluster.address)
        report["download"] = dl["counts"]

        section("tokenize")
        tokens = tmp / "two_nodes"
        jobs = _jobs(tmp / "images", tokens, SHARDS)
        report["tokenize"] = _kill_mid_stage(
            cluster,
            worker,
            tmp / "actors" / "tokenize",
            lambda pid_file: _tokenize(jobs, delay=DELAY, ray_address=cluster.address, num_actors=2, pid_file=pid_file),
            lambda: len(list(tokens.glob("*.tar"))),
            units=3,  # batches a shard
        )

        section("sample")
        cfg = load(tmp / "sample" / "run", [*SAMPLE, "eval.sample_workers=2"])
        chunks = tmp / "sample" / "run" / "sample" / "tokens"

        def sample(pid_file: str) -> dict:
            sw.ChunkWorker = paced(sw.ChunkWorker, "run", DELAY, pid_file)
            return run(cfg, "sample", log=print)

        worker = cluster.add_node(num_cpus=1, node_ip_address=LOOPBACK)
        report["sample"] = _kill_mid_stage(
            cluster, worker, tmp / "actors" / "sample", sample, lambda: len(list(chunks.glob("*.npy"))), units=1
        )

        section("retrieval")
        enc = ClipEncoder(a["clip"], a["clip_checkpoint"], device="cpu", batch_size=3, model_cfg=TINY)
        shards = rs.list_shards(str(tmp / "clip_shards"))
        cache = tmp / "embeddings" / "two_nodes"

        def embed(pid_file: str) -> dict:
            rs.ShardEmbedder = paced(rs.ShardEmbedder, "embed", DELAY, pid_file)
            with rs.worker_pool(enc, 2, None, log=print) as on_ray:
                job = rs.embed_shards(on_ray, shards, cache, print)
            return {**job, "files": [str(f) for f in job["files"]]}

        worker = cluster.add_node(num_cpus=1, node_ip_address=LOOPBACK)
        report["retrieval"] = _kill_mid_stage(
            cluster, worker, tmp / "actors" / "retrieval", embed, lambda: len(list(cache.glob("*.npz"))), units=1
        )
        section("done")
        print("REPORT " + json.dumps(report), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


def _logs(stdout: str) -> dict[str, str]:
    """Each job's log, from the ``STAGE <job>`` lines of the driver's output."""
    parts = stdout.split("STAGE ")[1:]
    return {p.split(None, 1)[0]: p for p in parts}


def _lost_and_finished(job: dict, n_items: int, units: int, log: str) -> None:
    """The worker node was killed mid-job, each actor having finished an item and begun another, and the item
    in flight there was requeued: the log says so, only two actors ever began work (the replacement held
    nothing) and only the lost item's units were begun twice (the survivor did the rest, once)."""
    assert "error" not in job, job
    assert 2 <= job["done_at_kill"] < n_items and job["alive"] == 1, job
    counts = job["begun"]
    assert len(counts) == 2 and min(counts) > units and units * n_items < sum(counts) <= units * (n_items + 1), job
    assert "its worker was lost" in log and "requeued, its worker replaced" in log, log[-3000:]


def _retrieved(files: list[str], shards: list[str], prompts_emb) -> tuple[list, list]:
    """(keys and embeddings of every cache file, the Flat index's top-5 items for the prompts)."""
    from evaluation.retrieval import build_index, search
    from evaluation.retrieval_shards import ShardItems, shard_chunks

    cached = []
    for f in files:
        with np.load(f) as z:
            cached.append((list(z["keys"]), z["embeddings"]))
    items = ShardItems.from_files(shards, [Path(f) for f in files])
    _, ids = search(build_index(shard_chunks(items), "Flat"), prompts_emb, k=5)
    return cached, [[items[i] for i in row] for row in ids]


@pytest.mark.slow
def test_work_queue_jobs_on_two_nodes_lose_nothing_when_the_worker_node_dies(tmp_path, ray_local):
    import evaluation.retrieval_shards as rs
    from evaluation.clip_model import ClipEncoder

    # the one-node references, on the session's Ray or in this process
    (tmp_path / "images").mkdir()
    for i, n in enumerate(SHARDS):
        make_image_shard(tmp_path / "images" / n, i, 12)
    _tokenize(_jobs(tmp_path / "images", tmp_path / "ref", SHARDS))
    _, sample_out, sample_ref = sampled_then_cleared(tmp_path / "sample", SAMPLE)
    clip, ckpt = make_tiny_clip(tmp_path, seed=2)
    write_shards(tmp_path / "clip_shards", N_EMBED, 3, seed=5)
    shards = rs.list_shards(str(tmp_path / "clip_shards"))
    enc = ClipEncoder(clip, ckpt, device="cpu", batch_size=3)
    with rs.worker_pool(enc, 0, None) as local:
        embed_ref = rs.embed_shards(local, shards, tmp_path / "embeddings" / "ref", lambda m: None)

    args = {"tmp": str(tmp_path), "agent": free_port(), "clip": clip, "clip_checkpoint": str(ckpt)}
    script = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.test_two_nodes import _drive; _drive({args!r})"
    env = {**node_env(str(ROOT)), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and "REPORT " in proc.stdout, proc.stdout[-3000:] + proc.stderr[-4000:]
    logs_out, report = proc.stdout.split("REPORT ", 1)
    report, logs = json.loads(report.split("\n", 1)[0]), _logs(logs_out)
    downloaded = {"count": 28, "success": 28, "failed_to_download": 0, "failed_to_resize": 0, "shards": 7}
    assert report["download"] == downloaded, report["download"]

    tok = report["tokenize"]
    _lost_and_finished(tok, len(SHARDS), 3, logs["tokenize"])
    per_node = tok["result"]["metrics"]["shards_per_node"]
    assert len(per_node) == 2, per_node  # the shards were spread over both nodes
    assert tok["result"]["counts"]["shards_done_now"] == len(SHARDS) == sum(per_node.values())
    assert tok["result"]["counts"]["samples"] == 12 * len(SHARDS)
    _same_outputs(tmp_path / "ref", tmp_path / "two_nodes", SHARDS)  # every shard, byte-identical

    sample = report["sample"]
    _lost_and_finished(sample, N_CHUNKS, 1, logs["sample"])
    assert sample["result"]["workers"] == "ray" and sample["result"]["counts"]["chunks_done_now"] == N_CHUNKS
    assert _files(sample_out) == sample_ref  # images, token and step maps: byte-identical

    retrieval = report["retrieval"]
    _lost_and_finished(retrieval, N_EMBED, 1, logs["retrieval"])
    job = retrieval["result"]
    assert sorted(job["embedded"]) == shards and job["workers"] == 2  # both nodes embedded shards
    prompts = enc.texts(PROMPTS)
    ref_cached, ref_found = _retrieved([str(f) for f in embed_ref["files"]], shards, prompts)
    cached, found = _retrieved(job["files"], shards, prompts)
    for (ref_keys, ref_emb), (keys, emb) in zip(ref_cached, cached):
        assert keys == ref_keys and len(keys) == 3 and np.array_equal(emb, ref_emb)
    assert found == ref_found  # the same training images retrieved for every prompt
