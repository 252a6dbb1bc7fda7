"""The download's failure reasons in its manifest: one kind per message that differs only in an object's address,
a URL or a host; the commonest kinds only; no per-shard reasons (download_stats.json keeps them), and the
counts still add up to the URLs tried."""

from __future__ import annotations

import json
import types

import tokenization.download_stage as download_stage
from tokenization.download import summarize
from tokenization.download_reasons import MAX_REASONS, manifest_part, reason_kind, top_reasons

DECODE = "cannot identify image file <_io.BytesIO object at 0x7f3a2b1c9e40>"


def test_messages_that_name_one_object_url_or_host_are_one_kind():
    assert (
        reason_kind(DECODE)
        == reason_kind(DECODE.replace("7f3a2b1c9e40", "7f00aa"))
        == ("cannot identify image file <_io.BytesIO object at 0x...>")
    )
    assert reason_kind("HTTPSConnectionPool(host='a.example', port=443): Max retries exceeded with url: /x.jpg") == (
        "HTTPSConnectionPool(host='...', port=...): Max retries exceeded with url: /x.jpg"
    )
    assert reason_kind("redirect to http://b.example/p?q=1 refused") == "redirect to <url> refused"
    for plain in ("HTTP Error 404: Not Found", "timed out", "image too small"):
        assert reason_kind(plain) == plain


def test_summarize_counts_a_kind_once_across_messages(tmp_path):
    status = {"success": 6, DECODE: 1, DECODE.replace("9e40", "0001"): 2, "timed out": 1}
    (tmp_path / "00000_stats.json").write_text(
        json.dumps({"count": 10, "successes": 6, "failed_to_download": 1, "failed_to_resize": 3, "status_dict": status})
    )
    summary = summarize(str(tmp_path), ["00000"])
    assert summary["errors"] == {reason_kind(DECODE): 3, "timed out": 1}
    assert sum(summary["outcomes"].values()) == 10


def test_top_reasons_keep_the_commonest_and_the_sum():
    counts = {f"reason {i}": i + 1 for i in range(10)}
    top = top_reasons(counts, keep=3)
    assert list(top)[:3] == ["reason 9", "reason 8", "reason 7"]
    assert top["other reasons (7 kinds; download_stats.json lists them)"] == sum(range(1, 8))
    assert sum(top.values()) == sum(counts.values()) and top_reasons({"a": 1}, keep=3) == {"a": 1}


def big_report(shards: int, reasons_per_shard: int) -> dict:
    """A LAION-sized download's report: each shard's failures under host-specific messages of its own."""
    rows, errors = [], {}
    for s in range(shards):
        errs = {f"<urlopen error host{s}x{r}.example unreachable>": 1 for r in range(reasons_per_shard)}
        rows.append({"name": f"{s:05d}.tar", "count": 100, "success": 100 - reasons_per_shard, "errors": errs})
        errors.update(errs)
    success = sum(r["success"] for r in rows)
    split = {"shards": rows, "errors": errors, "outcomes": {"success": success, **errors}, "totals": {}}
    return {"splits": {"train": split}, "errors": dict(errors), "outcomes": {"success": success, **errors}}


def test_the_manifest_of_a_large_download_stays_small():
    report = big_report(2000, 20)
    part = manifest_part(report)
    full, small = len(json.dumps(report)), len(json.dumps(part))
    print(f"\nmanifest of 2000 shards x 20 distinct reasons: {full / 1e6:.1f} MB whole, {small / 1e3:.0f} kB kept")
    assert small < full / 10
    for outcomes in (part["outcomes"], part["splits"]["train"]["outcomes"]):
        assert list(outcomes)[0] == "success" and len(outcomes) == MAX_REASONS + 2
        assert sum(outcomes.values()) == 2000 * 100
    assert all("errors" not in row for row in part["splits"]["train"]["shards"])
    assert part["splits"]["train"]["shards"][0] == {"name": "00000.tar", "count": 100, "success": 80}
    assert len(report["splits"]["train"]["shards"][0]["errors"]) == 20  # the whole report is left as it was


def test_the_download_stage_returns_the_manifest_part(tmp_path, monkeypatch):
    monkeypatch.setattr(download_stage, "run_download", lambda *a: big_report(3, 60))
    cfg = types.SimpleNamespace(data=types.SimpleNamespace(download=types.SimpleNamespace(source="url_list")))
    ctx = types.SimpleNamespace(config=cfg, out_dir=tmp_path, log=print)
    manifest = download_stage.download_stage(ctx)
    assert len(manifest["errors"]) == MAX_REASONS + 1 and "errors" not in manifest["splits"]["train"]["shards"][0]
