"""The ``data/epoch`` training metric: the epoch of the rank's *slowest* reader (the minimum over its logical
workers' last consumed batches), so an epoch only counts as done when every reader has finished it.

The setup makes the readers' epochs differ, either one ahead: 2 token shards of 5 samples, 2 DataLoader workers,
micro-batch 2, sample split. An epoch is 5 micro-batch chunks and the chunk count runs on across epochs, reader
r keeping the chunks c with c % 2 == r: reader 0 takes 3, 2, 3, ... batches per epoch and reader 1 2, 3, 2, ...;
rank-local batch n comes from reader n % 2. After 6 batches reader 1 is ahead (0 vs 1), after 11 reader 0
(2 vs 1)."""

from __future__ import annotations

import itertools

from tests.trainer_utils import K, L, make_job, make_shards, one_thread  # noqa: F401 (autouse fixture)
from training.data import LoaderSpec, ShardLoader

STEPS = 12
# after n = 1..12 consumed batches: min over the readers' epochs
WANT_MIN = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2]


def _shards(tmp_path):
    return make_shards(tmp_path / "shards", n_shards=2, per_shard=5)


def test_loader_epoch_is_the_slowest_readers(tmp_path):
    spec = LoaderSpec(_shards(tmp_path), seq_len=L, codebook_size=K, micro_batch=2, num_workers=2, split="sample")
    loader = ShardLoader(spec)
    got, per_reader = [], []
    for _ in itertools.islice(loader, STEPS):
        got.append(loader.epoch)
        per_reader.append(tuple(loader.positions[w][0] for w in sorted(loader.positions)))
    assert per_reader[5] == (0, 1) and per_reader[10] == (2, 1)  # either reader may be the one behind
    assert got == WANT_MIN


def test_trainer_logs_the_slowest_readers_epoch(tmp_path):
    from training.metrics_log import read_metrics
    from training.trainer import run_training

    job = make_job(
        tmp_path,
        _shards(tmp_path),
        steps=STEPS,
        batch_size=2,
        num_workers=2,
        log_every=1,
        checkpoint_every=STEPS,
        warmup_steps=0,
        data_split="sample",
    )
    run_training(job, log=lambda *_: None)
    records = read_metrics(tmp_path / "train" / "metrics.jsonl")
    assert [records[s]["data/epoch"] for s in range(1, STEPS + 1)] == WANT_MIN
