"""GET /api/openapi.json: the hand-written OpenAPI description of the HTTP API (no auth)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

OPENAPI_FILE = Path(__file__).parent / "openapi.json"


async def openapi_view(request: web.Request) -> web.Response:
    """The checked-in document, byte for byte."""
    return web.Response(body=OPENAPI_FILE.read_bytes(), content_type="application/json")


def add_routes(app: web.Application) -> None:
    """Register the route."""
    app.router.add_get("/api/openapi.json", openapi_view)
