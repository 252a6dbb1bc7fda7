"""The download stage against a real http.server on 127.0.0.1 serving good and hostile images."""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cluster.shared_storage import require_shared
from tests import net_guard
from tests.hostile_server import (
    DEADLINE_S,
    PRIVATE_ADDRESS,
    PRIVATE_HOST,
    URLS,
    HostileHandler,
    PeakRss,
    write_site,
)
from tokenization.download import (
    UNCOUNTED,
    check_reachable_server,
    expected_shards,
    missing_shards,
    run_download,
    summarize,
)
from tokenization.download_config import DownloadConfig
from tokenization.image_limits import REASON_TOO_MANY_PIXELS, REASON_UNKNOWN_FORMAT
from tokenization.safe_fetch import (
    REASON_ADDRESS,
    REASON_DEADLINE,
    REASON_EMPTY,
    REASON_NOT_IMAGE,
    REASON_SCHEME,
)
from tokenization.url_lists import prepare_inputs

TIMEOUT_S = 2


def _png(path: Path, size=(40, 30), color=(200, 30, 30)):
    Image.new("RGB", size, color).save(path)


def _tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as t:
        return {m.name: t.extractfile(m).read() for m in t if m.isfile()}


# Every case of the hostile server, how it must end, and whether img2dataset counts it as a failed download
# ("download") or a failed resize ("resize", what its decoder step refuses).
OUTCOMES = {
    "wrongtype": (REASON_NOT_IMAGE, "download"),
    "empty": (REASON_EMPTY, "download"),
    "error500": ("HTTP Error 500: Internal Server Error", "download"),
    "redirectloop": (
        "HTTP Error 302: The HTTP server returned a redirect error that would lead to an infinite loop.\n"
        "The last 30x error message was:\nFound",
        "download",
    ),
    "drip": (REASON_DEADLINE, "download"),
    "bomb": (REASON_TOO_MANY_PIXELS, "resize"),
    "html": (REASON_NOT_IMAGE, "download"),
    "truncated_png": ("Image decoding error", "resize"),
    "reset": ("[Errno 104] Connection reset by peer", "download"),
    "missing": ("HTTP Error 404: File not found", "download"),
    "file": (REASON_SCHEME, "download"),
    "private": (REASON_ADDRESS, "download"),
    "notimage": (REASON_UNKNOWN_FORMAT, "resize"),
    "truncated_jpg": ("Image decoding error", "resize"),
    "huge": ("image area too large", "resize"),
    "slow": ("timed out", "download"),
}
# 28 rows kept, in shards of 6 (6, 6, 6, 6, 4); `lowsim`/`narrow` rows are filtered out before sharding.
ORDER = [
    "good0", "wrongtype", "empty", "lowsim", "good1", "error500", "redirectloop", "drip",
    "good2", "bomb", "html", "good3", "truncated_png", "narrow", "reset", "good4", "good5",
    "missing", "file", "good6", "private", "notimage", "good7", "lowsim", "truncated_jpg",
    "good8", "huge", "good9", "slow", "good10", "good11",
]  # fmt: skip
PER_SHARD = 6


def _laion_parquet(path: Path, base: str, port: int) -> list[tuple[str, str]]:
    urls, caps, sims, widths = [], [], [], []
    for i, name in enumerate(ORDER):
        target = URLS.get(name, "/good0.png" if name in ("lowsim", "narrow") else f"/{name}.png")
        urls.append(target.format(port=port) if "://" in target else base + target)
        caps.append(f'caption {i} of "{name}", with, commas')
        sims.append(0.1 if name == "lowsim" else 0.35)
        widths.append(8 if name == "narrow" else 64)
    pq.write_table(
        pa.table({"URL": urls, "TEXT": caps, "similarity": sims, "WIDTH": widths, "HEIGHT": [64] * len(urls)}), path
    )
    return [(n, c) for c, n in zip(caps, ORDER) if n not in ("lowsim", "narrow")]


def _expected_shards() -> list[tuple[int, int, int, int]]:
    """(count, success, failed_to_download, failed_to_resize) per shard, from ORDER and OUTCOMES."""
    kept = [n for n in ORDER if n not in ("lowsim", "narrow")]
    out = []
    for i in range(0, len(kept), PER_SHARD):
        part = kept[i : i + PER_SHARD]
        kinds = [OUTCOMES[n][1] if n in OUTCOMES else "success" for n in part]
        out.append((len(part), kinds.count("success"), kinds.count("download"), kinds.count("resize")))
    return out


