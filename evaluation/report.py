"""``write_report(out_dir, results)`` -> ``report.json`` + ``report.md`` laid out like the paper's tables.

``results`` (every part optional; only measured rows and tables are printed)::

    {"runs": {"PDM": {"fid": <FIDEvaluator output>, "captioning": <CaptioningEvaluator output>,
                      "clip_score": <ClipScoreEvaluator output>, "paper_row": "PDM"},
              "Retrieval Baseline": {...}, "Ground Truth (upper bound)": {"captioning": ...}},
     "speed": [{"method": "progressive", "steps": 64, "tokens_per_step": 16, "sequential_passes": 64,
                "seconds_per_image": 0.8, "quality": {"fid": 14.1, "cider": 0.702, "num_images": 30000},
                "device": "V100"}, ...],   # evaluation.speed.speed_table rows (Table 4)
     "fid_protocol": {...}}          # default: the protocol inside the first run's FID result

A run is matched to the paper's row of the same name (case-insensitive) or to ``paper_row``; the
paper's figures are printed beside ours. Caption scores are printed x100 (BLEU = BLEU-4), like Table 2.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from core.files import write_text_atomic
from evaluation.figures import save_grid, save_progression  # noqa: F401  (part of the report API)

PAPER_FID = {
    "Retrieval Baseline": 19.12,
    "X-LXMERT": 37.4,
    "DALL-E small": 45.8,
    "minDALL-E": 24.6,
    "CogView": 27.1,
    "CogView2": 24.0,
    "RQ-Transformer": 16.9,
    "DALL-E 2": 10.39,
    "Imagen": 7.27,
    "Parti": 7.23,
    "PDM": 13.28,
}  # Table 1, zero-shot
PAPER_CAPTION = {
    "Ground Truth (upper bound)": (32.5, 27.5, 108.3, 20.4),
    "Retrieval Baseline": (22.4, 21.7, 81.5, 15.3),
    "ruDALL-E-XL": (13.9, 16.0, 38.7, 8.7),
    "minDALL-E": (16.6, 17.6, 48.0, 10.5),
    "PDM": (20.5, 19.7, 74.8, 13.5),
}  # Table 2: BLEU, METEOR, CIDEr, SPICE
PAPER_SPEED = {
    8: (19.80, 53.5, 97.1),
    16: (15.86, 65.1, 52.5),
    64: (13.28, 74.8, 13.2),
    256: (12.73, 78.5, 3.3),
    1024: (12.51, 79.8, 1.0),
}  # Table 4: FID, CIDEr, speed-up vs 1024 steps
CAPTION_KEYS = (("BLEU", "Bleu_4"), ("METEOR", "METEOR"), ("CIDEr", "CIDEr"), ("SPICE", "SPICE"))
DASH = "–"


def _num(v, digits: int = 2) -> str:
    v = v.item() if hasattr(v, "item") else v
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return DASH
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _paper(table: dict, name: str, run: dict):
    key = run.get("paper_row", name)
    return next((v for k, v in table.items() if k.lower() == str(key).lower()), None)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _fid_section(runs: dict, protocol: dict | None) -> list[str]:
    rows = [
        [
            name,
            _num(r["fid"].get("fid")),
            _num(r["fid"].get("clean_fid")),
            _num(r["fid"].get("num_images")),
            _num(_paper(PAPER_FID, name, r)),
        ]
        for name, r in runs.items()
        if "fid" in r
    ]
    if not rows:
        return []
    coco = any(r.get("paper_row", name) is not None for name, r in runs.items() if "fid" in r)  # else no paper row
    lines = [f"## Image quality: FID{' on MS COCO (Table 1)' if coco else ''}", ""]
    if protocol and protocol.get("stand_in"):
        lines += [f"**FID extractor: {protocol.get('note')}.**", ""]
    lines += _table(["Approach", "FID (↓)", "clean-FID (↓)", "N", "paper FID, zero-shot"], rows) + [""]
    if protocol:
        lines += (
            ["FID protocol:", ""]
            + [f"- {k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in protocol.items()]
            + [""]
        )
    return lines


def _caption_section(runs: dict) -> list[str]:
    lines = []
    titles = {
        "vs_prompt": "caption vs the input prompt (PDM paper)",
        "vs_coco_refs": "caption vs all COCO references (DALL-Eval)",
    }
    for mode, title in titles.items():
        rows, notes = [], set()
        for name, r in runs.items():
            scores = r.get("captioning", {}).get(mode)
            if scores is None:
                continue
            paper = _paper(PAPER_CAPTION, name, r) or (None,) * 4
            ours = [_num(None if scores.get(k) is None else 100 * scores[k], 1) for _, k in CAPTION_KEYS]
            rows.append([name] + ours + [_num(p, 1) for p in paper])
            spice = r["captioning"].get("protocol", {}).get("spice")
            if isinstance(spice, str):
                notes.add(spice)
        if rows:
            header = ["Approach"] + [f"{n} (↑)" for n, _ in CAPTION_KEYS] + [f"paper {n}" for n, _ in CAPTION_KEYS]
            lines += [
                f"## Image-text alignment: captioning, {title} (Table 2)",
                "",
                "Scores x100; ours: BLEU-4, pycocoevalcap. Paper columns: the PDM paper's Table 2.",
                "",
            ]
            lines += _table(header, rows) + [""]
            lines += [f"Note: {n}" for n in sorted(notes)] + ([""] if notes else [])
    return lines


def _clip_section(runs: dict) -> list[str]:
    rows = [
        [name, _num(100 * r["clip_score"]["clip_score"], 2), _num(r["clip_score"].get("num_images"))]
        for name, r in runs.items()
        if "clip_score" in r
    ]
    return (
        ["## CLIP score (2.5 * max(cos, 0), x100)", ""] + _table(["Approach", "CLIP-S (↑)", "N"], rows) + [""]
        if rows
        else []
    )


def _fid_protocol(results: dict) -> dict | None:
    if results.get("fid_protocol"):
        return results["fid_protocol"]
    return next((r["fid"].get("protocol") for r in results.get("runs", {}).values() if "fid" in r), None)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    return x


def render_markdown(results: dict) -> str:
    runs = results.get("runs", {})
    lines = [f"# {results.get('title', 'Evaluation report')}", ""]
    from evaluation.speed import speed_markdown  # (it imports PAPER_SPEED from here)

    body = (
        _fid_section(runs, _fid_protocol(results))
        + _caption_section(runs)
        + _clip_section(runs)
        + speed_markdown(results.get("speed", []))
    )
    return "\n".join(lines + (body or ["No metric was measured.", ""]))


def write_report(out_dir: str | Path, results: dict) -> dict[str, Path]:
    """Write ``report.json`` (all results) and ``report.md`` (the tables); returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, text in (
        ("report.json", json.dumps(_jsonable(results), indent=2, allow_nan=True)),
        ("report.md", render_markdown(results)),
    ):
        paths[name] = write_text_atomic(out / name, text)
    return paths
