"""Tests for reverse-proxy header resolution (SPEC 6.5, G26)."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from opp_auth.http import forwarded
from opp_auth.http.forwarded import (
    Forwarded,
    ForwardedError,
    parse_trusted_proxies,
    resolve_forwarded,
)

TRUSTED = parse_trusted_proxies(["10.0.0.0/8", "127.0.0.1", "::1", "fd00::/8"])
PROXY = "10.0.0.1"


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    """Build a request-like header mapping, allowing repeated names."""
    return CIMultiDictProxy(CIMultiDict(pairs))


def resolve(*pairs: tuple[str, str], peer: str | None = PROXY) -> Forwarded | None:
    """Resolve with proxy support on and the TRUSTED networks."""
    return resolve_forwarded(peer, headers(*pairs), True, TRUSTED)


@pytest.fixture(autouse=True)
def _fresh_warnings() -> Iterator[None]:
    """Each test starts with no peer warned about."""
    forwarded._WARNINGS.clear()
    yield
    forwarded._WARNINGS.clear()


def test_parse_trusted_proxies() -> None:
    """Addresses become single-host networks; host bits in networks are tolerated."""
    assert parse_trusted_proxies(
        ["127.0.0.1", " 10.0.0.0/8 ", "::1", "fd00::/8", "192.168.1.10/24"]
    ) == [
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("fd00::/8"),
        ipaddress.ip_network("192.168.1.0/24"),
    ]


@pytest.mark.parametrize("bad", ["proxy.lan", "10.0.0.0/33", "", "1.2.3.4.5"])
def test_parse_trusted_proxies_names_the_bad_entry(bad: str) -> None:
    """An invalid entry raises ValueError naming it."""
    with pytest.raises(ValueError, match="Invalid trusted_proxies entry"):
        parse_trusted_proxies(["127.0.0.1", bad])


@pytest.mark.parametrize(
    "pairs",
    [
        (),
        (("X-Forwarded-Proto", "https"),),
        (("X-Forwarded-Host", "example.com"),),
    ],
)
def test_no_forwarded_for_header_changes_nothing(
    pairs: tuple[tuple[str, str], ...],
) -> None:
    """Without X-Forwarded-For the other headers are not looked at."""
    assert resolve(*pairs) is None


@pytest.mark.parametrize("peer", [None, "", "/run/opp.sock"])
def test_unknown_peer_changes_nothing(peer: str | None) -> None:
    """Without a peer IP (unix socket, closed transport) nothing can be trusted."""
    assert resolve(("X-Forwarded-For", "1.1.1.1"), peer=peer) is None


def test_feature_off_ignores_header_and_warns_once_per_peer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """G26: with proxy support off the header is ignored, one warning per peer."""
    sent = headers(("X-Forwarded-For", "1.1.1.1"))

    with caplog.at_level(logging.WARNING):
        assert resolve_forwarded("10.0.0.1", sent, False, TRUSTED) is None
        assert resolve_forwarded("10.0.0.1", sent, False, TRUSTED) is None
        assert resolve_forwarded("10.0.0.2", sent, False, TRUSTED) is None

    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "received from 10.0.0.1" in messages[0]
    assert "received from 10.0.0.2" in messages[1]
    assert "header was ignored" in messages[0]
    assert "will be blocked" not in caplog.text
    assert all(record.levelno == logging.WARNING for record in caplog.records)


def test_feature_off_ignores_even_malformed_headers() -> None:
    """Headers that are not processed cannot cause a 400."""
    sent = headers(("X-Forwarded-For", "bogus"), ("X-Forwarded-For", "x"))
    assert resolve_forwarded(PROXY, sent, False, TRUSTED) is None


def test_untrusted_peer_ignores_header_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A peer outside trusted_proxies gets the socket IP, warned about once."""
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert resolve(("X-Forwarded-For", "1.1.1.1"), peer="8.8.8.8") is None
        assert resolve(("X-Forwarded-For", "bogus"), peer="8.8.4.4") is None

    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith(
        "Received X-Forwarded-For header from untrusted proxy 8.8.8.8, "
        "headers not processed"
    )
    assert "untrusted proxy 8.8.4.4" in messages[1]


