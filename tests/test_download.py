"""The download stage against a real http.server on 127.0.0.1 serving good and hostile images."""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cluster.shared_storage import require_shared
from tokenization.download import (
    DownloadConfig,
    QuietHandler,
    check_reachable_server,
    expected_shards,
    missing_shards,
    prepare_inputs,
    run_download,
    summarize,
)

SLOW_S, TIMEOUT_S = 4, 2


class HostileHandler(QuietHandler):
    """``/slow/X`` answers X only after SLOW_S seconds (past the client's timeout)."""

    def do_GET(self):  # noqa: N802
        if self.path.startswith("/slow/"):
            time.sleep(SLOW_S)
            self.path = self.path[len("/slow") :]
        try:
            super().do_GET()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up


def _png(path: Path, size=(40, 30), color=(200, 30, 30)):
    Image.new("RGB", size, color).save(path)


def _tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as t:
        return {m.name: t.extractfile(m).read() for m in t if m.isfile()}


def _serve_dir(root: Path) -> dict[str, str]:
    """Write good and hostile files; returns name -> relative path."""
    rng = np.random.default_rng(0)
    files = {}
    for i in range(12):
        _png(
            root / f"good{i}.png",
            (int(rng.integers(33, 80)), int(rng.integers(33, 80))),
            tuple(int(c) for c in rng.integers(0, 255, 3)),
        )
        files[f"good{i}"] = f"good{i}.png"
    (root / "notimage.jpg").write_bytes(b"<html>this is not an image</html>" * 10)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    Image.new("RGB", (6000, 6000), (10, 200, 10)).save(root / "huge.png")  # ~120 kB, 36 Mpx
    files.update(
        notimage="notimage.jpg",
        truncated="truncated.jpg",
        huge="huge.png",
        missing="does_not_exist.png",
        slow="slow/good0.png",
    )
    return files


# 17 rows kept in 3 shards of 6, 6, 5; `lowsim`/`narrow` rows are filtered out before sharding.
ORDER = [
    "good0",
    "good1",
    "missing",
    "lowsim",
    "good2",
    "notimage",
    "good3",
    "good4",
    "truncated",
    "good5",
    "huge",
    "narrow",
    "good6",
    "good7",
    "slow",
    "good8",
    "good9",
    "lowsim",
    "good10",
    "good11",
]
EXPECTED = [  # (count, success, failed_to_download, failed_to_resize)
    (6, 4, 1, 1),
    (6, 4, 0, 2),
    (5, 4, 1, 0),
]


def _laion_parquet(path: Path, base: str, files: dict) -> list[tuple[str, str]]:
    urls, caps, sims, widths = [], [], [], []
    for i, name in enumerate(ORDER):
        target = files.get(name, "good0.png")
        urls.append(f"{base}/{target}")
        caps.append(f'caption {i} of "{name}", with, commas')
        sims.append(0.1 if name == "lowsim" else 0.35)
        widths.append(8 if name == "narrow" else 64)
    pq.write_table(
        pa.table({"URL": urls, "TEXT": caps, "similarity": sims, "WIDTH": widths, "HEIGHT": [64] * len(urls)}), path
    )
    return [(n, c) for c, n in zip(caps, ORDER) if n not in ("lowsim", "narrow")]


