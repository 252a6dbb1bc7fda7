"""The download stage's bookkeeping grows linearly with the shards (tens of thousands at LAION scale): the shards to
download again are deleted with one listing of the folder, and a retry's new images are counted without scanning
the list of still-missing shards once per shard."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import tokenization.download as dl
from tokenization.download import expected_shards, forget_shards, run_download
from tokenization.download_config import DownloadConfig


def _stats(n: int, success: bool = True) -> str:
    return json.dumps(
        {
            "count": n,
            "successes": n if success else 0,
            "failed_to_download": 0 if success else n,
            "failed_to_resize": 0,
            "status_dict": {"success": n} if success else {"HTTP Error 404: Not Found": n},
        }
    )


def test_forgetting_shards_lists_the_folder_once_and_deletes_only_theirs(tmp_path, monkeypatch):
    from fsspec.implementations.local import LocalFileSystem

    for i in range(30):
        for suffix in (".tar", ".parquet", "_stats.json"):
            (tmp_path / f"{i:05d}{suffix}").write_text("x")
    (tmp_path / "_download_settings.txt").write_text("{}")
    listings = []
    real = LocalFileSystem.ls
    monkeypatch.setattr(LocalFileSystem, "ls", lambda self, *a, **k: listings.append(a) or real(self, *a, **k))
    forget = [f"{i:05d}" for i in range(0, 30, 3)]
    forget_shards(str(tmp_path), forget)
    assert len(listings) == 1  # once per shard before: hours for tens of thousands of shards
    left = sorted(p.name for p in tmp_path.iterdir())
    kept = [f"{i:05d}" for i in range(30) if i % 3]
    assert left == sorted(
        ["_download_settings.txt"] + [f"{n}{s}" for n in kept for s in (".tar", ".parquet", "_stats.json")]
    )


class CountingList(list):
    """``missing_shards``'s answer, counting the membership tests made on it."""

    tests = 0

    def __contains__(self, item):
        CountingList.tests += 1
        return list.__contains__(self, item)


def test_a_retry_counts_its_new_images_without_a_membership_scan_per_shard(tmp_path, monkeypatch):
    calls = []

    def fake_img2dataset(**kw):  # the first call loses every odd shard
        calls.append(kw)
        out = Path(kw["output_folder"])
        out.mkdir(parents=True, exist_ok=True)
        for name in expected_shards([40], 1, kw["oom_shard_count"]):
            if not (out / f"{name}_stats.json").exists() and (len(calls) > 1 or int(name) % 2 == 0):
                (out / f"{name}_stats.json").write_text(_stats(1))

    real = dl.missing_shards
    monkeypatch.setattr(dl, "call_img2dataset", fake_img2dataset)
    monkeypatch.setattr(dl, "missing_shards", lambda *a: CountingList(real(*a)))
    pq.write_table(
        pa.table({"URL": [f"http://127.0.0.1:9/{i}.png" for i in range(40)], "TEXT": ["c"] * 40}),
        tmp_path / "l.parquet",
    )
    cfg = DownloadConfig(source="laion", url_list=str(tmp_path / "l.parquet"), samples_per_shard=1, shard_retries=1)
    report = run_download(cfg, tmp_path / "run", log=lambda m: None)
    assert len(calls) == 2 and report["metrics"]["new_images"] == 40 and report["counts"]["shards"] == 40
    assert CountingList.tests < 40  # one scan of the missing list per shard before: quadratic
