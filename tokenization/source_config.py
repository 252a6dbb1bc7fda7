"""One url-list source of a multi-source download (``data.download.sources``), e.g. LAION and CC3M in one run
as the paper trains on both. A key left unset takes ``data.download``'s value."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Optional

# the keys of ``data.download`` that pick a url list's rows and columns
ROW_KEYS = (
    "url_col",
    "caption_col",
    "similarity_col",
    "width_col",
    "height_col",
    "min_similarity",
    "min_width",
    "min_height",
)
SOURCE_KEYS = ROW_KEYS + ("serve_local",)  # those a source may set for itself (None: data.download's value)


@dataclass
class SourceConfig:
    """A url list with its own layout, columns and filters."""

    name: str = field(default="", metadata={"help": "folder name of its shards (letters, digits, - and _)"})
    kind: Literal["laion", "cc3m"] = field(
        default="laion", metadata={"help": "laion: parquet with URL/TEXT columns; cc3m: caption<TAB>url tsv"}
    )
    url_list: str = field(
        default="", metadata={"path": True, "help": "a file or a folder of them (local path or fsspec URL)"}
    )
    eval_url_list: Optional[str] = field(
        default=None,
        metadata={"path": True, "help": "its own held-out url list (else data.download.eval_split of its rows)"},
    )
    url_col: Optional[str] = None
    caption_col: Optional[str] = None
    similarity_col: Optional[str] = None
    width_col: Optional[str] = None
    height_col: Optional[str] = None
    min_similarity: Optional[float] = None
    min_width: Optional[int] = field(default=None, metadata={"min": 0})
    min_height: Optional[int] = field(default=None, metadata={"min": 0})
    serve_local: Optional[bool] = field(
        default=None, metadata={"help": "serve its url list's folder on 127.0.0.1 (relative URLs)"}
    )

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.name):
            raise ValueError(f"name must be letters, digits, '-' or '_' (a folder name), got {self.name!r}")
        if not self.url_list:
            raise ValueError(f"source {self.name!r} needs url_list")


def check_sources(sources: list[SourceConfig]) -> None:
    """Names are unique (each is a folder)."""
    names = [s.name for s in sources]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"sources: the names {twice} are used twice; every source needs its own name")


@dataclass
class MixingConfig:
    """How the train stage mixes the sources (``data.mixing``; ``training.mixing``)."""

    rule: Literal["proportional", "weighted"] = field(
        default="proportional",
        metadata={"help": "proportional: every image once per epoch; weighted: each source's share of the batches"},
    )
    weights: dict[str, float] = field(
        default_factory=dict,
        metadata={"help": "weighted: source name -> weight (unnamed sources 1); 0 leaves a source out"},
    )

    def __post_init__(self):
        bad = {k: v for k, v in self.weights.items() if v < 0}
        if bad:
            raise ValueError(f"weights must be >= 0, got {bad}")
        if self.weights and self.rule != "weighted":
            raise ValueError("weights apply to rule: weighted; set rule: weighted or remove them")
