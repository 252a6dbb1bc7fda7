"""The ``download`` stage's inputs: url lists (LAION parquet, CC3M tsv, the synthetic set's) rewritten to
``url, caption`` parquet parts with the row filters and the eval split applied (:func:`prepare_inputs`), and
the loopback server (:func:`serve_folder`) that serves a local url list's images when ``serve_local`` is set."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

from cluster.shared_storage import is_local_fs, url_to_fs
from core.files import atomic_path, write_json_atomic
from tokenization.download_config import DownloadConfig
from tokenization.heldout_rows import keep_split_rows
from tokenization.source_config import ROW_KEYS

# ----------------------------------------------------------------------------- loopback server


class QuietHandler(SimpleHTTPRequestHandler):
    """Static files without a log line per request."""

    def log_message(self, *args):  # noqa: D102
        pass


class LoopbackServer(ThreadingHTTPServer):
    """A thread per request, and a listen backlog for img2dataset's many threads: socketserver's default of 5
    drops the SYNs of a burst of connections, and each dropped one waits out TCP's 1 s retransmit (a tiny
    download's shards took 1 s instead of 0.1)."""

    request_queue_size = 1024  # the kernel caps it at net.core.somaxconn
    daemon_threads = True


@contextlib.contextmanager
def serve_folder(root: str | os.PathLike, handler: type = QuietHandler) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 (free port) in a thread; yields the base URL; stops at exit."""
    srv = LoopbackServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=srv.serve_forever, name="serve_folder", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


# ----------------------------------------------------------------------------- url lists


def _list_files(url: str, exts: tuple[str, ...]) -> list[str]:
    fs, path = url_to_fs(url)
    if fs.isdir(path):
        files = sorted(p for p in fs.find(path) if p.endswith(exts))
        if not files:
            raise FileNotFoundError(f"no {'/'.join(exts)} file in {url}")
        return [p if is_local_fs(fs) else fs.unstrip_protocol(p) for p in files]
    if not fs.exists(path):
        raise FileNotFoundError(f"url list not found: {url}")
    return [url]


def _resolver(base: Optional[str], rel_prefix: str) -> Callable[[str], str]:
    """Map a URL to itself, or a relative one to ``base/rel_prefix/url`` when serving locally."""

    def resolve(url: str) -> str:
        if base is None or "://" in url:
            return url
        return f"{base}/{rel_prefix}{url.lstrip('/')}"

    return resolve


def _url_list_schema():
    """The ``url, caption`` parquet both converters write."""
    import pyarrow as pa

    return pa.schema([("url", pa.string()), ("caption", pa.string())])


PARQUET_BATCH_ROWS = 1 << 17  # rows read, filtered and written at a time


def convert_parquet(src: str, dst: Path, cfg: DownloadConfig, resolve: Callable[[str], str]) -> int:
    """LAION-style parquet -> ``url, caption`` parquet with the row filters applied, a batch of rows at a time
    (a LAION-2B part file holds ~18M rows: read whole, its url and caption columns alone take gigabytes, and
    each filter copies them); returns the rows kept."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    fs, path = url_to_fs(src)
    schema = _url_list_schema()
    kept = 0
    with fs.open(path, "rb") as f:
        source = pq.ParquetFile(f, pre_buffer=False)  # pre-buffering reads whole row groups (1M rows) ahead
        names = source.schema_arrow.names
        cuts = [
            (c, v)
            for c, v in (
                (cfg.similarity_col, cfg.min_similarity),
                (cfg.width_col, cfg.min_width),
                (cfg.height_col, cfg.min_height),
            )
            if v is not None
        ]
        missing = [c for c in [cfg.url_col, cfg.caption_col] + [c for c, _ in cuts] if c not in names]
        if missing:
            raise ValueError(f"{src}: columns {missing} not found (has {names}); set data.download.*_col")
        columns = list(dict.fromkeys([cfg.url_col, cfg.caption_col] + [c for c, _ in cuts]))
        with atomic_path(dst) as tmp, pq.ParquetWriter(tmp, schema) as writer:
            written = False
            for batch in source.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
                table = pa.Table.from_batches([batch])
                for col, threshold in cuts:
                    table = table.filter(pc.fill_null(pc.greater_equal(table[col], threshold), False))
                table = table.filter(pc.is_valid(table[cfg.url_col]))
                if table.num_rows == 0:
                    continue
                urls = pc.cast(table[cfg.url_col], pa.string())
                if resolve("x") != "x":  # serving locally: relative URLs point at the server
                    urls = pa.array([resolve(u) for u in urls.to_pylist()], pa.string())
                caps = pc.fill_null(pc.cast(table[cfg.caption_col], pa.string()), "")
                writer.write_table(pa.table({"url": urls, "caption": caps}, schema=schema))
                kept += table.num_rows
                written = True
                del batch, table, urls, caps
                pa.default_memory_pool().release_unused()  # else the pool keeps every batch's pages (3x the RSS)
            if not written:  # a file with the columns and no rows
                writer.write_table(schema.empty_table())
    return kept


TSV_CHUNK_ROWS = 1 << 20  # pyarrow's default row group: the file is the one ``write_table`` makes of all the rows