@pytest.mark.slow  # img2dataset spawns processes that import torch: 20-40 s on 2 shared cores
def test_download_hostile_server_counts_exact(tmp_path, http_server):
    root = tmp_path / "www"
    root.mkdir()
    files = _serve_dir(root)
    base = http_server(root, HostileHandler)
    kept = _laion_parquet(tmp_path / "laion.parquet", base, files)
    cfg = DownloadConfig(
        source="laion",
        url_list=str(tmp_path / "laion.parquet"),
        serve_local=False,
        image_size=32,
        resize_mode="center_crop",
        samples_per_shard=6,
        threads=8,
        timeout=TIMEOUT_S,
        min_similarity=0.3,
        min_width=16,
        max_image_area=4096.0 * 4096,
        min_success_ratio=0.5,
        distributor="multiprocessing",
    )
    out = tmp_path / "run"
    report = run_download(cfg, out)

    split = report["splits"]["train"]
    assert split["rows"] == 17
    got = [(s["count"], s["success"], s["failed_to_download"], s["failed_to_resize"]) for s in split["shards"]]
    assert got == EXPECTED
    assert report["counts"] == {"count": 17, "success": 12, "failed_to_download": 2, "failed_to_resize": 3, "shards": 3}
    errors = report["errors"]
    assert errors.pop("Image decoding error") == 2  # non-image bytes + truncated JPEG
    assert errors.pop("image area too large") == 1
    assert errors.pop("HTTP Error 404: File not found") == 1
    ((timeout_msg, n),) = errors.items()
    assert "timed out" in timeout_msg and n == 1

    captions = []
    for shard in ("00000", "00001", "00002"):
        members = _tar_members(out / "train" / f"{shard}.tar")
        jpgs = sorted(k for k in members if k.endswith(".jpg"))
        for k in jpgs:
            assert Image.open(io.BytesIO(members[k])).size == (32, 32)
            captions.append(members[k[:-4] + ".txt"].decode())
    assert len(captions) == 12
    assert sorted(captions) == sorted(c for n, c in kept if n.startswith("good"))
    assert json.loads((out / "download_stats.json").read_text())["counts"]["success"] == 12

    # The same output with a stricter floor: nothing is downloaded again, and the stage fails loudly,
    # naming the two shards at 4/6.
    strict = DownloadConfig(**{**cfg.__dict__, "min_success_ratio": 0.7})
    with pytest.raises(RuntimeError, match=r"2 shard\(s\) below min_success_ratio 0.7.*00000.tar.*00001.tar"):
        run_download(strict, out)


@pytest.mark.slow  # img2dataset spawns processes that import torch: 20-40 s on 2 shared cores
def test_download_cc3m_tsv_with_quotes(tmp_path, http_server):
    root = tmp_path / "www"
    root.mkdir()
    for i in range(4):
        _png(root / f"{i}.png", (48, 48), (40 * i, 100, 200))
    base = http_server(root)
    captions = ['a "quoted" word, and a comma', 'unbalanced "quote here', "plain caption", "tab\tinside caption"]
    # two absolute URLs (this test's server), two relative ones (the stage's own server, serve_local)
    urls = [f"{base}/0.png", f"{base}/1.png", "www/2.png", "www/3.png"]
    lines = [f"{c}\t{u}" for c, u in zip(captions, urls)] + ["no tab on this line", ""]
    (tmp_path / "cc3m.tsv").write_text("\n".join(lines) + "\n")
    cfg = DownloadConfig(
        source="cc3m",
        url_list=str(tmp_path / "cc3m.tsv"),
        serve_local=True,
        samples_per_shard=10,
        threads=4,
        timeout=TIMEOUT_S,
        distributor="multiprocessing",
    )
    report = run_download(cfg, tmp_path / "run")
    split = report["splits"]["train"]
    assert (split["rows"], split["malformed_rows"]) == (4, 1)
    assert report["counts"]["success"] == 4
    members = _tar_members(tmp_path / "run" / "train" / "00000.tar")
    assert sorted(v.decode() for k, v in members.items() if k.endswith(".txt")) == sorted(captions)


