"""Helpers of the human-evaluation tests: tiny sample-stage outputs (synthetic shapes, 32x32 PNGs), a built
study, and the answers stored for a rater."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from tokenization.synthetic import caption, render, scene_for


def make_run(root: Path, name: str, n_prompts: int, noise: float = 0.0, seed: int = 0, size: int = 32) -> Path:
    """``root/name/sample/`` like the sample stage writes it: prompts.jsonl and images/NNNNNNNN.png for the
    synthetic captions (seed 0); ``noise`` > 0 spoils the images (a worse "model")."""
    sample = root / name / "sample"
    (sample / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n_prompts):
        scene = scene_for(0, i)
        img = render(scene, size=size).astype(np.float32)
        img = np.clip(img + noise * 255 * rng.standard_normal(img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(sample / "images" / f"{i:08d}.png")
        text = caption(scene)
        recs.append({"index": i, "prompt": text, "refs": [text]})
    (sample / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return root / name


def make_study(
    tmp_path: Path, n_prompts: int = 4, checks: int = 2, baselines: tuple[str, ...] = ("random",), seed: int = 0
) -> Path:
    """A study of run ``pdm`` (clean images) against ``baselines`` (noisy ones) in ``tmp_path/study``."""
    from evaluation.humaneval.study import build_study

    runs = [make_run(tmp_path / "runs", "pdm", n_prompts)]
    runs += [make_run(tmp_path / "runs", b, n_prompts, noise=0.08, seed=k + 1) for k, b in enumerate(baselines)]
    build_study([str(r) for r in runs], tmp_path / "study", attention_checks=checks, seed=seed)
    return tmp_path / "study"


def stored(study_dir: Path) -> dict[str, dict[str, tuple[str, str]]]:
    """Session -> pair -> (quality, text) as stored in the study's database (read with plain sqlite3)."""
    import sqlite3

    con = sqlite3.connect(study_dir / "votes.sqlite")
    try:
        rows = con.execute("SELECT session, pair, quality, text FROM votes").fetchall()
    finally:
        con.close()
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for s, p, q, t in rows:
        assert p not in out.setdefault(s, {}), f"pair {p} stored twice for {s}"
        out[s][p] = (q, t)
    return out


def request(
    url: str, method: str = "GET", data: dict | None = None, headers: dict | None = None, timeout: float = 10
) -> tuple[int, dict, str]:
    """One HTTP request, redirects not followed: (status, headers, body)."""
    import http.client
    from urllib.parse import urlencode, urlsplit

    parts = urlsplit(url)
    con = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        body = urlencode(data) if data is not None else None
        hdrs = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})} if body else (headers or {})
        con.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body, headers=hdrs)
        resp = con.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode("utf-8", "replace")
    finally:
        con.close()


def new_session(base_url: str) -> str:
    status, headers, _ = request(base_url + "start", "POST", {})
    assert status == 303, status
    return headers["Location"].rstrip("/").rsplit("/", 1)[-1]