def test_warned_peers_are_bounded(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Past the bound, new peers are not warned about and one notice says so."""
    monkeypatch.setattr(forwarded, "_WARNINGS", forwarded._WarnOncePerPeer(3))
    sent = headers(("X-Forwarded-For", "1.1.1.1"))

    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            for host in range(1, 11):
                resolve_forwarded(f"8.8.8.{host}", sent, True, TRUSTED)

    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 4
    assert [m for m in messages if "untrusted proxy" in m] == [
        f"Received X-Forwarded-For header from untrusted proxy 8.8.8.{host}, headers "
        "not processed; add it to trusted_proxies under http: if it is your proxy"
        for host in (1, 2, 3)
    ]
    assert "no further warnings" in messages[3]


def test_too_many_forwarded_for_headers() -> None:
    """Two X-Forwarded-For headers are a 400."""
    with pytest.raises(ForwardedError) as err:
        resolve(("X-Forwarded-For", "1.1.1.1"), ("X-Forwarded-For", "2.2.2.2"))
    assert (
        str(err.value) == "Too many headers for X-Forwarded-For: ['1.1.1.1', '2.2.2.2']"
    )


@pytest.mark.parametrize(
    "value",
    [
        "bogus",
        "1.1.1.1, bogus",
        "1.1.1.1,",
        ",1.1.1.1",
        "",
        "1.1.1.1:8080",
        "1.1.1.1 2.2.2.2",
    ],
)
def test_invalid_ip_in_forwarded_for(value: str) -> None:
    """Any entry that is not an IP address is a 400."""
    with pytest.raises(ForwardedError) as err:
        resolve(("X-Forwarded-For", value))
    assert str(err.value) == f"Invalid IP address in X-Forwarded-For: {value}"


@pytest.mark.parametrize(
    ("value", "remote"),
    [
        ("1.1.1.1", "1.1.1.1"),
        ("1.1.1.1, 10.0.0.2", "1.1.1.1"),
        ("1.1.1.1, 2.2.2.2, 10.0.0.2", "2.2.2.2"),
        ("1.1.1.1, 10.0.0.5, 2.2.2.2, 10.0.0.2, 127.0.0.1", "2.2.2.2"),
        # every entry trusted → the left-most one
        ("10.0.0.3, 10.0.0.2", "10.0.0.3"),
        ("127.0.0.1", "127.0.0.1"),
        # whitespace around entries
        ("  1.1.1.1 ,10.0.0.2 ", "1.1.1.1"),
        ("2001:db8::1, ::1", "2001:db8::1"),
        ("fd00::5, ::1", "fd00::5"),
        # IPv4-mapped entries are judged as the IPv4 address they carry
        ("1.1.1.1, ::ffff:10.0.0.9", "1.1.1.1"),
    ],
)
def test_client_is_first_untrusted_from_the_right(value: str, remote: str) -> None:
    """The walk goes right to left, skipping trusted proxies."""
    assert resolve(("X-Forwarded-For", value)) == Forwarded(remote, None, None)


@pytest.mark.parametrize(
    "peer", ["10.255.0.1", "127.0.0.1", "::1", "fd00::1", "::ffff:10.0.0.1"]
)
def test_trusted_peers(peer: str) -> None:
    """Peers inside trusted_proxies, incl. IPv4-mapped ones, are trusted."""
    assert resolve(("X-Forwarded-For", "1.1.1.1"), peer=peer) == Forwarded(
        "1.1.1.1", None, None
    )


@pytest.mark.parametrize(
    ("forwarded_for", "proto", "scheme"),
    [
        ("1.1.1.1", "https", "https"),
        ("1.1.1.1, 10.0.0.2", "https", "https"),
        ("1.1.1.1, 2.2.2.2, 10.0.0.2", " https ", "https"),
        # one element per hop: the client's position
        ("1.1.1.1, 10.0.0.2", "https, http", "https"),
        ("1.1.1.1, 2.2.2.2, 10.0.0.2", "wss, https, http", "https"),
        ("1.1.1.1, 10.0.0.3, 10.0.0.2", "https, ws, http", "https"),
        # all trusted → the left-most element, like the address
        ("10.0.0.3, 10.0.0.2", "https, http", "https"),
    ],
)
def test_forwarded_proto(forwarded_for: str, proto: str, scheme: str) -> None:
    """X-Forwarded-Proto gives the scheme matching the chosen client."""
    result = resolve(("X-Forwarded-For", forwarded_for), ("X-Forwarded-Proto", proto))
    assert result is not None
    assert result.scheme == scheme


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (
            (("X-Forwarded-Proto", "https"), ("X-Forwarded-Proto", "http")),
            "Too many headers for X-Forwarded-Proto: ['https', 'http']",
        ),
        (
            (("X-Forwarded-Proto", ""),),
            "Empty item received in X-Forwarded-Proto header: ",
        ),
        (
            (("X-Forwarded-Proto", "https, "),),
            "Empty item received in X-Forwarded-Proto header: https, ",
        ),
        (
            (("X-Forwarded-Proto", "https,,http"),),
            "Empty item received in X-Forwarded-Proto header: https,,http",
        ),
        (
            (("X-Forwarded-Proto", "https, http"),),
            "Incorrect number of elements in X-Forwarded-Proto. Expected 1 or 3, "
            "got 2: https, http",
        ),
        (
            (("X-Forwarded-Proto", "a, b, c, d"),),
            "Incorrect number of elements in X-Forwarded-Proto. Expected 1 or 3, "
            "got 4: a, b, c, d",
        ),
    ],
)
def test_forwarded_proto_errors(
    pairs: tuple[tuple[str, str], ...], message: str
) -> None:
    """Malformed X-Forwarded-Proto from a trusted proxy is a 400."""
    with pytest.raises(ForwardedError) as err:
        resolve(("X-Forwarded-For", "1.1.1.1, 2.2.2.2, 10.0.0.2"), *pairs)
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("value", "host"),
    [("example.com", "example.com"), ("  example.com:8443 ", "example.com:8443")],
)
def test_forwarded_host(value: str, host: str) -> None:
    """X-Forwarded-Host replaces the host."""
    assert resolve(
        ("X-Forwarded-For", "1.1.1.1"), ("X-Forwarded-Host", value)
    ) == Forwarded("1.1.1.1", None, host)


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (
            (("X-Forwarded-Host", "a.example"), ("X-Forwarded-Host", "b.example")),
            "Too many headers for X-Forwarded-Host: ['a.example', 'b.example']",
        ),
        (
            (("X-Forwarded-Host", ""),),
            "Empty value received in X-Forwarded-Host header",
        ),
        (
            (("X-Forwarded-Host", "   "),),
            "Empty value received in X-Forwarded-Host header",
        ),
    ],
)
def test_forwarded_host_errors(
    pairs: tuple[tuple[str, str], ...], message: str
) -> None:
    """Malformed X-Forwarded-Host from a trusted proxy is a 400."""
    with pytest.raises(ForwardedError) as err:
        resolve(("X-Forwarded-For", "1.1.1.1"), *pairs)
    assert str(err.value) == message


def test_all_three_headers() -> None:
    """Address, scheme and host are resolved together; names are case-insensitive."""
    assert resolve(
        ("x-forwarded-for", "1.1.1.1, 10.0.0.2"),
        ("X-FORWARDED-PROTO", "https, http"),
        ("x-Forwarded-host", "example.com"),
    ) == Forwarded("1.1.1.1", "https", "example.com")


_ip_lists = st.lists(st.ip_addresses().map(str), min_size=1, max_size=5).map(", ".join)
_header_values = st.one_of(
    st.text(max_size=40),
    _ip_lists,
    st.lists(st.sampled_from(["http", "https", "", " "]), max_size=4).map(",".join),
)


@given(
    peer=st.one_of(
        st.none(), st.sampled_from([PROXY, "8.8.8.8", "::1"]), st.text(max_size=10)
    ),
    forwarded_for=st.lists(_header_values, max_size=2),
    proto=st.lists(_header_values, max_size=2),
    host=st.lists(_header_values, max_size=2),
    use_x_forwarded_for=st.booleans(),
)
def test_arbitrary_headers_return_or_raise_forwarded_error(
    peer: str | None,
    forwarded_for: list[str],
    proto: list[str],
    host: list[str],
    use_x_forwarded_for: bool,
) -> None:
    """Whatever arrives, the result is None, a Forwarded, or ForwardedError."""
    pairs = (
        [("X-Forwarded-For", value) for value in forwarded_for]
        + [("X-Forwarded-Proto", value) for value in proto]
        + [("X-Forwarded-Host", value) for value in host]
    )
    try:
        result = resolve_forwarded(peer, headers(*pairs), use_x_forwarded_for, TRUSTED)
    except ForwardedError as err:
        assert str(err)
        return
    if result is not None:
        entries = forwarded_for[0].split(",")
        assert result.remote in {str(ipaddress.ip_address(e.strip())) for e in entries}
        assert result.scheme is None or result.scheme.strip() == result.scheme != ""
        assert result.host is None or result.host.strip() == result.host != ""
