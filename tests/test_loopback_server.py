"""The download stage's loopback server takes a burst of connections at once: with socketserver's listen
backlog of 5, the SYNs past it were dropped and each such connection waited out TCP's 1 s retransmit
(img2dataset opens one per thread; a tiny download's shards took 1 s instead of 0.1)."""

from __future__ import annotations

import selectors
import socket
import time
import urllib.request

from tokenization.url_lists import serve_folder

BURST = 64


def test_a_burst_of_connections_is_accepted_without_waiting_for_a_retransmit(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with serve_folder(tmp_path) as base:
        port = int(base.rsplit(":", 1)[1])
        socks, sel = [], selectors.DefaultSelector()
        t0 = time.monotonic()
        try:
            for _ in range(BURST):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
                sel.register(s, selectors.EVENT_WRITE)
                socks.append(s)
            pending = set(socks)
            while pending and time.monotonic() - t0 < 5:
                for key, _ in sel.select(timeout=0.05):
                    pending.discard(key.fileobj)
                    sel.unregister(key.fileobj)
            took = time.monotonic() - t0
            assert not pending and all(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 for s in socks)
            assert took < 0.9, f"{BURST} connections took {took:.2f} s: some waited for a SYN retransmit"
        finally:
            for s in socks:
                s.close()
        assert urllib.request.urlopen(f"{base}/a.txt", timeout=5).read() == b"x"  # and it still serves
