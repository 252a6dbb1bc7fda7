"""The one atomic writer (``core.files``): a file is absent or complete, fsynced before its rename (and its
folder after), an error inside the block leaves the old file and no debris; JSON readers and folder digests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core import files
from core.files import atomic_path, is_temp, read_json, remove_debris, sha256_of, write_json_atomic


def test_the_final_name_appears_only_complete_after_fsync_and_the_folder_is_fsynced_after_the_rename(
    tmp_path, monkeypatch
):
    target = tmp_path / "out.bin"
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", f"{Path(src).name} -> {Path(dst).name}"))
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target and is_temp(tmp) and tmp.suffix == ".bin"
        tmp.write_bytes(b"half")
        assert not target.exists()  # a reader never sees the file under its final name while it is written
        with open(tmp, "ab") as f:
            f.write(b"-done")
    assert target.read_bytes() == b"half-done" and not list(tmp_path.glob(".*"))
    assert events == [
        ("fsync", str(tmp)),  # the data is on disk before it gets its name
        ("rename", f"{tmp.name} -> out.bin"),
        ("fsync", str(tmp_path)),  # and the name is on disk before anything vouches for it
    ]


def test_an_error_inside_the_block_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    target = tmp_path / "manifest.json"
    write_json_atomic(target, {"v": 1})
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_path(target) as tmp:
            tmp.write_text('{"v": 2, "trunc')
            raise RuntimeError("crash")
    assert read_json(target) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]  # no debris either


def test_debris_of_a_killed_writer_is_recognised_and_removed(tmp_path):
    (tmp_path / "keep.json").write_text("{}")
    (tmp_path / ".keep.json").write_text("{}")  # hidden, but no writer's temporary
    debris = files.temp_name(tmp_path / "shard.tar")
    debris.write_bytes(b"x")
    assert is_temp(debris) and not is_temp(tmp_path / "keep.json") and not is_temp(tmp_path / ".keep.json")
    deeper = files.temp_name(tmp_path / "train" / "laion" / "00001.tar")
    deeper.parent.mkdir(parents=True)
    deeper.write_bytes(b"xyz")
    assert remove_debris(tmp_path) == (2, 4)  # below the folder too
    assert sorted(p.name for p in tmp_path.iterdir()) == [".keep.json", "keep.json", "train"]
    assert list((tmp_path / "train" / "laion").iterdir()) == []


def test_read_json_gives_the_default_for_missing_empty_or_truncated_files(tmp_path):
    p = tmp_path / "m.json"
    assert read_json(p, {}) == {}
    p.write_text("  \n")
    assert read_json(p, "d") == "d"
    p.write_text('{"stage": "tok')
    assert read_json(p) is None
    p.write_text('{"stage": "tokenize"}')
    assert read_json(p) == {"stage": "tokenize"}


def test_a_folder_digest_covers_names_and_bytes(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    (a / "x.bin").write_bytes(b"1")
    (a / "y.bin").write_bytes(b"2")
    before = sha256_of(a)
    (a / "x.bin").rename(a / "w.bin")  # the same bytes in the same order under another name: another folder
    assert sha256_of(a) != before
    (a / "w.bin").rename(a / "x.bin")
    assert sha256_of(a) == before
    (a / "y.bin").write_bytes(b"3")
    assert sha256_of(a) != before


def test_nothing_at_the_path_is_an_error_not_the_digest_of_nothing(tmp_path):
    from evaluation.inception import file_sha256

    for digest in (sha256_of, file_sha256):
        with pytest.raises(FileNotFoundError, match="missing.pth"):
            digest(tmp_path / "missing.pth")
