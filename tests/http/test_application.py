"""What opp_auth.http.application relies on in aiohttp, and what it promises plugins.

The application overrides aiohttp methods that are not public API
(``Application._handle``, ``Application._make_request``, ``Request._prepare_hook``);
core/setup.cfg pins the aiohttp range they were checked against. Each test here
drives a real server on 127.0.0.1, so an aiohttp release that changes one of them
fails here first.
"""

from __future__ import annotations

import asyncio
import configparser
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl
from aiohttp import web, web_protocol
from aiohttp.test_utils import TestServer, make_mocked_request

from opp_auth import client_ip, hookimpl, http_require_auth, request_user
from opp_auth.events import ORIGIN, AuthEvent, Origin
from opp_auth.http.app import create_app
from opp_auth.http.application import OppRequest
from opp_auth.http.pages import API_POLICY, CONTENT_SECURITY_POLICY, SECURITY_HEADERS, add_security_headers_to
from opp_auth.http.view import is_authenticated, peer_address, request_refresh_token_id
from opp_auth.testing import CLIENT_ID

EXAMPLE = {"type": "insecure_example", "users": [{"username": "ann", "password": "pw", "name": "Ann"}]}
ROOT = Path(__file__).resolve().parents[2]


async def served(app: web.Application) -> TestServer:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture
async def owner_token(opp_auth_factory: Any) -> tuple[Any, str, str]:
    """(auth, an access token of the owner, its refresh token id)."""
    auth = await opp_auth_factory(
        providers=[EXAMPLE], mfa_modules=[], http={"use_x_forwarded_for": True, "trusted_proxies": ["127.0.0.1"]}
    )
    owner = await auth.users.async_create_user("Owner", ["system-admin"], is_owner=True)
    refresh_token = await auth.refresh_tokens.async_create_refresh_token(owner, CLIENT_ID)
    return auth, await auth.access_tokens.async_create_access_token(refresh_token), refresh_token.id


def test_core_pins_the_aiohttp_range_the_overrides_were_checked_against() -> None:
    """An upper bound on aiohttp in core/setup.cfg, and the installed aiohttp within it."""
    config = configparser.ConfigParser()
    config.read(ROOT / "core" / "setup.cfg")
    requirement = next(
        line.strip() for line in config["options"]["install_requires"].splitlines() if line.strip().startswith("aiohttp")
    )
    match = re.fullmatch(r"aiohttp>=(\d+)\.(\d+),<(\d+)\.(\d+)", requirement)
    assert match is not None, f"core/setup.cfg must pin aiohttp to a tested range, not {requirement!r}"
    low = (int(match[1]), int(match[2]))
    high = (int(match[3]), int(match[4]))
    installed = tuple(int(part) for part in aiohttp.__version__.split(".")[:2])
    assert low <= installed < high


async def test_requests_are_opp_requests_and_carry_what_the_pipeline_found(owner_token: Any) -> None:
    """The handler sees OppRequest with the user, the refresh token id and both addresses as attributes."""
    auth, token, refresh_token_id = owner_token
    app = create_app(auth)
    seen: dict[str, Any] = {}

    async def look(request: web.Request) -> web.Response:
        user = request_user(request)
        seen.update(
            cls=type(request),
            user=user.name if user else None,
            authenticated=is_authenticated(request),
            refresh_token_id=request_refresh_token_id(request),
            client=client_ip(request),
            peer=peer_address(request),
        )
        return web.json_response({})

    app.router.add_get("/look", look)
    server = await served(app)
    try:
        async with aiohttp.ClientSession() as session:
            url = str(server.make_url("/look"))
            async with session.get(url, headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": "10.1.2.3"}):
                pass
            assert seen == {
                "cls": OppRequest,
                "user": "Owner",
                "authenticated": True,
                "refresh_token_id": refresh_token_id,
                "client": "10.1.2.3",
                "peer": "127.0.0.1",
            }
            async with session.get(url, headers={"Authorization": "Bearer not-a-token"}):
                pass
            assert (seen["user"], seen["authenticated"], seen["refresh_token_id"]) == (None, False, None)
    finally:
        await server.close()


async def test_the_peer_address_is_the_one_aiohttp_reports_over_ipv4_and_ipv6(opp_auth_factory: Any) -> None:
    """The pipeline reads the peer from the socket's address: the same string as request.remote, on both families."""
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[])
    seen: list[tuple[str | None, str | None, str | None]] = []

    async def look(request: web.Request) -> web.Response:
        seen.append((peer_address(request), client_ip(request), request.remote))
        return web.json_response({})

    for host in ("127.0.0.1", "::1"):
        app = create_app(auth)
        app.router.add_get("/look", look)
        server = TestServer(app, host=host)
        try:
            await server.start_server()
        except OSError as err:  # pragma: no cover - a machine without that family
            pytest.skip(f"cannot listen on {host}: {err}")
        try:
            async with aiohttp.ClientSession() as session, session.get(str(server.make_url("/look"))) as resp:
                assert resp.status == 200
        finally:
            await server.close()
    assert seen == [("127.0.0.1",) * 3, ("::1",) * 3]


