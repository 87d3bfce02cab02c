"""Home Assistant's own login page of 2026, served unchanged on opp-auth's origin, in Chromium (issue 14).

The page comes from PyPI's home-assistant-frontend (fetch_ha_frontend.py pins
the version and caches the unpacked files; .ci/run fetches them first). This
test serves authorize.html, frontend_latest/ and the static/ files it loads
exactly as shipped, in front of opp-auth's own routes, against a Home
Assistant directory; the login API, its JSON and the redirect are
opp-auth's. Skipped with the reason when Chromium, Playwright or the package
cannot be had; failing instead under OPP_AUTH_REQUIRE_INTEGRATION=1.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pyotp
import pytest
from aiohttp import web

from opp_auth import hookimpl
from opp_auth.config import load_config
from opp_auth.http.view import AUTH_KEY
from opp_auth.plugins import make_plugin_manager
from opp_auth.server import build_auth
from tests.conftest import launch_chromium, unavailable

pytestmark = pytest.mark.chromium

OWNER_ID = "a1b2c3d4e5f64a7b8c9d0e1f2a3b4c5d"
ANNE_ID = "b2c3d4e5f6a74b8c9d0e1f2a3b4c5d6e"

def _fetcher() -> Any:
    """tests/homeassistant/fetch_ha_frontend.py as a module (test folders are not packages)."""
    spec = importlib.util.spec_from_file_location("fetch_ha_frontend", Path(__file__).with_name("fetch_ha_frontend.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ha_frontend() -> Path:
    """The unpacked hass_frontend folder (fetched from PyPI into the cache when missing)."""
    fetcher = _fetcher()
    try:
        root = fetcher.frontend_root(fetch=True)
    except Exception as err:  # noqa: BLE001 - no network, no pip: say why and skip
        unavailable(f"{fetcher.PACKAGE}=={fetcher.VERSION} could not be fetched from PyPI ({err})")
    assert root is not None and (root / "authorize.html").is_file(), root
    return Path(root)


@pytest.fixture
async def chromium() -> Any:
    """Debian's Chromium through Playwright, headless."""
    async with launch_chromium() as browser:
        yield browser


def home_assistant_files(root: Path) -> Any:
    """A middleware serving the frontend's files as shipped: its login page at /auth/authorize, its assets."""

    @web.middleware
    async def serve_files(request: web.Request, handler: Any) -> web.StreamResponse:
        """Home Assistant's file where it has one, opp-auth's route otherwise."""
        if request.method == "GET":
            if request.path == "/auth/authorize":
                return web.FileResponse(root / "authorize.html")
            if request.path.startswith(("/frontend_latest/", "/static/")):
                path = (root / request.path.lstrip("/")).resolve()
                if path.is_file() and root.resolve() in path.parents:
                    return web.FileResponse(path)
        response: web.StreamResponse = await handler(request)
        return response

    return serve_files


@pytest.fixture
async def site(ha_dir: dict[str, Any], ha_frontend: Path, opp_auth_client: Any) -> Any:
    """opp-auth over the Home Assistant directory, with Home Assistant's login page on its origin."""
    pm = make_plugin_manager()
    config = load_config(ha_dir["dir"], pm)

    class FrontendFiles:
        """A plugin adding the middleware while the app is built, before it is frozen."""

        @hookimpl
        def opp_auth_register_routes(self, app: web.Application) -> None:
            """Put Home Assistant's files in front of opp-auth's routes."""
            app.middlewares.insert(0, home_assistant_files(ha_frontend))

    pm.register(FrontendFiles(), name="test.home_assistant_frontend")
    return await opp_auth_client(build_auth(config, pm), config.http)


async def log_in_on_the_page(browser: Any, base: str, username: str, password: str, secret: str) -> dict[str, list[str]]:
    """Open /auth/authorize, type the password and the authenticator code: the query of the redirect."""
    page = await browser.new_page(locale="en-US")
    page.set_default_timeout(15000)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    client_id = f"{base}/"
    redirect = f"{base}/ha-callback"
    await page.goto(
        f"{base}/auth/authorize?response_type=code&client_id={quote(client_id)}"
        f"&redirect_uri={quote(redirect)}&state=state-1"
    )
    await page.locator("input[name=username]").fill(username)
    await page.locator("input[name=password]").fill(password)
    await page.get_by_role("button", name="Log in").click()
    code_field = page.locator("input[name=code]")
    await code_field.wait_for()
    await code_field.fill(pyotp.TOTP(secret).now())
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"{redirect}?**")
    query = parse_qs(urlsplit(page.url).query)
    await page.close()
    assert not errors, errors
    return query


async def test_home_assistants_2026_login_page_logs_in_with_password_and_totp(
    site: Any, chromium: Any, ha_dir: dict[str, Any]
) -> None:
    """The page reads the providers object, runs the flow with both steps and redirects with a code opp-auth honours."""
    base = site.url("").rstrip("/")
    query = await log_in_on_the_page(chromium, base, "paulus", "correct horse battery staple", ha_dir["totp"][OWNER_ID])
    assert query["state"] == ["state-1"]
    assert query["storeToken"] == ["true"]  # preselect_remember_me: the page was opened from the local network
    status, tokens = await site.login.token(grant_type="authorization_code", client_id=f"{base}/", code=query["code"][0])
    assert status == 200, tokens
    assert site.app[AUTH_KEY].access_tokens.validate_access_token(tokens["access_token"], "127.0.0.1").user.id == OWNER_ID
    assert tokens["ha_auth_provider"] == "homeassistant"


async def test_wrong_password_shows_the_pages_error(site: Any, chromium: Any) -> None:
    """opp-auth's invalid_auth is shown by the page as Home Assistant shows it; no redirect."""
    base = site.url("").rstrip("/")
    page = await chromium.new_page(locale="en-US")
    page.set_default_timeout(15000)
    await page.goto(f"{base}/auth/authorize?response_type=code&client_id={quote(base + '/')}"
                    f"&redirect_uri={quote(base + '/ha-callback')}&state=s")
    await page.locator("input[name=username]").fill("paulus")
    await page.locator("input[name=password]").fill("not the password")
    await page.get_by_role("button", name="Log in").click()
    await page.get_by_text("Invalid username or password").wait_for()
    assert "/auth/authorize" in page.url
    await page.close()
