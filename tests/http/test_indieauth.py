"""Tests for IndieAuth client id / redirect uri validation (SPEC 5.4, G1, G2)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from opp_auth.http import indieauth
from opp_auth.http.indieauth import (
    MOBILE_REDIRECT_URI,
    fetch_redirect_uris,
    verify_client_id,
    verify_redirect_uri,
    verify_redirect_uri_sync,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

VALID_CLIENT_IDS = [
    "http://localhost/",
    "http://localhost:8123/",
    "http://localhost.:8123/",
    "https://example.com",
    "https://example.com/",
    "https://example.com/app/?query=1",
    "http://Example.COM:8123/",
    "http://my_host.lan/",
    "https://bücher.example/",
    "https://xn--bcher-kva.example/",
    "http://127.0.0.1/",
    "http://127.0.0.1:8123/",
    "http://127.1.2.3/",
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://172.31.255.255:8123/",
    "http://192.168.1.2/",
    "http://192.168.1.2:8123/",  # G1: private IP with a port
    "http://[::1]/",
    "http://[::1]:8123/",  # G1: bracketed IPv6 with a port
    "http://[fd00::1]:8123/",
    "http://[::ffff:127.0.0.1]/",
]

INVALID_CLIENT_IDS = [
    "",
    "example.com",
    "//example.com/",
    "ftp://example.com/",
    "javascript:alert(1)",
    "openpeerpower://auth-callback",
    # G1: public addresses, with or without a port
    "http://8.8.8.8/",
    "http://8.8.8.8:8123/",
    "http://[2001:4860:4860::8888]/",
    "http://[2001:4860:4860::8888]:8123/",
    "http://[::ffff:8.8.8.8]:8123/",
    # neither loopback nor private
    "http://172.32.0.1/",
    "http://0.0.0.0:8123/",
    "http://169.254.169.254/",
    "http://[fe80::1]/",
    "http://[fe80::1]:8123/",
    "http://[fc00::1]/",
    "http://[ff02::1]/",
    "http://[fd00::1%25eth0]/",
    # public IPv4 spelled so that only resolvers see an address
    "http://134744072/",
    "http://0x8.8.8.8/",
    "http://8.8.8.8./",
    "http://192.168.1/",
    # userinfo
    "http://user@example.com/",
    "http://user:pass@example.com/",
    "http://@example.com/",
    # fragments
    "https://example.com/#fragment",
    "https://example.com/#",
    # dot segments
    "https://example.com/./",
    "https://example.com/../",
    "https://example.com/a/./b",
    "https://example.com/a/../b",
    "https://example.com/a/%2E%2e/b",
    # ports
    "http://example.com:abc/",
    "http://example.com:+80/",
    "http://example.com:99999/",
    "http://[::1]:port/",
    # hosts
    "http:///path",
    "http://[::1/",
    "http://[example.com]/",
    "http://[127.0.0.1]/",
    "http://exa mple.com/",
    "http://a..b/",
    "http://a%2fb/",
    # whitespace and control characters urlsplit would silently drop
    " https://example.com/",
    "https://example.com/\n",
    "https://exa\tmple.com/",
    "https://example.com/\x00",
    # red team: controls and whitespace outside ASCII (C1 controls, NEL, no-break space, line and
    # paragraph separators) passed the ASCII-only check, although "whitespace anywhere refuses it"
    "https://example.com/\u2028",
    "https://example.com/a\u2029b",
    "https://example.com/\x85",
    "https://example.com/\x9b",
    "https://example.com/\u00a0",
    "https://example.com/\u3000",
]


@pytest.mark.parametrize("client_id", VALID_CLIENT_IDS)
def test_valid_client_id(client_id: str) -> None:
    """These client ids are accepted."""
    assert verify_client_id(client_id) is True


@pytest.mark.parametrize("client_id", INVALID_CLIENT_IDS)
def test_invalid_client_id(client_id: str) -> None:
    """These client ids are refused."""
    assert verify_client_id(client_id) is False


@pytest.mark.parametrize(
    ("client_id", "redirect_uri", "expected"),
    [
        # same scheme and host (canonicalized) → decided without a fetch
        ("http://localhost:8123/", "http://localhost:8123/?auth_callback=1", True),
        ("http://LOCALHOST:8123", "http://localhost:8123/cb", True),
        ("https://example.com", "https://EXAMPLE.com", True),
        ("http://192.168.1.2:8123/", "http://192.168.1.2:8123/cb", True),
        ("http://[::1]:8123/", "http://[::1]:8123/cb", True),
        # different host or scheme on a domain-name client id → needs the page
        ("https://example.com/", "https://app.example/cb", None),
        ("https://example.com/", "http://example.com/cb", None),
        ("https://example.com/", "https://example.com:8443/cb", None),
        # IP client ids never trigger a fetch
        ("http://192.168.1.2:8123/", "http://192.168.1.2:8124/cb", False),
        ("http://192.168.1.2:8123/", "https://evil.example/", False),
        ("http://127.0.0.1/", "https://127.0.0.1/", False),
        # invalid client id
        ("http://8.8.8.8:8123/", "http://8.8.8.8:8123/", False),
        ("https://example.com/#x", "https://example.com/", False),
        # redirect uri scheme constrained
        ("https://example.com/", "javascript:alert(1)", False),
        ("https://example.com/", "data:text/html,hi", False),
        ("https://example.com/", "ftp://example.com/", False),
        ("https://example.com/", "//example.com/", False),
        ("https://example.com/", MOBILE_REDIRECT_URI, False),
        # malformed redirect uri
        ("https://example.com/", "", False),
        ("https://example.com/", "http://[::1/", False),
        ("https://example.com/", "https://example.com/\ncb", False),
        ("https://example.com/", " https://example.com/", False),
    ],
)
def test_verify_redirect_uri_sync(
    client_id: str, redirect_uri: str, expected: bool | None
) -> None:
    """Redirect uris are decided locally when possible, None when a fetch is needed."""
    assert verify_redirect_uri_sync(client_id, redirect_uri) is expected


@pytest.mark.parametrize(
    ("client_id", "redirect_uri", "expected"),
    [
        ("https://openpeerpower.io/android", MOBILE_REDIRECT_URI, True),
        ("https://openpeerpower.io/iOS", MOBILE_REDIRECT_URI, True),
        ("https://openpeerpower.io/ios", MOBILE_REDIRECT_URI, False),
        ("https://openpeerpower.io/android/", MOBILE_REDIRECT_URI, False),
        ("http://openpeerpower.io/android", MOBILE_REDIRECT_URI, False),
        ("https://openpeerpower.io/android", MOBILE_REDIRECT_URI + "/", False),
        ("https://openpeerpower.io/iOS", "OPENPEERPOWER://auth-callback", False),
        ("https://openpeerpower.io/iOS", "openpeerpower://evil", False),
        ("https://example.com/", MOBILE_REDIRECT_URI, False),
        ("https://openpeerpower.io/android", "https://openpeerpower.io/cb", True),
    ],
)
def test_mobile_app_callback(client_id: str, redirect_uri: str, expected: bool) -> None:
    """Only the two mobile client ids may use the exact custom-scheme callback."""
    assert verify_redirect_uri_sync(client_id, redirect_uri) is expected


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("1.1.1.1", True),
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.0.1", False),
        ("100.64.0.1", False),
        ("169.254.169.254", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("::", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("fd00::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("64:ff9b::7f00:1", False),
        ("2002:7f00:1::", False),
    ],
)
def test_default_address_policy(address: str, allowed: bool) -> None:
    """Names may only be fetched from public unicast addresses by default."""
    assert indieauth._allow_address(ipaddress.ip_address(address)) is allowed


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (['<https://a.example/cb>; rel="redirect_uri"'], ["https://a.example/cb"]),
        (["</cb>; rel=redirect_uri"], ["/cb"]),
        (['</a>; rel="other redirect_uri"'], ["/a"]),
        (['</a>; rel="REDIRECT_URI"'], ["/a"]),
        (
            ['</a>; rel="redirect_uri", </b>; rel="x", </c>; rel="redirect_uri"'],
            ["/a", "/c"],
        ),
        (['</a>; rel="stylesheet"'], []),
        (['</a>; rel="x"; rel="redirect_uri"'], []),
        (['</a,b>; title="x, y"; rel="redirect_uri"'], ["/a,b"]),
        (["garbage", "</a>", "<>; rel=redirect_uri"], [""]),
        (["</a>; rel=redirect_uri", "</b>; rel=redirect_uri"], ["/a", "/b"]),
    ],
)
def test_link_header_targets(values: list[str], expected: list[str]) -> None:
    """Link headers are parsed per RFC 8288, honouring the first rel only."""
    assert indieauth._link_header_targets(values, "redirect_uri") == expected


# --- fetching from a real server -------------------------------------------


class _Server:
    """A real aiohttp server on 127.0.0.1 that records the requests it gets."""

    def __init__(self) -> None:
        """Start with no port (set once listening) and no requests."""
        self.port = 0
        self.hits: dict[str, int] = {}
        self.requests: list[web.Request] = []

    def url(self, host: str = "client.test", path: str = "/") -> str:
        """Return a client id on this server under host."""
        return f"http://{host}:{self.port}{path}"


Serve = Callable[[dict[str, Handler]], Awaitable[_Server]]


@pytest.fixture
def release() -> asyncio.Event:
    """Set at teardown so that handlers stalling on it can finish."""
    return asyncio.Event()


@pytest.fixture
async def serve(aiohttp_server: Any, release: asyncio.Event) -> AsyncIterator[Serve]:
    """Start servers from a {path: handler} map."""

    async def start(routes: dict[str, Handler]) -> _Server:
        """Start one server."""
        record = _Server()

        def counted(path: str, handler: Handler) -> Handler:
            """Wrap handler to record the request."""

            async def wrapper(request: web.Request) -> web.StreamResponse:
                """Record, then delegate."""
                record.hits[path] = record.hits.get(path, 0) + 1
                record.requests.append(request)
                return await handler(request)

            return wrapper

        app = web.Application()
        for path, handler in routes.items():
            app.router.add_get(path, counted(path, handler))
        record.port = (await aiohttp_server(app, host="127.0.0.1")).port
        return record

    yield start
    # Before aiohttp_server's teardown, which waits for running handlers.
    release.set()


class FakeDNS:
    """Names to addresses, standing in for the system resolver; records lookups."""

    def __init__(self) -> None:
        """Start with client.test on the loopback test server."""
        self.table: dict[str, list[str]] = {"client.test": ["127.0.0.1"]}
        self.lookups: list[str] = []

    def __setitem__(self, name: str, addresses: list[str]) -> None:
        """Publish addresses for name."""
        self.table[name] = addresses

    async def resolve(self, host: str, port: int) -> list[indieauth.IPAddress]:
        """Answer from the table like getaddrinfo would."""
        self.lookups.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ipaddress.ip_address(address) for address in self.table[host]]


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    """Replace the fetch's name lookup with a FakeDNS."""
    dns = FakeDNS()
    monkeypatch.setattr(indieauth, "_resolve", dns.resolve)
    return dns


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session owned by the test."""
    async with aiohttp.ClientSession() as client_session:
        yield client_session


def _loopback_ok(address: indieauth.IPAddress) -> bool:
    """Test policy: the loopback test server may be reached under a name."""
    return address.is_loopback


def _html(body: str, **kwargs: Any) -> Handler:
    """Return a handler serving body as HTML."""

    async def handler(request: web.Request) -> web.StreamResponse:
        """Serve the page."""
        return web.Response(text=body, content_type="text/html", **kwargs)

    return handler


PAGE = """<!doctype html><html><head>
<link rel="stylesheet" href="/style.css">
<link rel="redirect_uri" href="/cb">
<link rel="redirect_uri" href="https://app.example/cb?x=1&amp;y=2">
<LINK REL="Other Redirect_URI" HREF=" relative ">
<link rel="redirect_uri">
<link rel="redirect_uri" href="/first" href="/second">
<link rel="redirect_uri" href="/cb">
</head><body><a rel="redirect_uri" href="/not-a-link-tag">x</a></body></html>"""


async def test_link_tags_resolved_relative_to_client_id(
    serve: Serve, fake_dns: FakeDNS, session: aiohttp.ClientSession
) -> None:
    """<link rel=redirect_uri> hrefs are collected, resolved against the client id."""
    server = await serve({"/app/": _html(PAGE)})
    client_id = server.url(path="/app/")
    base = server.url(path="")

    uris = await fetch_redirect_uris(session, client_id, address_allowed=_loopback_ok)

    assert uris == [
        f"{base}/cb",
        "https://app.example/cb?x=1&y=2",
        f"{base}/app/relative",
        f"{base}/first",
    ]


async def test_link_headers_are_used(
    serve: Serve, fake_dns: FakeDNS, session: aiohttp.ClientSession
) -> None:
    """Link headers with rel=redirect_uri count, before the page's tags."""

    async def handler(request: web.Request) -> web.StreamResponse:
        """Serve a page with Link headers."""
        response = web.Response(
            text='<link rel="redirect_uri" href="/tag">', content_type="text/html"
        )
        response.headers.add("Link", '<https://app.example/h1>; rel="redirect_uri"')
        response.headers.add(
            "Link", "</h2>; rel=redirect_uri, </style>; rel=stylesheet"
        )
        return response

    server = await serve({"/": handler})
    base = server.url(path="")

    uris = await fetch_redirect_uris(
        session, server.url(), address_allowed=_loopback_ok
    )

    assert uris == ["https://app.example/h1", f"{base}/h2", f"{base}/tag"]


