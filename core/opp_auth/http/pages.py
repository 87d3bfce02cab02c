"""The web pages: plain HTML, CSS and JavaScript modules shipped in the package.

Every response of the application (pages, static files, API answers, errors,
plugin routes) carries SECURITY_HEADERS, added when it is prepared: no page
may be framed (X-Frame-Options and CSP frame-ancestors), scripts and styles
come only from files of this server (no inline script or style), nothing is
content-sniffed and no Referer goes to another site (the login page's address
holds the client's state; same-origin rather than no-referrer keeps a real
Origin header on the pages' own POSTs). A handler that sets one of these
headers itself keeps its own value.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).parent / "static"
_NO_STORE = {"Cache-Control": "no-store"}

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        # data: for the TOTP QR code (an SVG the profile page shows as an image).
        "img-src 'self' data:",
        # 'self' covers the websocket (ws/wss) on the same host too.
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


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


async def _add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: SECURITY_HEADERS, unless the handler chose its own value."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def add_security_headers(app: web.Application) -> None:
    """Give every response of app SECURITY_HEADERS."""
    app.on_response_prepare.append(_add_security_headers)


def add_routes(app: web.Application) -> None:
    """Register the pages and their assets."""
    app.router.add_get("/", index)
    app.router.add_get("/auth/authorize", authorize)
    app.router.add_get("/onboarding.html", onboarding_page)
    app.router.add_get("/profile", profile)
    app.router.add_get("/users", users)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_static("/static/", STATIC_DIR, name="static", append_version=False)
