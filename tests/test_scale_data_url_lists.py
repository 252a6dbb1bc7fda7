"""A CC3M/CC12M tsv url list (3M-12M lines) is rewritten to parquet a row group at a time: the rows are never all
held as Python lists (1.5 GB at 3M rows, growing with the list)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

import tokenization.url_lists as url_lists


def test_a_tsv_url_list_is_converted_a_chunk_at_a_time(tmp_path, monkeypatch):
    lines = [f'a "quoted" caption {i}\thttp://x.example/{i}.jpg' for i in range(10)] + ["no tab here"]
    (tmp_path / "l.tsv").write_text("\n".join(lines) + "\n")
    built = []
    real = pa.table
    monkeypatch.setattr(pa, "table", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    monkeypatch.setattr(url_lists, "TSV_CHUNK_ROWS", 4, raising=False)
    rows, bad = url_lists.convert_tsv(str(tmp_path / "l.tsv"), tmp_path / "out.parquet", lambda u: u)
    assert (rows, bad) == (10, 1)
    assert max(t.num_rows for t in built) <= 4  # the whole list in one table before
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column_names == ["url", "caption"]
    assert out["url"].to_pylist() == [f"http://x.example/{i}.jpg" for i in range(10)]
    assert out["caption"].to_pylist() == [f'a "quoted" caption {i}' for i in range(10)]
