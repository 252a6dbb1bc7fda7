"""Token-shard streaming for training: split across ranks and workers, shuffled with a seed, resumable.

Shards are read with webdataset's streaming tar reader (``url_opener`` -> ``tar_file_expander`` ->
``group_by_keys``); the split, the shuffle and the position are ours, so they are exact and resumable.

The stream. There are ``slots = world x W`` logical readers (W = max(1, num_workers)); rank r's
logical worker w is slot ``r + world * w``. Epoch e permutes the shard list with (seed, e).
  * split "shard":  slot s reads shards[s::slots] of that permutation through a shuffle buffer seeded
    with (seed, e, s) and cuts it into micro-batches.
  * split "sample": every slot reads all shards through one buffer seeded with (seed, e) (the same
    global stream everywhere) and keeps the micro-batch-sized chunks c with c % slots == s. The union
    of the ranks' micro-batches at a step is then the same set of samples for any world size, worker
    count or accumulation (what makes a 2-rank run comparable with a 1-rank run).
  * "auto": "shard" when there are at least ``slots`` shards, else "sample".
Each slot streams epochs forever (an epoch is per slot), so ranks never run dry at different times.
Rank-local batch n comes from logical worker n % W, exactly the order in which torch's DataLoader
round-robins its workers.

Seeds. A sample's seed (its stage, condition dropout, order noise and injected errors) is hashed from (seed,
epoch, key), the key prefixed with its source folder when the shards lie in several (``seed_scopes``: sources
number their keys alike) and suffixed with the copy of a shard ``data.mixing`` lists more than once.

Position. Every batch carries its slot's (epoch, position in the epoch stream, stream offset). The
``ShardLoader`` records, for the batches the trainer *consumed* (not the prefetched ones), the last of
these per logical worker and the count of consumed batches N, and beside each position the reader's stream
state there: the shard k of its epoch list it reads and the raw samples r taken from it, the shuffle RNG's
state, the buffer as one (shard, raw index) reference per slot, in the epoch-end flush the RNG before the
flush permutation and the items flushed, and its bad shards/samples (plain lists, dicts and ints: they cross
the DataLoader worker queue and load with ``torch.load(weights_only=True)``). ``state_dict()`` is that; a
loader built from it maps DataLoader worker j to logical worker (N + j) % W, and each logical worker rebuilds
its buffer by reading only the shards the references name (each once, up to its last needed sample: the last
few shards, as a buffered sample survives n draws with probability (1 - 1/buffer)^n), restores the RNG and the
bad sets, passes over the first r raw samples of shard k undecoded (a second pass over it when the
buffer names it too) and continues: a resumed loader yields
exactly the batches the uninterrupted one would have yielded next (the torchtitan dataloader test), at the
cost of a few shards wherever in the epoch it stands. A state without reader states (an older checkpoint)
resumes by replaying the epoch up to the saved position (read again, not trained on). A buffered sample
whose shard became unreadable since the checkpoint is dropped from the buffer (``skip``: the shard counts as
bad; ``fail`` raises), so the stream goes on with a smaller buffer; a replay would instead have lost the
shard from the start of the epoch, so both differ from the original stream there.

Bad data. A shard that cannot be read (a local file without its end-of-archive blocks, i.e. truncated
-- ``tarfile`` itself stops quietly at a cut between members --, or a bad tar header) or a sample that
does not decode or has the wrong length/ids: ``on_bad_shard="skip"`` counts it (``bad_shards`` /
``bad_samples``: distinct per reader; with the shard split a later epoch may hand a bad shard to another
reader, which counts it too, so the summed count can exceed the distinct one by up to the readers) and
goes on; ``"fail"`` raises :class:`BadShardError` naming the file (from a DataLoader worker too). A slot
whose whole epoch yields nothing raises :class:`NoDataError` instead of spinning.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from core.files import is_temp

REQUIRED = ("tokens.npy", "qerr.npy", "text_ids.npy")


class BadShardError(RuntimeError):
    """A token shard or sample is unreadable and ``on_bad_shard`` is ``fail``."""


class NoDataError(RuntimeError):
    """A reader went through a whole epoch without one usable sample."""


def list_shards(folder: str | Path) -> list[str]:
    """Finished token shards (``*.tar``, sorted) under ``folder``; temporary files of a writer are ignored."""
    return [str(p) for p in sorted(Path(folder).rglob("*.tar")) if p.is_file() and not is_temp(p)]


@dataclass
class LoaderSpec:
    """Everything that defines one rank's stream (also its resume fingerprint)."""

    shards: list[str]
    seq_len: int
    codebook_size: int
    micro_batch: int
    rank: int = 0
    world: int = 1
    num_workers: int = 0
    seed: int = 0
    shuffle_buffer: int = 1000
    split: str = "auto"
    on_bad_shard: str = "skip"

    def __post_init__(self) -> None:
        if not self.shards:
            raise NoDataError("no token shards to train on (expected *.tar files from the tokenize stage)")
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} outside world size {self.world}")
        if self.split not in ("auto", "shard", "sample") or self.on_bad_shard not in ("skip", "fail"):
            raise ValueError(f"bad split {self.split!r} or on_bad_shard {self.on_bad_shard!r}")
        if self.split == "shard" and len(self.shards) < self.slots:
            raise ValueError(
                f"data_split=shard needs at least world x workers = {self.slots} shards, "
                f"got {len(self.shards)}; use data_split=sample or auto"
            )

    @property
    def workers(self) -> int:
        return max(1, self.num_workers)

    @property
    def slots(self) -> int:
        return self.world * self.workers

    @property
    def resolved_split(self) -> str:
        if self.split == "auto":
            return "shard" if len(self.shards) >= self.slots else "sample"
        return self.split

    def fingerprint(self) -> dict:
        d = asdict(self)
        d["shards"] = shards_digest(self.shards)
        d["split"] = self.resolved_split
        d.pop("on_bad_shard")
        d.pop("rank")
        return d


