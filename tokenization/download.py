"""The ``download`` stage: url lists -> image shards, with img2dataset (the library, not a copy of it).

Sources (``data.download.source``):
  * ``synthetic``: every ``urls.parquet`` the synthetic stage wrote (one split per folder: ``train``,
    ``eval``; a ``urls.parquet`` at the top is the split ``train``).
  * ``laion``: a parquet file or a folder of them with ``URL``/``TEXT`` and optional filter columns
    (``similarity``, ``WIDTH``, ``HEIGHT``) cut by ``min_similarity``/``min_width``/``min_height``.
  * ``cc3m``: TSV ``caption<TAB>url`` without header (``.tsv`` or ``.tsv.gz``, a file or a folder). Captions
    contain quotes that break CSV parsers, so lines are split on the last tab here and written as parquet.
  * ``sources``: several of those in one run (``tokenization.download_sources``).

A laion/cc3m url list gets an ``eval`` split with ``eval_url_list`` (a second list) or ``eval_split`` (that
fraction of its rows, chosen by a hash of the URL: ``tokenization.heldout_rows``; ``train`` keeps the rest).

Every url list is first rewritten to ``OUT/_inputs/SPLIT/part-NNNNN.parquet`` (columns ``url``,
``caption``). With ``serve_local`` the folder holding the url list is served by a loopback
``http.server`` for the duration and relative URLs point at it.

img2dataset runs in ``incremental`` mode (a shard with a ``NNNNN_stats.json`` is done), writing
webdataset shards to ``OUT/SPLIT/`` (or ``output_folder/SPLIT`` for shared storage on a cluster). Afterwards
shards still without stats are rerun up to ``shard_retries`` times (its ray distributor never retries),
then the per-shard stats are summed into the returned manifest and any shard whose success ratio is
below ``min_success_ratio`` (default 0.2) fails the stage (after ``OUT/download_stats.json`` is written); a
split where no image at all came through always fails, naming the most common failure.

Hostile URLs (``tokenization.download_hooks``, installed for each img2dataset call): only http/https is
fetched; a host that resolves to a loopback, private, link-local or metadata address is refused unless
``allow_hosts`` lists it (the stage's own ``serve_local`` server is allowed); redirects are bounded
(``max_redirects``) and rechecked; each image has a wall-clock ``deadline`` and a byte cap
(``max_image_bytes``) besides the per-read ``timeout``; an image whose header says it has more than
``max_image_pixels`` pixels is refused before it is decoded. Each refusal is a failure with its own reason,
and ``outcomes`` (manifest and ``download_stats.json``) counts every URL in exactly one of success or a
reason. A download worker that dies (the out-of-memory killer) leaves its shards without stats: they are
rerun like any other, and the stage fails naming them after ``shard_retries``.

Lineage: each split's folder records what its shards were made from (``_download_settings.txt``: the
settings that shape the shards and the url lists' size and modification time). When either changes (a
regenerated synthetic set, other filters, another image size) the old shards are deleted and the split is
downloaded again. Nothing is deleted in a folder without that record (a folder this pipeline did not make).

Notes: img2dataset's ``multiprocessing`` distributor spawns processes, so a script calling this must
guard its entry point with ``if __name__ == "__main__":``. Its ``ray`` distributor ignores ``processes``
(one Ray task of ``threads`` threads per shard) and never calls ``ray.init``: Ray is connected here
(``cluster.local_ray.ensure_ray``). Its SIGINT handler is not installed (Ctrl-C raises
``KeyboardInterrupt`` instead of deleting the tmp folder and exiting with status 0). ``restart: true``
deletes the image shards on every run while it is set (in a folder this pipeline made).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal, Optional

from cluster.shared_storage import is_local_fs, require_shared, url_to_fs
from core.files import write_json_atomic
from tokenization.heldout_rows import keep_split_rows
from tokenization.image_limits import DEFAULT_MAX_PIXELS
from tokenization.safe_fetch import FetchPolicy, parse_allow_hosts
from tokenization.source_config import ROW_KEYS, SourceConfig, check_sources

RESIZE_MODES = Literal["no", "keep_ratio", "center_crop", "border", "keep_ratio_largest"]
UNCOUNTED = "failed inside img2dataset's loop (see its log)"
SETTINGS_FILE = "_download_settings.txt"  # not *.json: img2dataset reads every *.json there as shard stats


@dataclass
class DownloadConfig:
    """Config of the ``download`` stage (experiment key ``data.download``)."""

    source: Literal["synthetic", "laion", "cc3m", "sources"] = field(
        default="synthetic", metadata={"help": "sources: every url list of data.download.sources in one run"}
    )
    sources: list[SourceConfig] = field(
        default_factory=list,
        metadata={"help": "source: sources: url lists with their own layout, columns and filters (LAION + CC3M)"},
    )
    eval_split: float = field(
        default=0.0,
        metadata={
            "min": 0.0,
            "max": 0.5,
            "help": "hold out this fraction of the url lists' rows (by a hash of the URL) as the eval split: "
            "the evaluation prompts, the FID reference; 0: none (synthetic: its own eval split)",
        },
    )
    eval_url_list: Optional[str] = field(
        default=None, metadata={"help": "laion/cc3m: a second url list for the eval split instead of eval_split"}
    )
    url_list: Optional[str] = field(
        default=None, metadata={"help": "laion: parquet file/folder; cc3m: tsv file/folder (local path or fsspec URL)"}
    )
    serve_local: Optional[bool] = field(
        default=None,
        metadata={
            "help": "serve the url list's folder on 127.0.0.1 and resolve relative URLs against it; "
            "default: true for synthetic, false otherwise"
        },
    )
    image_size: int = field(default=32, metadata={"min": 8, "help": "paper: 256"})
    resize_mode: RESIZE_MODES = "center_crop"
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int = field(default=95, metadata={"min": 0, "max": 100})
    processes: int = field(default=1, metadata={"min": 1, "help": "download processes (multiprocessing)"})
    threads: int = field(default=16, metadata={"min": 1, "help": "download threads per process / ray task"})
    distributor: Literal["auto", "multiprocessing", "ray"] = field(
        default="auto", metadata={"help": "auto: ray when cluster.address is set, multiprocessing otherwise"}
    )
    samples_per_shard: int = field(default=10000, metadata={"min": 1})
    timeout: int = field(default=10, metadata={"min": 1, "help": "seconds per socket read of an image request"})
    deadline: int = field(
        default=30,
        metadata={"min": 1, "help": "wall-clock seconds per image, all of it: connect, redirects, headers, body"},
    )
    max_image_bytes: int = field(
        default=16 * 2**20, metadata={"min": 1, "help": "largest response accepted per image (bytes)"}
    )
    max_image_pixels: int = field(
        default=DEFAULT_MAX_PIXELS,
        metadata={
            "min": 1,
            "help": "images with more pixels are refused at their header, before decoding (decompression "
            "bombs); the default is PIL's (about 9459 x 9459)",
        },
    )
    max_redirects: int = field(default=5, metadata={"min": 0, "help": "redirects followed per image"})
    allow_hosts: list[str] = field(
        default_factory=list,
        metadata={
            "help": "host names, addresses or CIDR ranges that may be fetched although they are loopback, "
            "private or link-local (refused otherwise; the pipeline's own serve_local server needs no entry)"
        },
    )
    retries: int = field(default=0, metadata={"min": 0, "help": "retries per image"})
    shard_retries: int = field(default=2, metadata={"min": 0, "help": "reruns of shards left without stats"})
    min_success_ratio: float = field(
        default=0.2,
        metadata={
            "min": 0.0,
            "max": 1.0,
            "help": "fail when a shard's success ratio is lower (LAION and CC3M keep about 50-70% of their "
            "URLs; a split with no image at all always fails, naming the most common failure)",
        },
    )
    url_col: str = "URL"
    caption_col: str = "TEXT"
    similarity_col: str = "similarity"
    width_col: str = "WIDTH"
    height_col: str = "HEIGHT"
    min_similarity: Optional[float] = field(default=None, metadata={"help": "laion: keep rows >= this"})
    min_width: Optional[int] = field(default=None, metadata={"min": 0})
    min_height: Optional[int] = field(default=None, metadata={"min": 0})
    min_image_size: int = field(default=0, metadata={"min": 0, "help": "img2dataset: smallest side"})
    max_image_area: Optional[float] = field(default=None, metadata={"min": 1.0})
    max_aspect_ratio: Optional[float] = field(default=None, metadata={"min": 1.0})
    extract_exif: bool = False
    compute_hash: Optional[str] = None
    user_agent_token: Optional[str] = None
    disallowed_header_directives: list[str] = field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"]
    )
    output_folder: Optional[str] = field(
        default=None,
        metadata={
            "help": "where shards go (fsspec URL or shared mount); default the stage folder. "
            "Must be shared storage on a multi-node Ray cluster"
        },
    )
    restart: bool = field(
        default=False,
        metadata={
            "help": "delete existing image shards first (only in a folder this pipeline made: it holds "
            f"{SETTINGS_FILE})"
        },
    )

    def __post_init__(self):
        if self.source not in ("synthetic", "sources") and not self.url_list:
            raise ValueError(f"source {self.source!r} needs url_list")
        if (self.source == "sources") != bool(self.sources):
            raise ValueError("a list of sources needs source: sources, and source: sources needs the list sources")
        check_sources(self.sources)
        if self.source == "synthetic" and (self.eval_split or self.eval_url_list):
            raise ValueError("the synthetic source has its own eval split: leave eval_split and eval_url_list unset")
        if self.eval_split and self.eval_url_list:
            raise ValueError("eval_split and eval_url_list both name an eval split: set one of them")
        if self.compute_hash not in (None, "md5", "sha256", "sha512"):
            raise ValueError(f"compute_hash must be md5, sha256, sha512 or null, got {self.compute_hash!r}")
        parse_allow_hosts(self.allow_hosts)


# ----------------------------------------------------------------------------- loopback server


class QuietHandler(SimpleHTTPRequestHandler):
    """Static files without a log line per request."""

    def log_message(self, *args):  # noqa: D102
        pass


@contextlib.contextmanager
def serve_folder(root: str | os.PathLike, handler: type = QuietHandler) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 (free port) in a thread; yields the base URL; stops at exit."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    srv.daemon_threads = True
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


def _write_parquet_atomic(table, dst: Path) -> None:
    import pyarrow.parquet as pq

    tmp = dst.with_name(dst.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, dst)


def convert_parquet(src: str, dst: Path, cfg: DownloadConfig, resolve: Callable[[str], str]) -> int:
    """LAION-style parquet -> ``url, caption`` parquet with the row filters applied; returns rows kept."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    fs, path = url_to_fs(src)
    with fs.open(path, "rb") as f:
        names = pq.read_schema(f).names
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
        f.seek(0)
        table = pq.read_table(f, columns=list(dict.fromkeys([cfg.url_col, cfg.caption_col] + [c for c, _ in cuts])))
    for col, threshold in cuts:
        table = table.filter(pc.fill_null(pc.greater_equal(table[col], threshold), False))
    table = table.filter(pc.is_valid(table[cfg.url_col]))
    urls = pc.cast(table[cfg.url_col], pa.string())
    if resolve("x") != "x":  # serving locally: relative URLs point at the server
        urls = pa.array([resolve(u) for u in urls.to_pylist()], pa.string())
    caps = pc.fill_null(pc.cast(table[cfg.caption_col], pa.string()), "")
    _write_parquet_atomic(pa.table({"url": urls, "caption": caps}), dst)
    return table.num_rows


