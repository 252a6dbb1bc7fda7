"""Config of the ``download`` stage (experiment key ``data.download``); what each setting does:
``tokenization.download``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from tokenization.image_limits import DEFAULT_MAX_PIXELS
from tokenization.safe_fetch import parse_allow_hosts
from tokenization.source_config import SourceConfig, check_sources

RESIZE_MODES = Literal["no", "keep_ratio", "center_crop", "border", "keep_ratio_largest"]
PNG_MAX_COMPRESSION = 9  # cv2.IMWRITE_PNG_COMPRESSION: encode_quality means this for png (img2dataset.resizer)
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
        default=None,
        metadata={"path": True, "help": "laion/cc3m: a second url list for the eval split instead of eval_split"},
    )
    url_list: Optional[str] = field(
        default=None,
        metadata={"path": True, "help": "laion: parquet file/folder; cc3m: tsv file/folder (local path or fsspec URL)"},
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
            "path": "output",
            "help": "where shards go (fsspec URL or shared mount); default the stage folder. "
            "Must be shared storage on a multi-node Ray cluster",
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
        if self.encode_format == "png" and self.encode_quality > PNG_MAX_COMPRESSION:
            raise ValueError(  # img2dataset's Resizer refuses it when the download stage starts
                f"encode_quality must be in [0, {PNG_MAX_COMPRESSION}] with encode_format: png (its compression "
                f"level; the default 95 is a jpg or webp quality), got {self.encode_quality}"
            )
        parse_allow_hosts(self.allow_hosts)
