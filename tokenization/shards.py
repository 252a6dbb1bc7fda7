"""Token shards: webdataset ``.tar`` files, one sample per image (layout in docs/CONVENTIONS.md).

    KEY.tokens.npy    int16  [L]  image token ids, row-major h*w (codebook <= 16384)
    KEY.qerr.npy      float16 [L] squared distance of each encoder feature to its code
    KEY.text_ids.npy  int32  [S]  text token ids (no padding)
    KEY.txt           utf-8       caption
    KEY.json          utf-8 JSON  {"key", "source_shard", "grid": [h, w]}

Tars are written deterministically (members in sample order, mtime 0, uid/gid 0, empty owner names,
mode 0644), to a temporary name first, fsynced and renamed when complete (``core.files.AtomicFile``): the
same samples always give the same bytes (the writer records their sha256), and a half-written shard never
has the final name. The files are plain webdataset tars, so
``webdataset.WebDataset(urls).map(decode_sample)`` reads them too.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from core.files import AtomicFile

MAX_CODEBOOK = 16384
SUFFIXES = ("tokens.npy", "qerr.npy", "text_ids.npy", "txt", "json")


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


class _HashingFile:
    """The file object tarfile writes to: bytes go to ``file`` and into a sha256."""

    def __init__(self, file):
        self.file, self.hash, self.pos = file, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.pos += len(data)
        return self.file.write(data)

    def tell(self) -> int:
        return self.pos


class TokenShardWriter:
    """Streams samples into a temporary file; :meth:`commit` fsyncs and renames it to ``PATH``, :meth:`abort`
    deletes it; ``sha256`` is the hash of the finished tar's bytes.

    Used as a context manager it commits on success and aborts on an exception."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._atomic = AtomicFile(self.path)
        self.tmp = self._atomic.tmp
        self._file = open(self.tmp, "wb")
        self._out = _HashingFile(self._file)
        self._tar = tarfile.open(fileobj=self._out, mode="w", format=tarfile.USTAR_FORMAT)
        self.count = 0

    def write(self, sample: dict) -> None:
        for name, data in encode_sample(sample):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def close(self) -> None:
        """Finish the tar (its sha256 is final after this); commit or abort still follows."""
        if not self._file.closed:
            self._tar.close()
            self._file.close()

    @property
    def sha256(self) -> str:
        return self._out.hash.hexdigest()

    def commit(self) -> int:
        self.close()
        self._atomic.commit()
        return self.count

    def abort(self) -> None:
        self.close()
        self._atomic.abort()

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
