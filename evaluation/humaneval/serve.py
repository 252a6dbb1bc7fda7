"""Serving a study: werkzeug's threaded server, on 127.0.0.1 unless told otherwise.

A host that is not a loopback address serves only with a study password (HTTP basic auth); port 0 picks a
free port. ``running(...)`` serves in a thread (tests, notebooks); ``serve(...)`` in the foreground (the CLI).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from werkzeug.serving import make_server

from evaluation.humaneval import HumanEvalError
from evaluation.humaneval.app import create_app, is_loopback

LOOPBACK = "127.0.0.1"


def make_study_server(study_dir: str | Path, host: str = LOOPBACK, port: int = 0, password: str | None = None):
    """A werkzeug server for the study (not yet serving); ``server.server_port`` is the bound port."""
    if not is_loopback(host) and not password:
        raise HumanEvalError(
            f"refusing to serve on {host} without a study password: pass --password "
            "(or set PT2I_HUMANEVAL_PASSWORD), or keep the default --host 127.0.0.1"
        )
    app = create_app(study_dir, password=password)
    try:
        return make_server(host, port, app, threaded=True)
    except OSError as exc:
        raise HumanEvalError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def url_of(server) -> str:
    host = server.host if ":" not in server.host else f"[{server.host}]"
    return f"http://{host}:{server.server_port}/"


@contextmanager
def running(study_dir: str | Path, host: str = LOOPBACK, port: int = 0, password: str | None = None) -> Iterator[str]:
    """Serve in a background thread; yields the base URL; stops the server on exit."""
    server = make_study_server(study_dir, host, port, password)
    thread = threading.Thread(target=server.serve_forever, name="humaneval-server", daemon=True)
    thread.start()
    try:
        yield url_of(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def serve(
    study_dir: str | Path,
    host: str = LOOPBACK,
    port: int = 0,
    password: str | None = None,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve in the foreground until interrupted; announces the URL first."""
    server = make_study_server(study_dir, host, port, password)
    if threading.current_thread() is threading.main_thread():  # SIGTERM stops it like Ctrl-C
        signal.signal(signal.SIGTERM, _interrupt)
    announce(f"humaneval: serving {Path(study_dir)} at {url_of(server)} (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
