"""``pt2i humaneval serve`` killed with SIGKILL while votes arrive: every vote the page reported as saved is in
the database after a restart, none twice, and each rater continues where they were."""

from __future__ import annotations

import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from evaluation.humaneval.study import layout, load_study
from tests.humaneval_utils import make_study, new_session, request, stored

ROOT = Path(__file__).resolve().parents[1]


class Server:
    """``python -m pipeline.cli humaneval serve STUDY --port 0`` as a subprocess on 127.0.0.1."""

    def __init__(self, study_dir: Path):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "humaneval", "serve", str(study_dir), "--port", "0"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in self.proc.stdout], daemon=True).start()
        deadline = time.monotonic() + 60
        while True:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            m = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
            if m:
                self.url = m.group(1)
                break

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def test_killed_server_loses_no_saved_vote(tmp_path):
    study_dir = make_study(tmp_path, n_prompts=20, checks=4)
    study = load_study(study_dir)
    server = Server(study_dir)
    try:
        sids = [new_session(server.url) for _ in range(3)]
        reported: dict[tuple[str, str], tuple[str, str]] = {}
        stop = threading.Event()

        def rater(k: int, sid: str) -> None:
            for n, (pid, _) in enumerate(layout(study, sid)):
                answer = (("left", "same", "right")[(n + k) % 3], ("right", "left", "same")[n % 3])
                try:
                    status, headers, _ = request(
                        f"{server.url}r/{sid}/vote", "POST", {"pair": pid, "quality": answer[0], "text": answer[1]}
                    )
                except OSError:
                    return  # the server is gone
                if status == 303 and headers["Location"].endswith(f"saved={pid}"):
                    reported[(sid, pid)] = answer
                if stop.is_set():
                    return

        threads = [threading.Thread(target=rater, args=(k, s)) for k, s in enumerate(sids)]
        for t in threads:
            t.start()
        while len(reported) < 15 and any(t.is_alive() for t in threads):
            time.sleep(0.005)
        server.kill()  # while the raters are still posting
        stop.set()
        for t in threads:
            t.join(timeout=30)
    finally:
        server.kill()
    assert 15 <= len(reported) < 3 * len(study.pairs), "the kill should land mid-study"
    con = sqlite3.connect(study_dir / "votes.sqlite")
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()
    got = stored(study_dir)  # raises if a vote is stored twice
    for (sid, pid), answer in reported.items():
        assert got[sid][pid] == answer
    # a rater's vote in flight at the kill may be committed without the page saying so: at most one each
    for sid in got:
        assert len([pid for pid in got[sid] if (sid, pid) not in reported]) <= 1

    server = Server(study_dir)  # restarted on the same study: the raters continue where they were
    try:
        for sid in sids:
            done = len(got.get(sid, {}))
            status, _, page = request(f"{server.url}r/{sid}")
            assert status == 200 and f"Pair {done + 1} of {len(study.pairs)}" in page
            next_pid = next(pid for pid, _ in layout(study, sid) if pid not in got.get(sid, {}))
            assert f'name="pair" value="{next_pid}"' in page
        (sid, pid), answer = next(iter(reported.items()))
        again = request(f"{server.url}r/{sid}/vote", "POST", {"pair": pid, "quality": answer[0], "text": answer[1]})
        assert again[0] == 303  # resent after the restart: idempotent, still one row
    finally:
        server.kill()
    assert stored(study_dir) == got
