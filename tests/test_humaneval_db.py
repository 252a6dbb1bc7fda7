"""The vote store: choices outside the offered ones refused (in Python and by the schema), one vote per rater
and pair, and a database bound to its study."""

from __future__ import annotations

import sqlite3

import pytest

from evaluation.humaneval import HumanEvalError
from evaluation.humaneval.db import BadVote, VoteConflict, VoteDB


def test_votes_once_and_only_offered_choices(tmp_path):
    db = VoteDB(tmp_path / "votes.sqlite", "study-1")
    s1, s2 = db.new_session(), db.new_session()
    assert s1 != s2 and db.has_session(s1) and not db.has_session("nope")
    assert db.record(s1, "0001", True, "left", "same") == "saved"
    assert db.record(s1, "0001", True, "left", "same") == "repeat"
    with pytest.raises(VoteConflict):
        db.record(s1, "0001", True, "right", "same")
    assert db.record(s2, "0001", False, "right", "right") == "saved"  # another rater, same pair
    for bad in (("best", "left"), ("left", ""), ("Left", "left"), ("left", None)):
        with pytest.raises(BadVote):
            db.record(s1, "0002", False, *bad)
    with pytest.raises(sqlite3.IntegrityError):  # an unknown session (foreign key)
        db.record("ghost", "0002", False, "left", "left")
    assert db.answered(s1) == {"0001": ("left", "same")}
    assert [(v["session"], v["pair"], v["swapped"]) for v in db.votes()] == [(s1, "0001", True), (s2, "0001", False)]

    con = sqlite3.connect(tmp_path / "votes.sqlite")  # the schema refuses the same on its own
    with pytest.raises(sqlite3.IntegrityError):
        con.execute(
            "INSERT INTO votes (session, pair, swapped, quality, text, created) VALUES (?, '9', 0, 'x', 'left', 0)",
            (s1,),
        )
    with pytest.raises(sqlite3.IntegrityError):
        con.execute(
            "INSERT INTO votes (session, pair, swapped, quality, text, created) "
            "VALUES (?, '0001', 1, 'left', 'same', 0)",
            (s1,),
        )
    con.close()


def test_database_belongs_to_its_study(tmp_path):
    VoteDB(tmp_path / "votes.sqlite", "study-1")
    VoteDB(tmp_path / "votes.sqlite", "study-1")  # reopening is fine
    with pytest.raises(HumanEvalError, match="votes of another study"):
        VoteDB(tmp_path / "votes.sqlite", "study-2")
