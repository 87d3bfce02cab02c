"""Property tests of the reverse-proxy resolution (SPEC 6.5): who the client is, whatever the header lists."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from opp_auth.http import forwarded
from opp_auth.http.forwarded import parse_trusted_proxies, resolve_forwarded

TRUSTED = parse_trusted_proxies(["10.0.0.0/8", "127.0.0.1", "fd00::/8"])
PROXY = "10.0.0.1"
FAST = settings(max_examples=200, deadline=None)

_trusted_v4 = st.integers(0, 2**24 - 1).map(lambda n: str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("10.0.0.0")) + n)))
_trusted_v6 = st.integers(0, 2**120 - 1).map(lambda n: str(ipaddress.IPv6Address((0xFD << 120) + n)))
trusted_addresses = st.one_of(_trusted_v4, _trusted_v6, st.just("127.0.0.1"))
_any_v4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
_any_v6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
addresses = st.one_of(_any_v4, _any_v6, trusted_addresses)
untrusted_addresses = addresses.filter(lambda a: not any(ipaddress.ip_address(a) in n for n in TRUSTED))
spacing = st.sampled_from(["", " ", "  "])


def header(entries: list[str], pad: str = "") -> str:
    """An X-Forwarded-For value as proxies write it."""
    return f",{pad}".join(entries)


def client_of(value: str, *extra: tuple[str, str], peer: str = PROXY) -> str | None:
    """The client address the resolver picks for an X-Forwarded-For value from peer."""
    pairs = CIMultiDictProxy(CIMultiDict([("X-Forwarded-For", value), *extra]))
    result = resolve_forwarded(peer, pairs, True, TRUSTED)
    return None if result is None else result.remote


def canonical(address: str) -> str:
    """The address as the resolver writes it."""
    return str(ipaddress.ip_address(address))


@pytest.fixture(autouse=True)
def _fresh_warnings() -> Iterator[None]:
    """Peers warned about in one test do not leak into another."""
    forwarded._WARNINGS.clear()
    yield
    forwarded._WARNINGS.clear()


@FAST
@given(entries=st.lists(addresses, min_size=1, max_size=6), pad=spacing)
def test_chosen_client_is_one_of_the_listed_addresses(entries: list[str], pad: str) -> None:
    """The client is always an address from the header, never something else."""
    assert client_of(header(entries, pad)) in {canonical(e) for e in entries}


@FAST
@given(entries=st.lists(trusted_addresses, min_size=1, max_size=6))
def test_trusted_only_list_picks_the_left_most(entries: list[str]) -> None:
    """When every hop is a trusted proxy, the client is the first address."""
    assert client_of(header(entries)) == canonical(entries[0])


@FAST
@given(entries=st.lists(addresses, min_size=1, max_size=6))
def test_client_is_the_right_most_untrusted_entry(entries: list[str]) -> None:
    """Everything right of the chosen client is a trusted proxy."""
    chosen = client_of(header(entries))
    untrusted = [e for e in entries if not any(ipaddress.ip_address(e) in n for n in TRUSTED)]
    if untrusted:
        assert chosen == canonical(untrusted[-1])
    else:
        assert chosen == canonical(entries[0])


@FAST
@given(
    spoofed=st.lists(addresses, max_size=4),
    client=untrusted_addresses,
    proxies=st.lists(trusted_addresses, max_size=4),
)
def test_addresses_a_client_prepends_change_nothing(spoofed: list[str], client: str, proxies: list[str]) -> None:
    """A client that writes its own X-Forwarded-For entries cannot pick its address."""
    assert client_of(header([*spoofed, client, *proxies])) == client_of(header([client, *proxies])) == canonical(client)


@FAST
@given(entries=st.lists(addresses, min_size=1, max_size=6), proxies=st.lists(trusted_addresses, min_size=1, max_size=3))
def test_more_trusted_hops_on_the_right_change_nothing_for_an_untrusted_client(
    entries: list[str], proxies: list[str]
) -> None:
    """Adding a trusted proxy in front of the chain keeps the client the same when one is untrusted."""
    if all(any(ipaddress.ip_address(e) in n for n in TRUSTED) for e in entries):
        return  # all trusted: the left-most rule applies, covered above
    assert client_of(header([*entries, *proxies])) == client_of(header(entries))


@FAST
@given(peer=untrusted_addresses, entries=st.lists(addresses, min_size=1, max_size=4))
def test_untrusted_peer_is_never_overridden(peer: str, entries: list[str]) -> None:
    """Headers from a peer outside trusted_proxies are ignored: the socket address stays."""
    assert client_of(header(entries), peer=peer) is None


@FAST
@given(entries=st.lists(addresses, min_size=1, max_size=5), data=st.data())
def test_proto_per_hop_follows_the_chosen_client(entries: list[str], data: st.DataObject) -> None:
    """With one X-Forwarded-Proto element per hop, the scheme is the chosen client's."""
    protos = data.draw(st.lists(st.sampled_from(["http", "https"]), min_size=len(entries), max_size=len(entries)))
    pairs = CIMultiDictProxy(CIMultiDict([("X-Forwarded-For", header(entries)), ("X-Forwarded-Proto", ", ".join(protos))]))
    result = resolve_forwarded(PROXY, pairs, True, TRUSTED)
    untrusted = [i for i, e in enumerate(entries) if not any(ipaddress.ip_address(e) in n for n in TRUSTED)]
    position = untrusted[-1] if untrusted else 0
    assert result is not None and result.remote == canonical(entries[position])
    assert result.scheme == protos[position]