async def test_request_carries_client_id_host(
    serve: Serve, fake_dns: FakeDNS, session: aiohttp.ClientSession
) -> None:
    """The checked address is contacted with the client id's name as Host."""
    server = await serve({"/": _html("")})

    await fetch_redirect_uris(session, server.url(), address_allowed=_loopback_ok)

    assert server.requests[0].headers["Host"] == f"client.test:{server.port}"


class _RefusingResolver(aiohttp.abc.AbstractResolver):
    """A resolver that fails the test if aiohttp resolves anything itself."""

    async def resolve(self, host: str, port: int = 0, family: int = 0) -> Any:
        """Fail: the fetch must connect to the address it checked."""
        raise AssertionError(f"aiohttp resolved {host} a second time")

    async def close(self) -> None:
        """Nothing to release."""


async def test_checked_address_is_used_without_second_lookup(
    serve: Serve, fake_dns: FakeDNS
) -> None:
    """The name is looked up once; aiohttp never re-resolves it (no DNS rebinding)."""
    server = await serve({"/": _html('<link rel="redirect_uri" href="/cb">')})
    connector = aiohttp.TCPConnector(resolver=_RefusingResolver())

    async with aiohttp.ClientSession(connector=connector) as session:
        uris = await fetch_redirect_uris(
            session, server.url(), address_allowed=_loopback_ok
        )

    assert uris == [server.url(path="/cb")]
    assert fake_dns.lookups == ["client.test"]


