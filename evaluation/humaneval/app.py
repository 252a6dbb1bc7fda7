"""The rating page: a Flask app over one study folder.

    GET  /                          start page: start a session, or continue one (cookie, or a typed id)
    POST /start                     a new rater session -> /r/SESSION
    GET  /resume?session=SESSION    -> /r/SESSION
    GET  /r/SESSION                 the rater's next unanswered pair (prompt, two images, two questions),
                                    or the end page; ``?saved=PAIR`` shows that the previous vote is stored
    GET  /r/SESSION/img/PAIR/SIDE   the image shown on SIDE (left/right) for this rater
    POST /r/SESSION/vote            pair, quality, text (each left/same/right) -> 303 /r/SESSION?saved=PAIR once
                                    committed; 400 for an unknown pair or a choice not offered (nothing stored),
                                    404 for an unknown session, 409 for different answers to an answered pair

Image URLs name the pair and the side only, never the run. With a password, every request needs HTTP basic auth
(any user name); a POST whose Origin header names another site is refused.
"""

from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

from flask import Flask, Response, abort, make_response, redirect, render_template, request, send_file, url_for

from evaluation.humaneval.db import CHOICES, BadVote, VoteConflict, VoteDB
from evaluation.humaneval.study import DB_FILE, layout, load_study, shown_item

QUESTIONS = (
    ("quality", "Which image looks better (more realistic, higher quality)?", "asd"),
    ("text", "Which image matches the text better?", "jkl"),
)
LABELS = {"left": "Left", "same": "Same", "right": "Right"}


def _questions() -> list[dict]:
    return [
        {
            "name": name,
            "text": text,
            "options": [{"value": c, "label": LABELS[c], "key": k} for c, k in zip(CHOICES, keys)],
        }
        for name, text, keys in QUESTIONS
    ]


def is_loopback(host: str) -> bool:
    """``host`` (a name or an address) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(study_dir: str | Path, password: str | None = None) -> Flask:
    study = load_study(study_dir)
    pairs = study.by_id
    db = VoteDB(study.folder / DB_FILE, study.fingerprint)
    cookie = f"pt2i_humaneval_{study.fingerprint[:8]}"
    app = Flask(__name__)

    def message(text: str, status: int):
        return make_response(render_template("message.html", text=text), status)

    def rater_layout(session: str) -> list[tuple[str, bool]]:
        if not db.has_session(session):
            abort(message("Unknown session: start a new one from the start page.", 404))
        return layout(study, session)

    @app.before_request
    def guard():
        if password:
            auth = request.authorization
            given = (auth.password or "") if auth else ""
            if not hmac.compare_digest(given.encode(), password.encode()):
                return Response(
                    "This study needs its password.", 401, {"WWW-Authenticate": 'Basic realm="pt2i humaneval"'}
                )
        if not password and not is_loopback(urlsplit(f"//{request.host}").hostname or ""):
            # without a password the server listens on loopback only (serve.py): another name is a page of some
            # other site whose name now resolves to 127.0.0.1 (DNS rebinding), not a rater
            return message("This study server answers only to its loopback address.", 403)
        origin = request.headers.get("Origin")
        if request.method == "POST" and origin and origin.rstrip("/") != request.host_url.rstrip("/"):
            return message("Cross-site form submission refused.", 403)
        return None

    @app.get("/")
    def start():
        current = request.cookies.get(cookie)
        current = current if current and db.has_session(current) else None
        return render_template("start.html", current=current, total=len(study.pairs))

    @app.post("/start")
    def new_session():
        session = db.new_session()
        resp = redirect(url_for("rater", session=session), 303)
        resp.set_cookie(cookie, session, max_age=180 * 86400, httponly=True, samesite="Lax")
        return resp

    @app.get("/resume")
    def resume():
        session = request.args.get("session", "").strip()
        rater_layout(session)
        resp = redirect(url_for("rater", session=session), 303)
        resp.set_cookie(cookie, session, max_age=180 * 86400, httponly=True, samesite="Lax")
        return resp

    @app.get("/r/<session>")
    def rater(session: str):
        order = rater_layout(session)
        answered = db.answered(session)
        saved = request.args.get("saved")
        common = {
            "session": session,
            "total": len(order),
            "done": len(answered),
            "saved": saved if saved in answered else None,
            "resume_url": url_for("rater", session=session, _external=True),
        }
        todo = [pid for pid, _ in order if pid not in answered]
        if not todo:
            return render_template("done.html", **common)
        return render_template(
            "pair.html", pair=pairs[todo[0]], position=len(answered) + 1, questions=_questions(), **common
        )

    @app.get("/r/<session>/img/<pair>/<side>")
    def image(session: str, pair: str, side: str):
        swapped = dict(rater_layout(session))
        if pair not in pairs or side not in ("left", "right"):
            abort(404)
        resp = send_file(study.folder / shown_item(pairs[pair], swapped[pair], side)["image"], mimetype="image/png")
        resp.headers["Cache-Control"] = "private, max-age=3600"
        return resp

    @app.post("/r/<session>/vote")
    def vote(session: str):
        swapped = dict(rater_layout(session))
        pair = request.form.get("pair", "")
        if pair not in pairs:
            return message(f"Unknown pair {pair!r}: nothing was saved.", 400)
        try:
            db.record(session, pair, swapped[pair], request.form.get("quality", ""), request.form.get("text", ""))
        except BadVote as exc:
            return message(f"Not saved: {exc}.", 400)
        except VoteConflict as exc:
            return message(f"Not saved: {exc}.", 409)
        return redirect(url_for("rater", session=session, saved=pair), 303)

    return app
