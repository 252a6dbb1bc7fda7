"""``write_report(study_dir)`` -> ``report.md``, ``report.json`` and ``preference.png`` in ``study_dir/report/``
(or ``out_dir``): the paper's Table 6 for this study's runs, with Wilson 95% intervals, rater agreement,
attention-check failures and one line per rater."""

from __future__ import annotations

import json
import math
from pathlib import Path

from core.files import write_text_atomic
from evaluation.humaneval import HumanEvalError
from evaluation.humaneval.chart import PANEL_TITLES, save_chart
from evaluation.humaneval.db import QUESTIONS, VoteDB
from evaluation.humaneval.stats import OUTCOMES, summarize
from evaluation.humaneval.study import DB_FILE, load_study

# Table 6 of the paper (200 MS COCO prompts, three raters per pair): baseline wins, border, prog. wins
PAPER_TABLE6 = {
    "minDALL-E": ((34.3, 24.2, 41.5), (33.0, 31.2, 35.8)),
    "Random": ((31.2, 29.7, 39.2), (33.7, 27.8, 38.5)),
}
DASH = "–"


def _pct(v: float | None) -> str:
    return DASH if v is None or math.isnan(v) else f"{v:.1f}"


def _cell(s: dict) -> str:
    if not s["n"]:
        return DASH
    lo, hi = s["ci95"]
    return f"{_pct(s['pct'])} [{_pct(lo)}, {_pct(hi)}]"


def _header(first: str, winner: str) -> list[str]:
    cols = [first, "n"]
    for q in QUESTIONS:
        cols += [f"{PANEL_TITLES[q]}: baseline wins", "border (same)", f"{winner} wins"]
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]


def markdown(summary: dict, study_dir: str) -> str:
    ref = summary["reference"]
    checks = summary["attention_checks"]
    n_checks = checks["failure"]["n"]
    lines = [
        "# Human side-by-side evaluation",
        "",
        (
            f"Study `{study_dir}`: {summary['pairs']} pairs, {len(summary['raters'])} raters, "
            f'{summary["votes"]} votes. Reference run: `{ref}` (the paper\'s "prog."). Each cell: percent of '
            "that baseline's votes [Wilson 95% interval]."
        ),
        "",
    ]
    lines += _header("baseline", ref)
    for row in summary["table"]:
        cells = [_cell(row[q][key]) for q in QUESTIONS for key, _ in OUTCOMES]
        lines.append(f"| {row['baseline']} | {row['n']} | " + " | ".join(cells) + " |")
    lines += ["", "The paper's Table 6 (200 MS COCO prompts, three raters per pair), for comparison:", ""]
    lines += _header("baseline", "prog.")
    for name, (quality, text) in PAPER_TABLE6.items():
        lines.append(f"| {name} | 200 x 3 | " + " | ".join(f"{v:.1f}" for v in quality + text) + " |")
    lines += [
        "",
        "## Rater agreement",
        "",
        "Pairwise percent agreement between raters on the comparison pairs both rated, and Fleiss' kappa.",
        "",
        "| question | agreement | rater pairs compared | Fleiss' kappa |",
        "|---|---|---|---|",
    ]
    for q in QUESTIONS:
        a = summary["agreement"][q]
        kappa = a["fleiss_kappa"]
        lines.append(
            f"| {PANEL_TITLES[q]} | {_cell(a['pairwise'])} | {a['pairwise']['n']} | "
            f"{DASH if math.isnan(kappa) else f'{kappa:.3f}'} |"
        )
    lines += [
        "",
        "## Attention checks",
        "",
        (
            "A check shows a sample for the prompt against a sample for another prompt; a rater fails it by "
            "preferring the other prompt's sample on the text question. Failure rate: "
            f"{_cell(checks['failure']) if n_checks else DASH} ({checks['failure']['count']} of {n_checks} "
            f'answers; {checks["same"]} answered "same").'
        ),
        "",
        "## Raters",
        "",
        "| session | votes | checks failed | agreement, realism | agreement, text match |",
        "|---|---|---|---|---|",
    ]
    for r in summary["raters"]:
        agree = [_pct(r[f"agreement_{q}"]["pct"]) if r[f"agreement_{q}"] else DASH for q in QUESTIONS]
        lines.append(
            f"| `{r['session']}` | {r['votes']} | {r['failures']} of {r['checks']} | {agree[0]} | {agree[1]} |"
        )
    lines += ["", "![preferences](preference.png)", ""]
    return "\n".join(lines)


def _nan_to_none(x):
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x


def _write(path: Path, text: str) -> None:
    write_text_atomic(path, text)


def write_report(study_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    study = load_study(study_dir)
    if not (study.folder / DB_FILE).is_file():
        raise HumanEvalError(f"{study.folder}: no {DB_FILE} yet: serve the study and collect votes first")
    db = VoteDB(study.folder / DB_FILE, study.fingerprint)
    summary = summarize(study, db.votes(), db.sessions())
    out = Path(out_dir) if out_dir else study.folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "report.md", "json": out / "report.json", "chart": out / "preference.png"}
    _write(paths["json"], json.dumps(_nan_to_none(summary), indent=2))
    _write(paths["md"], markdown(summary, str(study_dir)))
    save_chart(summary, paths["chart"])
    return paths
