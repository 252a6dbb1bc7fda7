"""Mixing the sources of a multi-source run in training (``data.mixing``), by choosing the token shard list.

The tokenize stage writes one folder per source (``tokenize/train/<source>/``). ``proportional`` trains on
every shard once per epoch, so each source contributes in proportion to its images. ``weighted`` gives
source s the share w_s / sum(w) of the training samples by repeating its shards: source s's shards appear
r_s times in the list, r_s proportional to (w_s / sum w) / (n_s / sum n) for n_s images, scaled so that the
least repeated source appears once and rounded to whole repeats (the report gives the shares reached).
A weight of 0 leaves a source out. The loader (``training.data``) shuffles and splits the list as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tokenization.shard_encoder import token_shard_samples
from tokenization.source_config import MixingConfig


def source_of(shard: str, root: str | Path) -> str:
    """The source folder of a token shard under the split folder ``root`` ("" for a one-source run)."""
    try:
        rel = Path(shard).relative_to(root)
    except ValueError:  # another split's shard
        return Path(shard).parent.name
    return rel.parts[0] if len(rel.parts) > 1 else ""


def mix_shards(
    shards: list[str], root: str | Path, cfg: MixingConfig, log: Callable[[str], None] = print
) -> tuple[list[str], dict]:
    """(the shard list to train on, per source: images, shards, repeats and share of the samples)."""
    groups: dict[str, list[str]] = {}
    for s in shards:
        groups.setdefault(source_of(s, root), []).append(s)
    images = {src: sum(token_shard_samples(s) for s in group) for src, group in groups.items()}
    repeats = {src: 1 for src in groups}
    if cfg.rule == "weighted":
        unknown = sorted(set(cfg.weights) - set(groups))
        if unknown:
            raise ValueError(f"data.mixing.weights names {unknown}, which are not sources of this run {sorted(groups)}")
        weight = {src: cfg.weights.get(src, 1.0) for src in groups}
        ratio = {src: weight[src] / max(images[src], 1) for src in groups if weight[src] > 0}
        if not ratio:
            raise ValueError("data.mixing.weights leave out every source; give at least one a weight > 0")
        least = min(ratio.values())
        repeats = {src: max(1, round(ratio[src] / least)) if src in ratio else 0 for src in groups}
    total = sum(repeats[src] * images[src] for src in groups) or 1
    report = {
        src or "all": {
            "images": images[src],
            "shards": len(groups[src]),
            "repeats": repeats[src],
            "share": round(repeats[src] * images[src] / total, 4),
        }
        for src in sorted(groups)
    }
    if len(groups) > 1:
        log(
            f"[train] mixing ({cfg.rule}): "
            + ", ".join(f"{src} {r['share']:.0%} of the samples (x{r['repeats']})" for src, r in report.items())
        )
    return [s for src in sorted(groups) for s in groups[src] * repeats[src]], report
