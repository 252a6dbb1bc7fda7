"""Token-shard loader: rank/worker split, seeded shuffle, exact resume, bad shards (never a hang)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tests.trainer_utils import K, L, loader_shards, loader_spec, make_shards, one_thread  # noqa: F401 (fixtures)
from training.data import BadShardError, NoDataError, ShardLoader


@pytest.fixture(scope="module")
def shards(loader_shards) -> list[str]:
    return loader_shards


def spec(shards, **kw):
    return loader_spec(shards, **{"shuffle_buffer": 5, **kw})


def keys(loader, n):
    return [b["keys"] for b in itertools.islice(loader, n)]


@pytest.mark.parametrize("workers,split", [(0, "shard"), (0, "sample"), (2, "shard"), (2, "sample")])
def test_resumed_loader_yields_what_the_uninterrupted_one_would(shards, workers, split):
    """torchtitan-style: take k batches, save the state, build a new loader from it: the next batches
    equal batches k.. of an uninterrupted loader (across an epoch boundary: 24 samples/rank/epoch)."""
    s = spec(shards, rank=1, world=2, num_workers=workers, split=split)
    full = keys(ShardLoader(s), 14)
    first = ShardLoader(s)
    it = iter(first)
    head = [next(it)["keys"] for _ in range(5)]
    state = first.state_dict()
    del it
    resumed = ShardLoader(s)
    resumed.load_state_dict(state)
    assert head + keys(resumed, 9) == full
    assert resumed.epoch >= 1  # 14 batches x 3 > one epoch of this rank's data


def test_state_from_another_stream_is_refused(shards):
    a = ShardLoader(spec(shards, world=2))
    b = ShardLoader(spec(shards, world=1))
    with pytest.raises(ValueError, match="world"):
        b.load_state_dict(a.state_dict())


def test_shard_split_partitions_an_epoch_across_ranks_and_workers(shards):
    seen = []
    for rank in range(2):
        s = spec(shards, rank=rank, world=2, num_workers=0, split="shard", micro_batch=4)
        seen += [k for b in keys(ShardLoader(s), 6) for k in b]  # 2 shards x 12 = 24 = 6 x 4
    assert sorted(seen) == sorted(f"s{i:03d}_{j:04d}" for i in range(4) for j in range(12))


def test_sample_split_batches_do_not_depend_on_world_size(shards):
    """Union of the 2 ranks' micro-batches at step n == the 1-rank micro-batch n (twice as big)."""
    one = keys(ShardLoader(spec(shards, world=1, micro_batch=6, split="sample")), 8)
    r0 = keys(ShardLoader(spec(shards, rank=0, world=2, split="sample", num_workers=2)), 8)
    r1 = keys(ShardLoader(spec(shards, rank=1, world=2, split="sample")), 8)
    assert [sorted(a + b) for a, b in zip(r0, r1)] == [sorted(x) for x in one]


def test_shuffle_depends_on_seed_and_epoch(shards):
    a = keys(ShardLoader(spec(shards, seed=1, split="sample")), 32)
    b = keys(ShardLoader(spec(shards, seed=2, split="sample")), 16)
    assert a != b
    flat = [k for batch in a for k in batch]
    assert flat[:48] != flat[48:96] and sorted(flat[:48]) == sorted(flat[48:96])  # epochs 0 and 1
    batch = next(iter(ShardLoader(spec(shards))))
    assert batch["tokens"].shape == (3, L) and batch["text_mask"].any(1).all()
    assert len(set(batch["seeds"].tolist())) == 3


def test_a_shard_listed_twice_gives_each_copy_its_own_seeds(shards):
    """data.mixing repeats a source's shards: each copy of a sample is another draw of its stage, order noise,
    injected errors and dropout (else the repeats are one example at twice the weight); a shard listed once
    keeps the seeds of (seed, epoch, key)."""
    from training.data import sample_seed

    seeds: dict = {}
    for batch in itertools.islice(ShardLoader(spec([shards[0], shards[1], shards[0]], split="sample")), 12):
        for k, sd in zip(batch["keys"], batch["seeds"].tolist()):  # one epoch: 36 samples
            seeds.setdefault(k, []).append(sd)
    once = {k: v for k, v in seeds.items() if len(v) == 1}
    twice = {k: v for k, v in seeds.items() if len(v) == 2}
    assert len(once) == 12 and len(twice) == 12
    assert all(v[0] == sample_seed(7, 0, k) for k, v in once.items())
    assert all(len(set(v)) == 2 and sample_seed(7, 0, k) in v for k, v in twice.items())


