"""Loader resume from the saved reader state: the same batches as the uninterrupted stream, at a cost of a few
shards wherever in the epoch it stands (not a replay of the epoch so far)."""

from __future__ import annotations

import copy
import io
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

import training.data as data
from tests.trainer_utils import K, L, loader_shards, loader_spec, make_shards, one_thread  # noqa: F401 (fixtures)
from tokenization.shards import read_token_shard, write_token_shard
from training.data import LoaderSpec, ShardLoader


@pytest.fixture(scope="module")
def shards(loader_shards) -> list[str]:
    return loader_shards


def spec(shards, **kw):
    return loader_spec(shards, **{"shuffle_buffer": 5, **kw})


def roundtrip(state: dict) -> dict:
    """Through a checkpoint's per-rank extras: ``torch.save`` and ``torch.load(weights_only=True)``."""
    f = io.BytesIO()
    torch.save({"loader": state}, f)
    f.seek(0)
    return torch.load(f, weights_only=True)["loader"]


def view(batch, loader) -> tuple:
    """What a batch and the loader's records after it say: keys, tokens, seeds, positions, bad counts."""
    return (
        batch["keys"],
        batch["tokens"].tolist(),
        batch["seeds"].tolist(),
        dict(loader.positions),
        loader.bad_shards,
        loader.bad_samples,
    )


def run(s: LoaderSpec, n: int) -> tuple[list, list]:
    """``n`` batches of an uninterrupted loader and its state after each."""
    loader = ShardLoader(s)
    views, states = [], []
    for batch in itertools.islice(loader, n):
        views.append(view(batch, loader))
        states.append(copy.deepcopy(loader.state_dict()))
    return views, states


def resumed(s: LoaderSpec, state: dict, n: int) -> list:
    loader = ShardLoader(s)
    loader.load_state_dict(roundtrip(state))
    return [view(batch, loader) for batch in itertools.islice(loader, n)]


def kinds(state: dict) -> set[str]:
    """Where the readers of a state stand: in the first epoch's shards, in a flush, at an epoch's end, later."""
    out = set()
    for r in state["readers"].values():
        if r["flush"] is None:
            out.add("reading" if r["epoch"] == 0 else "later")
        else:
            out.add("end" if r["flush"] == len(r["buf"][0]) else "flush")
            if r["epoch"] > 0:
                out.add("later")
    return out


def check_resumes(s: LoaderSpec, n: int, ahead: int, every: int = 1, need=("reading", "flush", "end", "later")):
    views, states = run(s, n + ahead)
    points = list(range(1, n, every))
    firsts = {}
    for i in range(1, n):
        for kind in kinds(states[i - 1]):
            firsts.setdefault(kind, i)
    points = sorted(set(points) | set(firsts.values()))
    assert set(need) <= set(firsts), firsts
    for i in points:
        assert resumed(s, states[i - 1], ahead) == views[i : i + ahead], f"resumed after batch {i}"


