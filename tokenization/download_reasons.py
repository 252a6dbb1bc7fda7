"""The download's failure reasons as its manifest keeps them: by kind, not by message, and only the commonest.

img2dataset counts each failed URL under its error message, and many messages name what failed: an object's
address (``cannot identify image file <_io.BytesIO object at 0x7f...>``), a host, a URL. At LAION's size that
is hundreds of thousands of distinct "reasons", and the manifest, read by every later stage and every
``pt2i status``, would hold each of them once per shard. So a reason is its message with those parts replaced
(:func:`reason_kind`), and the manifest (:func:`manifest_part`) keeps per split and in all the ``MAX_REASONS``
commonest, the rest summed under one "other reasons" entry (the counts still add up to the URLs tried), and
no per-shard reasons: ``download_stats.json`` beside it keeps those, and each shard's ``NNNNN_stats.json``
img2dataset's own messages.
"""

from __future__ import annotations

import copy
import re

MAX_REASONS = 50
_VARIABLE = (
    (re.compile(r" at 0x[0-9a-fA-F]+"), " at 0x..."),  # an object's address
    (re.compile(r"\b(?:https?|ftp)://[^\s'\">)]+"), "<url>"),
    (re.compile(r"host='[^']*'"), "host='...'"),
    (re.compile(r"port=\d+"), "port=..."),
)


def reason_kind(message: str) -> str:
    """``message`` with the parts that name one object, URL or host replaced."""
    for pattern, repl in _VARIABLE:
        message = pattern.sub(repl, message)
    return message


def top_reasons(counts: dict[str, int], keep: int = MAX_REASONS) -> dict[str, int]:
    """The ``keep`` commonest reasons, the others summed under one entry that says how many they are."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    out = dict(ranked[:keep])
    rest = ranked[keep:]
    if rest:
        out[f"other reasons ({len(rest)} kinds; download_stats.json lists them)"] = sum(v for _, v in rest)
    return out


def manifest_part(report: dict, keep: int = MAX_REASONS) -> dict:
    """The download report as the stage's manifest holds it: the commonest reasons, no per-shard reasons."""
    out = copy.copy(report)
    for part in ("errors", "outcomes"):
        if part in report:
            out[part] = _top_outcomes(report[part], keep)
    out["splits"] = {}
    for name, split in report.get("splits", {}).items():
        split = dict(split)
        for part in ("errors", "outcomes"):
            if part in split:
                split[part] = _top_outcomes(split[part], keep)
        split["shards"] = [{k: v for k, v in row.items() if k != "errors"} for row in split.get("shards", [])]
        out["splits"][name] = split
    return out


def _top_outcomes(counts: dict[str, int], keep: int) -> dict[str, int]:
    """``top_reasons`` of the failures; "success" (in outcomes) always kept, first."""
    ok = {"success": counts["success"]} if "success" in counts else {}
    return {**ok, **top_reasons({k: v for k, v in counts.items() if k != "success"}, keep)}