@pytest.mark.slow  # img2dataset spawns processes that import torch: 40-80 s on 2 shared cores
@pytest.mark.timeout(400)  # the drip lasts 20 s and the slow answer 4 s: bounded by the deadline, not them
def test_download_hostile_server_counts_exact(tmp_path, http_server, monkeypatch):
    """Every hostile case ends in its own reason, counted exactly; the bomb is refused before decoding (the
    workers' memory stays far below its 1.2 GB); the private host is refused without any connection to it
    (a net guard in this process and in img2dataset's workers fails every non-loopback connect)."""
    root = tmp_path / "www"
    root.mkdir()
    goods = write_site(root)
    base = http_server(root, HostileHandler)
    port = int(base.rsplit(":", 1)[1])
    kept = _laion_parquet(tmp_path / "laion.parquet", base, port)
    guard_log = str(tmp_path / "net_guard.jsonl")
    undo_guard = net_guard.install({PRIVATE_HOST: PRIVATE_ADDRESS}, guard_log)  # this process
    for k, v in net_guard.env({PRIVATE_HOST: PRIVATE_ADDRESS}, guard_log).items():
        monkeypatch.setenv(k, v)  # img2dataset's spawned workers
    cfg = DownloadConfig(
        source="laion",
        url_list=str(tmp_path / "laion.parquet"),
        serve_local=False,
        image_size=32,
        resize_mode="center_crop",
        samples_per_shard=PER_SHARD,
        threads=8,
        timeout=TIMEOUT_S,
        deadline=DEADLINE_S,
        min_similarity=0.3,
        min_width=16,
        max_image_area=1000.0 * 1000,
        min_success_ratio=0.0,
        distributor="multiprocessing",
        allow_hosts=["127.0.0.1"],  # this test's server; PRIVATE_ADDRESS stays refused
    )
    out = tmp_path / "run"
    try:
        with PeakRss().watching() as memory:
            report = run_download(cfg, out)
    finally:
        undo_guard()
        monkeypatch.undo()

    guard = net_guard.read_log(guard_log)
    assert [g for g in guard if "blocked" in g] == []  # nothing tried to reach a non-loopback address
    assert {g["pid"] for g in guard if g.get("installed")} - {os.getpid()}, "the guard ran in no worker"
    assert memory.samples > 10 and memory.peak < 800 * 2**20, memory.by_pid  # ~400 MB of imports; the bomb: 1200 MB

    split = report["splits"]["train"]
    assert split["rows"] == 28
    got = [(s["count"], s["success"], s["failed_to_download"], s["failed_to_resize"]) for s in split["shards"]]
    assert got == _expected_shards()
    expected = {"success": len(goods)}
    for reason, _ in OUTCOMES.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert report["outcomes"] == expected  # every URL in exactly one outcome
    assert sum(report["outcomes"].values()) == report["counts"]["count"] == 28
    counts = {"count": 28, "success": 12, "failed_to_download": 11, "failed_to_resize": 5, "shards": 5}
    assert report["counts"] == counts
    stats = json.loads((out / "download_stats.json").read_text())
    assert stats["outcomes"] == expected and stats["counts"] == report["counts"]

    captions = []
    for shard in range(5):
        members = _tar_members(out / "train" / f"{shard:05d}.tar")
        jpgs = sorted(k for k in members if k.endswith(".jpg"))
        for k in jpgs:
            assert Image.open(io.BytesIO(members[k])).size == (32, 32)
            captions.append(members[k[:-4] + ".txt"].decode())
    assert sorted(captions) == sorted(c for n, c in kept if n.startswith("good"))

    # The same output with a stricter floor: nothing is downloaded again, and the stage fails loudly,
    # naming the shards below it.
    low = [f"{i:05d}.tar" for i, (n, ok, _, _) in enumerate(_expected_shards()) if ok / n < 0.5]
    strict = DownloadConfig(**{**cfg.__dict__, "min_success_ratio": 0.5})
    with pytest.raises(RuntimeError, match=rf"{len(low)} shard\(s\) below min_success_ratio 0.5.*" + ".*".join(low)):
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
        allow_hosts=["127.0.0.1"],  # this test's server; the stage's own one needs no entry
    )
    report = run_download(cfg, tmp_path / "run")
    split = report["splits"]["train"]
    assert (split["rows"], split["malformed_rows"]) == (4, 1)
    assert report["counts"]["success"] == 4
    members = _tar_members(tmp_path / "run" / "train" / "00000.tar")
    assert sorted(v.decode() for k, v in members.items() if k.endswith(".txt")) == sorted(captions)