@pytest.mark.parametrize(
    "split,buffer,micro",
    [("shard", 5, 3), ("shard", 20, 4), ("shard", 100, 3), ("sample", 5, 4), ("sample", 20, 3), ("sample", 100, 4)],
)
def test_resume_from_state_equals_the_uninterrupted_stream(shards, split, buffer, micro):
    """One reader over 48 samples an epoch; buffers below a shard (12), above a shard and above the epoch;
    resumed after every batch of 2.5 epochs (in the shards, in the flush, at its end, in later epochs)."""
    s = spec(shards, split=split, shuffle_buffer=buffer, micro_batch=micro)
    need = ("reading", "flush", "end", "later") if buffer < 48 else ("flush", "end", "later")  # all in the buffer
    check_resumes(s, n=(120 // micro), ahead=3, need=need)


@pytest.mark.parametrize("split,buffer", [("shard", 5), ("sample", 7), ("sample", 30)])
def test_resume_from_state_with_workers_and_ranks(shards, split, buffer):
    """DataLoader workers (the state crosses the worker queue) on rank 1 of 2, micro-batch 5 (epochs do not end
    on a batch boundary for every reader)."""
    micro = 5 if split == "sample" else 3
    s = spec(shards, split=split, shuffle_buffer=buffer, micro_batch=micro, world=2, rank=1, num_workers=2)
    check_resumes(s, n=16, ahead=3, every=5, need=("reading", "later"))


@pytest.fixture
def mixed(tmp_path) -> list[str]:
    """A shard listed twice (data.mixing's repeats), one with a bad sample, one truncated mid-member."""
    good = make_shards(tmp_path / "a", n_shards=3, per_shard=10)
    samples = list(read_token_shard(good[1]))
    samples[4]["tokens"] = np.full_like(samples[4]["tokens"], K)  # outside the codebook: a bad sample
    write_token_shard(good[1], samples)
    data_ = Path(good[2]).read_bytes()
    Path(good[2]).write_bytes(data_[: int(len(data_) * 0.55)])
    return [good[0], good[1], good[0], good[2]]


@pytest.mark.parametrize("split", ["shard", "sample"])
def test_resume_with_repeats_and_bad_data_continues_the_counts(mixed, split):
    s = spec(mixed, split=split, shuffle_buffer=6, micro_batch=3, on_bad_shard="skip")
    views, _ = run(s, 30)
    assert views[-1][4] >= 1 and views[-1][5] >= 1  # the truncated shard and the bad sample were met
    first = [k for v in views if v[3][0][0] == 0 for k in v[0]]
    assert len(set(first)) < len(first)  # the repeated shard's samples twice in an epoch
    check_resumes(s, n=27, ahead=3, need=("reading", "flush", "later"))


def test_state_survives_torch_save_and_load_with_weights_only(mixed):
    s = spec(mixed, split="sample", shuffle_buffer=6)
    loader = ShardLoader(s)
    list(itertools.islice(loader, 20))
    state = loader.state_dict()
    assert state["readers"][0]["bad_samples"] and state["readers"][0]["bad_shards"]
    assert roundtrip(state) == state


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> list[str]:
    return make_shards(tmp_path_factory.mktemp("many"), n_shards=40, per_shard=10)


def test_resume_reads_a_few_shards_not_the_epoch_so_far(many, monkeypatch):
    """Late in a 40-shard epoch, a resume opens the shards its buffer names and the current one; an older
    state (no reader states) replays: every shard up to the position."""
    s = spec(many, split="shard", shuffle_buffer=8, micro_batch=4)
    views, states = run(s, 90 + 3)  # 360 of 400 samples
    state = states[89]
    assert state["positions"][0][:2] == [0, 360]
    opened: list[str] = []
    raw = data._raw_samples

    def counting(path):
        opened.append(path)
        return raw(path)

    monkeypatch.setattr(data, "_raw_samples", counting)
    assert resumed(s, state, 3) == views[90:]
    assert len(set(opened)) <= 4 and len(opened) <= 5, opened
    opened.clear()
    old = {k: v for k, v in state.items() if k != "readers"}
    assert resumed(s, old, 3) == views[90:]  # the replay still resumes exactly
    assert len(set(opened)) >= 36


def test_a_buffered_shard_truncated_after_the_checkpoint(tmp_path):
    """The buffer's samples from a shard cut since the checkpoint are gone: skip counts the shard and goes on
    with the rest of the buffer; fail raises naming it."""
    paths = make_shards(tmp_path / "s", n_shards=6, per_shard=10)
    s = spec(paths, split="shard", shuffle_buffer=8, micro_batch=4)
    _, states = run(s, 10)
    state = states[-1]
    r = state["readers"][0]
    order = data._Reader(s, 0)._epoch_plan(0)[0]
    victim = order[min(r["buf"][0])][0]
    assert victim != order[r["k"]][0]
    raw = Path(victim).read_bytes()
    Path(victim).write_bytes(raw[: len(raw) // 2])
    loader = ShardLoader(s)
    loader.load_state_dict(roundtrip(state))
    got = [k for b in itertools.islice(loader, 4) for k in b["keys"]]
    assert len(got) == 16 and loader.bad_shards >= 1
    with pytest.raises(data.BadShardError, match=Path(victim).name):
        failing = ShardLoader(spec(paths, split="shard", shuffle_buffer=8, micro_batch=4, on_bad_shard="fail"))
        failing.load_state_dict(roundtrip(state))
        next(iter(failing))