async def test_a_socket_address_of_numbers_gives_the_same_string_as_request_remote(
    opp_auth_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A family whose peer address is a tuple of ints (AF_VSOCK: (cid, port)): the client is "3", as aiohttp says."""
    original = web_protocol.RequestHandler.connection_made

    def connection_made(self: Any, transport: Any) -> None:
        original(self, transport)
        self._cache["peername"] = (3, 1234)

    monkeypatch.setattr(web_protocol.RequestHandler, "connection_made", connection_made)
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[])
    seen: list[tuple[Any, ...]] = []

    async def look(request: web.Request) -> web.Response:
        seen.append((peer_address(request), client_ip(request), request.remote))
        return web.json_response({})

    app = create_app(auth)
    app.router.add_get("/look", look)
    server = await served(app)
    try:
        async with aiohttp.ClientSession() as session, session.get(str(server.make_url("/look"))) as resp:
            assert resp.status == 200
    finally:
        await server.close()
    assert seen == [("3", "3", "3")]


def test_helpers_answer_for_a_request_nothing_authenticated() -> None:
    """A plain aiohttp request (a plugin's unit test, say) is nobody, from its peer address."""
    request = make_mocked_request("GET", "/", headers={"Authorization": "Bearer x"})
    assert request_user(request) is None
    assert not is_authenticated(request)
    assert request_refresh_token_id(request) is None
    assert client_ip(request) == request.remote
    assert peer_address(request) == request.remote


def test_an_attribute_set_to_a_true_value_other_than_true_does_not_authenticate() -> None:
    """The guards ask `is True`: a plugin that sets opp_authenticated to 1 or "yes" lets nobody in."""
    request = make_mocked_request("GET", "/")
    request.opp_authenticated = "yes"
    request.opp_user = object()
    assert not is_authenticated(request)
    assert request_user(request) is None


async def test_a_clone_keeps_the_user(owner_token: Any) -> None:
    """request.clone() (aiohttp's, used by handlers and the proxy handling) keeps what the pipeline set."""
    auth, token, _ = owner_token
    app = create_app(auth)

    async def cloned(request: web.Request) -> web.Response:
        copy = request.clone(rel_url="/elsewhere")
        user = request_user(copy)
        return web.json_response({"cls": type(copy).__name__, "user": user.name if user else None})

    app.router.add_get("/cloned", cloned)
    server = await served(app)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(str(server.make_url("/cloned")), headers={"Authorization": f"Bearer {token}"}) as resp:
                assert await resp.json() == {"cls": "OppRequest", "user": "Owner"}
    finally:
        await server.close()


async def test_a_plugin_middleware_runs_after_the_pipeline_and_sees_the_user(owner_token: Any) -> None:
    """Middlewares added before start-up run inside the pipeline: the user is known, the filter ran first."""
    auth, token, _ = owner_token
    app = create_app(auth)
    seen: list[Any] = []

    @web.middleware
    async def plugin(request: web.Request, handler: Any) -> web.StreamResponse:
        user = request_user(request)
        seen.append((request.match_info.route.resource.canonical, user.name if user else None))
        return await handler(request)

    app.middlewares.append(plugin)
    server = await served(app)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(str(server.make_url("/api/")), headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == 200
            async with session.get(str(server.make_url("/api/?x=<script>"))) as resp:
                assert resp.status == 400
        assert seen == [("/api/", "Owner")], "the filtered request never reached the plugin"
    finally:
        await server.close()


async def test_middlewares_wrap_each_route_of_a_shared_handler_and_the_chain_is_kept_per_handler(
    owner_token: Any,
) -> None:
    """Routes sharing a handler each pass the middlewares (in order, handler given by keyword as aiohttp does);
    the chain of their handler is kept once, never one of an unmatched path (aiohttp makes its route per request)."""
    auth, _, _ = owner_token
    app = create_app(auth)
    seen: list[tuple[str, str, str]] = []

    @web.middleware
    async def outer(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.append(("outer", request.method, request.path))
        return await handler(request)

    @web.middleware
    async def inner(request: web.Request, *, handler: Any) -> web.StreamResponse:
        seen.append(("inner", request.method, request.path))
        response = await handler(request)
        response.headers["X-Inner"] = request.match_info.route.resource.canonical
        return response

    async def shared(request: web.Request) -> web.Response:
        return web.Response(text=request.path)

    app.router.add_get("/one", shared)
    app.router.add_get("/two", shared)
    app.middlewares.extend([outer, inner])
    server = await served(app)
    try:
        async with aiohttp.ClientSession() as session:
            for method, path in [("GET", "/one"), ("GET", "/two"), ("GET", "/one"), ("HEAD", "/one")]:
                async with session.request(method, str(server.make_url(path))) as resp:
                    assert (resp.status, resp.headers["X-Inner"]) == (200, path)
                    assert await resp.text() == ("" if method == "HEAD" else path)
            for _ in range(3):
                async with session.get(str(server.make_url("/missing"))) as resp:
                    assert resp.status == 404
        served_paths = [("GET", "/one"), ("GET", "/two"), ("GET", "/one"), ("HEAD", "/one")]
        expected = [(layer, method, path) for method, path in served_paths for layer in ("outer", "inner")]
        assert seen[:8] == expected
        assert seen[8:] == [(layer, "GET", "/missing") for _ in range(3) for layer in ("outer", "inner")]
        # One chain for the three matched routes of the shared handler; none for the unmatched path.
        chains = app._opp_routing.chains  # type: ignore[attr-defined]
        assert list(chains) == [shared]
    finally:
        await server.close()


def every_kind_of_answer(token: str) -> list[tuple[str, dict[str, str]]]:
    """(path, headers) of JSON, the pipeline's refusals (401, 400), a 404, a static file and a page."""
    return [
        ("/api/", {"Authorization": f"Bearer {token}"}),
        ("/api/", {}),
        ("/api/?q=<script>", {}),
        ("/no/such/path", {}),
        ("/static/authorize.js", {}),
        ("/auth/authorize", {}),
    ]


async def test_security_headers_on_every_kind_of_response(owner_token: Any) -> None:
    """JSON, a refusal the pipeline makes, a 404, a static file, a page and the websocket handshake."""
    auth, token, _ = owner_token
    server = await served(create_app(auth))
    try:
        async with aiohttp.ClientSession() as session:
            for path, headers in every_kind_of_answer(token):
                async with session.get(str(server.make_url(path)), headers=headers) as resp:
                    for name, value in SECURITY_HEADERS.items():
                        assert resp.headers.getall(name) == [value], (path, name)
                    assert len(resp.headers.getall("Content-Security-Policy")) == 1, path
            async with session.get(str(server.make_url("/api/"))) as resp:
                assert resp.headers["Content-Security-Policy"] == API_POLICY
            async with session.ws_connect(str(server.make_url("/api/websocket"))) as ws:
                assert ws._response.headers["X-Frame-Options"] == SECURITY_HEADERS["X-Frame-Options"]
                assert (await ws.receive_json())["type"] == "auth_required"
    finally:
        await server.close()


async def test_a_plugin_on_response_prepare_receiver_runs_after_the_headers(owner_token: Any) -> None:
    """A plugin's on_response_prepare still runs, sees the security headers and may change one."""
    auth, _, _ = owner_token
    app = create_app(auth)
    seen: list[str | None] = []

    async def receiver(request: web.Request, response: web.StreamResponse) -> None:
        seen.append(response.headers.get("X-Frame-Options"))
        response.headers["X-Frame-Options"] = "SAMEORIGIN"

    app.on_response_prepare.append(receiver)
    server = await served(app)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(str(server.make_url("/api/"))) as resp:
                assert resp.headers.getall("X-Frame-Options") == ["SAMEORIGIN"]
        assert seen == [SECURITY_HEADERS["X-Frame-Options"]]
    finally:
        await server.close()


async def test_a_handler_s_own_security_header_is_kept(owner_token: Any) -> None:
    """A handler that sets one of the headers keeps its value, once; the others are still added."""
    auth, _, _ = owner_token
    app = create_app(auth)

    async def framed(request: web.Request) -> web.Response:
        return web.json_response({}, headers={"X-Frame-Options": "SAMEORIGIN"})

    app.router.add_get("/framed", framed)
    server = await served(app)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(str(server.make_url("/framed"))) as resp:
                assert resp.headers.getall("X-Frame-Options") == ["SAMEORIGIN"]
                assert resp.headers["Content-Security-Policy"] == API_POLICY
    finally:
        await server.close()



# ---- routing comes first (review findings on the first version, which routed after the pipeline) ----

PROXIED = {"use_x_forwarded_for": True, "trusted_proxies": ["127.0.0.1"]}


async def test_behind_a_trusted_proxy_html_answers_and_plugin_receivers_work(owner_token: Any) -> None:
    """The pipeline clones a proxied request; the route, the headers and a plugin's receivers survive it."""
    auth, token, _ = owner_token
    app = create_app(auth)
    seen: list[tuple[str, str | None]] = []

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<html><body>plugin</body></html>", content_type="text/html")

    async def receiver(request: web.Request, response: web.StreamResponse) -> None:
        user = request_user(request)
        seen.append((client_ip(request), user.name if user else None))
        response.headers["X-Plugin"] = "1"

    app.router.add_get("/plugin/page", page)
    app.on_response_prepare.append(receiver)
    server = await served(app)
    try:
        async with aiohttp.ClientSession() as session:
            for path in ("/static/authorize.html", "/auth/authorize", "/plugin/page", "/api/"):
                headers = {"X-Forwarded-For": "10.1.2.3", "Authorization": f"Bearer {token}"}
                async with session.get(str(server.make_url(path)), headers=headers) as resp:
                    assert resp.status == 200, path
                    assert resp.headers["X-Frame-Options"] == SECURITY_HEADERS["X-Frame-Options"], path
                    assert len(resp.headers.getall("Content-Security-Policy")) == 1, path
                    assert resp.headers["X-Plugin"] == "1", path
    finally:
        await server.close()
    # The receivers get the request aiohttp made (the pipeline cloned it): it knows the client and the user.
    assert seen == [("10.1.2.3", "Owner")] * 4


async def test_the_pipeline_s_own_refusals_pass_plugin_receivers(opp_auth_factory: Any) -> None:
    """The filter, a bad proxy header, a refused CORS preflight and a ban answer through the app's receivers."""
    auth = await opp_auth_factory(
        providers=[EXAMPLE], mfa_modules=[], http={**PROXIED, "login_attempts_threshold": 1}
    )
    app = create_app(auth)
    seen: list[int] = []
    found: list[tuple[Any, ...]] = []

    async def receiver(request: web.Request, response: web.StreamResponse) -> None:
        seen.append(response.status)
        # Read directly, as a plugin may: nothing let in, on every refusal (no AttributeError).
        found.append((request.opp_authenticated, request.opp_user, request.opp_refresh_token_id))  # type: ignore[attr-defined]
        response.headers["X-Plugin"] = "1"

    app.on_response_prepare.append(receiver)
    server = await served(app)
    try:
        async with aiohttp.ClientSession() as session:
            url = str(server.make_url("/api/"))
            cases: list[tuple[str, str, dict[str, str], int]] = [
                ("GET", url + "?q=<script>", {}, 400),
                ("GET", url, {"X-Forwarded-For": "not an address"}, 400),
                ("OPTIONS", url, {"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "GET"}, 403),
                ("GET", url, {"Authorization": "Bearer wrong", "X-Forwarded-For": "10.9.9.9"}, 401),  # bans 10.9.9.9
                ("GET", url, {"X-Forwarded-For": "10.9.9.9"}, 403),
            ]
            for method, target, headers, status in cases:
                async with session.request(method, target, headers=headers) as resp:
                    assert resp.status == status, (method, target, headers)
                    assert resp.headers["X-Plugin"] == "1", (method, target, headers)
                    assert resp.headers["X-Frame-Options"] == SECURITY_HEADERS["X-Frame-Options"]
    finally:
        await server.close()
    assert seen == [400, 400, 403, 401, 403]
    assert found == [(False, None, None)] * 5


class RouteAwareAuthenticator:
    """A plugin that lets in the owner on the routes it names, and only there (it reads the route)."""

    def __init__(self, auth: Any) -> None:
        self.auth = auth

    @hookimpl
    def opp_auth_authenticate_request(self, request: web.Request, auth: Any) -> Any:
        route = request.match_info.route
        if request.headers.get("X-Route-Key") != "k" or route.resource is None:
            return None
        if route.resource.canonical != "/api/":
            return None
        return next(u for u in self.auth.store.users() if u.is_owner)


async def test_a_plugin_authenticator_sees_the_route(owner_token: Any) -> None:
    """Authenticators run after routing: one that decides by route works (it let nobody in before)."""
    auth, _, _ = owner_token
    auth.pm.register(RouteAwareAuthenticator(auth), name="test.route_aware")
    try:
        server = await served(create_app(auth))
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(str(server.make_url("/api/")), headers={"X-Route-Key": "k"}) as resp:
                    assert resp.status == 200
                async with session.get(str(server.make_url("/api/")), headers={"X-Route-Key": "x"}) as resp:
                    assert resp.status == 401
        finally:
            await server.close()
    finally:
        auth.pm.unregister(name="test.route_aware")


async def test_expect_100_continue_is_answered_after_the_pipeline(owner_token: Any) -> None:
    """A body sent after 100-continue reaches the handler; a client the pipeline refuses gets no 100."""
    auth, token, _ = owner_token
    app = create_app(auth)

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"got": (await request.read()).decode(), "user": request_user(request).name})

    app.router.add_post("/echo", http_require_auth(echo))
    server = await served(app)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
            + f"Authorization: Bearer {token}\r\n\r\n".encode()
        )
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 100")
        await reader.readline()
        writer.write(b"hello")
        await writer.drain()
        status = await reader.readline()
        assert status.startswith(b"HTTP/1.1 200"), status
        writer.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /echo?q=<script> HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        await writer.drain()
        status = await reader.readline()
        assert status.startswith(b"HTTP/1.1 400"), status
        writer.close()
    finally:
        await server.close()


def test_requests_in_aiohttp_debug_mode_raise_no_warning(tmp_path: Path) -> None:
    """aiohttp (with -X dev) warns when an unlisted attribute is set on a request: ours are listed."""
    script = textwrap.dedent(
        """
        import asyncio, sys
        from pathlib import Path
        from aiohttp.test_utils import TestClient, TestServer
        from opp_auth.config import validate_config
        from opp_auth.http.app import create_app
        from opp_auth.plugins import make_plugin_manager
        from opp_auth.server import build_auth

        async def main():
            pm = make_plugin_manager()
            raw = {"openpeerpower": {"auth_providers": [{"type": "openpeerpower"}]}, "http": {}}
            auth = build_auth(validate_config(raw, pm, config_dir=Path(sys.argv[1])), pm)
            async with TestClient(TestServer(create_app(auth), host="127.0.0.1")) as client:
                for headers in ({}, {"Authorization": "Bearer x", "X-Forwarded-For": "10.0.0.1"}):
                    resp = await client.get("/api/", headers=headers)
                    print(resp.status)

        asyncio.run(main())
        """
    )
    result = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::DeprecationWarning", "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.split() == ["401", "401"], result.stderr[-3000:]


async def test_a_token_is_refused_once_a_backend_that_can_go_stale_is_stale(
    owner_token: Any, opp_auth_storage_type: str
) -> None:
    """The JSON store (always fresh) looks tokens up in its index; any other backend asks fresh_until each time."""
    auth, token, _ = owner_token
    server = await served(create_app(auth))
    try:
        async with aiohttp.ClientSession() as session:
            url = str(server.make_url("/api/"))
            async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == 200  # now in the token cache
            if opp_auth_storage_type == "json":
                assert auth.backend.always_fresh
                assert auth.access_tokens._get_refresh_token == auth.store._tokens_by_id.get
                return
            assert not auth.backend.always_fresh
            auth.backend.fresh_until = 0  # lost contact with the database longer than the staleness window
            async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == 401
    finally:
        await server.close()


async def test_mounted_in_another_application_it_refuses_to_start(owner_token: Any) -> None:
    """As a sub-application the parent's handler would serve its routes and the pipeline never run: refused."""
    auth, _, _ = owner_token
    app = create_app(auth)
    with pytest.raises(RuntimeError, match="must be served itself"):
        web.Application().add_subapp("/oa", app)
    with pytest.raises(RuntimeError, match="must be served itself"):
        web.Application().add_domain("auth.example", app)
    # Served itself, it starts.
    server = await served(app)
    await server.close()


async def test_the_pipeline_filters_the_raw_path_aiohttp_reports(opp_auth_factory: Any) -> None:
    """The pipeline reads Request._message: its path is request.raw_path for every target form, its headers request.headers."""
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[])
    seen: list[tuple[str, str]] = []

    async def look(request: web.Request) -> web.Response:
        seen.append((request._message.path, request.raw_path))
        assert request._message.headers is request.headers
        return web.json_response({})

    app = create_app(auth)
    app.router.add_get("/look/{tail:.*}", look)
    server = await served(app)
    targets = ["/look/a", "/look/a%2Fb?x=%20y&z", "/look/%E2%82%AC/?q=%25", "/look/a;b?c=d#frag"]
    try:
        async with aiohttp.ClientSession() as session:
            for target in targets:
                url = server.make_url("/").join(yarl.URL(target, encoded=True))
                async with session.get(url) as resp:
                    assert resp.status == 200, target
            for harmful in ("/look/%3Cscript%3Ex", "/look/a?q=..%2F..%2Fetc"):
                url = server.make_url("/").join(yarl.URL(harmful, encoded=True))
                async with session.get(url) as resp:
                    assert resp.status == 400, harmful
    finally:
        await server.close()
    assert [private for private, _ in seen] == [public for _, public in seen]
    assert [private for private, _ in seen] == [t.split("#")[0] for t in targets]


async def test_the_security_headers_of_json_answers_are_those_add_security_headers_to_gives(
    opp_auth_factory: Any,
) -> None:
    """The prepare hook's one-call path for JSON answers gives what the general function gives, in order.

    JSON (any parameters, any letter case) gets the API's policy; other answers the pages' strict one.
    """
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[])
    answers: dict[str, Any] = {
        "plain": lambda: web.Response(body=b"{}", content_type="application/json"),
        "charset": lambda: web.json_response({}),
        "framed": lambda: web.Response(
            body=b"{}", content_type="application/json", headers={"x-frame-options": "SAMEORIGIN"}
        ),
        "policy": lambda: web.Response(
            body=b"{}", content_type="application/json", headers={"Content-Security-Policy": "default-src *"}
        ),
        "text": lambda: web.Response(text="hi"),
        "bare": lambda: web.Response(body=b"{}", headers={"Content-Type": "application/json"}),
        "upper": lambda: web.Response(body=b"{}", headers={"Content-Type": "Application/JSON ; Charset=UTF-8"}),
        "problem": lambda: web.Response(body=b"{}", content_type="application/problem+json"),
        # HTML to a browser (the last of a comma-separated list): not JSON here either.
        "listed": lambda: web.Response(body=b"{}", headers={"Content-Type": "application/json;,text/html"}),
    }
    policies = {
        "policy": "default-src *",
        "text": CONTENT_SECURITY_POLICY,
        "problem": CONTENT_SECURITY_POLICY,
        "listed": CONTENT_SECURITY_POLICY,
    }

    async def answer(request: web.Request) -> web.Response:
        return answers[request.match_info["kind"]]()  # type: ignore[no-any-return]

    app = create_app(auth)
    app.router.add_get("/answer/{kind}", answer)
    server = await served(app)
    names = {name.lower() for name in (*SECURITY_HEADERS, "Content-Security-Policy")}
    try:
        async with aiohttp.ClientSession() as session:
            for kind, make in answers.items():
                async with session.get(str(server.make_url(f"/answer/{kind}"))) as resp:
                    served_headers = [(k.lower(), v) for k, v in resp.headers.items() if k.lower() in names]
                expected = make()
                add_security_headers_to(make_mocked_request("GET", f"/answer/{kind}"), expected)
                wanted = [(k.lower(), v) for k, v in expected.headers.items() if k.lower() in names]
                assert served_headers == wanted, kind
                assert len(served_headers) == len(names), kind
                assert dict(served_headers)["content-security-policy"] == policies.get(kind, API_POLICY), kind
    finally:
        await server.close()


async def test_events_name_the_request_they_were_emitted_for_in_the_view_and_in_work_it_starts(
    opp_auth_factory: Any,
) -> None:
    """The pipeline sets the request as the events' origin: what the view emits in line, in tasks it starts,
    in a thread and under a timeout names its client (after X-Forwarded-For), user agent and user; so does
    the ban a refused request causes, which the ban hook decides in the background. An Origin a handler
    sets (as the websocket handler does) wins over the request.
    """
    proxied = {"use_x_forwarded_for": True, "trusted_proxies": ["127.0.0.1"], "login_attempts_threshold": 1}
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[], http=proxied)
    owner = await auth.users.async_create_user("Owner", ["system-admin"], is_owner=True)
    token = await auth.access_tokens.async_create_access_token(
        await auth.refresh_tokens.async_create_refresh_token(owner, CLIENT_ID)
    )
    app = create_app(auth)
    seen: list[AuthEvent] = []
    auth.events.subscribe(seen.append)

    def emit(where: str) -> None:
        auth.events.emit("lockout_cleared", details={"where": where})

    async def emit_later(where: str) -> None:
        emit(where)

    async def work(request: web.Request) -> web.Response:
        emit("view")
        await asyncio.ensure_future(emit_later("task"))
        await asyncio.gather(emit_later("gather"))
        await asyncio.wait_for(emit_later("wait_for"), 5)
        await asyncio.to_thread(emit, "thread")
        return web.json_response({})

    async def with_an_origin(request: web.Request) -> web.Response:
        ORIGIN.set(Origin(via="websocket", remote_address="192.0.2.9"))
        emit("set")
        return web.json_response({})

    app.router.add_get("/work", work)
    app.router.add_get("/set", with_an_origin)
    server = await served(app)
    try:
        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": f"Bearer {token}", "User-Agent": "probe/1", "X-Forwarded-For": "10.1.2.3"}
            for path in ("/work", "/set"):
                async with session.get(str(server.make_url(path)), headers=headers) as resp:
                    assert resp.status == 200, path
            refused = {"Authorization": "Bearer wrong", "User-Agent": "attacker/1", "X-Forwarded-For": "10.9.9.9"}
            async with session.get(str(server.make_url("/api/")), headers=refused) as resp:
                assert resp.status == 401
            await auth.events.async_drain()
    finally:
        await server.close()
    found = [(e.details.get("where", e.type), e.via, e.remote_address, e.user_agent, e.actor_id) for e in seen]
    by_owner = ("http", "10.1.2.3", "probe/1", owner.id)
    assert [row for row in found if row[0] != "login_failed"] == [
        *[(where, *by_owner) for where in ("view", "task", "gather", "wait_for", "thread")],
        ("set", "websocket", "192.0.2.9", None, None),
        ("address_banned", "http", "10.9.9.9", "attacker/1", None),
    ]


