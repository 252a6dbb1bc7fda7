"""HTTP(S) fetches of untrusted URLs, bounded: ``fetch(url, policy) -> bytes`` or ``Refused(reason)``.

What a URL list from the web cannot make the downloader do (``FetchPolicy``, from ``data.download``):

* fetch anything but ``http``/``https`` (``file://``, ``ftp://``, ``data:`` ...), also not through a redirect;
* reach a loopback, private, link-local (cloud metadata: 169.254.169.254), shared or reserved address,
  unless its host name, address or network is in ``allow_hosts``, or it is one of the servers the pipeline
  itself runs (``own_servers``). The host is resolved once and the connection goes to the address that was
  checked, so a name cannot resolve to a public address for the check and a private one for the connect;
  every redirect hop is checked the same way, at most ``max_redirects`` of them;
* hold a thread longer than ``deadline`` seconds in all (connect, redirects, headers, body): a watchdog
  shuts the sockets down at the deadline; ``timeout`` still bounds each socket read;
* send more than ``max_bytes`` (by its Content-Length, or counted while reading);
* make us read a body that says it is not an image (a ``Content-Type`` other than ``image/*`` or a
  generic binary type), or an empty one.

Each refusal has one fixed reason string (the ``REASON_*`` constants), so failures can be counted per
reason. Plain ``urllib`` (what img2dataset uses) with its handlers replaced; no proxy is used (a proxy
would resolve and connect on its own, past the address check).
"""

from __future__ import annotations

import functools
import heapq
import http.client
import ipaddress
import itertools
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.message import Message
from typing import Optional, Union
from urllib.parse import urlsplit

REASON_SCHEME = "refused: not an http or https URL"
REASON_ADDRESS = "refused: host resolves to a non-public address (allow it in data.download.allow_hosts)"
REASON_DEADLINE = "refused: download took longer than data.download.deadline"
REASON_TOO_LARGE = "refused: response larger than data.download.max_image_bytes"
REASON_NOT_IMAGE = "refused: content type is not an image"
REASON_EMPTY = "refused: empty response"
REASON_TRUNCATED = "incomplete response: the connection closed before its Content-Length"
SCHEMES = ("http", "https")
BINARY_TYPES = ("application/octet-stream", "binary/octet-stream", "application/binary")
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")
_CHUNK = 64 * 1024
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class Refused(Exception):
    """A URL the policy does not fetch; ``str()`` is the fixed reason."""


class Truncated(OSError):
    """A body shorter than its Content-Length (the server closed the connection early)."""


@dataclass(frozen=True)
class FetchPolicy:
    """What ``fetch`` allows. ``allow_hosts``: host names (exact, any case), addresses or CIDR ranges that
    may be non-public; ``own_servers``: ``"ADDRESS:PORT"`` endpoints the pipeline serves itself."""

    timeout: float = 10.0
    deadline: float = 30.0
    max_bytes: int = 16 * 2**20
    max_redirects: int = 5
    allow_hosts: tuple[str, ...] = ()
    own_servers: tuple[str, ...] = ()


@functools.lru_cache(maxsize=64)
def _parsed(entries: tuple[str, ...]) -> tuple[frozenset[str], tuple[Network, ...]]:
    return parse_allow_hosts(entries)


