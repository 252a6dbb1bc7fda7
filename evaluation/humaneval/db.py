"""The votes of a study in SQLite (standard library), one short ``BEGIN IMMEDIATE`` transaction per write.

A vote is one row per (rater session, pair), enforced by a UNIQUE constraint: it is never counted twice. A
re-submission of an answered pair is idempotent when its answers are the same (e.g. a double click or a resent
form: nothing is written, :meth:`VoteDB.record` returns ``"repeat"``) and refused when they differ
(:class:`VoteConflict`: the first answer stands). Answers outside ``CHOICES`` are refused before any write, and
again by CHECK constraints. The database runs in WAL mode with ``synchronous=FULL``: a vote is on disk when its
COMMIT returns, before the page reports it saved, so a killed server loses none of those.

A database belongs to one study: its ``meta`` table keeps the study's fingerprint, and opening it with another
study fails.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

from evaluation.humaneval import HumanEvalError

CHOICES = ("left", "same", "right")
QUESTIONS = ("quality", "text")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raters (session TEXT PRIMARY KEY, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session TEXT NOT NULL REFERENCES raters(session),
    pair TEXT NOT NULL,
    swapped INTEGER NOT NULL CHECK (swapped IN (0, 1)),
    quality TEXT NOT NULL CHECK (quality IN ('left', 'same', 'right')),
    text TEXT NOT NULL CHECK (text IN ('left', 'same', 'right')),
    created REAL NOT NULL,
    UNIQUE (session, pair)
);
"""


class BadVote(ValueError):
    """An answer that is not one of the offered choices."""


class VoteConflict(Exception):
    """The pair was already answered differently by this rater; the first answer stands."""


class VoteDB:
    def __init__(self, path: str | Path, study_fingerprint: str):
        self.path = Path(path)
        con = self._connect()
        try:
            con.execute("PRAGMA journal_mode=WAL")
        finally:
            con.close()
        with self._write() as con:
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    con.execute(stmt)
            row = con.execute("SELECT value FROM meta WHERE key = 'study'").fetchone()
            if row is None:
                con.execute("INSERT INTO meta (key, value) VALUES ('study', ?)", (study_fingerprint,))
            elif row[0] != study_fingerprint:
                raise HumanEvalError(
                    f"{self.path} holds the votes of another study (fingerprint {row[0]}, "
                    f"this study.json is {study_fingerprint})"
                )

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        con.execute("PRAGMA foreign_keys = ON")
        con.execute("PRAGMA synchronous = FULL")
        return con

    @contextmanager
    def _write(self):
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        finally:
            con.close()

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        con = self._connect()
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def new_session(self) -> str:
        session = secrets.token_hex(8)
        with self._write() as con:
            con.execute("INSERT INTO raters (session, created) VALUES (?, ?)", (session, time.time()))
        return session

    def has_session(self, session: str) -> bool:
        return bool(self._read("SELECT 1 FROM raters WHERE session = ?", (session,)))

    def sessions(self) -> list[str]:
        return [r[0] for r in self._read("SELECT session FROM raters ORDER BY created, session")]

    def answered(self, session: str) -> dict[str, tuple[str, str]]:
        """Pair id -> (quality, text) answers of one rater."""
        rows = self._read("SELECT pair, quality, text FROM votes WHERE session = ?", (session,))
        return {pair: (q, t) for pair, q, t in rows}

    def record(self, session: str, pair: str, swapped: bool, quality: str, text: str) -> str:
        """Store one vote: ``"saved"``, or ``"repeat"`` for the same answers again (nothing written).
        Raises :class:`BadVote` for an answer outside ``CHOICES`` and :class:`VoteConflict` for different
        answers to an answered pair."""
        for name, answer in (("quality", quality), ("text", text)):
            if answer not in CHOICES:
                raise BadVote(f"{name} must be one of {', '.join(CHOICES)}, not {answer!r}")
        with self._write() as con:
            row = con.execute(
                "SELECT swapped, quality, text FROM votes WHERE session = ? AND pair = ?", (session, pair)
            ).fetchone()
            if row is not None:
                if tuple(row) == (int(swapped), quality, text):
                    return "repeat"
                raise VoteConflict(f"pair {pair} was already answered ({row[1]}, {row[2]}); the first answer stands")
            con.execute(
                "INSERT INTO votes (session, pair, swapped, quality, text, created) VALUES (?, ?, ?, ?, ?, ?)",
                (session, pair, int(swapped), quality, text, time.time()),
            )
        return "saved"

    def votes(self) -> list[dict]:
        """Every vote, oldest first: ``{"session", "pair", "swapped", "quality", "text", "created"}``."""
        rows = self._read("SELECT session, pair, swapped, quality, text, created FROM votes ORDER BY id")
        return [
            {"session": s, "pair": p, "swapped": bool(w), "quality": q, "text": t, "created": c}
            for s, p, w, q, t, c in rows
        ]
