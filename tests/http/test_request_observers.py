"""PluginContext.observe_requests: what the pipeline tells an observer of each answered request, and when not.

A real server on 127.0.0.1 (the core's application): an observer is called in line with the
request, the status the client gets and the server's time on the route; the pipeline's own
refusals before the route and websocket connections are not observed; an observer that raises
changes nothing of the answer.
"""

from __future__ import annotations

import asyncio
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

    auth.stats.request_observers = (broken, *auth.stats.request_observers)
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
    assert auth.stats.request_observers == ()


class _Toggle:
    """A plugin route that starts observing while it is being answered, and one that takes its time."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, float]] = []

    @hookimpl
    def opp_auth_register_routes(self, app: web.Application, auth: Any) -> None:
        async def enable(request: web.Request) -> web.StreamResponse:
            auth.observe_requests(lambda request, status, seconds: self.seen.append((request.path, seconds)))
            return web.Response(text="on")

        async def slow(request: web.Request) -> web.StreamResponse:
            await asyncio.sleep(0.2)
            return web.Response(text="done")

        app.router.add_get("/test/enable", enable)
        app.router.add_get("/test/slow", slow)


async def test_an_observer_registered_during_a_request_starts_with_the_next_one(opp_auth_factory: Any) -> None:
    """The request that registered it, and one already being answered, are not observed (never with a made-up
    duration); the next request is, with its own time."""
    toggle = _Toggle()
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[], plugins=[("observer-toggle", toggle)])
    server = await served(create_app(auth))
    try:
        async with aiohttp.ClientSession() as session:

            async def get(path: str) -> None:
                async with session.get(str(server.make_url(path))) as resp:
                    assert resp.status == 200

            slow = asyncio.ensure_future(get("/test/slow"))
            await asyncio.sleep(0.05)
            await get("/test/enable")
            await slow
            assert toggle.seen == []
            await get("/test/slow")
    finally:
        await server.close()
    assert len(toggle.seen) == 1
    path, seconds = toggle.seen[0]
    assert path == "/test/slow" and 0.2 <= seconds < 2


async def test_an_observer_that_stops_itself_does_not_hide_the_request_from_the_others(
    observed: Any,
) -> None:
    """Observers a, b, c; a stops itself while called: b and c still see that request, a none after it."""
    auth, token, _seen = observed
    calls: dict[str, int] = {"a": 0, "b": 0, "c": 0}

    def make(name: str) -> Any:
        def observe(request: web.Request, status: int, seconds: float) -> None:
            calls[name] += 1
            if name == "a":
                stops["a"]()

        return observe

    stops = {name: auth.context.observe_requests(make(name)) for name in ("a", "b", "c")}
    server = await served(create_app(auth))
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(2):
                async with session.get(str(server.make_url("/api/"))) as resp:
                    assert resp.status == 401
    finally:
        await server.close()
    assert calls == {"a": 1, "b": 2, "c": 2}


async def test_a_coroutine_function_is_refused(opp_auth_factory: Any) -> None:
    """It would never run (called, it only makes a coroutine): TypeError when registered, nothing kept."""
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[])

    async def observe(request: web.Request, status: int, seconds: float) -> None:
        return None

    with pytest.raises(TypeError, match="plain function"):
        auth.context.observe_requests(observe)
    assert auth.stats.request_observers == ()
