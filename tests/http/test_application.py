"""What opp_auth.http.application relies on in aiohttp, and what it promises plugins.

The application overrides aiohttp methods that are not public API
(``Application._handle``, ``Application._make_request``, ``Request._prepare_hook``);
core/setup.cfg pins the aiohttp range they were checked against. Each test here
drives a real server on 127.0.0.1, so an aiohttp release that changes one of them
fails here first.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request

from opp_auth import client_ip, request_user
from opp_auth.http.app import create_app
from opp_auth.http.application import OppRequest
from opp_auth.http.pages import CONTENT_SECURITY_POLICY, SECURITY_HEADERS
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


async def test_security_headers_on_every_kind_of_response(owner_token: Any) -> None:
    """JSON, a refusal the pipeline makes, a 404, a static file, a page and the websocket handshake."""
    auth, token, _ = owner_token
    server = await served(create_app(auth))
    try:
        async with aiohttp.ClientSession() as session:
            for path, headers in (
                ("/api/", {"Authorization": f"Bearer {token}"}),
                ("/api/", {}),
                ("/api/?q=<script>", {}),
                ("/no/such/path", {}),
                ("/static/authorize.js", {}),
                ("/auth/authorize", {}),
            ):
                async with session.get(str(server.make_url(path)), headers=headers) as resp:
                    for name, value in SECURITY_HEADERS.items():
                        assert resp.headers.getall(name) == [value], (path, name)
                    assert len(resp.headers.getall("Content-Security-Policy")) == 1, path
            async with session.get(str(server.make_url("/api/"))) as resp:
                assert resp.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
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
                assert resp.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    finally:
        await server.close()

