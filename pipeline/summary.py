"""The table ``pt2i run`` prints at its end: each stage, its status (ran, reused, failed, not run), its time
and its headline figure (from its manifest).

    stage      status   time     headline
    synthetic  reused     9.1s   3000 train / 64 eval images
    tokenizer  ran      181.0s   held-out MAE 0.0061, codebook usage 1.00
    evaluate   ran       21.4s   attribute match 0.953, FID 9.87
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StageRow:
    stage: str
    status: str  # ran | reused | failed | not run
    seconds: float = 0.0
    headline: str = ""


def _num(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _pairs(d: dict, keys: tuple[str, ...], names: dict | None = None) -> str:
    names = names or {}
    return ", ".join(f"{names.get(k, k)} {_num(d[k])}" for k in keys if d.get(k) is not None)


def headline(stage: str, m: dict) -> str:
    """The figure that says how a stage went, from its manifest."""
    c, x = m.get("counts") or {}, m.get("metrics") or {}
    if stage == "synthetic":
        return f"{c.get('train', 0)} train / {c.get('eval', 0)} eval images"
    if stage == "download":
        per = ", ".join(f"{n} {s['counts'].get('success', 0)}" for n, s in (m.get("sources") or {}).items())
        return f"{c.get('success', 0)}/{c.get('count', 0)} images in {c.get('shards', 0)} shards" + (
            f" ({per})" if per else ""
        )
    if stage == "text":
        if x.get("built_tiny"):
            return f"tiny T5 built, vocabulary {c.get('vocab_size')}" + (
                f", pretrain loss {_num(x['pretrain_loss'])}" if "pretrain_loss" in x else ""
            )
        return f"text encoder {m.get('outputs', {}).get('encoder', '')}"
    if stage == "tokenizer":
        if m.get("pretrained"):
            return f"imported {m['pretrained']}"
        return _pairs(x, ("mae", "codebook_usage"), {"mae": "held-out MAE", "codebook_usage": "codebook usage"})
    if stage == "tokenize":
        return f"{c.get('samples', 0)} samples in {c.get('shards', 0)} token shards"
    if stage == "train":
        return f"step {c.get('steps')}: " + _pairs(
            x,
            ("loss", "token_acc", "revise_precision", "revise_recall", "val/loss", "val_ema/loss"),
            {"val/loss": "held-out loss", "val_ema/loss": "EMA's held-out loss"},
        )
    if stage == "sample":
        return f"{c.get('prompts', 0)} prompts sampled"
    if stage == "evaluate":
        return _pairs(x, ("attribute_match", "fid", "clip_score"), {"attribute_match": "attribute match", "fid": "FID"})
    return _pairs(x, tuple(list(x)[:2]))


def format_table(rows: list[StageRow]) -> str:
    width = max([len(r.stage) for r in rows] + [5])
    lines = [f"{'stage':{width}s}  {'status':8s} {'time':>8s}  headline"]
    for r in rows:
        t = f"{r.seconds:7.1f}s" if r.status in ("ran", "reused", "failed") else " " * 8
        lines.append(f"{r.stage:{width}s}  {r.status:8s} {t}  {r.headline}")
    total = sum(r.seconds for r in rows if r.status in ("ran", "failed"))
    lines.append(f"{'':{width}s}  {'':8s} {total:7.1f}s  time spent in this run")
    return "\n".join(lines)
