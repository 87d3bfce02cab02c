"""The web pages: plain HTML, CSS and JavaScript modules shipped in the package.

Security headers, added to every response of the application when it is
prepared (pages, static files, API answers, errors, plugin routes):
X-Frame-Options DENY, nosniff and Referrer-Policy same-origin (no Referer to
another site: the login page's address holds the client's state, while
same-origin rather than no-referrer keeps a real Origin header on the pages'
own POSTs), and a Content-Security-Policy: these pages send the strict
CONTENT_SECURITY_POLICY (scripts, styles and everything else only from files
of this server, no inline code, no framing); HTML this module did not write
(a plugin's page, a frontend put in front) gets FRAME_POLICY, which only
forbids framing, since the core cannot know it is free of inline code; JSON
(API answers and errors) gets API_POLICY, which lets a document made of it
load nothing at all and forbids framing; any other response (static files,
plain text) gets the strict policy. A handler that sets one of these headers
itself keeps its own value.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import hdrs, web

STATIC_DIR = Path(__file__).parent / "static"
_NO_STORE = {"Cache-Control": "no-store"}
_STATIC = "static"

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
FRAME_POLICY = "frame-ancestors 'none'"
# JSON is data, never a page: opened as a document it may load nothing, submit no form, set no base URL
# and be framed nowhere (form-action and base-uri do not fall back to default-src), stricter than the
# pages' policy in every directive. OWASP's policy for APIs plus those two, and less than half the
# pages' policy's length on every API answer.
API_POLICY = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
# aiohttp's istr names: multidict finds a header by its lower-case form, which an istr carries and a str
# makes anew per lookup (about 0.6 us per response for the four added to each).
SECURITY_HEADERS = {
    hdrs.X_FRAME_OPTIONS: "DENY",
    hdrs.X_CONTENT_TYPE_OPTIONS: "nosniff",
    hdrs.REFERRER_POLICY: "same-origin",
}
_PAGE_HEADERS = {**_NO_STORE, "Content-Security-Policy": CONTENT_SECURITY_POLICY}


def _page(name: str) -> web.Response:
    """A page from the static folder, under the strict policy."""
    return web.FileResponse(STATIC_DIR / name, headers=_PAGE_HEADERS)  # type: ignore[return-value]


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
    return web.FileResponse(
        STATIC_DIR / "favicon.ico", headers={"Content-Type": "image/x-icon", "Cache-Control": "max-age=86400"}
    )


_CSP = hdrs.CONTENT_SECURITY_POLICY
_SECURITY_ITEMS = tuple(SECURITY_HEADERS.items())
# The media type of the API's answers (http/application.py's prepare hook compares it as is).
JSON_TYPE = "application/json"
_CONTENT_TYPE = hdrs.CONTENT_TYPE
# Every header this module adds (a handler's own value of any of them is kept), and what a JSON answer
# (API_SECURITY_ITEMS) or another one that is not HTML (_STRICT_ITEMS) gets when it sets none of them,
# in one call (http/application.py does so for JSON before it would call add_security_headers_to).
SECURITY_HEADER_NAMES = (*SECURITY_HEADERS, _CSP)
API_SECURITY_ITEMS = (*_SECURITY_ITEMS, (_CSP, API_POLICY))
_STRICT_ITEMS = (*_SECURITY_ITEMS, (_CSP, CONTENT_SECURITY_POLICY))


def add_security_headers_to(request: web.Request, response: web.StreamResponse) -> None:
    """SECURITY_HEADERS and a policy on response as it is prepared, unless the handler chose its own values.

    Called for every response, so the common case (an answer that sets none of them and is not
    HTML) costs one test and one call; otherwise each header is added unless present, and only
    HTML looks up the static resource.
    """
    headers = response.headers
    content_type = headers.get(_CONTENT_TYPE)
    is_json = content_type is not None and _is_json(content_type)
    html = not is_json and content_type is not None and "html" in content_type.lower()
    if not html and headers.keys().isdisjoint(SECURITY_HEADER_NAMES):
        headers.extend(API_SECURITY_ITEMS if is_json else _STRICT_ITEMS)
        return
    for name, value in _SECURITY_ITEMS:
        if name not in headers:
            headers.add(name, value)
    if _CSP in headers:
        return
    policy = API_POLICY if is_json else CONTENT_SECURITY_POLICY
    # response.content_type parses the header (about 1 us): only when it may name HTML.
    if html and response.content_type == "text/html":
        # Our pages and the files of our static folder are free of inline code; other HTML may hold some.
        static = request.app.router.named_resources().get(_STATIC)
        if static is None or getattr(request.match_info.route, "resource", None) is not static:
            policy = FRAME_POLICY
    headers.add(_CSP, policy)


def _is_json(content_type: str) -> bool:
    """Whether a Content-Type header names JSON (``application/json``, any parameters, any letter case).

    Not a value with a comma: browsers take the last of a comma-separated list (``application/json;,text/html``
    is HTML to them).
    """
    return "," not in content_type and content_type.partition(";")[0].strip().lower() == JSON_TYPE


def add_routes(app: web.Application) -> None:
    """Register the pages and their assets."""
    app.router.add_get("/", index)
    app.router.add_get("/auth/authorize", authorize)
    app.router.add_get("/onboarding.html", onboarding_page)
    app.router.add_get("/profile", profile)
    app.router.add_get("/users", users)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_static("/static/", STATIC_DIR, name=_STATIC, append_version=False)
