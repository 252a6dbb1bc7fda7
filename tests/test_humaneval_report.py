"""``pt2i humaneval build / report`` and the report's content; errors for people are one line and exit 2."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from evaluation.humaneval.db import VoteDB
from evaluation.humaneval.study import layout, load_study, shown_item
from pipeline.cli import main
from tests.humaneval_utils import make_run


@pytest.fixture
def study_dir(tmp_path):
    runs = [make_run(tmp_path / "runs", "pdm", 4), make_run(tmp_path / "runs", "random", 4, noise=0.3)]
    out = tmp_path / "study"
    assert main(["humaneval", "build", "--runs", *map(str, runs), "--out", str(out), "--attention-checks", "2"]) == 0
    return out


def _vote_all(study_dir, answer_for) -> list[str]:
    """Two raters answer every pair: ``answer_for(rater, pair, run_shown_left) -> (quality, text)``."""
    study = load_study(study_dir)
    db = VoteDB(study_dir / "votes.sqlite", study.fingerprint)
    sids = [db.new_session() for _ in range(2)]
    for r, sid in enumerate(sids):
        for pid, swapped in layout(study, sid):
            pair = study.by_id[pid]
            left = shown_item(pair, swapped, "left")
            db.record(sid, pid, swapped, *answer_for(r, pair, left))
    return sids


def test_report_table_agreement_and_checks(study_dir, capsys):
    def answers(r, pair, left):
        if pair["kind"] == "check":  # rater 1 picks the decoy on every check
            right_is_true = left["index"] != pair["prompt_index"]
            good = "right" if right_is_true else "left"
            return good, (good if r == 0 else {"left": "right", "right": "left"}[good])
        ours = "left" if left["run"] == "pdm" else "right"
        return ours, (ours if r == 0 else "same")  # both prefer pdm's look; rater 1 sees no text difference

    sids = _vote_all(study_dir, answers)
    assert main(["humaneval", "report", str(study_dir)]) == 0
    out = capsys.readouterr().out
    report = study_dir / "report"
    assert str(report / "report.md") in out and str(report / "preference.png") in out
    data = json.loads((report / "report.json").read_text())
    (row,) = data["table"]
    assert row["baseline"] == "random" and row["n"] == 8  # 4 prompts x 2 raters
    assert row["quality"]["reference_wins"]["pct"] == 100 and row["quality"]["baseline_wins"]["count"] == 0
    assert row["text"]["reference_wins"]["count"] == 4 and row["text"]["same"]["count"] == 4
    assert row["quality"]["reference_wins"]["ci95"][0] == pytest.approx(67.56, abs=0.01)  # Wilson 8/8
    assert data["agreement"]["quality"]["pairwise"]["pct"] == 100
    assert data["agreement"]["text"]["pairwise"]["pct"] == 0
    assert data["attention_checks"]["failure"]["count"] == 2 and data["attention_checks"]["failure"]["n"] == 4
    raters = {r["session"]: r for r in data["raters"]}
    assert raters[sids[0]]["failures"] == 0 and raters[sids[1]]["failures"] == 2 and raters[sids[1]]["votes"] == 4
    md = (report / "report.md").read_text()
    assert "| baseline | n | Image realism: baseline wins | border (same) | pdm wins | Image-text match: baseline" in md
    assert "| random | 8 | 0.0 [0.0, 32.4] | 0.0 [0.0, 32.4] | 100.0 [67.6, 100.0] |" in md
    assert "| minDALL-E | 200 x 3 | 34.3 | 24.2 | 41.5 | 33.0 | 31.2 | 35.8 |" in md
    assert "Failure rate: 50.0 [15.0, 85.0] (2 of 4 answers" in md
    with Image.open(report / "preference.png") as img:
        assert img.width > 200 and img.height > 200


def test_errors_for_people_are_one_line_exit_2(tmp_path, study_dir, capsys):
    run = make_run(tmp_path / "runs", "pdm", 4)
    cases = [
        (["humaneval", "build", "--runs", str(run), "--out", str(tmp_path / "x")], "at least two runs"),
        (
            ["humaneval", "build", "--runs", str(run), str(tmp_path / "nope"), "--out", str(tmp_path / "x")],
            "no sample/prompts.jsonl",
        ),
        (["humaneval", "serve", str(study_dir), "--host", "0.0.0.0"], "without a study password"),
        (["humaneval", "serve", str(tmp_path / "nostudy")], "no study.json"),
        (["humaneval", "report", str(study_dir)], "no votes.sqlite yet"),
    ]
    for argv, msg in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("humaneval error: ") and msg in err and err.count("\n") == 1, err
        assert "Traceback" not in err