@pytest.mark.slow  # img2dataset spawns processes that import torch: 20-40 s on 2 shared cores
def test_download_resume_redoes_only_missing_shard(tmp_path, ray_local):
    """Synthetic source served by the stage's own loopback server, Ray distributor (embedded Ray)."""
    from tokenization.synthetic import write_dataset

    syn = tmp_path / "synthetic"
    write_dataset(syn / "train", 15, seed=0, size=32)
    write_dataset(syn / "eval", 5, seed=1, size=32)
    cfg = DownloadConfig(
        source="synthetic",
        serve_local=True,
        samples_per_shard=5,
        threads=4,
        timeout=TIMEOUT_S,
        distributor="ray",
        min_success_ratio=1.0,
    )
    out = tmp_path / "run"
    first = run_download(cfg, out, syn)
    assert first["counts"] == {"count": 20, "success": 20, "failed_to_download": 0, "failed_to_resize": 0, "shards": 4}
    train = out / "train"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in train.glob("*.tar")}
    keys_1 = sorted(k for k in _tar_members(train / "00001.tar") if k.endswith(".jpg"))
    (train / "00001_stats.json").unlink()  # an interrupted shard: stats missing, tar gone
    (train / "00001.tar").unlink()

    second = run_download(cfg, out, syn)
    assert second["metrics"]["new_images"] == 5  # only shard 00001 was downloaded again
    assert second["counts"] == first["counts"]
    for name in ("00000.tar", "00002.tar"):
        assert (train / name).stat().st_mtime_ns == before[name][0]
    assert sorted(k for k in _tar_members(train / "00001.tar") if k.endswith(".jpg")) == keys_1

    # Nothing left to do: no download at all (other settings: tests below, with a stand-in img2dataset).
    assert run_download(cfg, out, syn)["metrics"]["new_images"] == 0


def test_shared_output_check():
    check_reachable_server(True, 1)  # single node: anything goes
    require_shared("/tmp/x", 1, "data.download.output_folder")
    with pytest.raises(ValueError, match="local disk.*shared storage"):
        require_shared("/tmp/x", 3, "data.download.output_folder")
    with pytest.raises(ValueError, match="serve_local"):
        check_reachable_server(True, 2)
    require_shared("memory://bucket/x", 2, "data.download.output_folder")


def test_url_lists_filters_stats_summary(tmp_path):
    """The stage's own logic around img2dataset, without downloading."""
    pq.write_table(
        pa.table(
            {
                "URL": ["http://a/1", None, "rel/2.png", "http://a/3", "http://a/4"],
                "TEXT": ["one", "none", "two", None, "four"],
                "similarity": [0.4, 0.9, 0.3, 0.5, 0.1],
                "WIDTH": [64, 64, 64, 8, 64],
                "HEIGHT": [64] * 5,
            }
        ),
        tmp_path / "l.parquet",
    )
    cfg = DownloadConfig(source="laion", url_list=str(tmp_path / "l.parquet"), min_similarity=0.3, min_width=16)
    got = prepare_inputs(cfg, [str(tmp_path / "l.parquet")], tmp_path / "in", "http://127.0.0.1:9", tmp_path)
    assert got == {"rows": [2], "malformed": 0}
    t = pq.read_table(tmp_path / "in" / "part-00000.parquet").to_pydict()
    assert t == {"url": ["http://a/1", "http://127.0.0.1:9/rel/2.png"], "caption": ["one", "two"]}
    stamp = (tmp_path / "in" / "_done.json").stat().st_mtime_ns
    assert prepare_inputs(cfg, [str(tmp_path / "l.parquet")], tmp_path / "in", "http://127.0.0.1:9", tmp_path) == got
    assert (tmp_path / "in" / "_done.json").stat().st_mtime_ns == stamp  # same inputs: not rewritten
    with pytest.raises(ValueError, match=r"columns \['similarity', 'WIDTH'\] not found"):
        pq.write_table(pa.table({"URL": ["x"], "TEXT": ["y"]}), tmp_path / "bare.parquet")
        prepare_inputs(cfg, [str(tmp_path / "bare.parquet")], tmp_path / "in2", None, None)

    (tmp_path / "c.tsv").write_text('say "hi\thttp://b/1\nno tab\n\n"quoted, caption"\thttp://b/2\n')
    tsv = DownloadConfig(source="cc3m", url_list=str(tmp_path / "c.tsv"))
    assert prepare_inputs(tsv, [str(tmp_path / "c.tsv")], tmp_path / "tsv", None, None) == {"rows": [2], "malformed": 1}
    t = pq.read_table(tmp_path / "tsv" / "part-00000.parquet").to_pydict()
    assert t == {"url": ["http://b/1", "http://b/2"], "caption": ['say "hi', '"quoted, caption"']}

    assert expected_shards([25, 5], 10, 5) == ["00000", "00001", "00002", "00003"]
    out = tmp_path / "shards"
    out.mkdir()
    for name, (count, ok, dl, rs, errs) in {
        "00000": (10, 8, 1, 1, {"timed out": 1, "Image decoding error": 1}),
        "00002": (5, 5, 0, 0, {}),
    }.items():
        (out / f"{name}_stats.json").write_text(
            json.dumps(
                {
                    "count": count,
                    "successes": ok,
                    "failed_to_download": dl,
                    "failed_to_resize": rs,
                    "status_dict": {"success": ok, **errs},
                }
            )
        )
    assert missing_shards(str(out), ["00000", "00001", "00002"]) == ["00001"]
    summary = summarize(str(out), ["00000", "00002"])
    assert summary["totals"] == {"count": 15, "success": 13, "failed_to_download": 1, "failed_to_resize": 1}
    assert summary["errors"] == {"timed out": 1, "Image decoding error": 1}
    assert [s["name"] for s in summary["shards"]] == ["00000.tar", "00002.tar"]


