"""The web pages: plain HTML, CSS and JavaScript modules shipped in the package."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).parent / "static"
_NO_STORE = {"Cache-Control": "no-store"}


def _page(name: str) -> web.Response:
    """A page from the static folder."""
    return web.FileResponse(STATIC_DIR / name, headers=_NO_STORE)  # type: ignore[return-value]


async def index(request: web.Request) -> web.StreamResponse:
    """GET / (the signed-in home page; it sends strangers to login or onboarding)."""
    return _page("index.html")


async def authorize(request: web.Request) -> web.StreamResponse:
    """GET /auth/authorize: the login page."""
    return _page("authorize.html")


async def onboarding_page(request: web.Request) -> web.StreamResponse:
    """GET /onboarding.html: create the owner."""
    return _page("onboarding.html")


async def profile(request: web.Request) -> web.StreamResponse:
    """GET /profile."""
    return _page("index.html")


async def users(request: web.Request) -> web.StreamResponse:
    """GET /users: user administration (the page itself asks the websocket API, which checks)."""
    return _page("index.html")


async def favicon(request: web.Request) -> web.StreamResponse:
    """GET /favicon.ico: browsers ask every page for it."""
    return web.FileResponse(  # type: ignore[return-value]
        STATIC_DIR / "favicon.ico", headers={"Content-Type": "image/x-icon", "Cache-Control": "max-age=86400"}
    )


def add_routes(app: web.Application) -> None:
    """Register the pages and their assets."""
    app.router.add_get("/", index)
    app.router.add_get("/auth/authorize", authorize)
    app.router.add_get("/onboarding.html", onboarding_page)
    app.router.add_get("/profile", profile)
    app.router.add_get("/users", users)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_static("/static/", STATIC_DIR, name="static", append_version=False)