def shards_digest(shards: list[str]) -> str:
    """A shard list's identity as a loader's state and a checkpoint's lineage record it: order and repeats count."""
    return hashlib.sha256("\n".join(shards).encode()).hexdigest()[:16]


def seed_scopes(shards: list[str]) -> dict[str, str]:
    """Per shard, what a sample's key is prefixed with for its seed: with shards in more than one folder (a
    multi-source run: ``tokenize/train/<source>/``), the shard's folder relative to the folders' common one, since
    every source's download numbers its keys from 000000000 and two sources share keys; with one folder, nothing
    (the seed of (seed, epoch, key) as it always was)."""
    folders = {p: os.path.dirname(os.path.abspath(p)) for p in shards}
    if len(set(folders.values())) < 2:
        return {}
    common = os.path.commonpath(list(folders.values()))
    return {p: os.path.relpath(f, common) for p, f in folders.items()}


def seed_key(sample: dict) -> str:
    """What a decoded sample's seed is hashed from besides (seed, epoch): its key, prefixed with its source folder
    when the shards lie in several (``seed_scopes``)."""
    return f"{sample['scope']}/{sample['key']}" if sample["scope"] else sample["key"]


def sample_seed(seed: int, epoch: int, key: str) -> int:
    """Stable per-sample seed of (train seed, epoch, sample key): independent of rank, worker and batch."""
    h = hashlib.blake2b(f"{seed}:{epoch}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & (2**63 - 1)


def _raw_samples(path: str) -> Iterator[dict]:
    """webdataset's streaming reader over one shard; raises on a truncated/corrupt tar."""
    from webdataset.handlers import reraise_exception
    from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

    opened = url_opener([{"url": path}], handler=reraise_exception)
    yield from group_by_keys(tar_file_expander(opened, handler=reraise_exception), handler=reraise_exception)


def check_end_marker(path: str) -> None:
    """Raise ValueError unless a local tar ends with its end-of-archive blocks (two zero records):
    ``tarfile`` stops quietly at a cut between members, so a truncated shard is caught here."""
    if not os.path.isfile(path):
        return  # a remote URL: the stream reader's errors only
    size = os.path.getsize(path)
    if size < 1024 or size % 512:
        raise ValueError(f"size {size} is not a whole number of 512-byte tar blocks (truncated)")
    with open(path, "rb") as f:
        f.seek(size - 1024)
        if any(f.read(1024)):
            raise ValueError("no end-of-archive marker (truncated)")


def decode(raw: dict, seq_len: int, codebook_size: int) -> dict:
    """Raw member dict -> {key, tokens int64[L], qerr float32[L], text_ids int64[S], caption}; ValueError if bad."""
    missing = [m for m in REQUIRED if m not in raw]
    if missing:
        raise ValueError(f"sample {raw.get('__key__')!r} lacks {', '.join(missing)}")
    arr = {m: np.load(io.BytesIO(raw[m]), allow_pickle=False).reshape(-1) for m in REQUIRED}
    tokens, qerr, text = arr["tokens.npy"], arr["qerr.npy"], arr["text_ids.npy"]
    if tokens.shape != (seq_len,) or qerr.shape != (seq_len,):
        raise ValueError(f"sample {raw['__key__']!r}: {tokens.size} tokens / {qerr.size} qerr, model expects {seq_len}")
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= codebook_size):
        raise ValueError(f"sample {raw['__key__']!r}: token ids outside [0, {codebook_size})")
    if not np.isfinite(qerr).all():
        raise ValueError(f"sample {raw['__key__']!r}: non-finite qerr")
    return {
        "key": raw["__key__"],
        "tokens": tokens.astype(np.int64),
        "qerr": qerr.astype(np.float32),
        "text_ids": text.astype(np.int64),
        "caption": raw["txt"].decode("utf-8", "replace") if isinstance(raw.get("txt"), bytes) else "",
    }