def parse_allow_hosts(entries: Iterable[str]) -> tuple[frozenset[str], tuple[Network, ...]]:
    """(host names, networks) of ``allow_hosts``; ``ValueError`` naming an entry that is neither."""
    names, nets = set(), []
    for entry in entries:
        text = str(entry).strip().lower()
        try:
            nets.append(ipaddress.ip_network(text.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        if not _HOSTNAME.match(text):
            raise ValueError(f"allow_hosts: {entry!r} is not a host name, an address or a CIDR range")
        names.add(text.rstrip("."))
    return frozenset(names), tuple(nets)


def _address(text: str) -> Union[ipaddress.IPv4Address, ipaddress.IPv6Address]:
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    return ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped else ip


_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052's well-known prefix: the last 32 bits are an IPv4
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: NAT64 inside one network, never public
# IPv6 ranges that are not public but that Python's ``is_global`` (3.11) counts as global: deprecated site-local
# (RFC 3879; still routed inside older networks), documentation (RFC 9637), SRv6 segment identifiers (RFC 9602)
_NOT_GLOBAL_V6 = tuple(ipaddress.ip_network(n) for n in ("fec0::/10", "3fff::/20", "5f00::/16"))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address reaches through a translator or tunnel: NAT64, 6to4, IPv4-compatible
    (::a.b.c.d), IPv4-translated (::ffff:0:a.b.c.d)."""
    low = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    out = [ip.sixtofour] if ip.sixtofour else []
    if ip in _NAT64 or int(ip) >> 32 in (0, 0xFFFF0000):
        out.append(low)
    return out


def is_public(address: str) -> bool:
    """A globally routable unicast address: not loopback, private, link-local (metadata), shared (CGNAT),
    reserved (site-local, documentation, ...), unspecified or multicast; an IPv6 address that embeds an IPv4 one
    (NAT64, 6to4, ...) only when that one is public too."""
    ip = _address(address)
    if ip.version == 6:
        if ip in _NAT64_LOCAL or any(ip in net for net in _NOT_GLOBAL_V6):
            return False
        embedded = _embedded_ipv4(ip)
        if embedded:  # decided by the IPv4 behind it (Python's own is_global of 2002::/16 differs between releases)
            return all(v4.is_global and not v4.is_multicast for v4 in embedded)
    return ip.is_global and not ip.is_multicast


def vetted_addresses(host: str, port: int, policy: FetchPolicy) -> list[tuple[int, tuple]]:
    """``[(family, sockaddr)]`` of ``host`` that the policy lets us connect to, in resolver order;
    ``Refused(REASON_ADDRESS)`` when there is none."""
    names, _ = _parsed(tuple(policy.allow_hosts))
    trusted_name = host.lower().rstrip(".") in names
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    ok = [
        (family, sockaddr)
        for family, _, _, _, sockaddr in found
        if family in (socket.AF_INET, socket.AF_INET6)
        and (trusted_name or _allowed(sockaddr[0], port, tuple(policy.allow_hosts), tuple(policy.own_servers)))
    ]
    if not ok:
        raise Refused(REASON_ADDRESS)
    return ok


@functools.lru_cache(maxsize=4096)
def _allowed(address: str, port: int, allow_hosts: tuple[str, ...], own_servers: tuple[str, ...]) -> bool:
    ip = _address(address)
    _, nets = _parsed(allow_hosts)
    return is_public(address) or any(ip in net for net in nets) or f"{ip}:{port}" in own_servers


class _Budget:
    """One URL's wall-clock deadline: at expiry (``_WATCHDOG``) every socket it watches is shut down (a
    blocked read returns at once), and ``expired`` is set."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds
        self.expired = self.closed = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        _WATCHDOG.add(self)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            if self.expired:
                raise Refused(REASON_DEADLINE)
            self._socks.append(sock.dup())  # a second handle: TLS wrapping detaches the original

    def expire(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.expired = True
            for s in self._socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        with self._lock:
            self.closed = True
            for s in self._socks:
                s.close()
            self._socks.clear()


class _Watchdog:
    """One thread per process that expires budgets at their deadlines (a timer thread per URL would cost
    more than a small download)."""

    def __init__(self):
        self._heap: list[tuple[float, int, _Budget]] = []
        self._cond = threading.Condition()
        self._ids = itertools.count()
        self._thread: Optional[threading.Thread] = None

    def add(self, budget: _Budget) -> None:
        with self._cond:
            first = not self._heap or budget.deadline < self._heap[0][0]
            heapq.heappush(self._heap, (budget.deadline, next(self._ids), budget))
            if self._thread is None or not self._thread.is_alive():  # also after a fork
                self._thread = threading.Thread(target=self._run, name="fetch_deadlines", daemon=True)
                self._thread.start()
            elif first:  # the thread sleeps until the earliest deadline: wake it only for an earlier one
                self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][2].closed:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                delay = self._heap[0][0] - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)[2].expire()


_WATCHDOG = _Watchdog()


