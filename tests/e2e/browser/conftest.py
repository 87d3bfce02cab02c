"""Browser tests of the pages: one headless Chromium per session driving the real server on 127.0.0.1.

Everything async here runs in the session's event loop (the browser lives there), so the
server fixture is this folder's own rather than opp_auth.testing's function-loop fixtures.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from opp_auth.config import validate_config
from opp_auth.http.app import create_app
from opp_auth.manager import AuthManager
from opp_auth.plugins import make_plugin_manager
from tests.conftest import launch_chromium

SCREENSHOT_DIR = Path(__file__).resolve().parents[3] / "docs" / "screenshots"
OWNER = {"name": "Paulus Schoutsen", "username": "paulus", "password": "correct horse"}


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Any]:
    """Debian's Chromium, headless, shared by the session."""
    async with launch_chromium() as browser:
        yield browser


@dataclass
class Server:
    """A live server and its AuthManager."""

    auth: AuthManager
    base: str

    @property
    def client_id(self) -> str:
        """The pages' client id: the origin."""
        return f"{self.base}/"

    def url(self, path: str) -> str:
        """Absolute URL."""
        return f"{self.base}{path}"

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """One HTTP request: (status, JSON body or None)."""
        async with aiohttp.ClientSession() as session, session.request(method, self.url(path), **kwargs) as resp:
            text = await resp.text()
            try:
                return resp.status, await resp.json(content_type=None) if text else None
            except ValueError:
                return resp.status, text

    async def onboard(self, **owner: str) -> None:
        """Create the owner through the onboarding API, as the onboarding page does."""
        data = {**OWNER, **owner, "client_id": self.client_id, "language": owner.get("language", "en")}
        status, body = await self.call("POST", "/api/onboarding/users", json=data)
        assert status == 200, body

    async def tokens(self, handler: list[Any], **fields: Any) -> dict[str, Any]:
        """Log in through the HTTP login API with the pages' client id: the token response."""
        status, step = await self.call("POST", "/auth/login_flow", json={
            "client_id": self.client_id, "handler": handler, "redirect_uri": f"{self.base}/?auth_callback=1"})
        assert status == 200, step
        if step["type"] == "form":
            status, step = await self.call("POST", f"/auth/login_flow/{step['flow_id']}", json={"client_id": self.client_id, **fields})
        assert step["type"] == "create_entry", step
        status, body = await self.call("POST", "/auth/token", data={
            "grant_type": "authorization_code", "client_id": self.client_id, "code": step["result"]})
        assert status == 200, body
        return dict(body)


@pytest_asyncio.fixture(loop_scope="session")
async def serve(config_dir: Path) -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    """Start the real application for a configuration: await serve(providers=[...], mfa_modules=[...])."""
    servers: list[TestServer] = []

    async def factory(
        providers: list[dict[str, Any]] | None = None,
        mfa_modules: list[dict[str, Any]] | None = None,
        http: dict[str, Any] | None = None,
        port: int | None = None,
        localhost: bool = False,
        mfa_required: str | None = None,
    ) -> Server:
        """localhost=True: reached as http://localhost:PORT (WebAuthn refuses IP addresses); port None picks one."""
        if localhost and port is None:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
        pm = make_plugin_manager(load_entrypoints=True)
        raw = {"openpeerpower": {"auth_providers": providers or [{"type": "openpeerpower"}],
                                 "auth_mfa_modules": mfa_modules or []}, "http": http or {}}
        if mfa_required is not None:
            raw["openpeerpower"]["mfa_required"] = mfa_required
        config = validate_config(raw, pm, config_dir=config_dir, allow_insecure_example=True)
        auth = AuthManager(str(config_dir), pm, provider_configs=config.providers, mfa_configs=config.mfa_modules,
                           http_config=config.http, config_blocks=config.blocks, mfa_required=config.mfa_required)
        server = TestServer(create_app(auth), host="127.0.0.1", port=port)
        await server.start_server()
        servers.append(server)
        base = f"http://localhost:{port}" if localhost else str(server.make_url("")).rstrip("/")
        return Server(auth, base)

    yield factory
    for server in servers:
        await server.close()


@pytest_asyncio.fixture(loop_scope="session")
async def context(browser: Any) -> AsyncIterator[Any]:
    """A fresh browser profile (no cookies, no localStorage) in English."""
    context = await browser.new_context(locale="en-US", viewport={"width": 1100, "height": 900})
    yield context
    await context.close()


@pytest_asyncio.fixture(loop_scope="session")
async def page(context: Any) -> AsyncIterator[Any]:
    """A tab that accepts confirmation dialogs and fails the test on any JavaScript error or CSP violation."""
    page = await context.new_page()
    page.set_default_timeout(8000)
    errors: list[str] = []
    violations = await watch_csp(page)
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    yield page
    assert not errors, f"JavaScript errors: {errors}"
    assert not violations, f"Content Security Policy violations: {violations}"


CSP_REPORTER = """document.addEventListener("securitypolicyviolation", (e) =>
  console.error(`Content Security Policy violation: ${e.violatedDirective} blocked ${e.blockedURI || "inline"}`));"""


async def watch_csp(page: Any) -> list[str]:
    """Collect the page's Content Security Policy violations (Chromium's console report and the DOM event)."""
    violations: list[str] = []
    page.on("console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None)
    await page.add_init_script(CSP_REPORTER)
    return violations


async def sign_in(page: Any, server: Server, tokens: dict[str, Any], path: str = "/") -> None:
    """Give the page tokens as if it had logged in (the login page itself has its own tests), then open path."""
    await page.goto(server.url("/static/i18n/en.json"))
    await page.evaluate(
        "t => localStorage.setItem('opp_auth_tokens', JSON.stringify({...t, expires: Date.now() + t.expires_in * 1000}))", tokens)
    await page.goto(server.url(path))


async def screenshot(page: Any, name: str) -> None:
    """Save docs/screenshots/<name>.png, only when OPP_AUTH_SCREENSHOTS=1 (they are tracked files)."""
    if os.environ.get("OPP_AUTH_SCREENSHOTS") == "1":
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOT_DIR / f"{name}.png"), full_page=True)


@pytest.fixture(name="sign_in")
def sign_in_fixture() -> Callable[..., Awaitable[None]]:
    """sign_in(page, server, tokens, path="/") for test modules (which cannot import this conftest)."""
    return sign_in


@pytest.fixture(name="watch_csp")
def watch_csp_fixture() -> Callable[..., Awaitable[list[str]]]:
    """watch_csp(page) for test modules: the list the page's CSP violations are appended to."""
    return watch_csp


@pytest.fixture(name="screenshot")
def screenshot_fixture() -> Callable[..., Awaitable[None]]:
    """screenshot(page, name) for test modules."""
    return screenshot
