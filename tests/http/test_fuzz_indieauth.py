"""Property tests of client id and redirect uri validation (SPEC 5.4): never raise, accept only safe URLs."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st

from opp_auth.http.indieauth import (
    MOBILE_CLIENT_IDS,
    MOBILE_REDIRECT_URI,
    is_local_address,
    verify_client_id,
    verify_redirect_uri_sync,
)

FAST = settings(max_examples=300, deadline=None)

_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12)
_names = st.lists(_label, min_size=1, max_size=4).map(".".join)
_ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
_ipv6 = st.integers(0, 2**128 - 1).map(lambda n: f"[{ipaddress.IPv6Address(n)}]")
_odd_hosts = st.sampled_from(
    ["", "[", "[]", "[::1", "localhost.", "0x7f.0.0.1", "2130706433", "127.1", "[fe80::1%25eth0]", "münchen.de", "a..b", "-"]
)
hosts = st.one_of(_names, _ipv4, _ipv6, _odd_hosts, st.text(max_size=20))
schemes = st.sampled_from(["http", "https", "HTTP", "ftp", "javascript", "openpeerpower", "", "http:", "https:/"])
ports = st.one_of(st.just(""), st.integers(-5, 70000).map(lambda p: f":{p}"), st.text(max_size=6).map(lambda t: f":{t}"))
paths = st.one_of(
    st.sampled_from(["", "/", "/app", "/./x", "/../", "/a/%2e%2e/b", "/#frag", "/?q=1", "/a b", "/\x00", "/\t"]),
    st.text(max_size=20).map(lambda t: "/" + t),
)
userinfo = st.sampled_from(["", "user@", "user:pw@", "@", ":@"])
url_like = st.builds(lambda s, u, h, p, path: f"{s}://{u}{h}{p}{path}", schemes, userinfo, hosts, ports, paths)
_private = st.sampled_from(["127.0.0.1", "10.1.2.3", "192.168.1.5", "172.16.0.9", "[::1]", "[fd00::5]"])
# Mostly well-formed client ids, so the acceptance properties are checked on many accepted values.
plausible = st.builds(
    lambda s, h, p, path: f"{s}://{h}{p}{path}",
    st.sampled_from(["http", "https"]),
    st.one_of(_names, _private, _ipv4),
    st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}")),
    paths,
)
anything = st.one_of(plausible, url_like, st.text(max_size=60))


def _host_allowed(host: str) -> bool:
    """A host a client id may name: a domain name, or a loopback or private IP."""
    try:
        return is_local_address(ipaddress.ip_address(host))
    except ValueError:
        top_level = host.rstrip(".").rsplit(".", 1)[-1]
        # Resolvers read "2130706433" or "0x7f.1" as IPv4 addresses; no top-level domain starts with a digit.
        return bool(top_level) and not top_level[0].isdigit() and all(c not in host for c in " /\\@#?[]")


@FAST
@given(client_id=anything)
def test_verify_client_id_never_raises_and_accepts_only_http_urls_on_allowed_hosts(client_id: str) -> None:
    """Accepted client ids have an http(s) scheme, no userinfo or fragment, and an allowed host."""
    if not verify_client_id(client_id):
        return
    parts = urlsplit(client_id)
    assert parts.scheme.lower() in ("http", "https")
    assert "@" not in parts.netloc and "#" not in client_id
    assert parts.hostname is not None and _host_allowed(parts.hostname)
    assert not any(ord(c) <= 0x20 or c == "\x7f" for c in client_id)


@FAST
@given(address=_ipv4)
def test_public_ip_client_ids_are_refused(address: str) -> None:
    """An IP client id is valid only for loopback and private addresses (never a public host to fetch)."""
    assert verify_client_id(f"http://{address}/") == is_local_address(ipaddress.ip_address(address))


def _same_origin_or_not(client_id: str, data: st.DataObject) -> str:
    """A redirect uri on the client id's origin (often) or anything else."""
    if verify_client_id(client_id) and data.draw(st.booleans()):
        parts = urlsplit(client_id)
        return f"{parts.scheme}://{parts.netloc}{data.draw(paths)}"
    return data.draw(anything)


@FAST
@given(client_id=anything, data=st.data())
def test_verify_redirect_uri_sync_never_raises_and_only_accepts_same_origin_or_mobile(
    client_id: str, data: st.DataObject
) -> None:
    """True only for the client id's own scheme and host (or the mobile apps' callback); None only for names."""
    redirect_uri = _same_origin_or_not(client_id, data)
    decided = verify_redirect_uri_sync(client_id, redirect_uri)
    assert decided in (True, False, None)
    if decided is None:
        assert verify_client_id(client_id)
        host = urlsplit(client_id).hostname or ""
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            raise AssertionError("an IP client id must be decided offline, never fetched")
    if decided is True:
        if client_id in MOBILE_CLIENT_IDS and redirect_uri == MOBILE_REDIRECT_URI:
            return
        client, redirect = urlsplit(client_id), urlsplit(redirect_uri)
        assert redirect.scheme.lower() in ("http", "https")
        assert (redirect.scheme, redirect.netloc.lower()) == (client.scheme, client.netloc.lower())


@FAST
@given(client_id=st.one_of(plausible, url_like))
def test_redirect_on_the_client_ids_own_origin_is_accepted(client_id: str) -> None:
    """Any valid client id accepts a redirect uri on its own scheme and host without a fetch."""
    if not verify_client_id(client_id):
        return
    parts = urlsplit(client_id)
    redirect_uri = f"{parts.scheme}://{parts.netloc}/callback"
    assert verify_redirect_uri_sync(client_id, redirect_uri) is True


@FAST
@given(client_id=anything, scheme=st.sampled_from(["javascript", "data", "openpeerpower", "ftp", "file"]), rest=st.text(max_size=20))
def test_non_http_redirect_uris_are_refused(client_id: str, scheme: str, rest: str) -> None:
    """Only the mobile apps may use a custom scheme, and only their exact callback."""
    redirect_uri = f"{scheme}:{rest}"
    if client_id in MOBILE_CLIENT_IDS and redirect_uri == MOBILE_REDIRECT_URI:
        return
    assert verify_redirect_uri_sync(client_id, redirect_uri) is False
