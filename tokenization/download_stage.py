"""The ``download`` stage: url lists (or the synthetic set, served on 127.0.0.1) -> webdataset image shards
with img2dataset (``tokenization.download``)."""

from __future__ import annotations

from core.stage import StageContext, stage
from tokenization.download import run_download
from tokenization.download_config import DownloadConfig
from tokenization.download_reasons import manifest_part
from tokenization.download_sources import run_sources


def _uses_ray(cfg) -> bool:
    d = cfg.data.download
    return d.distributor == "ray" or (d.distributor == "auto" and bool(getattr(cfg.cluster, "address", None)))


def _needs(cfg) -> tuple[str, ...]:
    return ("synthetic",) if cfg.data.download.source == "synthetic" else ()


@stage("download", inputs=("synthetic",), sections=("data.download",), uses_ray=_uses_ray, needs=_needs)
def download_stage(ctx: StageContext) -> dict:
    """Download url lists into webdataset image shards with img2dataset."""
    cfg: DownloadConfig = ctx.config.data.download
    cluster = getattr(ctx.config, "cluster", None)
    if cfg.source == "sources":
        report = run_sources(cfg, ctx.out_dir, getattr(cluster, "address", None), ctx.log)
    else:
        synthetic = ctx.input_dir("synthetic") if cfg.source == "synthetic" else None
        report = run_download(cfg, ctx.out_dir, synthetic, getattr(cluster, "address", None), ctx.log)
    return manifest_part(report)  # download_stats.json keeps the whole report