def test_a_url_list_with_nothing_to_download_fails_naming_why(tmp_path, monkeypatch):
    """A cc3m list of one-column lines, or a filter that keeps no row, is an error before img2dataset starts
    (it used to "succeed" with 0 images, and the next stage blamed the text encoder)."""
    import tokenization.download as dl

    monkeypatch.setattr(dl, "call_img2dataset", lambda **kw: pytest.fail("img2dataset must not start"))
    (tmp_path / "c.tsv").write_text("http://a/1.jpg\nhttp://a/2.jpg\n")
    cfg = DownloadConfig(source="cc3m", url_list=str(tmp_path / "c.tsv"), distributor="multiprocessing")
    with pytest.raises(RuntimeError) as err:
        run_download(cfg, tmp_path / "run")
    assert (
        str(err.value)
        == f"download train: no url to download in {tmp_path / 'c.tsv'}: 2 line(s) are not caption<TAB>url"
    )
    pq.write_table(pa.table({"URL": ["http://a/1"], "TEXT": ["x"], "similarity": [0.1]}), tmp_path / "l.parquet")
    laion = DownloadConfig(source="laion", url_list=str(tmp_path / "l.parquet"), min_similarity=0.3)
    with pytest.raises(RuntimeError, match=r"l.parquet: the filters \(min_similarity 0.3\) keep no row$"):
        run_download(replace(laion, distributor="multiprocessing"), tmp_path / "run2")


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


def test_shared_storage_is_judged_where_the_data_lands(tmp_path, monkeypatch):
    """A symlink on a network mount pointing at a local disk is local; a container's fuse-overlayfs root is a
    local FUSE filesystem, sshfs a network one."""
    import cluster.shared_storage as ss

    mounts = {"/net": "nfs4", "/ctr": "fuse.fuse-overlayfs", "/remote": "fuse.sshfs", "/": "ext4"}  # longest first
    monkeypatch.setattr(ss, "mount_fstype", lambda p: next(v for k, v in mounts.items() if p.startswith(k)))
    real = {"/net/run": "/scratch/run"}
    monkeypatch.setattr(ss.os.path, "realpath", lambda p: real.get(p, p))
    with pytest.raises(ValueError, match="local disk \\(ext4"):
        ss.require_shared("/net/run", 2, "run_dir")  # linked to a local disk
    ss.require_shared("/net/other", 2, "run_dir")
    ss.require_shared("/remote/run", 2, "run_dir")
    with pytest.raises(ValueError, match="fuse-overlayfs"):
        ss.require_shared("/ctr/run", 2, "run_dir")


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
    assert summary["outcomes"] == {"success": 13, "timed out": 1, "Image decoding error": 1}
    assert [s["name"] for s in summary["shards"]] == ["00000.tar", "00002.tar"]
    stats = json.loads((out / "00002_stats.json").read_text())  # one URL img2dataset counted in no reason
    (out / "00002_stats.json").write_text(json.dumps({**stats, "successes": 4, "status_dict": {"success": 4}}))
    outcomes = summarize(str(out), ["00000", "00002"])["outcomes"]
    assert outcomes[UNCOUNTED] == 1 and sum(outcomes.values()) == 15


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


