"""Rows of url lists the download test leaves open: a row whose filter column is null is dropped (a filter
keeps only rows known to pass), and a CC3M caption that itself holds a tab keeps it (the URL is the last
field); the rewritten URLs follow the loopback server's address."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from tokenization.download_config import DownloadConfig
from tokenization.url_lists import prepare_inputs


def test_null_filter_values_are_dropped(tmp_path):
    table = {"URL": ["http://a/1", "http://a/2", "http://a/3"], "TEXT": ["one", "two", "three"]}
    pq.write_table(pa.table({**table, "similarity": [0.5, None, 0.2]}), tmp_path / "l.parquet")
    cfg = DownloadConfig(source="laion", url_list=str(tmp_path / "l.parquet"), min_similarity=0.3)
    assert prepare_inputs(cfg, [str(tmp_path / "l.parquet")], tmp_path / "in", None, None)["rows"] == [1]
    assert pq.read_table(tmp_path / "in" / "part-00000.parquet").to_pydict() == {
        "url": ["http://a/1"],
        "caption": ["one"],
    }


def test_a_tab_inside_a_cc3m_caption_stays_in_the_caption(tmp_path):
    (tmp_path / "c.tsv").write_text("a\tb caption\thttp://b/1\n")
    cfg = DownloadConfig(source="cc3m", url_list=str(tmp_path / "c.tsv"))
    assert prepare_inputs(cfg, [str(tmp_path / "c.tsv")], tmp_path / "out", None, None) == {"rows": [1], "malformed": 0}
    got = pq.read_table(tmp_path / "out" / "part-00000.parquet").to_pydict()
    assert got == {"url": ["http://b/1"], "caption": ["a\tb caption"]}


def test_a_new_server_address_rewrites_the_relative_urls(tmp_path):
    pq.write_table(pa.table({"URL": ["rel/1.png"], "TEXT": ["one"]}), tmp_path / "l.parquet")
    cfg = DownloadConfig(source="laion", url_list=str(tmp_path / "l.parquet"))
    for port in (9, 10):  # serve_local: each run's loopback server has another port
        prepare_inputs(cfg, [str(tmp_path / "l.parquet")], tmp_path / "in", f"http://127.0.0.1:{port}", tmp_path)
        got = pq.read_table(tmp_path / "in" / "part-00000.parquet").to_pydict()["url"]
        assert got == [f"http://127.0.0.1:{port}/rel/1.png"]


def test_each_url_list_file_logs_its_rows_once(tmp_path):
    for i, n in enumerate((3, 2)):
        pq.write_table(
            pa.table({"URL": [f"http://a/{i}/{j}" for j in range(n)], "TEXT": ["t"] * n}), tmp_path / f"{i}.parquet"
        )
    files = [str(tmp_path / "0.parquet"), str(tmp_path / "1.parquet")]
    cfg = DownloadConfig(source="laion", url_list=str(tmp_path))
    lines: list[str] = []
    assert prepare_inputs(cfg, files, tmp_path / "in", None, None, "train", lines.append)["rows"] == [3, 2]
    assert [line.split(" in ")[0] for line in lines] == [
        f"[download] train url list 1/2 ({files[0]}): 3 rows",
        f"[download] train url list 2/2 ({files[1]}): 2 rows",
    ]
    prepare_inputs(cfg, files, tmp_path / "in", None, None, "train", lines.append)  # done before: nothing to say
    assert len(lines) == 2
