"""The request observer on its own (a plain aiohttp application calling it as the core's pipeline does):
labels and its caches' bound. tests/http/test_request_observers.py checks what the core passes it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiohttp
import opp_auth_metrics
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from .conftest import Scrape

COUNT = "opp_auth_http_request_duration_seconds_count"


class _Auth:
    """What Metrics reads from the core at scrape time: nothing here."""

    def runtime_stats(self) -> dict[str, Any]:
        return {}


async def _answer(request: web.Request) -> web.StreamResponse:
    """200, or the status of ?status= (raised as aiohttp's HTTPException when ?raise= is given)."""
    status = int(request.query.get("status", "200"))
    if "raise" in request.query:
        error = web.HTTPError()
        error.set_status(status)
        raise error
    return web.Response(status=status, text="x")


def _observing(observe: Callable[[web.Request, int, float], None]) -> Any:
    """A middleware calling observe as the core's pipeline does: refusals raised as HTTPException with their status."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        start = time.perf_counter()
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            observe(request, exc.status, time.perf_counter() - start)
            raise
        observe(request, response.status, time.perf_counter() - start)
        return response  # type: ignore[no-any-return]

    return middleware


async def _serve(routes: list[tuple[str, str]]) -> tuple[opp_auth_metrics.Metrics, TestServer]:
    metrics = opp_auth_metrics.Metrics(_Auth(), [])  # type: ignore[arg-type]
    app = web.Application(middlewares=[_observing(metrics.observer())])
    for method, path in routes:
        if method == "GET":
            app.router.add_get(path, _answer)  # and its HEAD route
        else:
            app.router.add_route(method, path, _answer)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return metrics, server


async def _requests(server: TestServer, calls: list[tuple[str, str]]) -> None:
    async with aiohttp.ClientSession() as session:
        for method, path in calls:
            async with session.request(method, str(server.make_url(path))) as resp:
                await resp.read()


async def test_each_request_is_labelled_by_its_own_route_method_and_status() -> None:
    """A route of any method, GET and its HEAD route, statuses varying on one route, a raised refusal."""
    metrics, server = await _serve([("*", "/any/{id}"), ("GET", "/get")])
    try:
        calls = [("GET", "/any/1"), ("POST", "/any/2"), ("GET", "/any/3"), ("DELETE", "/any/4"), ("PROPFIND", "/any/5")]
        calls += [("GET", "/get"), ("HEAD", "/get"), ("GET", "/get"), ("GET", "/get?status=404")]
        calls += [("GET", "/get?status=503&raise=1"), ("GET", "/get?status=503&raise=1"), ("GET", "/get?status=201")]
        await _requests(server, calls * 2)
    finally:
        await server.close()
    scrape = Scrape(metrics.render().decode())

    def count(route: str, method: str, status_class: str) -> float:
        return scrape.value(COUNT, route=route, method=method, status_class=status_class)

    assert count("/any/{id}", "GET", "2xx") == 4
    assert count("/any/{id}", "POST", "2xx") == 2
    assert count("/any/{id}", "DELETE", "2xx") == 2
    assert count("/any/{id}", "other", "2xx") == 2
    assert count("/get", "GET", "2xx") == 6
    assert count("/get", "HEAD", "2xx") == 2
    assert count("/get", "GET", "4xx") == 2
    assert count("/get", "GET", "5xx") == 4
    assert scrape.total(COUNT) == len(calls) * 2


async def test_the_caches_of_series_stay_within_their_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_CACHED_CHILDREN, series are found uncached (and still counted right)."""
    monkeypatch.setattr(opp_auth_metrics, "MAX_CACHED_CHILDREN", 3)
    paths = [f"/r{n}" for n in range(6)]
    metrics, server = await _serve([("GET", path) for path in paths])
    try:
        await _requests(server, [("GET", f"{path}?status={status}") for path in paths for status in (200, 404)] * 2)
    finally:
        await server.close()
    assert len(metrics._children) == 3
    assert sum(len(by_status) for by_status in metrics._by_route.values()) == metrics._by_route_size == 3
    scrape = Scrape(metrics.render().decode())
    for path in paths:
        assert scrape.value(COUNT, route=path, method="GET", status_class="2xx") == 2
        assert scrape.value(COUNT, route=path, method="GET", status_class="4xx") == 2
