"""A two-node Ray cluster on this machine, both nodes on 127.0.0.1 (``ray.util.cluster_utils.Cluster``
in a child process) runs the data stages: the download stage (img2dataset's Ray distributor) and the
tokenize stage, whose shards run on both nodes; killing the worker node mid-tokenize loses no shard:
the survivors redo its shard and the output equals a one-node run's.

Tokenize runs on the work queue that sample and retrieval share (``cluster.work_queue``), so this is
also the queue's node-loss test: the lost actor's shard is requeued, its replacement cannot be placed
(its node is gone, the head's CPU is busy) and never holds a shard, the survivor finishes. Sample and
retrieval are not run here (each would add its own model-loading actors and a node restart to a test
that already takes about a minute); their actor-loss path through the same queue is tested on one node
(``test_sample_stage.test_ray_actors_give_the_same_images``,
``test_eval_retrieval_shards.test_ray_embedding_redoes_the_shard_of_a_dead_actor``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ray_nodes import free_port, node_env
from tests.test_tokenize import _jobs, _same_outputs, _tokenize, make_image_shard

ROOT = Path(__file__).resolve().parents[1]

# Runs in a child process (this one already has the session's Ray). The environment sets
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before `import ray`: every node address is 127.0.0.1.
DRIVER = """
import json, sys, threading, time
sys.path.insert(0, {root!r})
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from tests.test_tokenize import _jobs, _tokenize
from tokenization.download import DownloadConfig, run_download
from tokenization.synthetic import write_dataset

out = Path({out!r})
cluster = Cluster(initialize_head=True, head_node_args=dict(
    num_cpus=1, node_ip_address="127.0.0.1", include_dashboard=False, dashboard_agent_listen_port={agent}))
worker = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
try:
    ray.init(address=cluster.address, log_to_driver=False)
    assert {{n["NodeManagerAddress"] for n in ray.nodes()}} == {{"127.0.0.1"}}, ray.nodes()
    assert len(ray.nodes()) == 2
    syn = Path({src!r}).parent / "synthetic"
    write_dataset(syn / "train", 24, seed=0, size=32)
    write_dataset(syn / "eval", 4, seed=1, size=32)
    dl = run_download(DownloadConfig(source="synthetic", serve_local=True, samples_per_shard=4, threads=4,
                                     timeout=10, distributor="ray", min_success_ratio=1.0),
                      Path({src!r}).parent / "download", syn, ray_address=cluster.address)
    print("DOWNLOAD " + json.dumps(dl["counts"]))
    report = {{}}
    pids = out.parent / "actors"
    pids.mkdir()
    run = threading.Thread(target=lambda: report.update(_tokenize(
        _jobs(Path({src!r}), out, {names!r}), delay={delay}, ray_address=cluster.address, num_actors=2,
        pid_file=str(pids / "{{pid}}"))))
    run.start()
    deadline = time.time() + 180
    def batches():
        return [int(p.read_text() or 0) for p in pids.glob("*.batches")]
    # each actor (one per node) has encoded a whole shard (3 batches): the worker node's first actor may start
    # many seconds after the head's on a busy machine, so a count of finished shards alone is not enough
    while not (len(batches()) == 2 and min(batches()) >= 3) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # its result reaches the driver
    done_at_kill = len(list(out.glob("*.tar")))
    cluster.remove_node(worker, allow_graceful=False)  # the worker node and the actor it hosts, mid-shard
    run.join(300)
    print("REPORT " + json.dumps(dict(report, done_at_kill=done_at_kill, alive=sum(n["Alive"] for n in ray.nodes()))))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


@pytest.mark.slow
def test_tokenize_on_two_nodes_loses_no_shard_when_the_worker_node_dies(tmp_path, ray_local):
    src = tmp_path / "images"
    src.mkdir()
    names = [f"{i:05d}.tar" for i in range(8)]
    for i, n in enumerate(names):
        make_image_shard(src / n, i, 12)
    _tokenize(_jobs(src, tmp_path / "ref", names))  # the reference, on the session's one-node Ray

    out = tmp_path / "two_nodes"
    out.mkdir()
    # one CPU per node and two one-CPU actors: one actor on each node; 3 batches of 1 s per shard
    script = DRIVER.format(root=str(ROOT), src=str(src), out=str(out), names=names, delay=1.0, agent=free_port())
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=node_env(str(ROOT)), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and "REPORT " in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]
    downloaded = json.loads(proc.stdout.split("DOWNLOAD ", 1)[1].split("\n", 1)[0])
    assert downloaded == {"count": 28, "success": 28, "failed_to_download": 0, "failed_to_resize": 0, "shards": 7}
    report = json.loads(proc.stdout.split("REPORT ", 1)[1])
    assert 2 <= report["done_at_kill"] < len(names) and report["alive"] == 1, report  # killed mid-stage
    per_node = report["metrics"]["shards_per_node"]
    assert len(per_node) == 2, per_node  # the shards were spread over both nodes
    assert report["counts"]["shards_done_now"] == len(names) == sum(per_node.values())
    assert report["counts"]["samples"] == 12 * len(names)
    logs = proc.stdout + proc.stderr  # the worker's in-flight shard went back to the queue
    assert "its worker was lost" in logs and "requeued, its worker replaced" in logs, logs[-3000:]
    _same_outputs(tmp_path / "ref", out, names)  # every shard, byte-identical to the one-node run
