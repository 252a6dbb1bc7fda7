"""A loopback web server with good and hostile images for the download tests, and a peak-memory sampler.

``write_site(root)`` writes the files; ``HostileHandler`` serves them (``tests.conftest.http_server``) and
answers the hostile paths itself. ``URLS`` maps each case to its path (or a whole URL, ``{base}`` and
``{port}`` filled in by the test).
"""

from __future__ import annotations

import contextlib
import io
import socket
import struct
import threading
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from tokenization.url_lists import QuietHandler

SLOW_S, TIMEOUT_S, DEADLINE_S = 4, 2, 3  # headers after SLOW_S > the read timeout; the drip outlasts the deadline
DRIP_BYTES, DRIP_EVERY_S = 40, 0.5  # 20 s in all, each byte well within the read timeout
BOMB_SIDE = 20000  # 20000 x 20000 RGB: 1.2 GB decoded, ~1.2 MB on the wire
PRIVATE_HOST, PRIVATE_ADDRESS = "images.pt2i-test.invalid", "10.11.12.13"

URLS = {
    "wrongtype": "/serve/document.pdf",
    "empty": "/serve/empty.png",
    "error500": "/serve/error500.png",
    "redirectloop": "/serve/loop.png",
    "drip": "/serve/drip.png",
    "bomb": "/bomb.png",
    "html": "/serve/page.html",
    "truncated_png": "/truncated.png",
    "reset": "/serve/reset.png",
    "missing": "/does_not_exist.png",
    "file": "file:///etc/hostname",
    "private": f"http://{PRIVATE_HOST}:{{port}}/good0.png",
    "notimage": "/notimage.jpg",
    "truncated_jpg": "/truncated.jpg",
    "huge": "/huge.png",
    "slow": "/slow/good0.png",
}


def png_bomb(width: int, height: int, rows: int = 500) -> bytes:
    """A black RGB PNG of ``width x height``, made without ever holding the raw image: one compressed
    block of ``rows`` rows, ended by a full flush (so it refers to nothing before it), repeated."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    assert height % rows == 0
    comp = zlib.compressobj(9)
    block = bytes((3 * width + 1) * rows)  # filter byte 0, then black pixels
    first = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)  # with the zlib header
    again = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
    adler = ((3 * width + 1) * height % 65521) << 16 | 1  # adler32 of that many zero bytes
    idat = first + again * (height // rows - 1) + b"\x03\x00" + struct.pack(">I", adler)  # empty final block
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _encoded(array: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **kw)
    return buf.getvalue()


def write_site(root: Path, goods: int = 12) -> list[str]:
    """Good PNGs ``good{i}.png`` and the hostile static files into ``root``; returns the good names."""
    rng = np.random.default_rng(0)
    names = []
    for i in range(goods):
        size = (int(rng.integers(33, 80)), int(rng.integers(33, 80)))
        Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 255, 3))).save(root / f"good{i}.png")
        names.append(f"good{i}")
    noise = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    (root / "notimage.jpg").write_bytes(b"<html>this is not an image</html>" * 10)
    jpg, png = _encoded(noise, "JPEG", quality=90), _encoded(noise, "PNG")
    (root / "truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    Image.new("RGB", (1500, 1500), (10, 200, 10)).save(root / "huge.png")  # over the test's max_image_area
    (root / "bomb.png").write_bytes(png_bomb(BOMB_SIDE, BOMB_SIDE))
    return names


def _client_process(port: int) -> psutil.Process | None:
    """The process below this one whose TCP socket has local port ``port`` (the client of a request)."""
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if any(c.laddr and c.laddr.port == port for c in p.net_connections(kind="tcp")):
                return p
    return None


class HostileHandler(QuietHandler):
    """Static files, plus ``/slow/X`` (X after SLOW_S s) and the ``/serve/...`` answers of ``URLS``;
    ``/serve/kill.png`` SIGKILLs the process that asked (an out-of-memory kill) while ``kills_left`` > 0
    (counting them in ``killed``), and is a good PNG after that."""

    kills_left, killed = 0, 0

    def do_GET(self):  # noqa: N802
        try:
            if self.path.startswith("/serve/"):
                self._serve(self.path[len("/serve/") :])
                return
            if self.path.startswith("/slow/"):
                time.sleep(SLOW_S)
                self.path = self.path[len("/slow") :]
            super().do_GET()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up

    def _reply(self, status: int, ctype: str, body: bytes = b"", length: int | None = None, **headers) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _serve(self, name: str) -> None:
        if name == "document.pdf":
            self._reply(200, "application/pdf", b"%PDF-1.4\n" + b"0" * 2000)
        elif name == "empty.png":
            self._reply(200, "image/png")
        elif name == "error500.png":
            self._reply(500, "text/plain", b"boom")
        elif name == "loop.png":
            self._reply(302, "text/plain", Location="/serve/loop.png")
        elif name.startswith("to/"):  # /serve/to/URL: a redirect to URL (quoted)
            self._reply(302, "text/plain", Location=urllib.parse.unquote(name[len("to/") :]))
        elif name == "noai.png":  # a good PNG whose server asks not to be used for AI training
            self._reply(200, "image/png", (Path(self.directory) / "good0.png").read_bytes(), **{"X-Robots-Tag": "noai"})
        elif name == "unsized.png":  # no Content-Length: the cap must count
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(b"\0" * 300_000)
            self.close_connection = True
        elif name == "page.html":
            self._reply(200, "text/html; charset=utf-8", b"<!doctype html><title>hi</title><p>an html page")
        elif name == "reset.png":  # RST instead of an answer
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
        elif name == "kill.png":
            victim = _client_process(self.client_address[1]) if HostileHandler.kills_left > 0 else None
            if victim is not None:
                HostileHandler.kills_left -= 1
                HostileHandler.killed += 1
                victim.kill()
                self.close_connection = True
                return
            body = _encoded(np.zeros((40, 40, 3), np.uint8), "PNG")
            self._reply(200, "image/png", body)
        elif name == "drip.png":
            self._reply(200, "image/png", length=DRIP_BYTES)
            for _ in range(DRIP_BYTES):
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(DRIP_EVERY_S)
        else:
            self._reply(404, "text/plain", b"no such case")


class PeakRss:
    """Samples the private resident memory (RSS less its file-backed shared pages: the libraries torch and
    OpenCV map) of every process below this one (img2dataset's workers) every ``every_s`` seconds in a
    thread; ``peak`` is the largest one seen, in bytes; ``by_pid`` each process's peak and command."""

    def __init__(self, every_s: float = 0.02):
        self.every_s, self.peak, self.samples = every_s, 0, 0
        self.by_pid: dict = {}
        self._stop = threading.Event()

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            for p in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    info = p.memory_info()
                    rss = info.rss - info.shared  # private: what a decoded image would add
                    self.peak = max(self.peak, rss)
                    if rss > self.by_pid.get(p.pid, (0, ""))[0]:
                        self.by_pid[p.pid] = (rss, " ".join(p.cmdline())[-80:])
            self.samples += 1
            self._stop.wait(self.every_s)

    @contextlib.contextmanager
    def watching(self) -> Iterator[PeakRss]:
        thread = threading.Thread(target=self._run, name="peak_rss", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(5)
