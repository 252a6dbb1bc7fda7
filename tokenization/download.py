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

The settings: ``tokenization.download_config``. Every url list is first rewritten
(``tokenization.url_lists``) to ``OUT/_inputs/SPLIT/part-NNNNN.parquet`` (columns ``url``, ``caption``).
With ``serve_local`` the folder holding the url list is served by a loopback ``http.server`` for the
duration and relative URLs point at it.

img2dataset runs in ``incremental`` mode (a shard with a ``NNNNN_stats.json`` is done), writing
webdataset shards to ``OUT/SPLIT/`` (or ``output_folder/SPLIT`` for shared storage on a cluster). Afterwards
shards still without stats are rerun up to ``shard_retries`` times (its ray distributor never retries),
then the per-shard stats are summed into the returned manifest and any shard whose success ratio is
below ``min_success_ratio`` (default 0.2) fails the stage (after ``OUT/download_stats.json`` is written); a
split where no image at all came through always fails, naming the most common failure. A rerun downloads the
shards below ``min_success_ratio`` again (the failure may have been an outage) and reuses the others.

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
import json
import math
import os
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cluster.shared_storage import require_shared, url_to_fs
from core.files import write_json_atomic
from tokenization.download_config import SETTINGS_FILE, DownloadConfig
from tokenization.download_reasons import reason_kind
from tokenization.safe_fetch import FetchPolicy
from tokenization.url_lists import no_rows_message, prepare_inputs, serve_folder, url_list_identity, url_lists

UNCOUNTED = "failed inside img2dataset's loop (see its log)"


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


def low_shards(out: str, names: list[str], ratio: float) -> dict[str, float]:
    """Shards of ``names`` with stats whose success ratio is below ``ratio`` (name -> ratio)."""
    missing = set(missing_shards(out, names))  # one listing of the folder, not one per shard
    done = [n for n in names if n not in missing]
    return {r["name"][: -len(".tar")]: v for r, v in below_ratio(summarize(out, done)["shards"], ratio)}


def below_ratio(rows: list[dict], ratio: float) -> list[tuple[dict, float]]:
    """The shard rows (``summarize``'s) whose success ratio is below ``ratio``, with that ratio (4 decimals)."""
    return [(r, round(r["success"] / r["count"], 4)) for r in rows if r["count"] and r["success"] / r["count"] < ratio]


def forget_shards(out: str, names: list[str]) -> None:
    """Delete the files of shards ``names`` (``NAME_stats.json`` and ``NAME.*``), every stats file first: a shard
    without stats is redone. The folder is listed once, not once per shard."""
    fs, path = url_to_fs(out)
    forget = set(names)
    stats, others = [], []
    for p in fs.ls(path, detail=False):
        base = p.rstrip("/").rsplit("/", 1)[-1]
        if base.endswith("_stats.json") and base[: -len("_stats.json")] in forget:
            stats.append(p)
        elif base.partition(".")[0] in forget:
            others.append(p)
    for group in (stats, others):
        if group:
            fs.rm(sorted(group))


def summarize(out: str, names: list[str]) -> dict:
    """Per-shard stats (from ``NNNNN_stats.json``), their totals, and ``outcomes``: how many URLs ended in
    success and in each failure reason (``download_reasons.reason_kind`` of img2dataset's message; they add up to
    ``count``: a URL img2dataset counted in no reason, an error inside its loop, is counted under ``UNCOUNTED``)."""
    fs, path = url_to_fs(out)
    shards, totals, errors = [], {"count": 0, "success": 0, "failed_to_download": 0, "failed_to_resize": 0}, {}
    for name in names:
        with fs.open(f"{path.rstrip('/')}/{name}_stats.json", "r") as f:
            s = json.load(f)
        errs: dict[str, int] = {}
        for k, v in s.get("status_dict", {}).items():
            if k != "success":
                kind = reason_kind(k)
                errs[kind] = errs.get(kind, 0) + v
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


# the url list's columns, recorded since 2026-12: a record without them was made with the defaults
COLUMN_KEYS = ("url_col", "caption_col", "similarity_col", "width_col", "height_col")


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
        *COLUMN_KEYS,
    )
    return {k: getattr(cfg, k) for k in keep} | ({"eval_split": cfg.eval_split} if cfg.eval_split else {})


def shard_lineage(cfg: DownloadConfig, files: list[str]) -> dict:
    """What a split's image shards are made from: the settings that shape them and the url lists' identities
    (size and modification time, so a regenerated list is another one)."""
    return json.loads(json.dumps({"settings": _settings(cfg), "url_lists": [[f, url_list_identity(f)] for f in files]}))


def _changes(old: dict, new: dict) -> str:
    defaults = DownloadConfig()
    s_old = {**{k: getattr(defaults, k) for k in COLUMN_KEYS}, **(old.get("settings") or {})}
    if s_old != new["settings"]:
        s_new = new["settings"]
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
            prep = prepare_inputs(cfg, files, inputs, base, serve_root, split, log)
            if split == "train" and not sum(prep["rows"]):
                raise RuntimeError(no_rows_message(cfg, files, prep["malformed"]))
            names = expected_shards(prep["rows"], cfg.samples_per_shard, 5)
            low = low_shards(out, names, cfg.min_success_ratio)
            if low:  # failed a run before (an outage, the run killed while its server was gone): tried again
                log(
                    f"[download] {split}: {len(low)} shard(s) below min_success_ratio {cfg.min_success_ratio} "
                    f"before ({', '.join(f'{k}: {v:g}' for k, v in list(low.items())[:10])}); downloading them again"
                )
                forget_shards(out, list(low))
            todo, died = missing_shards(out, names), 0
            if not todo:
                log(f"[download] {split}: all {len(names)} shards already downloaded; reused")
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
                still = set(left)
                new_images += summarize(out, [n for n in todo if n not in still])["totals"]["count"]
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
        (split, r["name"], v)
        for split, sp in report["splits"].items()
        for r, v in below_ratio(sp["shards"], cfg.min_success_ratio)
    ]
    if low:
        raise RuntimeError(
            f"download: {len(low)} shard(s) below min_success_ratio {cfg.min_success_ratio}: "
            f"{low[:20]}; details in {out_dir / 'download_stats.json'}; a rerun downloads them again (after an "
            f"outage), or lower data.download.min_success_ratio"
        )
    return report