class _Reader:
    """The logical worker ``slot``'s infinite stream of micro-batches.

    While an epoch streams, the reader keeps where it is (see :meth:`stream_state`): the shard ``k`` of its epoch
    list being read and the raw samples ``r`` taken from it, the shuffle RNG, one (shard, raw index) reference per
    buffer slot, and in the flush at the epoch's end the RNG before the flush permutation and the items flushed."""

    def __init__(self, spec: LoaderSpec, slot: int):
        self.spec, self.slot = spec, slot
        self.bad_shard_set: set[str] = set()
        self.bad_sample_set: set[tuple[str, int]] = set()
        self._bad_lists: tuple = (-1, -1, [], [])
        self._at: dict = {}
        self._scopes = seed_scopes(spec.shards)

    def _shard_samples(self, path: str, start: int = 0, pick: Optional[set] = None) -> Iterator[tuple[int, dict]]:
        """(raw index, decoded sample) of the shard's good samples; the first ``start`` raw samples (good or bad,
        as ``_raw_samples`` yields them) are passed over undecoded, and with ``pick`` only those raw indices are
        decoded (the reading stops after the last)."""
        s = self.spec
        good = 0
        last = max(pick) if pick else -1
        try:
            check_end_marker(path)
            for ri, raw in enumerate(_raw_samples(path)):
                if ri < start or (pick is not None and ri not in pick):
                    if ri >= last and pick is not None:
                        break
                    continue
                try:
                    sample = decode(raw, s.seq_len, s.codebook_size)
                except Exception as exc:  # noqa: BLE001 - any decode failure is a bad sample
                    if s.on_bad_shard == "fail":
                        raise BadShardError(
                            f"token shard {path}: bad sample after {good} good ones: {exc} "
                            f"(set train.on_bad_shard=skip to count and skip)"
                        ) from exc
                    self.bad_sample_set.add((path, str(raw.get("__key__"))))
                    continue
                good += 1
                sample["scope"] = self._scopes.get(path, "")
                yield ri, sample
                if ri >= last and pick is not None:
                    break
        except BadShardError:
            raise
        except Exception as exc:  # noqa: BLE001 - tar/stream errors: the rest of the shard is lost
            if s.on_bad_shard == "fail":
                raise BadShardError(
                    f"token shard {path} is truncated or corrupt after {good} samples: "
                    f"{type(exc).__name__}: {exc} (set train.on_bad_shard=skip to count "
                    f"and skip)"
                ) from exc
            self.bad_shard_set.add(path)

    def _epoch_plan(self, epoch: int) -> tuple[list[tuple[str, int]], np.random.Generator]:
        """The epoch's (shard, copy) list for this slot and its shuffle RNG."""
        s = self.spec
        order = np.random.default_rng([s.seed, epoch, 0x5EED]).permutation(len(s.shards))
        listed: Counter = Counter()
        copy = []  # a shard listed n times (data.mixing's repeats): its copies 0..n-1, each its own samples' seeds
        for path in s.shards:
            copy.append(listed[path])
            listed[path] += 1
        shards = [(s.shards[i], copy[i]) for i in order]
        if s.resolved_split == "shard":
            return shards[self.slot :: s.slots], np.random.default_rng([s.seed, epoch, 1 + self.slot])
        return shards, np.random.default_rng([s.seed, epoch, 0])

    def _rebuild(self, shards: list[tuple[str, int]], ks: list[int], rs: list[int]) -> tuple[list, list, list]:
        """The buffer a state names: each named shard read once, up to its last named raw sample. A sample that
        cannot be read now (the file changed since) is dropped (counted; ``fail`` raises), the rest keep order."""
        need: dict[int, dict[int, int]] = {}
        for slot, (k, r) in enumerate(zip(ks, rs)):
            need.setdefault(k, {})[r] = slot
        got: list = [None] * len(ks)
        for k in sorted(need):
            path, n = shards[k]
            for ri, item in self._shard_samples(path, pick=set(need[k])):
                item["copy"] = n
                got[need[k][ri]] = item
        if self.spec.on_bad_shard == "fail" and any(g is None for g in got):
            lost = sorted({shards[k][0] for k, g in zip(ks, got) if g is None})
            raise BadShardError(f"token shard(s) {', '.join(lost)}: samples read before the checkpoint are gone")
        keep = [i for i, g in enumerate(got) if g is not None]
        return [got[i] for i in keep], [ks[i] for i in keep], [rs[i] for i in keep]

    def epoch_stream(self, epoch: int, state: Optional[dict] = None) -> Iterator[dict]:
        """The epoch's samples through the shuffle buffer; from ``state`` (a :meth:`stream_state`), the samples
        after it, reading only the shards its buffer names and the rest of the epoch."""
        shards, rng = self._epoch_plan(epoch)
        size = self.spec.shuffle_buffer
        buf: list[dict] = []
        ks: list[int] = []  # the buffer's references: shard index in ``shards``, raw index in that shard
        rs: list[int] = []
        k0, r0, f0 = 0, 0, 0
        if state is not None:
            buf, ks, rs = self._rebuild(shards, state["buf"][0], state["buf"][1])
            rng.bit_generator.state = state["rng"]
            if state["flush"] is None:
                k0, r0 = state["k"], state["r"]
            else:
                k0, f0 = len(shards), state["flush"]
        at = self._at = {"epoch": epoch, "k": k0, "r": r0, "rng": rng, "ks": ks, "rs": rs, "flush": None}
        for k in range(k0, len(shards)):
            path, n = shards[k]
            at["k"], at["r"] = k, r0 if k == k0 else 0
            for ri, item in self._shard_samples(path, start=at["r"]):
                item["copy"] = n
                at["r"] = ri + 1
                if len(buf) < size:
                    buf.append(item)
                    ks.append(k)
                    rs.append(ri)
                    continue
                j = int(rng.integers(size))
                out, buf[j], ks[j], rs[j] = buf[j], item, k, ri
                yield out
        at["k"], at["r"], at["rng"] = len(shards), 0, rng.bit_generator.state  # before the flush permutation
        perm = rng.permutation(len(buf))
        for f in range(f0, len(perm)):
            at["flush"] = f + 1
            yield buf[perm[f]]

    def stream_state(self) -> dict:
        """Where the current epoch stream stands after the item it yielded last: plain lists, dicts, ints and
        strings (it travels in a batch's meta through DataLoader workers and into a checkpoint)."""
        at = self._at
        rng = at["rng"]
        nb, ns, bad_shards, bad_samples = self._bad_lists
        if (nb, ns) != (len(self.bad_shard_set), len(self.bad_sample_set)):  # they only grow
            bad_shards, bad_samples = sorted(self.bad_shard_set), [list(x) for x in sorted(self.bad_sample_set)]
            self._bad_lists = (len(self.bad_shard_set), len(self.bad_sample_set), bad_shards, bad_samples)
        return {
            "epoch": at["epoch"],
            "k": at["k"],
            "r": at["r"],
            "rng": rng if isinstance(rng, dict) else rng.bit_generator.state,
            "buf": [list(at["ks"]), list(at["rs"])],
            "flush": at["flush"],
            "bad_shards": bad_shards,  # shared between states, never changed: a new list when the set grows
            "bad_samples": bad_samples,
        }

    def batches(self, epoch: int, pos: int, offset: int, state: Optional[dict] = None) -> Iterator[dict]:
        """Micro-batches starting after position ``pos`` of ``epoch`` (stream offset ``offset``): from the reader
        ``state`` saved with that position when there is one, else by replaying the epoch up to ``pos``."""
        s = self.spec
        b, sample_split = s.micro_batch, s.resolved_split == "sample"
        batch: list[dict] = []
        if state is not None:
            self.bad_shard_set = set(state["bad_shards"])
            self.bad_sample_set = {(str(p), str(k)) for p, k in state["bad_samples"]}
        while True:
            if state is not None:  # a position is saved at a batch boundary: no partial batch to rebuild
                stream, seen, state = self.epoch_stream(epoch, state), pos, None
            else:
                stream, seen = self.epoch_stream(epoch), 0
            for i, sample in enumerate(stream, seen):
                seen += 1
                if i < pos:
                    continue  # consumed before the checkpoint: replayed, dropped
                chunk = offset // b
                offset += 1
                if sample_split and chunk % s.slots != self.slot:
                    continue
                key = seed_key(sample)
                key = key if not sample["copy"] else f"{key}#{sample['copy']}"
                sample["seed"] = sample_seed(s.seed, epoch, key)
                batch.append(sample)
                if len(batch) == b:
                    yield collate(
                        batch,
                        {
                            "epoch": epoch,
                            "pos": i + 1,
                            "offset": offset,
                            "bad_shards": len(self.bad_shard_set),
                            "bad_samples": len(self.bad_sample_set),
                            "state": self.stream_state(),
                        },
                    )
                    batch = []
            if seen == 0:
                raise NoDataError(
                    f"rank {s.rank} reader {self.slot}: epoch {epoch} gave no usable sample from "
                    f"{len(s.shards)} shard(s) ({len(self.bad_shard_set)} bad shards, "
                    f"{len(self.bad_sample_set)} bad samples)"
                )
            epoch, pos = epoch + 1, 0