async def test_next_address_tried_when_first_refuses_connection(
    serve: Serve, fake_dns: FakeDNS, session: aiohttp.ClientSession
) -> None:
    """A name with several addresses falls back to the next one on connection errors."""
    server = await serve({"/": _html('<link rel="redirect_uri" href="/cb">')})
    # The server listens on 127.0.0.1 only, so 127.0.0.2 refuses the connection.
    fake_dns["client.test"] = ["127.0.0.2", "127.0.0.1"]

    uris = await fetch_redirect_uris(
        session, server.url(), address_allowed=_loopback_ok
    )

    assert uris == [server.url(path="/cb")]


async def test_name_resolving_to_loopback_refused_by_default(
    serve: Serve, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """With the default policy a name resolving to 127.0.0.1 is never contacted."""
    server = await serve({"/": _html('<link rel="redirect_uri" href="/cb">')})
    client_id = server.url(host="localhost")

    assert await fetch_redirect_uris(session, client_id) == []

    assert server.hits == {}
    assert f"Refusing to look up redirect_uri {client_id}" in caplog.text


async def test_name_with_any_private_address_refused(
    fake_dns: FakeDNS,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One private address among public ones refuses the whole name."""
    fake_dns["mixed.test"] = ["1.1.1.1", "10.0.0.1"]

    assert await fetch_redirect_uris(session, "http://mixed.test/") == []

    assert "non-public address 10.0.0.1" in caplog.text


async def test_ip_client_id_fetched_directly(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    """A client id that names a loopback/private IP itself may be fetched."""
    server = await serve({"/": _html('<link rel="redirect_uri" href="/cb">')})
    client_id = server.url(host="127.0.0.1")

    assert await fetch_redirect_uris(session, client_id) == [f"{client_id}cb"]


async def test_verify_redirect_uri_does_not_fetch_ip_client_id(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    """verify_redirect_uri never fetches pages at IP client ids."""
    server = await serve(
        {"/": _html('<link rel="redirect_uri" href="https://a.example/">')}
    )

    ok = await verify_redirect_uri(
        session, server.url(host="127.0.0.1"), "https://a.example/"
    )

    assert ok is False
    assert server.hits == {}


async def test_verify_redirect_uri_matches_published_uri(
    serve: Serve,
    fake_dns: FakeDNS,
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A redirect uri on another host is accepted only if the page lists it exactly."""
    server = await serve(
        {"/": _html('<link rel="redirect_uri" href="https://a.example/cb">')}
    )
    monkeypatch.setattr(indieauth, "_allow_address", _loopback_ok)

    assert await verify_redirect_uri(session, server.url(), "https://a.example/cb")
    assert not await verify_redirect_uri(session, server.url(), "https://a.example/cb2")
    assert not await verify_redirect_uri(session, server.url(), "https://a.example/")


async def test_verify_redirect_uri_decided_locally_does_not_fetch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Decidable cases never reach the network."""

    async def boom(*args: Any, **kwargs: Any) -> list[str]:
        """Fail if called."""
        raise AssertionError("fetched")

    monkeypatch.setattr(indieauth, "fetch_redirect_uris", boom)

    assert await verify_redirect_uri(
        None, "http://localhost:8123/", "http://localhost:8123/x"
    )
    assert not await verify_redirect_uri(
        None, "http://8.8.8.8:8123/", "http://8.8.8.8:8123/"
    )
    assert await verify_redirect_uri(
        None, "https://openpeerpower.io/iOS", MOBILE_REDIRECT_URI
    )


async def test_redirect_not_followed(
    serve: Serve,
    fake_dns: FakeDNS,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A redirect answer yields nothing and its target is never requested."""

    async def redirect(request: web.Request) -> web.StreamResponse:
        """Redirect to the page with links."""
        raise web.HTTPFound("/target")

    server = await serve(
        {"/": redirect, "/target": _html('<link rel="redirect_uri" href="/cb">')}
    )

    assert (
        await fetch_redirect_uris(session, server.url(), address_allowed=_loopback_ok)
        == []
    )

    assert "/target" not in server.hits
    assert "Unexpected HTTP status 302" in caplog.text


async def test_error_status_yields_nothing(
    serve: Serve,
    fake_dns: FakeDNS,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Links on an error page do not count."""
    server = await serve(
        {"/": _html('<link rel="redirect_uri" href="/cb">', status=404)}
    )

    assert (
        await fetch_redirect_uris(session, server.url(), address_allowed=_loopback_ok)
        == []
    )
    assert "Unexpected HTTP status 404" in caplog.text


async def test_slow_server_times_out_quickly(
    serve: Serve,
    release: asyncio.Event,
    fake_dns: FakeDNS,
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that never answers costs the timeout, then []."""
    monkeypatch.setattr(indieauth, "FETCH_TIMEOUT", 0.3)

    async def stall(request: web.Request) -> web.StreamResponse:
        """Answer only at teardown."""
        await release.wait()
        return web.Response(text="")

    server = await serve({"/": stall})

    started = time.monotonic()
    uris = await fetch_redirect_uris(
        session, server.url(), address_allowed=_loopback_ok
    )

    assert uris == []
    assert time.monotonic() - started < 2
    assert f"Timeout while looking up redirect_uri {server.url()}" in caplog.text


async def test_trickling_body_times_out_quickly(
    serve: Serve,
    fake_dns: FakeDNS,
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The timeout covers the whole exchange, not each read."""
    monkeypatch.setattr(indieauth, "FETCH_TIMEOUT", 0.3)

    async def trickle(request: web.Request) -> web.StreamResponse:
        """Send a byte every 50 ms."""
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            for _ in range(200):
                await response.write(b" ")
                await asyncio.sleep(0.05)
        except (ConnectionError, RuntimeError):
            pass
        return response

    server = await serve({"/": trickle})

    started = time.monotonic()
    uris = await fetch_redirect_uris(
        session, server.url(), address_allowed=_loopback_ok
    )

    assert uris == []
    assert time.monotonic() - started < 2
    assert "Timeout while looking up redirect_uri" in caplog.text


async def test_body_read_is_bounded(
    serve: Serve, fake_dns: FakeDNS, session: aiohttp.ClientSession
) -> None:
    """Only the first 64 KiB of the page are read."""
    head = '<link rel="redirect_uri" href="/early">'
    body = (
        head
        + " " * (indieauth.MAX_BODY_BYTES - len(head))
        + ('<link rel="redirect_uri" href="/late">')
    )
    server = await serve({"/": _html(body * 4)})

    uris = await fetch_redirect_uris(
        session, server.url(), address_allowed=_loopback_ok
    )

    assert uris == [server.url(path="/early")]


async def test_endless_body_is_cut_without_waiting_for_timeout(
    serve: Serve,
    fake_dns: FakeDNS,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server streaming forever is read up to the bound and then dropped."""

    async def endless(request: web.Request) -> web.StreamResponse:
        """Stream a link tag, then padding until the client goes away."""
        response = web.StreamResponse(headers={"Content-Type": "text/html"})
        await response.prepare(request)
        await response.write(b'<link rel="redirect_uri" href="/cb">')
        try:
            for _ in range(1000):
                await response.write(b"x" * 16384)
        except (ConnectionError, RuntimeError):
            pass
        return response

    server = await serve({"/": endless})

    started = time.monotonic()
    uris = await fetch_redirect_uris(
        session, server.url(), address_allowed=_loopback_ok
    )

    assert uris == [server.url(path="/cb")]
    assert time.monotonic() - started < 2
    assert "Timeout" not in caplog.text


async def test_multibyte_character_split_at_the_cut(
    serve: Serve,
    fake_dns: FakeDNS,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A UTF-8 character cut in half by the size bound does not raise."""
    head = '<link rel="redirect_uri" href="/cb">'
    padding = "x" * (indieauth.MAX_BODY_BYTES - len(head) - 1)
    body = (head + padding + "€€€").encode()
    assert (
        body[indieauth.MAX_BODY_BYTES - 1 : indieauth.MAX_BODY_BYTES + 2]
        == "€".encode()
    )

    async def handler(request: web.Request) -> web.StreamResponse:
        """Serve the raw bytes."""
        return web.Response(body=body, content_type="text/html")

    server = await serve({"/": handler})

    uris = await fetch_redirect_uris(
        session, server.url(), address_allowed=_loopback_ok
    )

    assert uris == [server.url(path="/cb")]
    assert "error" not in caplog.text.lower()


async def test_multibyte_character_split_between_packets(
    serve: Serve, fake_dns: FakeDNS, session: aiohttp.ClientSession
) -> None:
    """A character split across network writes decodes intact (no chunk-wise decode)."""

    async def split(request: web.Request) -> web.StreamResponse:
        """Write ü's two bytes separately."""
        response = web.StreamResponse(headers={"Content-Type": "text/html"})
        await response.prepare(request)
        encoded = '<link rel="redirect_uri" href="/ü">'.encode()
        cut = encoded.index("ü".encode()) + 1
        await response.write(encoded[:cut])
        await asyncio.sleep(0.05)
        await response.write(encoded[cut:])
        await response.write_eof()
        return response

    server = await serve({"/": split})

    uris = await fetch_redirect_uris(
        session, server.url(), address_allowed=_loopback_ok
    )

    assert uris == [server.url(path="/ü")]


async def test_without_session_a_temporary_one_is_used(
    serve: Serve, fake_dns: FakeDNS
) -> None:
    """session=None works and leaves nothing open."""
    server = await serve({"/": _html('<link rel="redirect_uri" href="/cb">')})

    uris = await fetch_redirect_uris(None, server.url(), address_allowed=_loopback_ok)

    assert uris == [server.url(path="/cb")]


async def test_given_session_is_reused_not_replaced(
    serve: Serve,
    fake_dns: FakeDNS,
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A passed session is used as is: no new session, and it stays open."""
    server = await serve({"/": _html('<link rel="redirect_uri" href="/cb">')})

    def no_new_sessions(*args: Any, **kwargs: Any) -> aiohttp.ClientSession:
        """Fail if a session is created."""
        raise AssertionError("new ClientSession created")

    monkeypatch.setattr(aiohttp, "ClientSession", no_new_sessions)

    for _ in range(2):
        uris = await fetch_redirect_uris(
            session, server.url(), address_allowed=_loopback_ok
        )
        assert uris == [server.url(path="/cb")]
    assert not session.closed


async def test_invalid_client_id_not_fetched(caplog: pytest.LogCaptureFixture) -> None:
    """fetch_redirect_uris refuses invalid client ids without any network access."""
    assert await fetch_redirect_uris(None, "http://8.8.8.8:8123/") == []
    assert "invalid client id http://8.8.8.8:8123/" in caplog.text


async def test_connection_refused_logged(
    session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """A closed port gives [] and the SPEC's OS error message."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client_id = f"http://127.0.0.1:{port}/"

    assert await fetch_redirect_uris(session, client_id) == []
    assert f"OS error while looking up redirect_uri {client_id}: " in caplog.text


async def test_name_resolution_failure_logged(
    fake_dns: FakeDNS,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unknown name gives [] and an OS error message with the resolver's reason."""
    assert await fetch_redirect_uris(session, "https://unknown.test/") == []
    assert (
        "OS error while looking up redirect_uri https://unknown.test/: "
        "Name or service not known"
    ) in caplog.text


async def test_tls_failure_logged(
    serve: Serve, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """TLS against a plain-HTTP server gives [] and the SSL error message."""
    server = await serve({"/": _html("")})
    client_id = f"https://127.0.0.1:{server.port}/"

    assert await fetch_redirect_uris(session, client_id) == []
    assert f"SSL error while looking up redirect_uri {client_id}" in caplog.text


async def test_unexpected_exception_never_raises(
    monkeypatch: pytest.MonkeyPatch,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Any other failure is logged and yields []."""

    async def broken(host: str, port: int) -> list[indieauth.IPAddress]:
        """Fail unexpectedly."""
        raise RuntimeError("boom")

    monkeypatch.setattr(indieauth, "_resolve", broken)

    with caplog.at_level(logging.ERROR):
        assert await fetch_redirect_uris(session, "https://example.com/") == []
    assert (
        "Unknown error while looking up redirect_uri https://example.com/"
        in caplog.text
    )
