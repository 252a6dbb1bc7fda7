"""Pins for ``evaluation.humaneval.report`` (found by mutation testing): the markdown of empty and undefined
figures, which count each column shows, the per-rater columns' order, NaN in ``report.json`` and ``out_dir``."""

from __future__ import annotations

import json
import math

from evaluation.humaneval.report import _nan_to_none, markdown, write_report
from evaluation.humaneval.stats import share


def _summary():
    def row(name, n, counts):
        return {
            "baseline": name,
            "n": n,
            **{q: {k: share(c, n) for k, c in counts.items()} for q in ("quality", "text")},
        }

    return {
        "reference": "pdm",
        "baselines": ["random", "empty"],
        "votes": 7,
        "pairs": 5,
        "table": [
            row("random", 3, {"baseline_wins": 0, "same": 0, "reference_wins": 3}),
            row("empty", 0, {"baseline_wins": 0, "same": 0, "reference_wins": 0}),
        ],
        "agreement": {
            "quality": {"pairwise": share(2, 3), "fleiss_kappa": 0.25},
            "text": {"pairwise": share(0, 0), "fleiss_kappa": math.nan},
        },
        "attention_checks": {"failure": share(1, 4), "same": 2},
        "raters": [
            {
                "session": "s1",
                "votes": 3,
                "failures": 1,
                "checks": 4,
                "agreement_quality": share(2, 3),
                "agreement_text": share(0, 0),
            },
            {
                "session": "s2",
                "votes": 0,
                "failures": 0,
                "checks": 0,
                "agreement_quality": None,
                "agreement_text": None,
            },
        ],
    }


def test_empty_baseline_row_is_dashes_and_tables_are_well_formed():
    """A baseline without votes shows a bare dash per cell; every separator row matches its header."""
    md = markdown(_summary(), "study")
    assert "| random | 3 | 0.0 [0.0, 56.1] | 0.0 [0.0, 56.1] | 100.0 [43.9, 100.0] |" in md
    assert "| empty | 0 | – | – | – | – | – | – |" in md
    lines = md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---"):
            assert line.count("---|") == lines[i - 1].count("|") - 1, lines[i - 1]


def test_agreement_rows_show_the_number_of_comparisons_and_a_dash_for_undefined_kappa():
    md = markdown(_summary(), "study")
    assert "| Image realism | 66.7 [20.8, 93.9] | 3 | 0.250 |" in md
    assert "| Image-text match | – | 0 | – |" in md


def test_attention_line_counts_failures_checks_and_same():
    md = markdown(_summary(), "study")
    assert 'Failure rate: 25.0 [4.6, 69.9] (1 of 4 answers; 2 answered "same").' in md
    s = _summary()
    s["attention_checks"] = {"failure": share(0, 0), "same": 0}
    assert 'Failure rate: – (0 of 0 answers; 0 answered "same").' in markdown(s, "study")


def test_rater_rows_checks_failed_of_checks_and_agreement_in_question_order():
    """'checks failed' is failures of checks (not of votes); realism before text match; NaN reads as a dash."""
    md = markdown(_summary(), "study")
    assert "| `s1` | 3 | 1 of 4 | 66.7 | – |" in md
    assert "| `s2` | 0 | 0 of 0 | – | – |" in md
    assert "nan" not in md.lower()


def test_nan_becomes_null_everywhere():
    assert _nan_to_none({"a": [math.nan, 1.0], "b": {"c": math.nan}, "d": "x"}) == {
        "a": [None, 1.0],
        "b": {"c": None},
        "d": "x",
    }


def test_write_report_to_out_dir_with_valid_json(tmp_path):
    """One vote: agreement is undefined (NaN), written as JSON null (strict JSON); files go to ``out_dir``."""
    from evaluation.humaneval.db import VoteDB
    from evaluation.humaneval.study import layout, load_study
    from pipeline.cli import main
    from tests.humaneval_utils import make_run

    runs = [make_run(tmp_path / "runs", "pdm", 2), make_run(tmp_path / "runs", "random", 2, noise=0.3)]
    study_dir = tmp_path / "study"
    assert main(["humaneval", "build", "--runs", *map(str, runs), "--out", str(study_dir)]) == 0
    study = load_study(study_dir)
    db = VoteDB(study_dir / "votes.sqlite", study.fingerprint)
    sid = db.new_session()
    pid, swapped = layout(study, sid)[0]
    db.record(sid, pid, swapped, "left", "same")
    out = tmp_path / "elsewhere"
    paths = write_report(study_dir, out)
    assert {p.parent for p in paths.values()} == {out} and all(p.is_file() for p in paths.values())
    assert not (study_dir / "report").exists()

    def no_constants(name):
        raise AssertionError(f"{name} in report.json")

    data = json.loads(paths["json"].read_text(), parse_constant=no_constants)
    assert data["agreement"]["quality"]["fleiss_kappa"] is None
    assert data["agreement"]["quality"]["pairwise"]["pct"] is None