def test_the_url_lists_columns_are_part_of_the_shards_lineage(tmp_path):
    """Another caption (or url, similarity, size) column gives other shards; a record written before the
    columns were recorded was made with the default ones and stays current."""
    from tokenization.download import _changes, shard_lineage

    cfg = DownloadConfig(source="laion", url_list=str(tmp_path))
    base = shard_lineage(cfg, [])
    for key in ("url_col", "caption_col", "similarity_col", "width_col", "height_col"):
        other = shard_lineage(DownloadConfig(**{**cfg.__dict__, key: "other"}), [])
        assert f"{key}: {getattr(cfg, key)!r} -> 'other'" in _changes(base, other)
    before = {**base, "settings": {k: v for k, v in base["settings"].items() if not k.endswith("_col")}}
    assert _changes(before, base) == ""
    custom = shard_lineage(DownloadConfig(**{**cfg.__dict__, "caption_col": "caption"}), [])
    assert "caption_col: 'TEXT' -> 'caption'" in _changes(before, custom)


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


def test_a_rerun_downloads_again_the_shards_that_failed_and_reuses_the_others(tmp_path, monkeypatch):
    """A shard below min_success_ratio (an outage, or workers orphaned while the stage's server was gone) is
    downloaded again by the rerun, not taken for finished: its stats made every rerun fail the same way."""
    import tokenization.download as dl

    calls: list = []
    urls = [f"http://127.0.0.1:9/{i}.png" for i in range(25)]
    pq.write_table(pa.table({"URL": urls, "TEXT": ["c"] * 25}), tmp_path / "l.parquet")
    cfg = DownloadConfig(source="laion", url_list=str(tmp_path / "l.parquet"), samples_per_shard=10)
    monkeypatch.setattr(dl, "call_img2dataset", _fake_img2dataset(calls, success=False))
    with pytest.raises(RuntimeError, match="none of its 25 images"):
        run_download(cfg, tmp_path / "run")
    out = tmp_path / "run" / "train"
    (out / "00001_stats.json").write_text(
        json.dumps(
            {
                "count": 10,
                "successes": 9,
                "failed_to_download": 1,
                "failed_to_resize": 0,
                "status_dict": {"success": 9, "HTTP Error 404: Not Found": 1},
            }
        )
    )
    kept = (out / "00001.tar").read_text()
    monkeypatch.setattr(dl, "call_img2dataset", _fake_img2dataset(calls, success=True))
    logs: list = []
    report = run_download(cfg, tmp_path / "run", log=logs.append)
    assert any(
        "2 shard(s) below min_success_ratio 0.2 before (00000: 0, 00002: 0); downloading them again" in m for m in logs
    ), logs
    assert [s["success"] for s in report["splits"]["train"]["shards"]] == [10, 9, 5]  # 00001 reused as it was
    assert (out / "00001.tar").read_text() == kept and len(calls) == 2
    listings, real = [], dl.missing_shards
    monkeypatch.setattr(dl, "missing_shards", lambda *a: listings.append(a) or real(*a))
    assert dl.low_shards(str(out), [f"{i:05d}" for i in range(3)], 0.95) == {"00001": 0.9}
    assert len(listings) == 1  # the folder is listed once, not once per shard (40,000 shards for LAION-400M)


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


def test_a_photo_rotated_by_its_exif_is_stored_upright():
    """Phone photos store their pixels sideways and say so in EXIF (Orientation 6: turn 90 degrees clockwise).
    OpenCV's decode in img2dataset ignores the tag and the stored image keeps no EXIF: the download's resizer
    turns the image upright first, so the tokenizer sees what the caption describes."""
    import numpy as np

    from cluster.local_ray import apply_quiet_env
    from tokenization.shard_encoder import decode_image

    apply_quiet_env()
    from tokenization.download_hooks import SafeResizer, upright

    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # stored 40 wide, 20 high, its left half white
    im = Image.fromarray(pixels)
    exif = im.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    resizer = SafeResizer(image_size=40, resize_mode="no", resize_only_if_bigger=False, max_pixels=10**6)
    stored = resizer(io.BytesIO(buf.getvalue()))
    assert stored[-1] is None and (stored[1], stored[2]) == (20, 40)  # width 20, height 40: upright
    img = decode_image(stored[0], None)[0]
    assert img.shape == (40, 20, 3) and img[:18].mean() > 200 and img[22:].mean() < 50  # the white half on top
    plain = io.BytesIO(_png_bytes(8, 6))
    assert upright(plain) is plain and plain.tell() == 0  # no orientation: the same stream, rewound


def _png_bytes(w: int, h: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (w, h), (9, 9, 9)).save(out, "PNG")
    return out.getvalue()
