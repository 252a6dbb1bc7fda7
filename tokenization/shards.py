"""Token shards: webdataset ``.tar`` files, one sample per image (layout in docs/CONVENTIONS.md).

    KEY.tokens.npy    int16  [L]  image token ids, row-major h*w (codebook <= 16384)
    KEY.qerr.npy      float16 [L] squared distance of each encoder feature to its code
    KEY.text_ids.npy  int32  [S]  text token ids (no padding)
    KEY.txt           utf-8       caption
    KEY.json          utf-8 JSON  {"key", "source_shard", "grid": [h, w]}

Tars are written deterministically (members in sample order, mtime 0, uid/gid 0, empty owner names,
mode 0644), to ``NAME.tmp`` first and renamed when complete: the same samples always give the same
bytes, and a half-written shard never has the final name. The files are plain webdataset tars, so
``webdataset.WebDataset(urls).map(decode_sample)`` reads them too.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

MAX_CODEBOOK = 16384
SUFFIXES = ("tokens.npy", "qerr.npy", "text_ids.npy", "txt", "json")
TMP_SUFFIX = ".tmp"


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def encode_sample(sample: dict) -> list[tuple[str, bytes]]:
    """(member name, bytes) pairs of one sample dict with keys
    ``key, tokens, qerr, text_ids, txt`` and optionally ``source_shard, grid``."""
    key = str(sample["key"])
    if not key or "." in key or "/" in key:
        raise ValueError(f"sample key must be non-empty without '.' or '/': {key!r}")
    tokens = np.asarray(sample["tokens"])
    if tokens.size and (tokens.min() < 0 or tokens.max() >= MAX_CODEBOOK):
        raise ValueError(f"{key}: token ids must be in [0, {MAX_CODEBOOK}) to fit int16")
    qerr = np.asarray(sample["qerr"], dtype=np.float16).reshape(-1)
    tokens = tokens.astype(np.int16).reshape(-1)
    if qerr.shape != tokens.shape:
        raise ValueError(f"{key}: qerr shape {qerr.shape} != tokens shape {tokens.shape}")
    text_ids = np.asarray(sample["text_ids"]).astype(np.int32).reshape(-1)
    meta = {"key": key, "source_shard": sample.get("source_shard"), "grid": list(sample.get("grid") or [])}
    return [
        (f"{key}.tokens.npy", _npy(tokens)),
        (f"{key}.qerr.npy", _npy(qerr)),
        (f"{key}.text_ids.npy", _npy(text_ids)),
        (f"{key}.txt", str(sample.get("txt", "")).encode("utf-8")),
        (f"{key}.json", json.dumps(meta, sort_keys=True).encode("utf-8")),
    ]


class TokenShardWriter:
    """Streams samples into ``PATH.tmp``; :meth:`commit` renames it to ``PATH``, :meth:`abort` deletes it.

    Used as a context manager it commits on success and aborts on an exception."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + TMP_SUFFIX)
        self._file = open(self.tmp, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self.count = 0

    def write(self, sample: dict) -> None:
        for name, data in encode_sample(sample):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def _close(self) -> None:
        if not self._file.closed:
            self._tar.close()
            self._file.close()

    def commit(self) -> int:
        self._close()
        os.replace(self.tmp, self.path)
        return self.count

    def abort(self) -> None:
        self._close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> TokenShardWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def write_token_shard(path: str | os.PathLike, samples: Iterable[dict]) -> int:
    """Write ``samples`` (see :func:`encode_sample`) to ``path`` atomically; returns the sample count."""
    with TokenShardWriter(path) as w:
        for sample in samples:
            w.write(sample)
    return w.count


def decode_sample(members: dict) -> dict:
    """Member dict (suffix -> bytes, e.g. a webdataset raw sample with ``__key__``) -> sample dict:
    ``key, tokens (int16), qerr (float16), text_ids (int32), txt (str), meta (dict)``."""

    def arr(name):
        return np.load(io.BytesIO(members[name]), allow_pickle=False)

    meta = json.loads(members["json"]) if "json" in members else {}
    return {
        "key": members.get("__key__", meta.get("key")),
        "tokens": arr("tokens.npy"),
        "qerr": arr("qerr.npy"),
        "text_ids": arr("text_ids.npy"),
        "txt": members["txt"].decode("utf-8") if "txt" in members else "",
        "meta": meta,
    }


def read_token_shard(path: str | os.PathLike) -> Iterator[dict]:
    """Yield the samples of a token shard in order (dicts as :func:`decode_sample` returns)."""
    current: dict = {}
    with tarfile.open(path, mode="r|") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, _, suffix = info.name.rpartition("/")[2].partition(".")
            if current and current["__key__"] != key:
                yield decode_sample(current)
                current = {}
            current["__key__"] = key
            current[suffix] = tar.extractfile(info).read()
    if current:
        yield decode_sample(current)
