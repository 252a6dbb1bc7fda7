"""Several url-list sources in one download (``data.download.source: sources``), e.g. LAION parquet and CC3M
tsv as the paper trains on both.

Each source is downloaded by ``run_download`` with its own columns, filters and server into
``OUT/sources/<name>/`` (``output_folder/<name>`` when set); the returned manifest lists its splits as
``train/<name>`` and ``eval/<name>`` (so the tokenize stage writes ``tokenize/train/<name>/``, and the
train stage can mix the sources, ``training.mixing``) and its counts under ``sources``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Optional

from core.files import write_json_atomic
from tokenization.download import run_download
from tokenization.download_config import DownloadConfig
from tokenization.source_config import SOURCE_KEYS, SourceConfig


def source_config(cfg: DownloadConfig, src: SourceConfig) -> DownloadConfig:
    """The single-source ``data.download`` of one source: its own keys over ``cfg``'s."""
    own = {k: getattr(src, k) for k in SOURCE_KEYS if getattr(src, k) is not None}
    folder = f"{cfg.output_folder.rstrip('/')}/{src.name}" if cfg.output_folder else None
    return replace(
        cfg,
        source=src.kind,
        sources=[],
        url_list=src.url_list,
        eval_url_list=src.eval_url_list,
        eval_split=0.0 if src.eval_url_list else cfg.eval_split,
        output_folder=folder,
        **own,
    )


def has_eval_split(cfg: DownloadConfig) -> bool:
    """Whether the download makes an eval split of its url lists (every source but the synthetic one)."""
    if cfg.source == "synthetic":
        return False
    if cfg.source == "sources":
        return bool(cfg.eval_split) or any(s.eval_url_list for s in cfg.sources)
    return bool(cfg.eval_split or cfg.eval_url_list)


def _add(into: dict, counts: dict) -> None:
    for k, v in counts.items():
        into[k] = into.get(k, 0) + v


def run_sources(
    cfg: DownloadConfig, out_dir: str | Path, ray_address: Optional[str] = None, log: Callable[[str], None] = print
) -> dict:
    """Download every source of ``cfg.sources``; returns the manifest part (``splits`` named ``SPLIT/SOURCE``,
    summed ``counts``/``errors``, per-source ``sources``, ``metrics``)."""
    out_dir = Path(out_dir)
    report: dict = {"splits": {}, "counts": {}, "errors": {}, "sources": {}, "metrics": {}}
    seconds = new = 0.0
    for src in cfg.sources:
        log(f"[download] source {src.name} ({src.kind}): {src.url_list}")
        one = run_download(source_config(cfg, src), out_dir / "sources" / src.name, None, ray_address, log)
        for split, info in one["splits"].items():
            report["splits"][f"{split}/{src.name}"] = info
        for part in ("counts", "errors", "outcomes"):  # outcomes: when run_download reports them
            _add(report.setdefault(part, {}), one.get(part, {}))
        report["sources"][src.name] = {
            "kind": src.kind,
            "url_list": src.url_list,
            "counts": one["counts"],
            "splits": {s: info["totals"]["success"] for s, info in one["splits"].items()},
        }
        seconds += one["metrics"]["seconds_downloading"]
        new += one["metrics"]["new_images"]
    report["metrics"] = {
        "seconds_downloading": round(seconds, 3),
        "new_images": int(new),
        "images_per_s": round(new / seconds, 2) if seconds else None,
    }
    write_json_atomic(out_dir / "download_stats.json", report, indent=1)
    return report
