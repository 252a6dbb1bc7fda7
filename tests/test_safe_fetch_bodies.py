"""``tokenization.safe_fetch.fetch`` on bodies, against a loopback server: a body shorter than its
Content-Length is ``Truncated`` (not a short image), a response without a Content-Type is read (many image
hosts send none), a declared non-image type is refused before the body is read."""

from __future__ import annotations

import pytest

from tokenization.safe_fetch import REASON_NOT_IMAGE, REASON_TRUNCATED, FetchPolicy, Refused, Truncated, fetch
from tokenization.url_lists import QuietHandler

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 56


class Bodies(QuietHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200)
        if self.path == "/short.png":
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG) + 100))
        elif self.path == "/doc.png":
            self.send_header("Content-Type", "application/pdf")
            self.send_header("Content-Length", str(len(PNG)))
        else:  # /untyped.png: no Content-Type at all
            self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG)
        self.close_connection = True


@pytest.fixture
def base(http_server, tmp_path):
    return http_server(tmp_path, Bodies)


def test_truncated_untyped_and_non_image_bodies(base):
    policy = FetchPolicy(allow_hosts=("127.0.0.1",), deadline=10)
    with pytest.raises(Truncated, match=REASON_TRUNCATED):
        fetch(f"{base}/short.png", policy)
    assert fetch(f"{base}/untyped.png", policy) == PNG
    with pytest.raises(Refused) as exc:
        fetch(f"{base}/doc.png", policy)
    assert str(exc.value) == REASON_NOT_IMAGE
