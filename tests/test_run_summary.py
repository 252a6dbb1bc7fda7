"""The table at the end of ``pt2i run``: each stage's status (ran, reused, failed, not run), time and headline."""

from __future__ import annotations

import os

import pytest

from core.stage import Stage
from pipeline.failures import describe, failure_of
from pipeline.runner import run_stages
from pipeline.summary import StageRow, format_table, headline
from tests.test_stage_runner import Cfg


def _stages(fail: bool):
    def tokenizer(ctx):
        return {"metrics": {"mae": 0.0061, "codebook_usage": 1.0}}

    def train(ctx):
        if fail:
            raise RuntimeError("the DeepSpeed launcher exited with 1\nmore detail")
        return {"counts": {"steps": 1200}, "metrics": {"loss": 1.234, "token_acc": 0.5}}

    def evaluate(ctx):
        return {"metrics": {"attribute_match": 0.953, "fid": 9.87}}

    return [
        Stage("tokenizer", tokenizer, (), ("a",)),
        Stage("train", train, ("tokenizer",), ("a",)),
        Stage("evaluate", evaluate, ("train",), ("a",)),
    ]


def test_rows_say_what_ran_was_reused_failed_or_never_ran(tmp_path):
    rows: list = []
    with pytest.raises(RuntimeError):
        run_stages(Cfg(), tmp_path, _stages(fail=True), log=lambda *_: None, rows=rows)
    assert [(r.stage, r.status) for r in rows] == [("tokenizer", "ran"), ("train", "failed"), ("evaluate", "not run")]
    assert rows[0].headline == "held-out MAE 0.0061, codebook usage 1"
    assert rows[1].headline == "RuntimeError: the DeepSpeed launcher exited with 1"
    failed = failure_of(tmp_path, "train")  # kept for `pt2i status`
    assert failed["error"] == rows[1].headline and failed["pid"] == os.getpid()
    assert describe(failed).startswith(f"failed {failed['time']} on ") and failed["time"].endswith(" UTC")
    assert failure_of(tmp_path, "tokenizer") is None and failure_of(tmp_path, "evaluate") is None
    rows, logged = [], []
    run_stages(Cfg(), tmp_path, _stages(fail=False), log=logged.append, rows=rows)
    assert failure_of(tmp_path, "train") is None and not (tmp_path / ".failures").exists()  # it ran again
    assert f"[train] the last run of it {describe(failed)}" in logged  # and said what had stopped it
    assert [(r.stage, r.status) for r in rows] == [("tokenizer", "reused"), ("train", "ran"), ("evaluate", "ran")]
    assert rows[1].headline == "step 1200: loss 1.234, token_acc 0.5"
    assert rows[2].headline == "attribute match 0.953, FID 9.87"
    table = format_table(rows).splitlines()
    assert table[0].split() == ["stage", "status", "time", "headline"] and len(table) == 5
    assert table[1].startswith("tokenizer  reused ") and table[-1].endswith("time spent in this run")


def test_the_download_headline_counts_each_source():
    m = {"counts": {"success": 330, "count": 336, "shards": 6}, "sources": {"laion": {"counts": {"success": 210}}}}
    assert headline("download", m) == "330/336 images in 6 shards (laion 210)"
    assert "not run" in format_table([StageRow("sample", "not run")])


def test_a_stopped_run_says_so(tmp_path):
    def stopped(ctx):
        raise KeyboardInterrupt

    rows: list = []
    with pytest.raises(KeyboardInterrupt):
        run_stages(Cfg(), tmp_path, [Stage("train", stopped, (), ("a",))], log=lambda *_: None, rows=rows)
    assert [(r.stage, r.status, r.headline) for r in rows] == [("train", "failed", "stopped (KeyboardInterrupt)")]
    assert failure_of(tmp_path, "train")["error"] == "stopped (KeyboardInterrupt)"