def test_shards_left_without_stats_are_rerun_bounded(tmp_path, monkeypatch):
    """img2dataset stand-in that loses shard 00001 on its first call: the stage reruns it (and gives up,
    naming it, when no retries are allowed)."""
    import tokenization.download as dl

    calls = []

    def fake_img2dataset(**kw):
        calls.append(kw)
        rows = sum(pq.read_metadata(p).num_rows for p in Path(kw["url_list"]).glob("*.parquet"))
        out = Path(kw["output_folder"])
        out.mkdir(parents=True, exist_ok=True)
        for name in expected_shards([rows], kw["number_sample_per_shard"], kw["oom_shard_count"]):
            if (out / f"{name}_stats.json").exists() or (name == "00001" and len(calls) == 1):
                continue
            n = min(kw["number_sample_per_shard"], rows - int(name) * kw["number_sample_per_shard"])
            (out / f"{name}_stats.json").write_text(
                json.dumps(
                    {
                        "count": n,
                        "successes": n,
                        "failed_to_download": 0,
                        "failed_to_resize": 0,
                        "status_dict": {"success": n},
                    }
                )
            )
        assert kw["incremental_mode"] == "incremental"

    monkeypatch.setattr(dl, "call_img2dataset", fake_img2dataset)
    pq.write_table(
        pa.table({"URL": [f"http://127.0.0.1:9/{i}.png" for i in range(25)], "TEXT": ["c"] * 25}),
        tmp_path / "l.parquet",
    )
    cfg = DownloadConfig(source="laion", url_list=str(tmp_path / "l.parquet"), samples_per_shard=10, shard_retries=0)
    with pytest.raises(RuntimeError, match=r"shards \['00001'\] have no _stats.json after 1 attempts"):
        run_download(cfg, tmp_path / "a")
    calls.clear()
    report = run_download(DownloadConfig(**{**cfg.__dict__, "shard_retries": 2}), tmp_path / "b")
    assert len(calls) == 2 and report["counts"]["success"] == 25 and report["counts"]["shards"] == 3


def _fake_img2dataset(calls: list, success: bool = True):
    """A stand-in for img2dataset: one ``NNNNN.tar`` per shard holding the URLs it was given, and its stats
    (every image a success, or every one an HTTP 404)."""

    def fake(**kw):
        calls.append(kw)
        urls = [u for p in sorted(Path(kw["url_list"]).glob("*.parquet")) for u in pq.read_table(p)["url"].to_pylist()]
        out = Path(kw["output_folder"])
        out.mkdir(parents=True, exist_ok=True)
        per = kw["number_sample_per_shard"]
        for name in expected_shards([len(urls)], per, kw["oom_shard_count"]):
            if (out / f"{name}_stats.json").exists():
                continue
            part = urls[int(name) * per : (int(name) + 1) * per]
            (out / f"{name}.tar").write_text("\n".join(part))
            status = {"success": len(part)} if success else {"HTTP Error 404: Not Found": len(part)}
            (out / f"{name}_stats.json").write_text(
                json.dumps(
                    {
                        "count": len(part),
                        "successes": len(part) if success else 0,
                        "failed_to_download": 0 if success else len(part),
                        "failed_to_resize": 0,
                        "status_dict": status,
                    }
                )
            )

    return fake


