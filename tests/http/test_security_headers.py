"""Every response carries frame protection and the pages' content security policy (issue 11, item 4).

The routes are read from the application's router, so a page added later (also by a plugin) is covered
without touching this file.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.web_urldispatcher import DynamicResource, PlainResource, StaticResource

from opp_auth import hookimpl
from opp_auth.http.pages import STATIC_DIR

PLUGIN_PAGE = "/plugin-page"


class PagePlugin:
    """A third-party plugin serving an HTML page of its own."""

    @hookimpl
    def opp_auth_register_routes(self, app: web.Application, auth: Any) -> None:
        """One HTML page."""

        async def page(request: web.Request) -> web.Response:
            return web.Response(text="<!doctype html><p>plugin</p>", content_type="text/html")

        app.router.add_get(PLUGIN_PAGE, page)


def policy(header: str) -> dict[str, list[str]]:
    """A Content-Security-Policy header as {directive: [sources]}."""
    directives: dict[str, list[str]] = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            assert words[0] not in directives, f"{words[0]} given twice"
            directives[words[0]] = words[1:]
    return directives


def assert_protected(path: str, status: int, headers: Any, *, strict: bool = True) -> None:
    """The headers every response must carry, checked for what they mean rather than their exact text.

    strict: the pages' own policy (only this server's files, no inline code); otherwise only no framing.
    JSON (API answers, errors, data files) is never a page: its policy lets it load nothing at all.
    """
    assert status < 500, (path, status)
    assert headers.get("X-Frame-Options") == "DENY", path
    assert headers.get("X-Content-Type-Options") == "nosniff", path
    assert headers.get("Referrer-Policy") == "same-origin", path
    csp = policy(headers.get("Content-Security-Policy", ""))
    assert csp.get("frame-ancestors") == ["'none'"], (path, csp)
    if not strict:
        return
    if headers.get("Content-Type", "").partition(";")[0].strip().lower() == "application/json":
        # Stricter than the pages' policy in every directive, those that do not fall back to default-src too.
        none = ["'none'"]
        assert csp == {"default-src": none, "base-uri": none, "form-action": none, "frame-ancestors": none}, (path, csp)
        return
    assert csp.get("default-src") == ["'self'"], (path, csp)
    for directive in ("script-src", "style-src"):
        assert csp.get(directive) == ["'self'"], (path, directive, csp)
    assert csp.get("object-src") == ["'none'"] and csp.get("base-uri") == ["'none'"], (path, csp)
    for sources in csp.values():
        assert not {"'unsafe-inline'", "'unsafe-eval'", "*", "http:", "https:"} & set(sources), (path, csp)


def get_paths(app: web.Application) -> list[str]:
    """A GET path for every GET route of the router, and every file of every static folder."""
    paths: list[str] = []
    for resource in app.router.resources():
        if isinstance(resource, StaticResource):
            directory = Path(resource.get_info()["directory"])
            prefix = resource.get_info()["prefix"].rstrip("/")
            paths += [
                f"{prefix}/{f.relative_to(directory).as_posix()}" for f in sorted(directory.rglob("*")) if f.is_file()
            ]
            continue
        if not any(route.method in ("GET", "*") for route in resource):
            continue
        if isinstance(resource, PlainResource):
            paths.append(resource.canonical)
        elif isinstance(resource, DynamicResource):
            paths.append(resource.url_for(**{name: "x" for name in resource.get_info()["pattern"].groupindex}).path)
        else:
            raise AssertionError(f"a resource this test cannot request: {resource!r}")
    return paths


async def test_every_get_route_and_static_file_is_protected(opp_auth_factory: Any, opp_auth_client: Any) -> None:
    auth = await opp_auth_factory(plugins=[("page_plugin", PagePlugin())])
    client = await opp_auth_client(auth)
    paths = get_paths(client.app)
    # The pages themselves, a plugin's page and the static folder are among what the router gave.
    for expected in (
        "/",
        "/auth/authorize",
        "/onboarding.html",
        "/profile",
        "/users",
        PLUGIN_PAGE,
        "/static/authorize.js",
        "/static/style.css",
        "/static/i18n/en.json",
    ):
        assert expected in paths, expected
    html = 0
    for path in paths:
        async with client.request("GET", path) as resp:
            await resp.read()
            # Every core page is under the strict policy; a plugin's HTML (maybe inline code) at least cannot be framed.
            assert_protected(path, resp.status, resp.headers, strict=path != PLUGIN_PAGE)
            html += resp.content_type == "text/html"
    assert html >= 6


async def test_a_plugin_page_keeps_a_policy_of_its_own(opp_auth_factory: Any, opp_auth_client: Any) -> None:
    """A plugin page may set its own headers (e.g. a stricter policy); the rest still comes from the core."""

    class OwnPolicy:
        @hookimpl
        def opp_auth_register_routes(self, app: web.Application, auth: Any) -> None:
            async def page(request: web.Request) -> web.Response:
                return web.Response(
                    text="<p>x</p>",
                    content_type="text/html",
                    headers={"Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'"},
                )

            app.router.add_get("/own-policy", page)

    client = await opp_auth_client(await opp_auth_factory(plugins=[("own_policy", OwnPolicy())]))
    async with client.request("GET", "/own-policy") as resp:
        assert resp.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"
        assert resp.headers["X-Frame-Options"] == "DENY"


async def test_errors_and_api_answers_are_protected(opp_auth_factory: Any, opp_auth_client: Any) -> None:
    client = await opp_auth_client(await opp_auth_factory())
    requests = [
        ("GET", "/no/such/page", {}),
        ("GET", "/static/no-such-file.js", {}),
        ("POST", "/auth/login_flow", {"data": b"{not json", "headers": {"Content-Type": "application/json"}}),
        ("POST", "/auth/token", {"data": {"grant_type": "nonsense"}}),
        ("DELETE", "/auth/authorize", {}),
        ("GET", "/api/websocket", {}),
    ]
    for method, path, kwargs in requests:
        async with client.request(method, path, **kwargs) as resp:
            await resp.read()
            assert 400 <= resp.status < 500, (method, path, resp.status)
            assert_protected(path, resp.status, resp.headers)


class _InlineFinder(HTMLParser):
    """Collects what a strict policy would block: inline scripts, style elements and attributes, handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "script":
            self._in_script = True
            if "src" not in names:
                self.found.append("inline <script>")
        if tag == "style":
            self.found.append("<style>")
        self.found += [f"{name}= on <{tag}>" for name in names if name == "style" or name.startswith("on")]
        href = dict(attrs).get("href") or dict(attrs).get("src") or ""
        if href.startswith(("javascript:", "http:", "https:", "//")):
            self.found.append(f"{href} on <{tag}>")

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.found.append("script text")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False


def test_shipped_html_has_nothing_inline() -> None:
    """The policy has no 'unsafe-inline': the pages keep every script and style in files of their own."""
    pages = sorted(STATIC_DIR.glob("*.html"))
    assert len(pages) >= 3
    for page in pages:
        finder = _InlineFinder()
        finder.feed(page.read_text(encoding="utf-8"))
        assert finder.found == [], (page.name, finder.found)


def test_inline_finder_catches_what_it_looks_for() -> None:
    finder = _InlineFinder()
    finder.feed(
        '<script>x()</script><p style="a" onclick="b"></p><style></style><a href="javascript:c()"></a>'
        '<script src="https://cdn.example/x.js"></script>'
    )
    assert len(finder.found) == 7, finder.found