def collate(samples: list[dict], meta: Optional[dict] = None) -> dict:
    """Samples -> tensors: tokens Long[B, L], qerr Float[B, L], text_ids Long[B, S] (0-padded),
    text_mask Bool[B, S], seeds Long[B]; plus ``keys``, ``captions`` and the reader's ``meta``."""
    S = max(1, max(len(s["text_ids"]) for s in samples))
    ids = np.zeros((len(samples), S), dtype=np.int64)
    mask = np.zeros((len(samples), S), dtype=bool)
    for i, s in enumerate(samples):
        n = len(s["text_ids"])
        ids[i, :n], mask[i, :n] = s["text_ids"], True
    out = {
        "tokens": torch.from_numpy(np.stack([s["tokens"] for s in samples])),
        "qerr": torch.from_numpy(np.stack([s["qerr"] for s in samples])),
        "text_ids": torch.from_numpy(ids),
        "text_mask": torch.from_numpy(mask),
        "seeds": torch.tensor([s["seed"] for s in samples], dtype=torch.long),
        "keys": [s["key"] for s in samples],
        "captions": [s.get("caption", "") for s in samples],  # the text a reward=clip policy scores against
    }
    if meta is not None:
        out["meta"] = meta
    return out


class TokenShardStream(IterableDataset):
    """The rank's stream for the DataLoader worker running it (see the module docstring)."""

    def __init__(
        self, spec: LoaderSpec, consumed: int = 0, positions: Optional[dict] = None, readers: Optional[dict] = None
    ):
        self.spec, self.consumed, self.positions = spec, consumed, dict(positions or {})
        self.readers = dict(readers or {})

    def __iter__(self):
        info = get_worker_info()
        j = info.id if info is not None else 0
        W = self.spec.workers
        w = (self.consumed + j) % W
        epoch, pos, offset = self.positions.get(w, (0, 0, 0))
        state = self.readers.get(w)
        reader = _Reader(self.spec, self.spec.rank + self.spec.world * w)
        for batch in reader.batches(epoch, pos, offset, state):
            batch["meta"]["worker"] = w
            yield batch


