"""Several url-list sources and a held-out eval split: config rules, per-source settings, the row split."""

from __future__ import annotations

from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.config import ConfigError, from_dict
from tokenization.download_config import DownloadConfig
from tokenization.download_sources import has_eval_split, source_config
from tokenization.heldout_rows import is_held_out
from tokenization.url_lists import prepare_inputs, url_lists

LAION = {"name": "laion", "kind": "laion", "url_list": "/data/laion", "min_similarity": 0.3, "caption_col": "caption"}
CC3M = {"name": "cc3m", "kind": "cc3m", "url_list": "/data/cc3m.tsv", "eval_url_list": "/data/cc3m_val.tsv"}


def load(data: dict) -> DownloadConfig:
    return from_dict(DownloadConfig, data, source="exp.yaml", path="data.download")


def test_a_source_keeps_its_own_columns_and_filters_and_takes_the_rest_from_data_download():
    cfg = load({"source": "sources", "sources": [LAION, CC3M], "eval_split": 0.1, "min_width": 64, "image_size": 64})
    laion, cc3m = (source_config(cfg, s) for s in cfg.sources)
    assert (laion.source, laion.url_list, laion.caption_col, laion.url_col) == (
        "laion",
        "/data/laion",
        "caption",
        "URL",
    )
    assert (laion.min_similarity, laion.min_width, laion.image_size, laion.eval_split) == (0.3, 64, 64, 0.1)
    assert not laion.sources and cc3m.source == "cc3m" and cc3m.min_similarity is None
    assert (cc3m.eval_url_list, cc3m.eval_split) == ("/data/cc3m_val.tsv", 0.0)  # its own eval list, no split
    assert has_eval_split(cfg) and not has_eval_split(replace(cfg, eval_split=0.0, sources=[cfg.sources[0]]))


@pytest.mark.parametrize(
    "data, message",
    [
        ({"sources": [LAION]}, "needs source: sources"),
        ({"source": "sources"}, "needs the list sources"),
        ({"source": "sources", "sources": [LAION, {**CC3M, "name": "laion"}]}, r"names \['laion'\] are used twice"),
        ({"source": "sources", "sources": [{**LAION, "name": "a/b"}]}, "a folder name"),
        ({"eval_split": 0.1}, "synthetic source has its own eval split"),
        ({"source": "laion", "url_list": "/x", "eval_split": 0.1, "eval_url_list": "/y"}, "set one of them"),
        ({"source": "laion", "url_list": "/x", "eval_split": 0.9}, r"eval_split: must be <= 0.5"),
    ],
)
def test_wrong_source_settings_fail_at_load_naming_the_key(data, message):
    with pytest.raises(ConfigError, match=message) as err:
        load(data)
    assert str(err.value).startswith("exp.yaml: data.download")


def _parquet(path, n):
    urls = [f"img/{i:04d}.png" for i in range(n)]
    pq.write_table(pa.table({"URL": urls, "TEXT": [f"caption {i}" for i in range(n)]}), path)
    return urls


def test_the_eval_split_holds_out_the_same_rows_whatever_the_server_port(tmp_path):
    urls = _parquet(tmp_path / "l.parquet", 400)
    cfg = DownloadConfig(source="laion", url_list=str(tmp_path / "l.parquet"), eval_split=0.1)
    files = url_lists(cfg, None)
    assert set(files) == {"train", "eval"} and files["train"] == files["eval"]
    got = {}
    for split, base in (("train", "http://127.0.0.1:1111"), ("eval", "http://127.0.0.1:2222")):
        res = prepare_inputs(cfg, files[split], tmp_path / split, base, tmp_path, split)
        got[split] = pq.read_table(tmp_path / split / "part-00000.parquet").column("url").to_pylist()
        assert res["rows"] == [len(got[split])]
    held = {u for u in urls if is_held_out(u, 0.1)}
    assert {u.split("/", 3)[-1] for u in got["eval"]} == held and 20 <= len(held) <= 60  # ~10% of 400
    assert {u.split("/", 3)[-1] for u in got["train"]} == set(urls) - held  # the rest, none twice
    again = prepare_inputs(replace(cfg, eval_split=0.2), files["eval"], tmp_path / "eval", None, tmp_path, "eval")
    assert again["rows"][0] > len(held)  # another fraction: prepared again, not reused


def test_sources_and_their_eval_split_in_the_experiment_rules(tmp_path):
    from pipeline.experiment import load_config

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    base = [f"run_dir={tmp_path}", "eval.metrics=[fid]", "data.download.source=sources"]
    src = "data.download.sources=[{name: a, kind: laion, url_list: /x}, {name: b, kind: cc3m, url_list: /y}]"
    with pytest.raises(ConfigError, match=r"data\.download\.eval_split: the evaluation prompts .* held-out split"):
        load_config(root / "configs" / "tiny.yaml", base + [src])
    cfg = load_config(root / "configs" / "tiny.yaml", base + [src, "data.download.eval_split=0.05"])
    assert [s.name for s in cfg.data.download.sources] == ["a", "b"]
    with pytest.raises(ConfigError, match=r"data\.mixing\.weights: \['c'\] name no source"):
        load_config(
            root / "configs" / "tiny.yaml",
            base + [src, "data.download.eval_split=0.05", "data.mixing.rule=weighted", "data.mixing.weights={c: 1}"],
        )