async def test_the_private_reads_of_the_hook_and_pipeline_are_what_aiohttp_s_properties_answer(
    owner_token: Any,
) -> None:
    """response._headers and _status, app._on_response_prepare: the same as the public properties for every
    kind of answer (JSON, the pipeline's refusals, a raised HTTPException, a static file, a page, the
    websocket handshake), as the prepare hook and the pipeline's 401 check read them."""
    auth, token, _ = owner_token
    app = create_app(auth)
    seen: list[tuple[str, bool, bool, bool]] = []

    async def receiver(request: web.Request, response: web.StreamResponse) -> None:
        seen.append(
            (
                type(response).__name__,
                response._headers is response.headers,
                response._status == response.status,
                request.app._on_response_prepare is request.app.on_response_prepare,
            )
        )

    async def raises(request: web.Request) -> web.Response:
        raise web.HTTPConflict(text="no")

    app.router.add_get("/raises", raises)
    app.on_response_prepare.append(receiver)
    server = await served(app)
    try:
        async with aiohttp.ClientSession() as session:
            for path, headers in [*every_kind_of_answer(token), ("/raises", {})]:
                async with session.get(str(server.make_url(path)), headers=headers) as resp:
                    assert resp.status in (200, 400, 401, 404, 409), path
            async with session.ws_connect(str(server.make_url("/api/websocket"))) as ws:
                assert (await ws.receive_json())["type"] == "auth_required"
    finally:
        await server.close()
    assert len(seen) == 8
    assert {kind for kind, *_ in seen} >= {"Response", "FileResponse", "WebSocketResponse"}
    assert all(same_headers and same_status and same_signal for _, same_headers, same_status, same_signal in seen)