def convert_tsv(src: str, dst: Path, resolve: Callable[[str], str]) -> tuple[int, int]:
    """CC3M ``caption<TAB>url`` lines (no header, no quoting) -> ``url, caption`` parquet.
    Returns (rows, malformed lines skipped)."""
    import fsspec
    import pyarrow as pa

    urls, caps, bad = [], [], 0
    with fsspec.open(src, "rt", encoding="utf-8", errors="replace", compression="infer", newline="\n") as f:
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
    _write_parquet_atomic(pa.table({"url": pa.array(urls, pa.string()), "caption": pa.array(caps, pa.string())}), dst)
    return len(urls), bad


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


def prepare_inputs(
    cfg: DownloadConfig,
    files: list[str],
    dst_dir: Path,
    base: Optional[str],
    serve_root: Optional[Path],
    split: str = "train",
) -> dict:
    """Rewrite ``files`` to ``dst_dir/part-NNNNN.parquet`` (with ``eval_split``: only the rows of ``split``);
    returns {"rows": [...], "malformed": n}. Skipped when ``dst_dir/_done.json`` records the same sources,
    settings and server base."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    stamp = {
        "files": [(f, _fingerprint(f)) for f in files],
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
    result = {"rows": rows, "malformed": malformed}
    tmp = done.with_name(done.name + ".tmp")
    tmp.write_text(json.dumps({"stamp": stamp, "result": result}))
    os.replace(tmp, done)
    return result


def _fingerprint(url: str) -> list:
    fs, path = url_to_fs(url)
    info = fs.info(path)
    return [info.get("size"), str(info.get("mtime") or info.get("LastModified") or info.get("ETag") or "")]


# ----------------------------------------------------------------------------- running img2dataset


def expected_shards(rows: list[int], per_shard: int, oom: int) -> list[str]:
    """Shard names img2dataset gives ``rows`` (one count per input file, numbering continues)."""
    n = sum(math.ceil(r / per_shard) for r in rows)
    return [f"{i:0{oom}d}" for i in range(n)]


def _img2dataset_kwargs(cfg: DownloadConfig, inputs: Path, out: str, distributor: str, oom: int) -> dict:
    return dict(
        url_list=str(inputs),
        input_format="parquet",
        url_col="url",
        caption_col="caption",
        output_folder=out,
        output_format="webdataset",
        image_size=cfg.image_size,
        resize_mode=cfg.resize_mode,
        encode_format=cfg.encode_format,
        encode_quality=cfg.encode_quality,
        processes_count=cfg.processes,
        thread_count=cfg.threads,
        number_sample_per_shard=cfg.samples_per_shard,
        timeout=cfg.timeout,
        retries=cfg.retries,
        distributor=distributor,
        incremental_mode="incremental",
        max_shard_retry=1,
        oom_shard_count=oom,
        compute_hash=cfg.compute_hash,
        extract_exif=cfg.extract_exif,
        min_image_size=cfg.min_image_size,
        max_image_area=float("inf") if cfg.max_image_area is None else cfg.max_image_area,
        max_aspect_ratio=float("inf") if cfg.max_aspect_ratio is None else cfg.max_aspect_ratio,
        user_agent_token=cfg.user_agent_token,
        disallowed_header_directives=list(cfg.disallowed_header_directives),
        enable_wandb=False,
    )


@dataclass(frozen=True)
class Guard:
    """The limits one img2dataset call runs under (pickled into its workers)."""

    policy: FetchPolicy
    max_pixels: int


def fetch_guard(cfg: DownloadConfig, own_server: Optional[str] = None) -> Guard:
    """The limits img2dataset runs under: ``cfg``'s, with the pipeline's own loopback server (``base``
    URL of ``serve_folder``) allowed."""
    own = (own_server.split("://", 1)[-1].rstrip("/"),) if own_server else ()
    policy = FetchPolicy(
        timeout=cfg.timeout,
        deadline=cfg.deadline,
        max_bytes=cfg.max_image_bytes,
        max_redirects=cfg.max_redirects,
        allow_hosts=tuple(cfg.allow_hosts),
        own_servers=own,
    )
    return Guard(policy, cfg.max_image_pixels)


def call_img2dataset(guard: Guard, **kwargs) -> list:
    """``img2dataset.download(**kwargs)`` under ``guard`` (``tokenization.download_hooks``: safe fetches, the
    pixel limit, distributors that survive a dead worker) and without its SIGINT handler (it would delete
    its tmp folder and exit with status 0 on Ctrl-C; it also cannot be installed outside the main thread).
    Returns the shards whose worker died (left without stats)."""
    from cluster.local_ray import apply_quiet_env

    apply_quiet_env()  # before the import: albumentations checks for updates on import otherwise
    import sys

    import img2dataset  # noqa: F401  (the package exports a function named ``main``)

    from tokenization.download_hooks import installed

    i2d = sys.modules["img2dataset.main"]

    real = i2d.signal
    i2d.signal = types.SimpleNamespace(signal=lambda *a, **k: None, SIGINT=real.SIGINT)
    try:
        with installed(i2d, guard) as lost:
            i2d.download(**kwargs)
        return lost
    finally:
        i2d.signal = real


def missing_shards(out: str, names: list[str]) -> list[str]:
    fs, path = url_to_fs(out)
    have = {p.rsplit("/", 1)[-1][: -len("_stats.json")] for p in fs.glob(path.rstrip("/") + "/*_stats.json")}
    return [n for n in names if n not in have]


def summarize(out: str, names: list[str]) -> dict:
    """Per-shard stats (from ``NNNNN_stats.json``), their totals, and ``outcomes``: how many URLs ended in
    success and in each failure reason (they add up to ``count``: a URL img2dataset counted in no reason, an
    error inside its loop, is counted under ``UNCOUNTED``)."""
    fs, path = url_to_fs(out)
    shards, totals, errors = [], {"count": 0, "success": 0, "failed_to_download": 0, "failed_to_resize": 0}, {}
    for name in names:
        with fs.open(f"{path.rstrip('/')}/{name}_stats.json", "r") as f:
            s = json.load(f)
        errs = {k: v for k, v in s.get("status_dict", {}).items() if k != "success"}
        uncounted = s["count"] - s["successes"] - sum(errs.values())
        if uncounted:
            errs[UNCOUNTED] = uncounted
        row = {
            "name": f"{name}.tar",
            "count": s["count"],
            "success": s["successes"],
            "failed_to_download": s["failed_to_download"],
            "failed_to_resize": s["failed_to_resize"],
            "errors": errs,
        }
        shards.append(row)
        for k in totals:
            totals[k] += row[k]
        for k, v in errs.items():
            errors[k] = errors.get(k, 0) + v
    return {"shards": shards, "totals": totals, "errors": errors, "outcomes": {"success": totals["success"], **errors}}


def check_reachable_server(serving: bool, machines: int) -> None:
    """The url server ``serve_local`` starts listens on 127.0.0.1: other machines cannot download from it."""
    if serving and machines > 1:
        raise ValueError(
            f"serve_local serves on 127.0.0.1, unreachable from the other {machines - 1} machines of "
            "the Ray cluster; set data.download.serve_local: false and use reachable URLs"
        )


def _settings(cfg: DownloadConfig) -> dict:
    keep = (
        "source",
        "url_list",
        "image_size",
        "resize_mode",
        "encode_format",
        "encode_quality",
        "samples_per_shard",
        "min_similarity",
        "min_width",
        "min_height",
        "min_image_size",
        "max_image_area",
        "max_aspect_ratio",
    )
    return {k: getattr(cfg, k) for k in keep} | ({"eval_split": cfg.eval_split} if cfg.eval_split else {})


def shard_lineage(cfg: DownloadConfig, files: list[str]) -> dict:
    """What a split's image shards are made from: the settings that shape them and the url lists' identities
    (size and modification time, so a regenerated list is another one)."""
    return json.loads(json.dumps({"settings": _settings(cfg), "url_lists": [[f, _fingerprint(f)] for f in files]}))


def _changes(old: dict, new: dict) -> str:
    if old.get("settings") != new["settings"]:
        s_old, s_new = old.get("settings") or {}, new["settings"]
        return "settings " + ", ".join(
            f"{k}: {s_old.get(k)!r} -> {s_new[k]!r}" for k in s_new if s_old.get(k) != s_new[k]
        )
    return "the url lists changed" if old.get("url_lists") != new["url_lists"] else ""


def prepare_output(out: str, lineage: dict, restart: bool, log: Callable[[str], None]) -> None:
    """Make ``out`` hold only shards of ``lineage``: shards made from other settings or url lists are deleted
    (so are all with ``restart``), then the lineage is recorded. Deleting needs the record this function
    writes: a folder that has files but no record was not made by this pipeline and is refused."""
    fs, path = url_to_fs(out)
    record = f"{path.rstrip('/')}/{SETTINGS_FILE}"
    if fs.exists(record):
        with fs.open(record, "r") as fh:
            try:
                old = json.load(fh)
            except ValueError:
                old = {}
        why = "data.download.restart" if restart else _changes(old, lineage)
        if not why:
            return
        log(f"[download] {out}: the shards there were made from something else ({why}); deleting them")
        fs.rm(path, recursive=True)
    elif fs.exists(path) and fs.ls(path):
        raise ValueError(
            f"{out} is not empty and was not made by this pipeline (no {SETTINGS_FILE} in it): refusing to write "
            f"image shards into it or delete anything there; set data.download.output_folder to an empty or new folder"
        )
    fs.makedirs(path, exist_ok=True)
    with fs.open(record, "w") as fh:
        json.dump(lineage, fh)


def run_download(
    cfg: DownloadConfig,
    out_dir: str | os.PathLike,
    synthetic_dir: Optional[Path] = None,
    ray_address: Optional[str] = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Download every split; returns the manifest part (``counts``, ``errors``, ``splits``, ``metrics``).

    Raises ``RuntimeError`` when shards are still missing after ``shard_retries`` reruns or when a shard's
    success ratio is below ``cfg.min_success_ratio``.
    """
    from cluster.local_ray import alive_hosts, ensure_ray

    out_dir = Path(out_dir)
    splits = url_lists(cfg, synthetic_dir)
    distributor = cfg.distributor if cfg.distributor != "auto" else ("ray" if ray_address else "multiprocessing")
    serve = cfg.serve_local if cfg.serve_local is not None else cfg.source == "synthetic"
    serve_root = None
    if serve and cfg.source == "synthetic":
        serve_root = Path(synthetic_dir)
    elif serve and "://" not in cfg.url_list:
        serve_root = Path(cfg.url_list) if Path(cfg.url_list).is_dir() else Path(cfg.url_list).parent
    ray_ctx = ensure_ray(ray_address) if distributor == "ray" else contextlib.nullcontext()
    server = serve_folder(serve_root) if serve_root is not None else contextlib.nullcontext(None)
    report: dict = {"splits": {}, "counts": {}, "errors": {}, "outcomes": {}, "metrics": {}}
    seconds, new_images = 0.0, 0
    with ray_ctx, server as base:
        nodes = alive_hosts() if distributor == "ray" else 1
        guard = fetch_guard(cfg, base)
        for split, files in splits.items():
            out = f"{cfg.output_folder.rstrip('/')}/{split}" if cfg.output_folder else str((out_dir / split).resolve())
            check_reachable_server(base is not None, nodes)
            require_shared(out, nodes, "data.download.output_folder")
            prepare_output(out, shard_lineage(cfg, files), cfg.restart, log)
            inputs = out_dir / "_inputs" / split
            prep = prepare_inputs(cfg, files, inputs, base, serve_root, split)
            names = expected_shards(prep["rows"], cfg.samples_per_shard, 5)
            todo, died = missing_shards(out, names), 0
            for attempt in range(cfg.shard_retries + 1):
                if not todo:
                    break
                log(f"[download] {split}: {len(todo)}/{len(names)} shards to do (attempt {attempt + 1})")
                t0 = time.time()
                lost = call_img2dataset(guard=guard, **_img2dataset_kwargs(cfg, inputs, out, distributor, 5)) or []
                seconds += time.time() - t0
                if lost:
                    died += 1
                    log(f"[download] {split}: a download worker died (shards {sorted(lost)} lost); rerunning them")
                left = missing_shards(out, todo)
                new_images += summarize(out, [n for n in todo if n not in left])["totals"]["count"]
                todo = left
            if todo:
                why = (
                    f"; a download worker died in {died} of them (killed, e.g. by the out-of-memory killer: lower "
                    f"data.download.processes, threads or max_image_pixels)"
                    if died
                    else ""
                )
                raise RuntimeError(
                    f"download {split}: shards {todo} have no _stats.json after "
                    f"{cfg.shard_retries + 1} attempts{why}; rerun the stage to resume them"
                )
            summary = summarize(out, names)
            summary.update(folder=out, rows=sum(prep["rows"]), malformed_rows=prep["malformed"])
            report["splits"][split] = summary
            for k, v in summary["totals"].items():
                report["counts"][k] = report["counts"].get(k, 0) + v
            for part in ("errors", "outcomes"):
                for k, v in summary[part].items():
                    report[part][k] = report[part].get(k, 0) + v
    report["counts"]["shards"] = sum(len(s["shards"]) for s in report["splits"].values())
    report["metrics"] = {
        "seconds_downloading": round(seconds, 3),
        "new_images": new_images,
        "images_per_s": round(new_images / seconds, 2) if seconds else None,
    }
    write_json_atomic(out_dir / "download_stats.json", report, indent=1)
    for split, sp in report["splits"].items():
        if sp["totals"]["count"] and not sp["totals"]["success"]:
            common = max(sp["errors"].items(), key=lambda kv: kv[1]) if sp["errors"] else ("unknown", 0)
            raise RuntimeError(
                f"download {split}: none of its {sp['totals']['count']} images could be downloaded; the most "
                f"common failure ({common[1]} times): {common[0]}; details in {out_dir / 'download_stats.json'}"
            )
    low = [
        (split, s["name"], round(s["success"] / s["count"], 4))
        for split, sp in report["splits"].items()
        for s in sp["shards"]
        if s["count"] and s["success"] / s["count"] < cfg.min_success_ratio
    ]
    if low:
        raise RuntimeError(
            f"download: {len(low)} shard(s) below min_success_ratio {cfg.min_success_ratio}: "
            f"{low[:20]}; details in {out_dir / 'download_stats.json'}"
        )
    return report