class ShardLoader:
    """Iterable of micro-batches with a resumable ``state_dict``; iterate it once per process."""

    def __init__(self, spec: LoaderSpec, prefetch_factor: int = 2):
        self.spec, self.prefetch_factor = spec, prefetch_factor
        self.consumed = 0
        self.positions: dict[int, tuple[int, int, int]] = {}
        self.bad: dict[int, tuple[int, int]] = {}
        self.readers: dict[int, dict] = {}  # per logical worker: its stream state at that position

    def __iter__(self) -> Iterator[dict]:
        ds = TokenShardStream(self.spec, self.consumed, self.positions, self.readers)
        if self.spec.num_workers > 0:
            it = iter(
                DataLoader(
                    ds,
                    batch_size=None,
                    num_workers=self.spec.num_workers,
                    prefetch_factor=self.prefetch_factor,
                    persistent_workers=False,
                    generator=torch.Generator().manual_seed(self.spec.seed),  # workers' seeds; not the global RNG
                )
            )
        else:
            it = iter(ds)
        for batch in it:
            m = batch.pop("meta")
            w = int(m["worker"])
            self.positions[w] = (int(m["epoch"]), int(m["pos"]), int(m["offset"]))
            self.bad[w] = (int(m["bad_shards"]), int(m["bad_samples"]))
            self.readers[w] = m["state"]
            self.consumed += 1
            yield batch

    @property
    def bad_reduce(self) -> str:
        """How counts combine over readers: disjoint shards ("sum") or every reader sees all ("max")."""
        return "sum" if self.spec.resolved_split == "shard" else "max"

    def _combine(self, i: int) -> int:
        vals = [v[i] for v in self.bad.values()] or [0]
        return sum(vals) if self.bad_reduce == "sum" else max(vals)

    @property
    def bad_shards(self) -> int:
        """Unreadable shards met so far by this rank's readers, each counted once per reader that met it."""
        return self._combine(0)

    @property
    def bad_samples(self) -> int:
        """Distinct undecodable / wrong-shape samples met so far."""
        return self._combine(1)

    @property
    def epoch(self) -> int:
        return min((p[0] for p in self.positions.values()), default=0)

    def state_dict(self) -> dict:
        return {
            "consumed": self.consumed,
            "positions": {w: list(p) for w, p in self.positions.items()},
            "bad": {w: list(v) for w, v in self.bad.items()},
            "readers": dict(self.readers),
            "fingerprint": self.spec.fingerprint(),
        }

    def load_state_dict(self, state: dict) -> None:
        fp = self.spec.fingerprint()
        if state.get("fingerprint") != fp:
            diff = {
                k: (state.get("fingerprint", {}).get(k), v)
                for k, v in fp.items()
                if state.get("fingerprint", {}).get(k) != v
            }
            raise ValueError(
                f"the checkpoint's data-loader state belongs to another stream (saved, now): "
                f"{json.dumps(diff)}; resume with the same shards, world size, micro-batch, "
                f"workers, seed and split"
            )
        self.consumed = int(state["consumed"])
        self.positions = {int(w): tuple(p) for w, p in state["positions"].items()}
        self.bad = {int(w): tuple(v) for w, v in state.get("bad", {}).items()}
        # a state without readers (an older checkpoint) or one that does not match its position: replay
        readers = {int(w): r for w, r in (state.get("readers") or {}).items()}
        self.readers = {w: r for w, r in readers.items() if w in self.positions and r["epoch"] == self.positions[w][0]}