class _VettedConnection:
    """Mixed into ``HTTPConnection``/``HTTPSConnection``: connects only to vetted addresses, each socket
    watched by the request's budget."""

    def __init__(self, *args, policy: FetchPolicy, budget: _Budget, **kwargs):
        super().__init__(*args, **kwargs)
        self._policy, self._budget = policy, budget
        self._create_connection = self._connect_vetted  # http.client calls this in connect()

    def _connect_vetted(self, address, timeout=None, source_address=None):
        host, port = address
        error: Optional[OSError] = None
        for family, sockaddr in vetted_addresses(host, port, self._policy):
            left = self._budget.remaining()
            if left <= 0:
                raise Refused(REASON_DEADLINE)
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                self._budget.watch(sock)
                sock.settimeout(min(timeout or self._policy.timeout, left))
                sock.connect(sockaddr)
                sock.settimeout(timeout or self._policy.timeout)
                return sock
            except OSError as exc:
                error = exc
                sock.close()
        raise error  # type: ignore[misc]  (vetted_addresses never returns an empty list)


class _HTTPConnection(_VettedConnection, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_VettedConnection, http.client.HTTPSConnection):
    pass


class _HTTP(urllib.request.HTTPHandler):
    def __init__(self, policy: FetchPolicy):
        super().__init__()
        self._policy = policy

    def http_open(self, req):
        return self.do_open(functools.partial(_HTTPConnection, policy=self._policy, budget=req.budget), req)


class _HTTPS(urllib.request.HTTPSHandler):
    def __init__(self, policy: FetchPolicy):
        super().__init__()
        self._policy = policy

    def https_open(self, req):
        conn = functools.partial(_HTTPSConnection, policy=self._policy, budget=req.budget)
        return self.do_open(conn, req, context=self._context)


class _Redirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirects (loop detection included), bounded, limited to http/https, under the same budget."""

    def __init__(self, limit: int):
        super().__init__()
        self.max_redirections = limit
        self.max_repeats = min(self.max_repeats, limit)

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme.lower() not in SCHEMES:
            fp.close()
            raise Refused(REASON_SCHEME)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.budget = req.budget
        return new


@functools.lru_cache(maxsize=8)
def _opener(policy: FetchPolicy) -> urllib.request.OpenerDirector:
    """One opener per policy (building one costs more than a small download); requests carry their budget."""
    opener = urllib.request.OpenerDirector()  # no proxy, file, ftp or data handler
    for handler in (
        _HTTP(policy),
        _HTTPS(policy),
        _Redirects(policy.max_redirects),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
        urllib.request.UnknownHandler(),
    ):
        opener.add_handler(handler)
    return opener


def _is_image_type(headers: Message) -> bool:
    if headers.get("Content-Type") is None:
        return True
    ctype = headers.get_content_type()
    return headers.get_content_maintype() == "image" or ctype in BINARY_TYPES


def _read_capped(response, max_bytes: int, budget: _Budget) -> bytes:
    text = (response.headers.get("Content-Length") or "").strip()
    length = int(text) if text.isdigit() else None
    if length is not None and length > max_bytes:
        raise Refused(REASON_TOO_LARGE)
    chunks, size = [], 0
    while chunk := response.read1(_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise Refused(REASON_TOO_LARGE)
        chunks.append(chunk)
    if budget.expired:
        raise Refused(REASON_DEADLINE)
    if length is not None and size < length:
        raise Truncated(REASON_TRUNCATED)
    return b"".join(chunks)


def fetch(
    url: str,
    policy: FetchPolicy,
    headers: Optional[dict] = None,
    check_headers: Optional[Callable[[Message], Optional[str]]] = None,
) -> bytes:
    """The body of ``url``. Raises ``Refused`` (see the module docstring), ``urllib.error.HTTPError`` for
    an error status, or the network's ``OSError``. ``check_headers(headers)`` may return a reason to stop
    before the body is read."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES or not parts.hostname:
        raise Refused(REASON_SCHEME)
    budget = _Budget(policy.deadline)
    try:
        request = urllib.request.Request(url, headers=dict(headers or {}))
        request.budget = budget
        with _opener(policy).open(request, timeout=policy.timeout) as response:
            reason = check_headers(response.headers) if check_headers else None
            if reason:
                raise Refused(reason)
            if not _is_image_type(response.headers):
                raise Refused(REASON_NOT_IMAGE)
            body = _read_capped(response, policy.max_bytes, budget)
        if not body:
            raise Refused(REASON_EMPTY)
        return body
    except Refused:
        raise
    except Exception as exc:
        if budget.expired:
            raise Refused(REASON_DEADLINE) from exc
        raise
    finally:
        budget.close()
