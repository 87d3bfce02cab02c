"""The pipeline runs before aiohttp's own handling: routes added at any time pass it; unknown paths get JSON answers."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from opp_auth import http_require_auth, request_user
from opp_auth.http.app import create_app
from opp_auth.testing import CLIENT_ID

EXAMPLE = {"type": "insecure_example", "users": [{"username": "ann", "password": "pw", "name": "Ann"}]}
CORE_HTTP = Path(__file__).resolve().parents[2] / "core" / "opp_auth" / "http"


@http_require_auth
async def whoami(request: web.Request) -> web.Response:
    user = request_user(request)
    return web.json_response({"user": user.name})


async def test_routes_added_after_the_app_was_built_pass_the_pipeline(opp_auth_factory: Any) -> None:
    """A route added after create_app, and one added while starting, are authenticated and filtered like the rest."""
    auth = await opp_auth_factory(
        providers=[EXAMPLE], mfa_modules=[], http={"use_x_forwarded_for": True, "trusted_proxies": ["127.0.0.1"]}
    )
    owner = await auth.users.async_create_user("Owner", ["system-admin"], is_owner=True)
    token = await auth.access_tokens.async_create_access_token(await auth.refresh_tokens.async_create_refresh_token(owner, CLIENT_ID))
    app = create_app(auth)
    app.router.add_get("/late/after-build", whoami)

    async def add_on_startup(app: web.Application) -> None:
        app.router.add_get("/late/on-startup", whoami)

    app.on_startup.append(add_on_startup)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            for path in ("/late/after-build", "/late/on-startup"):
                url = str(server.make_url(path))
                async with session.get(url) as resp:
                    assert (resp.status, await resp.json()) == (401, {"message": "Unauthorized"})
                async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
                    assert (resp.status, await resp.json()) == (200, {"user": "Owner"})
                async with session.get(url + "?q=<script>", headers={"Authorization": f"Bearer {token}"}) as resp:
                    assert resp.status == 400
                # The pipeline resolved the proxy header for this route too: a bad one is refused.
                async with session.get(url, headers={"X-Forwarded-For": "not an address"}) as resp:
                    assert resp.status == 400
            async with session.get(str(server.make_url("/no/such/path"))) as resp:
                assert (resp.status, await resp.json()) == (404, {"message": "Not found"})
            async with session.delete(str(server.make_url("/late/after-build"))) as resp:
                assert resp.status == 405
                assert await resp.json() == {"message": "Method not allowed"}
                assert "GET" in resp.headers["Allow"]
    finally:
        await server.close()


async def test_a_plugin_middleware_may_answer_a_path_no_route_serves(opp_auth_factory: Any) -> None:
    """The pipeline still calls inner middlewares for unrouted paths (a frontend put in front serves its files)."""
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[])
    app = create_app(auth)

    @web.middleware
    async def files(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/frontend/app.js":
            return web.Response(text="// app", content_type="application/javascript")
        return await handler(request)

    app.middlewares.append(files)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(str(server.make_url("/frontend/app.js"))) as resp:
                assert (resp.status, await resp.text()) == (200, "// app")
                assert resp.headers["X-Frame-Options"] == "DENY"
            async with session.get(str(server.make_url("/frontend/other.js"))) as resp:
                assert (resp.status, await resp.json()) == (404, {"message": "Not found"})
            async with session.get(str(server.make_url("/frontend/app.js?q=<script>"))) as resp:
                assert resp.status == 400, "the pipeline's filter still runs first"
    finally:
        await server.close()


def test_the_pipeline_uses_no_private_aiohttp_attribute() -> None:
    """No private attribute of an aiohttp object in the HTTP layer (route._handler...), but in application.py.

    application.py overrides aiohttp's private request handling, against the aiohttp range
    core/setup.cfg pins (tests/http/test_application.py checks both). The pipeline itself
    (middleware.py) reads exactly four on its hottest lines: it gives the request its route as
    Application._handle does, and reads the peer's address, the raw path and the answer's status
    without aiohttp's properties.
    """
    private = {
        "_handler",
        "_middlewares_handlers",
        "_resources",
        "_routes",
        "_handle",
        "_make_request",
        "_prepare_hook",
        "_match_info",
        "_apps",
        "_transport_peername",
        "_message",
        "_status",
        "_headers",
        "_on_response_prepare",
    }
    allowed = {
        "application.py": private,
        "middleware.py": {"_match_info", "_transport_peername", "_message", "_status"},
    }
    used: dict[str, set[str]] = {}
    for path in CORE_HTTP.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in private:
                used.setdefault(path.name, set()).add(node.attr)
                if node.attr not in allowed.get(path.name, set()):
                    raise AssertionError(f"{path.name}:{node.lineno} uses aiohttp's private {node.attr}")
            if isinstance(node, ast.ClassDef) and path.name != "application.py":
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name in private:
                        raise AssertionError(f"{path.name}:{item.lineno} overrides aiohttp's private {item.name}")
    assert used["middleware.py"] == allowed["middleware.py"], "the allowance names what middleware.py still reads"