def test_a_regenerated_url_list_or_other_settings_replace_the_old_shards(tmp_path, monkeypatch):
    """The shards of a split record what they were made from; regenerate the synthetic set (or change the
    image size) and the split holds only the new images."""
    import time as _time

    import tokenization.download as dl
    from tokenization.synthetic import write_dataset

    calls: list = []
    monkeypatch.setattr(dl, "call_img2dataset", _fake_img2dataset(calls))
    syn = tmp_path / "synthetic"
    write_dataset(syn / "train", 12, seed=0, size=32)
    cfg = DownloadConfig(source="synthetic", serve_local=False, samples_per_shard=5, min_success_ratio=1.0)
    out = tmp_path / "run"
    run_download(cfg, out, syn)
    old = sorted((out / "train").glob("*.tar"))
    assert len(old) == 3
    assert run_download(cfg, out, syn)["metrics"]["new_images"] == 0  # same url list: reused

    _time.sleep(0.01)
    write_dataset(syn / "train", 7, seed=5, size=32)  # regenerated: fewer, other images
    report = run_download(cfg, out, syn, log=lambda m: None)
    assert report["counts"]["count"] == 7 and sorted(p.name for p in (out / "train").glob("*.tar")) == [
        "00000.tar",
        "00001.tar",
    ]
    urls = [u for p in (out / "train").glob("*.tar") for u in p.read_text().split("\n")]
    assert len(urls) == 7 and all(u.startswith("images/") for u in urls)
    bigger = DownloadConfig(**{**cfg.__dict__, "image_size": 64})
    logs: list = []
    assert run_download(bigger, out, syn, log=logs.append)["metrics"]["new_images"] == 7  # other settings: redone
    assert any("image_size: 32 -> 64" in m for m in logs)


def test_a_download_where_nothing_came_through_fails_naming_the_reason(tmp_path, monkeypatch):
    import tokenization.download as dl

    monkeypatch.setattr(dl, "call_img2dataset", _fake_img2dataset([], success=False))
    pq.write_table(
        pa.table({"URL": [f"http://127.0.0.1:9/{i}.png" for i in range(6)], "TEXT": ["c"] * 6}), tmp_path / "l.parquet"
    )
    cfg = DownloadConfig(source="laion", url_list=str(tmp_path / "l.parquet"), samples_per_shard=10)
    assert DownloadConfig().min_success_ratio > 0
    with pytest.raises(RuntimeError, match=r"none of its 6 images.*6 times\): HTTP Error 404"):
        run_download(cfg, tmp_path / "run")


def test_nothing_outside_the_run_directory_is_deleted_without_the_pipelines_record(tmp_path, monkeypatch):
    import tokenization.download as dl

    monkeypatch.setattr(dl, "call_img2dataset", _fake_img2dataset([]))
    pq.write_table(
        pa.table({"URL": [f"http://127.0.0.1:9/{i}.png" for i in range(3)], "TEXT": ["c"] * 3}), tmp_path / "l.parquet"
    )
    theirs = tmp_path / "shared" / "train"
    theirs.mkdir(parents=True)
    (theirs / "thesis.pdf").write_text("someone else's file")
    cfg = DownloadConfig(
        source="laion", url_list=str(tmp_path / "l.parquet"), output_folder=str(tmp_path / "shared"), restart=True
    )
    with pytest.raises(ValueError, match="not made by this pipeline"):
        run_download(cfg, tmp_path / "run")
    assert (theirs / "thesis.pdf").read_text() == "someone else's file"
    (theirs / "thesis.pdf").unlink()
    run_download(cfg, tmp_path / "run")  # an empty folder: taken, and marked as this pipeline's
    assert (theirs / "_download_settings.txt").is_file()
    run_download(cfg, tmp_path / "run", log=lambda m: None)  # restart: deletes only what it made, then redoes it
    assert sorted(p.name for p in theirs.glob("*.tar")) == ["00000.tar"]
