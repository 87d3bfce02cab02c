"""PluginContext.observe_requests: what the pipeline tells an observer of each answered request, and when not.

A real server on 127.0.0.1 (the core's application): an observer is called in line with the
request, the status the client gets and the server's time on the route; the pipeline's own
refusals before the route and websocket connections are not observed; an observer that raises
changes nothing of the answer.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web

from opp_auth import hookimpl
from opp_auth.http.app import create_app
from opp_auth.testing import CLIENT_ID

from .test_application import EXAMPLE, served

Seen = list[tuple[str, str, int, float]]


class _Routes:
    """A plugin's routes: a redirect and a refusal raised by the handler, a websocket."""

    @hookimpl
    def opp_auth_register_routes(self, app: web.Application, auth: Any) -> None:
        async def moved(request: web.Request) -> web.StreamResponse:
            raise web.HTTPFound("/api/")

        async def gone(request: web.Request) -> web.StreamResponse:
            raise web.HTTPGone()

        async def socket(request: web.Request) -> web.StreamResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.close()
            return ws

        app.router.add_get("/test/moved", moved)
        app.router.add_get("/test/gone", gone)
        app.router.add_get("/test/socket", socket)


@pytest.fixture
async def observed(opp_auth_factory: Any) -> tuple[Any, str, Seen]:
    """(auth, an owner's access token, what one observer saw: (method, path, status, seconds))."""
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[], plugins=[("observer-test-routes", _Routes())])
    owner = await auth.users.async_create_user("Owner", ["system-admin"], is_owner=True)
    refresh_token = await auth.refresh_tokens.async_create_refresh_token(owner, CLIENT_ID)
    seen: Seen = []
    auth.context.observe_requests(
        lambda request, status, seconds: seen.append((request.method, request.path, status, seconds))
    )
    return auth, await auth.access_tokens.async_create_access_token(refresh_token), seen


async def test_each_answer_of_a_route_is_observed_with_its_status(observed: Any) -> None:
    """Authenticated and refused API calls, a path no route serves, a redirect and a refusal a handler raised."""
    auth, token, seen = observed
    server = await served(create_app(auth))
    try:
        async with aiohttp.ClientSession() as session:
            for path, headers, status in [
                ("/api/", {"Authorization": f"Bearer {token}"}, 200),
                ("/api/", {}, 401),
                ("/no/such/path", {}, 404),
                ("/test/moved", {}, 302),
                ("/test/gone", {}, 410),
            ]:
                async with session.get(str(server.make_url(path)), headers=headers, allow_redirects=False) as resp:
                    assert resp.status == status
    finally:
        await server.close()
    assert [(method, path, status) for method, path, status, _ in seen] == [
        ("GET", "/api/", 200),
        ("GET", "/api/", 401),
        ("GET", "/no/such/path", 404),
        ("GET", "/test/moved", 302),
        ("GET", "/test/gone", 410),
    ]
    assert all(0 < seconds < 5 for *_, seconds in seen)


async def test_refusals_before_the_route_and_websockets_are_not_observed(observed: Any) -> None:
    """A filtered path (400) and a websocket connection (101): the observer hears of neither."""
    auth, _token, seen = observed
    server = await served(create_app(auth))
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(str(server.make_url("/api/proc/self/environ"))) as resp:
                assert resp.status == 400
            async with session.ws_connect(str(server.make_url("/test/socket"))) as ws:
                await ws.receive()
    finally:
        await server.close()
    assert seen == []


async def test_an_observer_that_raises_is_logged_and_changes_nothing(
    observed: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The answer goes out as it was; the observers after it are still called; the error is logged."""
    auth, token, seen = observed
    seen.clear()

    def broken(request: web.Request, status: int, seconds: float) -> None:
        raise RuntimeError("observer bug")

    auth.stats.request_observers.insert(0, broken)
    server = await served(create_app(auth))
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(str(server.make_url("/api/")), headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == 200
                assert (await resp.json())["message"] == "API running."
    finally:
        await server.close()
    assert [status for _, _, status, _ in seen] == [200]
    assert "Request observer" in caplog.text and "observer bug" in caplog.text


async def test_stopping_an_observer_stops_its_calls(opp_auth_factory: Any) -> None:
    """After stop() (twice is harmless) the observer is not called again, and no observer is left."""
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[])
    seen: list[int] = []
    stop = auth.context.observe_requests(lambda request, status, seconds: seen.append(status))
    server = await served(create_app(auth))
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(str(server.make_url("/api/"))) as resp:
                assert resp.status == 401
            assert seen == [401]
            stop()
            stop()
            async with session.get(str(server.make_url("/api/"))) as resp:
                assert resp.status == 401
    finally:
        await server.close()
    assert seen == [401]
    assert auth.stats.request_observers == []
