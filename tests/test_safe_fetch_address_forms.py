"""``tokenization.safe_fetch``'s address rules without a server (the resolver is replaced: nothing is sent):
private and multicast IPv4 addresses behind every IPv6 form that reaches them, ``allow_hosts`` entries in
any case, with a trailing dot or in brackets, an IPv4-mapped answer judged as the IPv4 address it is, and IPv6
ranges that Python counts as global but are not public."""

from __future__ import annotations

import socket

import pytest

from tokenization.safe_fetch import REASON_ADDRESS, FetchPolicy, Refused, is_public, parse_allow_hosts, vetted_addresses


def test_private_and_multicast_ipv4_behind_ipv6_forms():
    hidden = ["::ffff:10.0.0.1", "::ffff:169.254.169.254", "::ffff:0:a00:1"]  # mapped, translated
    hidden += ["2002:a00:1::1", "::a00:1", "64:ff9b::a00:1"]  # 6to4, IPv4-compatible, NAT64 of 10.0.0.1
    hidden += ["2002:e000:1::1", "::e000:1", "64:ff9b::e000:1"]  # multicast 224.0.0.1 behind them
    assert [a for a in hidden if is_public(a)] == []
    assert is_public("::ffff:8.8.8.8")  # a mapped address is the IPv4 address it maps
    assert is_public("::808:808") and is_public("64:ff9b::808:808")


def test_ipv6_ranges_python_counts_as_global_are_refused():
    """Deprecated site-local (fec0::/10, still routed inside older networks), documentation (3fff::/20) and SRv6
    (5f00::/16) addresses are not public, though Python 3.11's ``is_global`` says they are."""
    assert [a for a in ("fec0::1", "feff::1", "3fff::1", "5f00::1") if is_public(a)] == []
    assert is_public("2001:4860:4860::8888") and is_public("2a00:1450::1")  # public unicast still is


def _resolver(answers: dict[str, list[str]]):
    def getaddrinfo(host, port, *args, **kwargs):
        out = []
        for addr in answers[host]:
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            sockaddr = (addr, port, 0, 0) if family == socket.AF_INET6 else (addr, port)
            out.append((family, socket.SOCK_STREAM, 6, "", sockaddr))
        return out

    return getaddrinfo


def test_allow_hosts_names_any_case_and_mapped_addresses(monkeypatch):
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        _resolver({"INTRANET.pt2i-test.invalid.": ["10.1.2.3"], "mapped.pt2i-test.invalid": ["::ffff:10.1.2.3"]}),
    )
    with pytest.raises(Refused, match="allow_hosts") as exc:
        vetted_addresses("INTRANET.pt2i-test.invalid.", 80, FetchPolicy())
    assert str(exc.value) == REASON_ADDRESS
    named = FetchPolicy(allow_hosts=("Intranet.PT2I-test.invalid",))
    assert vetted_addresses("INTRANET.pt2i-test.invalid.", 80, named) == [(socket.AF_INET, ("10.1.2.3", 80))]
    mapped = ("mapped.pt2i-test.invalid", 8080)
    assert vetted_addresses(*mapped, FetchPolicy(allow_hosts=("10.0.0.0/8",)))[0][1][0] == "::ffff:10.1.2.3"
    assert vetted_addresses(*mapped, FetchPolicy(own_servers=("10.1.2.3:8080",)))
    with pytest.raises(Refused):
        vetted_addresses(*mapped, FetchPolicy(own_servers=("10.1.2.3:8081",)))


def test_allow_hosts_entries_parse():
    names, nets = parse_allow_hosts(["[::1]", "Intranet.Example.", "10.0.0.0/8"])
    assert names == frozenset({"intranet.example"})
    assert [str(n) for n in nets] == ["::1/128", "10.0.0.0/8"]
    with pytest.raises(ValueError, match="'http://x' is not a host name"):
        parse_allow_hosts(["http://x"])