def test_two_sources_with_the_same_keys_give_their_samples_their_own_seeds(tmp_path):
    """Every source's download numbers its keys from 000000000: a multi-source run's folders
    (``tokenize/train/<source>/``) share keys, and a seed of (seed, epoch, key) alone would give two sources'
    samples one stage, dropout and error draw. The source folder is part of the key then; one folder keeps
    the seeds it always had."""
    from training.data import sample_seed

    a = make_shards(tmp_path / "laion", n_shards=2, per_shard=6, seed=1)
    b = make_shards(tmp_path / "cc3m", n_shards=2, per_shard=6, seed=2)  # the same keys s000_0000..
    seeds: dict = {}
    for batch in itertools.islice(ShardLoader(spec(a + b, split="sample")), 8):  # one epoch: 24 samples
        for k, sd in zip(batch["keys"], batch["seeds"].tolist()):
            seeds.setdefault(k, []).append(sd)
    assert len(seeds) == 12 and all(len(v) == 2 and len(set(v)) == 2 for v in seeds.values())
    assert all(sorted(v) == sorted(sample_seed(7, 0, f"{d}/{k}") for d in ("laion", "cc3m")) for k, v in seeds.items())
    one = next(iter(ShardLoader(spec(a, split="sample"))))
    assert one["seeds"].tolist() == [sample_seed(7, 0, k) for k in one["keys"]]


def _truncate(path: str, keep: float) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])


@pytest.fixture
def damaged(tmp_path) -> list[str]:
    paths = make_shards(tmp_path / "shards", n_shards=3, per_shard=10)
    _truncate(paths[1], 0.55)  # cut mid-member
    Path(paths[2]).write_bytes(b"\x13\x37" * 700 + Path(paths[2]).read_bytes()[1400:])  # bad header
    return paths


def test_truncated_and_corrupt_shards_are_counted_and_skipped(damaged):
    s = spec(damaged, split="sample", micro_batch=2, shuffle_buffer=4)
    loader = ShardLoader(s)
    got = [k for b in keys(loader, 8) for k in b]
    assert loader.bad_shards == 2
    assert all(k.startswith("s000") for k in got)  # only the intact shard is read
    assert len(set(got)) == 10 and len(got) == 16  # ... over and over (epochs)


def test_bad_shard_fails_clearly_when_asked(damaged):
    for workers in (0, 1):  # also from a DataLoader worker
        loader = ShardLoader(spec(damaged, split="sample", on_bad_shard="fail", num_workers=workers))
        with pytest.raises(BadShardError, match=r"0000[12]\.tar"):
            keys(loader, 20)


@pytest.mark.timeout(60)
def test_nothing_readable_raises_instead_of_hanging(tmp_path):
    bad = tmp_path / "00000.tar"
    bad.write_bytes(b"not a tar file" * 100)
    with pytest.raises(NoDataError, match="no usable sample"):
        keys(ShardLoader(spec([str(bad)], num_workers=1)), 1)


def test_wrong_length_samples_are_bad_samples(tmp_path):
    good = make_shards(tmp_path / "a", n_shards=1, per_shard=6)
    short = make_shards(tmp_path / "b", n_shards=1, per_shard=4, seq_len=8)  # 8 tokens, model wants 16
    loader = ShardLoader(spec(good + short, split="sample"))
    got = [k for b in keys(loader, 4) for k in b]
    assert loader.bad_samples >= 4 and loader.bad_shards == 0
    assert all(k.startswith("s000") for k in got)
    with pytest.raises(BadShardError, match="16"):
        keys(ShardLoader(spec(short, on_bad_shard="fail")), 1)
