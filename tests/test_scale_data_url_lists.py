"""A CC3M/CC12M tsv url list (3M-12M lines) is rewritten to parquet a row group at a time: the rows are never all
held as Python lists (1.5 GB at 3M rows, growing with the list). A LAION parquet (~18M rows per LAION-2B part) is
read, filtered and written a batch of rows at a time."""

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


def test_a_laion_parquet_is_filtered_a_batch_at_a_time(tmp_path, monkeypatch):
    from tokenization.download_config import DownloadConfig

    n = 11
    sims = [0.1 if i % 3 == 0 else 0.5 for i in range(n)]
    urls = [None if i == 4 else f"http://x.example/{i}.jpg" for i in range(n)]
    caps = [None if i == 5 else f"caption {i}" for i in range(n)]
    pq.write_table(pa.table({"URL": urls, "TEXT": caps, "similarity": sims}), tmp_path / "l.parquet", row_group_size=3)
    batches = []
    real = pq.ParquetFile.iter_batches

    def iter_batches(self, *a, **k):
        for b in real(self, *a, **k):
            batches.append(b.num_rows)
            yield b

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", iter_batches)
    monkeypatch.setattr(url_lists, "PARQUET_BATCH_ROWS", 4)
    cfg = DownloadConfig(source="laion", url_list=str(tmp_path / "l.parquet"), min_similarity=0.3)
    kept = url_lists.convert_parquet(str(tmp_path / "l.parquet"), tmp_path / "out.parquet", cfg, lambda u: u)
    want = [i for i in range(n) if sims[i] >= 0.3 and urls[i] is not None]
    assert kept == len(want) and batches == [4, 4, 3]  # read whole before: one table of 11 rows
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column_names == ["url", "caption"]
    assert out["url"].to_pylist() == [urls[i] for i in want]
    assert out["caption"].to_pylist() == [caps[i] or "" for i in want]
    cfg_none = DownloadConfig(source="laion", url_list=str(tmp_path / "l.parquet"), min_similarity=0.9)
    assert url_lists.convert_parquet(str(tmp_path / "l.parquet"), tmp_path / "none.parquet", cfg_none, str) == 0
    assert pq.read_table(tmp_path / "none.parquet").column_names == ["url", "caption"]
