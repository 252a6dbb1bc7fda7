"""``pipeline.preflight.missing_files`` beyond the runner test: each item of ``data.download.sources`` is
checked (named by its index), URLs are left to the stage, an open_clip tag is not a file, and ``~`` is the home
folder."""

from __future__ import annotations

from pathlib import Path

from pipeline.experiment import load_config
from pipeline.preflight import missing_files

ROOT = Path(__file__).resolve().parents[1]


def test_each_source_is_checked_and_urls_are_left_to_the_stage(tmp_path):
    (tmp_path / "laion.parquet").write_text("x")
    sources = (
        f"[{{name: laion, kind: laion, url_list: {tmp_path / 'laion.parquet'}}}, "
        f"{{name: cc3m, kind: cc3m, url_list: {tmp_path / 'cc3m.tsv'}, eval_url_list: s3://bucket/val.tsv}}]"
    )
    cfg = load_config(
        ROOT / "configs" / "tiny.yaml",
        [
            f"run_dir={tmp_path}",
            "data.download.source=sources",
            f"data.download.sources={sources}",
            "eval.metrics=[fid]",
        ],
    )
    assert missing_files(cfg, ["download"]) == [
        f"data.download.sources[1].url_list: {tmp_path / 'cc3m.tsv'} (read by the download stage)"
    ]
    assert missing_files(cfg, ["train", "evaluate"]) == []  # the download stage will not run


def test_a_clip_tag_is_no_file_and_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "clip.bin").write_text("x")

    def cfg(pretrained: str):
        sets = [
            "train.order=learned",
            "train.order_learner.reward=clip",
            f"train.order_learner.clip_pretrained={pretrained}",
        ]
        return load_config(ROOT / "configs" / "tiny.yaml", [f"run_dir={tmp_path}", *sets])

    assert missing_files(cfg("laion2b_s34b_b79k"), ["train"]) == []  # an open_clip tag: downloaded by name
    assert missing_files(cfg("~/clip.bin"), ["train"]) == []  # in the home folder
    assert missing_files(cfg("~/gone.bin"), ["train"]) == [
        "train.order_learner.clip_pretrained: ~/gone.bin (read by the train stage)"
    ]