def convert_tsv(src: str, dst: Path, resolve: Callable[[str], str]) -> tuple[int, int]:
    """CC3M ``caption<TAB>url`` lines (no header, no quoting) -> ``url, caption`` parquet, written one row group
    at a time (a list of 12M rows held whole took 7 GB). Returns (rows, malformed lines skipped)."""
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    urls, caps, rows, bad = [], [], 0, 0
    schema = _url_list_schema()
    with (
        atomic_path(dst) as tmp,
        pq.ParquetWriter(tmp, schema) as writer,
        fsspec.open(src, "rt", encoding="utf-8", errors="replace", compression="infer", newline="\n") as f,
    ):
        for line in f:
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cap, tab, url = line.rpartition("\t")
            if not tab or not url.strip():
                bad += 1
                continue
            urls.append(resolve(url.strip()))
            caps.append(cap.strip())
            if len(urls) == TSV_CHUNK_ROWS:
                writer.write_table(pa.table({"url": urls, "caption": caps}, schema=schema))
                rows, urls, caps = rows + len(urls), [], []
        if urls or not rows:
            writer.write_table(pa.table({"url": urls, "caption": caps}, schema=schema))
            rows += len(urls)
    return rows, bad


def url_lists(cfg: DownloadConfig, synthetic_dir: Optional[Path]) -> dict[str, list[str]]:
    """Split name -> url list files."""
    if cfg.source == "synthetic":
        if synthetic_dir is None:
            raise ValueError("source 'synthetic' needs the synthetic stage's folder")
        root = Path(synthetic_dir)
        if (root / "urls.parquet").is_file():
            return {"train": [str(root / "urls.parquet")]}
        found = {p.parent.name: [str(p)] for p in sorted(root.glob("*/urls.parquet"))}
        if not found:
            raise FileNotFoundError(f"no urls.parquet in {root} or its subfolders")
        return found
    exts = (".parquet",) if cfg.source == "laion" else (".tsv", ".tsv.gz", ".txt")
    splits = {"train": _list_files(cfg.url_list, exts)}
    if cfg.eval_url_list or cfg.eval_split:  # eval_split: the same lists, their held-out rows
        splits["eval"] = _list_files(cfg.eval_url_list, exts) if cfg.eval_url_list else splits["train"]
    return splits


def no_rows_message(cfg: DownloadConfig, files: list[str], malformed: int) -> str:
    """Why a train split has no url to download, and what to check."""
    why = [f"{malformed} line(s) are not caption<TAB>url" if malformed else ""]
    cuts = [f"{k} {getattr(cfg, k)}" for k in ("min_similarity", "min_width", "min_height") if getattr(cfg, k)]
    why.append(f"the filters ({', '.join(cuts)}) keep no row" if cuts else "")
    why.append(f"eval_split {cfg.eval_split} holds the rest out" if cfg.eval_split and not cfg.eval_url_list else "")
    named = ", ".join(files[:3]) + (f" (+{len(files) - 3} more)" if len(files) > 3 else "")
    return f"download train: no url to download in {named}: " + ("; ".join(w for w in why if w) or "it has no rows")


def prepare_inputs(
    cfg: DownloadConfig,
    files: list[str],
    dst_dir: Path,
    base: Optional[str],
    serve_root: Optional[Path],
    split: str = "train",
    log: Callable[[str], None] = print,
) -> dict:
    """Rewrite ``files`` to ``dst_dir/part-NNNNN.parquet`` (with ``eval_split``: only the rows of ``split``);
    returns {"rows": [...], "malformed": n}. Skipped when ``dst_dir/_done.json`` records the same sources,
    settings and server base. Logs a line per file (a LAION part of 12-18M rows takes a minute or more)."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    stamp = {
        "files": [(f, url_list_identity(f)) for f in files],
        "base": base,
        "cfg": {k: getattr(cfg, k) for k in ("source", *ROW_KEYS, "eval_split")},
    }
    done = dst_dir / "_done.json"
    if done.is_file():
        old = json.loads(done.read_text())
        if old.get("stamp") == json.loads(json.dumps(stamp)):
            return old["result"]
    for old_part in dst_dir.glob("part-*.parquet"):
        old_part.unlink()
    rows, malformed = [], 0
    for i, src in enumerate(files):
        t0 = time.time()
        prefix = ""
        if serve_root is not None and "://" not in src:
            prefix = os.path.relpath(Path(src).resolve().parent, serve_root.resolve()).replace(os.sep, "/") + "/"
            prefix = "" if prefix == "./" else prefix
        resolve = _resolver(base, prefix)
        dst = dst_dir / f"part-{i:05d}.parquet"
        if cfg.source == "cc3m":
            n, bad = convert_tsv(src, dst, resolve)
            malformed += bad
        else:
            n = convert_parquet(src, dst, cfg, resolve)
        if cfg.eval_split and not cfg.eval_url_list:
            n = keep_split_rows(dst, split == "eval", cfg.eval_split, base)
        rows.append(n)
        log(f"[download] {split} url list {i + 1}/{len(files)} ({src}): {n:,} rows in {time.time() - t0:.1f} s")
    result = {"rows": rows, "malformed": malformed}
    write_json_atomic(done, {"stamp": stamp, "result": result})
    return result


def url_list_identity(url: str) -> list:
    """[size, modification time] of a url list file (local or fsspec): a regenerated list is another one."""
    fs, path = url_to_fs(url)
    info = fs.info(path)
    return [info.get("size"), str(info.get("mtime") or info.get("LastModified") or info.get("ETag") or "")]
