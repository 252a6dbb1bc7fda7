"""Token-shard loader: what changes from epoch to epoch (shard order, per-sample seeds), how bad-data counts
combine over readers, the sample checks (token id range, finite qerr) and the ``auto`` split's threshold."""

from __future__ import annotations

import io
import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.trainer_utils import K, L, loader_shards, loader_spec, make_shards, one_thread  # noqa: F401 (fixtures)
from training.data import ShardLoader, decode, sample_seed


@pytest.fixture(scope="module")
def shards(loader_shards) -> list[str]:
    return loader_shards


def spec(shards, **kw):
    return loader_spec(shards, **{"shuffle_buffer": 1, **kw})


def test_each_epoch_reads_the_shards_in_another_order(shards):
    """Epoch e permutes the shard list with (seed, e): with a one-sample buffer the stream is shard by shard,
    and the shard order of the first epochs is not one order repeated."""
    flat = [k for b in itertools.islice(ShardLoader(spec(shards, split="shard")), 64) for k in b["keys"]]
    orders = []
    for e in range(4):  # 48 samples per epoch
        epoch = [k.split("_")[0] for k in flat[48 * e : 48 * (e + 1)]]
        orders.append(tuple(dict.fromkeys(epoch)))
    assert all(sorted(o) == ["s000", "s001", "s002", "s003"] for o in orders)
    assert len(set(orders)) > 1, orders


def test_sample_seeds_are_drawn_again_each_epoch(shards):
    """A sample's seed is (train seed, epoch, key): each epoch is a fresh draw of its stage, order noise,
    injected errors and condition dropout, not the same tuple replayed."""
    seeds: dict = {}
    s = spec(shards, split="sample", shuffle_buffer=5)
    for batch in itertools.islice(ShardLoader(s), 32):  # 2 epochs of 48 samples
        for k, sd in zip(batch["keys"], batch["seeds"].tolist()):
            seeds.setdefault(k, []).append(sd)
    assert len(seeds) == 48 and all(len(v) == 2 for v in seeds.values())
    for k, (first, second) in seeds.items():
        assert first == sample_seed(7, 0, k) and second == sample_seed(7, 1, k) and first != second


def test_a_buffer_larger_than_the_epoch_still_shuffles_it(shards):
    """The default buffer (1000) holds a whole small data set: what is left in the buffer at the end of an epoch
    comes out in a random order, not in the order it was read."""
    s = spec(shards[:1], split="sample", shuffle_buffer=1000, micro_batch=4)
    got = [k for b in itertools.islice(ShardLoader(s), 6) for k in b["keys"]]  # 2 epochs of 12
    read_order = [f"s000_{i:04d}" for i in range(12)]
    assert sorted(got[:12]) == sorted(got[12:]) == read_order
    assert got[:12] != read_order and got[12:] != read_order and got[:12] != got[12:]


def _damage(path: str) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * 0.55)])  # cut mid-member: truncated


def _keys_by_worker(loader: ShardLoader, n: int, workers: int) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {w: [] for w in range(workers)}
    for i, b in enumerate(itertools.islice(loader, n)):
        out[i % workers] += b["keys"]  # batch n comes from worker n % W
    return out


def test_bad_shards_are_summed_over_the_readers_of_a_shard_split(shards, tmp_path):
    """Shard split: the readers read disjoint shards, so their counts add up; once both readers are past
    their first epoch every bad shard has been met (one bad shard per reader in that epoch here)."""
    s = spec(shards, split="shard", num_workers=2)
    first = _keys_by_worker(ShardLoader(s), 16, 2)  # 2 shards x 12 samples = 8 batches per reader per epoch
    per_worker = [sorted({k.split("_")[0] for k in first[w]}) for w in range(2)]
    assert all(len(p) == 2 for p in per_worker) and set(per_worker[0]).isdisjoint(per_worker[1])
    copies = []
    for p in shards:
        dst = tmp_path / Path(p).name
        shutil.copy(p, dst)
        copies.append(str(dst))
    for w in range(2):  # one bad shard for each reader in epoch 0
        _damage(copies[int(per_worker[w][0][1:])])
    loader = ShardLoader(spec(copies, split="shard", num_workers=2))
    it = iter(loader)
    while min((p[0] for p in loader.positions.values()), default=0) < 1 or len(loader.positions) < 2:
        next(it)
    del it
    assert loader.bad_reduce == "sum"
    assert loader.bad_shards >= 2, loader.bad


def test_bad_shards_are_not_double_counted_when_every_reader_reads_every_shard(tmp_path):
    """Sample split: each reader reads every shard, so a bad shard met by two readers is one bad shard."""
    paths = make_shards(tmp_path / "shards", n_shards=3, per_shard=10)
    _damage(paths[1])
    _damage(paths[2])
    loader = ShardLoader(spec(paths, split="sample", num_workers=2, micro_batch=2))
    list(itertools.islice(loader, 12))
    assert len(loader.bad) == 2 and all(v[0] == 2 for v in loader.bad.values())
    assert loader.bad_reduce == "max" and loader.bad_shards == 2


def _raw(tokens, qerr) -> dict:
    def npy(a):
        buf = io.BytesIO()
        np.save(buf, np.asarray(a))
        return buf.getvalue()

    return {"__key__": "k", "tokens.npy": npy(tokens), "qerr.npy": npy(qerr), "text_ids.npy": npy([1, 2])}


def test_a_sample_with_an_id_outside_the_codebook_or_a_non_finite_qerr_is_bad():
    """Id K would index past the codebook (or alias a special id): refused, as is a NaN/inf quantization error."""
    ok = decode(_raw(np.full(L, K - 1), np.zeros(L)), L, K)
    assert ok["tokens"].dtype == np.int64 and int(ok["tokens"].max()) == K - 1
    with pytest.raises(ValueError, match="outside"):
        decode(_raw(np.full(L, K), np.zeros(L)), L, K)
    with pytest.raises(ValueError, match="outside"):
        decode(_raw(np.full(L, -1), np.zeros(L)), L, K)
    for bad in (np.nan, np.inf):
        q = np.zeros(L)
        q[3] = bad
        with pytest.raises(ValueError, match="non-finite"):
            decode(_raw(np.zeros(L), q), L, K)
    with pytest.raises(ValueError, match="qerr"):
        decode(_raw(np.zeros(L), np.zeros(L - 1)), L, K)


def test_auto_split_uses_the_shard_split_from_exactly_one_shard_per_slot(shards):
    assert spec(shards, world=2, num_workers=2).resolved_split == "shard"  # 4 shards, 4 slots
    assert spec(shards, world=1, num_workers=5).resolved_split == "sample"
