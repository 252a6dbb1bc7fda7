"""The held-out (eval) rows of a url list: ``data.download.eval_split`` of them, chosen by a hash of the URL.

A row is held out when ``sha1(url)`` read as a number in [0, 1) is below the fraction, so the choice does
not depend on the row order, on the other rows or on the port of the loopback server (relative URLs are
hashed as written in the url list); the train split keeps exactly the other rows.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

from core.files import atomic_path


def is_held_out(url: str, fraction: float) -> bool:
    """Whether ``url`` (as written in its url list) belongs to the eval split of ``fraction``."""
    return int.from_bytes(hashlib.sha1(url.encode()).digest()[:8], "big") / 2**64 < fraction


def keep_split_rows(part: Path, want_eval: bool, fraction: float, base: Optional[str]) -> int:
    """Rewrite the ``url, caption`` parquet ``part`` keeping the rows of one split; returns the rows kept.
    ``base``: the loopback server's URL that relative URLs were resolved against (stripped before hashing)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(part)
    prefix = f"{base}/" if base else None
    urls = table.column("url").to_pylist()
    mask = [is_held_out(u[len(prefix) :] if prefix and u.startswith(prefix) else u, fraction) for u in urls]
    if not want_eval:
        mask = [not m for m in mask]
    kept = table.filter(pa.array(mask, pa.bool_()))
    with atomic_path(part) as tmp:
        pq.write_table(kept, tmp)
    return kept.num_rows
