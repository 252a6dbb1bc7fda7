"""The rating server's same-origin rule for form posts: the Origin must be this server exactly (scheme, host
and port): another web app on the same machine (another port of 127.0.0.1) cannot post votes or start
sessions; a name that merely begins with "localhost" is not loopback. Also: an IPv6 server's URL, and raters
listed in the order they started."""

from __future__ import annotations

import pytest

from evaluation.humaneval.app import create_app, is_loopback
from tests.humaneval_utils import make_study


@pytest.fixture
def client(tmp_path):
    study = make_study(tmp_path, n_prompts=2, checks=1)
    return create_app(study).test_client(), study


def _sessions(study) -> int:
    import sqlite3

    con = sqlite3.connect(study / "votes.sqlite")
    try:
        return con.execute("SELECT COUNT(*) FROM raters").fetchone()[0]
    finally:
        con.close()


def test_a_post_from_another_port_or_scheme_of_this_host_is_refused(client):
    client, study = client
    host = {"Host": "127.0.0.1:8000"}
    for origin in ("http://127.0.0.1:9999", "https://127.0.0.1:8000", "http://localhost:8000"):
        assert client.post("/start", headers={**host, "Origin": origin}).status_code == 403, origin
    assert _sessions(study) == 0  # no session was started
    assert client.post("/start", headers={**host, "Origin": "http://127.0.0.1:8000/"}).status_code == 303
    assert client.post("/start", headers=host).status_code == 303  # no Origin header (an older browser)
    assert _sessions(study) == 2


def test_only_loopback_names_count_as_loopback():
    assert is_loopback("127.0.0.2") and is_loopback("::1")
    assert not is_loopback("localhost.evil.example") and not is_loopback("localhostx")
    assert not is_loopback("10.0.0.1") and not is_loopback("")


def test_an_ipv6_server_url_has_brackets():
    from types import SimpleNamespace

    from evaluation.humaneval.serve import url_of

    assert url_of(SimpleNamespace(host="::1", server_port=8000)) == "http://[::1]:8000/"
    assert url_of(SimpleNamespace(host="127.0.0.1", server_port=8000)) == "http://127.0.0.1:8000/"


def test_sessions_are_listed_in_the_order_they_started(tmp_path, monkeypatch):
    import itertools

    from evaluation.humaneval import db as dbmod

    ids = iter(["ffff", "0000", "8888"])
    monkeypatch.setattr(dbmod.secrets, "token_hex", lambda n: next(ids))
    clock = itertools.count(1000)
    monkeypatch.setattr(dbmod.time, "time", lambda: float(next(clock)))
    votes = dbmod.VoteDB(tmp_path / "votes.sqlite", "study-1")
    started = [votes.new_session() for _ in range(3)]
    assert votes.sessions() == started == ["ffff", "0000", "8888"]  # the report lists raters in this order
