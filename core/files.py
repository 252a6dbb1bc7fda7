"""The one atomic writer: a file is either absent, or complete and on disk.

    with atomic_path(out / "tokens.npy") as tmp:   # a temporary name in the same folder
        np.save(tmp, tokens)                       # write it however you like
    # here tmp has been fsynced and renamed to out / "tokens.npy", and the folder entry fsynced

A reader never sees a half-written file under the final name, and a file that a later marker (a
manifest, a COMPLETE file) vouches for is on disk before the marker is written. An exception inside
the block removes the temporary file and leaves any old file in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp"


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a folder (a folder: its entries, i.e. a rename inside it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """``.NAME.tmpPID.SUFFIX`` beside ``path``: hidden, unique per process, same suffix (``np.save`` and
    image writers pick the format from it)."""
    return path.with_name(f".{path.stem}{TMP_MARK}{os.getpid()}{path.suffix}")


class AtomicFile:
    """A temporary path (``.tmp``) beside ``path``: :meth:`commit` fsyncs it, renames it to ``path`` and fsyncs
    the folder; :meth:`abort` removes it. For writers that stream into a file over a long time."""

    def __init__(self, path: str | os.PathLike, fsync: bool = True):
        self.path = Path(path)
        self.tmp = temp_name(self.path)
        self.fsync = fsync

    def commit(self) -> Path:
        if self.fsync:
            fsync_path(self.tmp)
        os.replace(self.tmp, self.path)
        if self.fsync:
            fsync_path(self.path.parent)
        return self.path

    def abort(self) -> None:
        self.tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error, fsync it and rename
    it to ``path`` (then fsync the folder). On error the temporary file is removed."""
    f = AtomicFile(path, fsync)
    try:
        yield f.tmp
    except BaseException:
        f.abort()
        raise
    f.commit()


def is_temp(path: str | os.PathLike) -> bool:
    """A temporary file of this module's writers (hidden, ``.NAME.tmpPID.SUFFIX``): never an output."""
    name = Path(path).name
    return name.startswith(".") and TMP_MARK in name


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent, default=str))


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """The JSON in ``path``, or ``default`` when it is missing, empty or truncated (a crash before the
    rename can leave no file, never a partial one; this also covers files written by other tools)."""
    try:
        text = Path(path).read_text()
    except (FileNotFoundError, NotADirectoryError):
        return default
    if not text.strip():
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def remove_debris(folder: str | os.PathLike) -> tuple[int, int]:
    """Delete the temporary files a killed writer left in ``folder`` and below it (only when no writer runs):
    (how many, their bytes). Their names hold the writer's pid, so no later run would ever reuse or remove them."""
    n = size = 0
    for p in Path(folder).rglob(f".*{TMP_MARK}*"):
        if is_temp(p) and p.is_file() and not p.is_symlink():
            size += p.stat().st_size
            p.unlink(missing_ok=True)
            n += 1
    return n, size


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, or of a folder's files (relative names and bytes, in sorted order);
    ``FileNotFoundError`` when there is nothing at ``path`` (never the digest of nothing)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no file or folder at {path} to hash")
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if f != path:
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(chunk), b""):
                h.update(block)
    return h.hexdigest()
