"""The rating web app without a browser: refusal of bad input, idempotent re-submission, concurrent votes
counted once, anonymous image URLs, the password and the loopback default."""

from __future__ import annotations

import base64
import re
import threading

import pytest

from evaluation.humaneval import HumanEvalError
from evaluation.humaneval.app import create_app
from evaluation.humaneval.serve import is_loopback, make_study_server, running
from evaluation.humaneval.study import layout, load_study, shown_item
from tests.humaneval_utils import make_study, new_session, request, stored


@pytest.fixture
def study_dir(tmp_path):
    return make_study(tmp_path, n_prompts=3, checks=1)


def _start(client) -> str:
    resp = client.post("/start")
    assert resp.status_code == 303
    return resp.headers["Location"].rsplit("/", 1)[-1]


def test_bad_input_is_refused_and_nothing_stored(study_dir):
    client = create_app(study_dir).test_client()
    sid = _start(client)
    pid = layout(load_study(study_dir), sid)[0][0]
    good = {"pair": pid, "quality": "left", "text": "right"}
    for bad, status in (
        ({**good, "quality": "best"}, 400),
        ({**good, "text": "LEFT"}, 400),
        ({"pair": pid, "quality": "left"}, 400),
        ({**good, "pair": "9999"}, 400),
        ({**good, "pair": "../study.json"}, 400),
    ):
        resp = client.post(f"/r/{sid}/vote", data=bad)
        assert resp.status_code == status, bad
        assert "nothing was saved" in resp.get_data(as_text=True) or "Not saved" in resp.get_data(as_text=True)
    assert client.post("/r/nosuchsession/vote", data=good).status_code == 404
    assert client.get("/r/nosuchsession").status_code == 404
    cross = client.post(f"/r/{sid}/vote", data=good, headers={"Origin": "http://evil.example"})
    assert cross.status_code == 403
    assert client.get(f"/r/{sid}/img/{pid}/middle").status_code == 404
    assert stored(study_dir) == {}


def test_a_rebinding_page_is_refused_on_a_loopback_server(study_dir):
    """DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 posts with matching Host and
    Origin headers. A password-less server (loopback only) answers only to loopback names."""
    client = create_app(study_dir).test_client()
    evil = {"Host": "evil.example:8000", "Origin": "http://evil.example:8000"}
    assert client.post("/start", headers=evil).status_code == 403
    assert client.get("/", headers={"Host": "evil.example:8000"}).status_code == 403
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000"):
        assert client.post("/start", headers={"Host": host, "Origin": f"http://{host}"}).status_code == 303, host
    auth = {"Authorization": "Basic " + base64.b64encode(b"rater:pw").decode()}
    served = create_app(study_dir, password="pw").test_client()  # on another address, behind its password
    lab = {**auth, "Host": "study.lab:8000", "Origin": "http://study.lab:8000"}
    assert served.post("/start", headers=lab).status_code == 303


def test_resubmission_is_idempotent_and_a_changed_answer_refused(study_dir):
    client = create_app(study_dir).test_client()
    sid = _start(client)
    pid = layout(load_study(study_dir), sid)[0][0]
    vote = {"pair": pid, "quality": "left", "text": "same"}
    first = client.post(f"/r/{sid}/vote", data=vote)
    assert first.status_code == 303 and first.headers["Location"].endswith(f"/r/{sid}?saved={pid}")
    assert client.post(f"/r/{sid}/vote", data=vote).status_code == 303  # the same answers again: no-op
    assert client.post(f"/r/{sid}/vote", data={**vote, "quality": "right"}).status_code == 409
    assert stored(study_dir) == {sid: {pid: ("left", "same")}}
    page = client.get(f"/r/{sid}?saved={pid}").get_data(as_text=True)
    assert "Pair 2 of 4" in page and "Saved: 1 of 4 answered" in page


def test_images_follow_the_raters_sides_and_name_no_run(study_dir):
    study = load_study(study_dir)
    client = create_app(study_dir).test_client()
    sid = _start(client)
    for pid, swapped in layout(study, sid):
        for side in ("left", "right"):
            data = client.get(f"/r/{sid}/img/{pid}/{side}").data
            assert data == (study.folder / shown_item(study.by_id[pid], swapped, side)["image"]).read_bytes()
    page = client.get(f"/r/{sid}").get_data(as_text=True)
    srcs = re.findall(r'<img[^>]+src="([^"]+)"', page)
    assert len(srcs) == 2 and not any(name in s for s in srcs for name in ("pdm", "random", "check"))


def test_concurrent_votes_counted_once(study_dir):
    with running(study_dir) as url:
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0/")
        sids = [new_session(url) for _ in range(3)]
        study = load_study(study_dir)
        results = []

        def post(sid, pid):
            results.append(request(f"{url}r/{sid}/vote", "POST", {"pair": pid, "quality": "right", "text": "left"})[0])

        threads = [
            threading.Thread(target=post, args=(sid, pid))
            for sid in sids
            for pid, _ in layout(study, sid)
            for _ in range(4)
        ]  # every vote sent 4 times at once
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == [303] * len(threads)
    got = stored(study_dir)  # raises on a duplicate
    assert {s: len(v) for s, v in got.items()} == {s: len(study.pairs) for s in sids}


def test_password_and_loopback_default(study_dir):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    with pytest.raises(HumanEvalError, match="without a study password"):
        make_study_server(study_dir, host="0.0.0.0")
    with running(study_dir, password="s3cret") as url:
        assert request(url)[0] == 401
        bad = base64.b64encode(b"rater:wrong").decode()
        assert request(url, headers={"Authorization": f"Basic {bad}"})[0] == 401
        good = base64.b64encode(b"rater:s3cret").decode()
        assert request(url, headers={"Authorization": f"Basic {good}"})[0] == 200
        assert request(url + "start", "POST", {}, headers={"Authorization": f"Basic {good}"})[0] == 303
