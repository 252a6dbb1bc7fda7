"""``tokenization.safe_fetch`` in this process against a loopback server: each refusal, redirects rechecked,
and no connection ever attempted to an address that is not loopback (``tests.net_guard``)."""

from __future__ import annotations

import time
import urllib.error
import urllib.parse

import pytest

from tests import net_guard
from tests.hostile_server import DRIP_BYTES, HostileHandler, write_site
from tokenization.safe_fetch import (
    REASON_ADDRESS,
    REASON_DEADLINE,
    REASON_SCHEME,
    REASON_TOO_LARGE,
    FetchPolicy,
    Refused,
    fetch,
    is_public,
)

PRIVATE = {"intranet.pt2i-test.invalid": "10.1.2.3", "metadata.pt2i-test.invalid": "169.254.169.254"}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    write_site(root, goods=1)
    return root


@pytest.fixture
def server(site, http_server, tmp_path):
    log = str(tmp_path / "guard.jsonl")
    undo = net_guard.install(PRIVATE, log)
    yield http_server(site, HostileHandler)
    undo()
    assert [g for g in net_guard.read_log(log) if "blocked" in g] == []  # nothing left loopback


def _to(base: str, url: str) -> str:
    return f"{base}/serve/to/{urllib.parse.quote(url, safe='')}"


def test_non_public_addresses():
    private = ["127.0.0.1", "::1", "::ffff:127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254"]
    private += ["100.100.100.200", "fd00:ec2::254", "fe80::1%eth0", "0.0.0.0", "224.0.0.1"]
    # IPv6 forms that reach an IPv4 address through a translator or tunnel (NAT64, 6to4, IPv4-compatible,
    # IPv4-translated): the metadata service and loopback behind them
    private += ["64:ff9b::a9fe:a9fe", "64:ff9b::7f00:1", "2002:a9fe:a9fe::1", "::7f00:1", "::ffff:0:7f00:1"]
    private += ["64:ff9b:1::808:808"]  # NAT64 local-use prefix (RFC 8215)
    assert [a for a in private if is_public(a)] == []
    assert is_public("8.8.8.8") and is_public("2606:4700:4700::1111")
    assert is_public("64:ff9b::808:808") and is_public("2002:808:808::1")  # a public IPv4 behind them


def test_own_server_and_allow_hosts(server):
    port = int(server.rsplit(":", 1)[1])
    url = f"{server}/good0.png"
    with pytest.raises(Refused, match="allow_hosts"):
        fetch(url, FetchPolicy())  # loopback is refused by default
    with pytest.raises(Refused, match="allow_hosts"):
        fetch(url, FetchPolicy(own_servers=(f"127.0.0.1:{port + 1}",)))  # another port of the same host
    assert fetch(url, FetchPolicy(own_servers=(f"127.0.0.1:{port}",)))[:4] == b"\x89PNG"
    assert fetch(url, FetchPolicy(allow_hosts=("127.0.0.0/8",)))[:4] == b"\x89PNG"
    assert fetch(url.replace("127.0.0.1", "localhost"), FetchPolicy(allow_hosts=("localhost",)))[:4] == b"\x89PNG"


def test_redirects_are_rechecked_and_bounded(server):
    policy = FetchPolicy(allow_hosts=("127.0.0.1",), max_redirects=3)
    for target in ("http://intranet.pt2i-test.invalid/x.png", "http://metadata.pt2i-test.invalid/latest"):
        with pytest.raises(Refused) as exc:
            fetch(_to(server, target), policy)
        assert str(exc.value) == REASON_ADDRESS
    with pytest.raises(Refused) as exc:
        fetch(_to(server, "ftp://127.0.0.1/x.png"), policy)
    assert str(exc.value) == REASON_SCHEME
    with pytest.raises(urllib.error.HTTPError, match="Redirection to url 'file:///etc/hostname' is not allowed"):
        fetch(_to(server, "file:///etc/hostname"), policy)
    chain = f"{server}/good0.png"
    for _ in range(4):
        chain = _to(server, chain)
    with pytest.raises(urllib.error.HTTPError, match="infinite loop"):
        fetch(chain, policy)  # 4 hops > 3
    assert fetch(chain, FetchPolicy(allow_hosts=("127.0.0.1",), max_redirects=4))[:4] == b"\x89PNG"


def test_deadline_and_byte_cap(server):
    policy = FetchPolicy(allow_hosts=("127.0.0.1",), timeout=2, deadline=1.5, max_bytes=100_000)
    t0 = time.monotonic()
    with pytest.raises(Refused) as exc:
        fetch(f"{server}/serve/drip.png", policy)  # a byte every 0.5 s: no read ever times out
    assert str(exc.value) == REASON_DEADLINE and time.monotonic() - t0 < 1.5 + 1.0 < DRIP_BYTES * 0.5
    with pytest.raises(Refused) as exc:
        fetch(f"{server}/serve/unsized.png", policy)
    assert str(exc.value) == REASON_TOO_LARGE
    with pytest.raises(Refused, match="larger than"):
        fetch(f"{server}/bomb.png", policy)  # refused by its Content-Length, before reading


@pytest.mark.slow  # imports img2dataset (torch, OpenCV, albumentations): ~30 s alone on 2 shared cores
def test_img2dataset_adapter_keeps_its_robots_rule(server):
    from tokenization.download_hooks import REASON_DISALLOWED, download_image

    policy = FetchPolicy(allow_hosts=("127.0.0.1",))
    url = f"{server}/serve/noai.png"
    assert download_image(("k", url), 5, None, {"noai"}, policy=policy) == ("k", None, REASON_DISALLOWED)
    key, body, err = download_image(("k", url), 5, None, None, policy=policy)
    assert err is None and body.read()[:4] == b"\x89PNG"
    assert download_image(("k", "file:///etc/hostname"), 5, None, None, policy=policy) == ("k", None, REASON_SCHEME)
