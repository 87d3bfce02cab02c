"""pytest plugin for plugin authors (opt-in: ``pytest_plugins = ["opp_auth.testing"]``).

Fixtures:

``config_dir``
    An empty configuration directory (a ``tmp_path`` subfolder).
``opp_auth_factory``
    ``await opp_auth_factory(providers=[...], mfa_modules=[...], http={...}, plugins=[(name, module)])``
    builds and sets up an :class:`~opp_auth.AuthManager` from configuration
    entries exactly as configuration.yaml would give them (schemas, defaults
    and errors included); it is shut down after the test.
``opp_auth_client``
    ``await opp_auth_client(auth)`` serves the real application on 127.0.0.1
    and returns an :class:`OppAuthClient`: an aiohttp client session bound to
    that server, with a :class:`LoginFlowDriver` as ``.login``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from .config import validate_config
from .http.app import create_app
from .manager import AuthManager
from .plugins import make_plugin_manager

CLIENT_ID = "https://example.com/app"
REDIRECT_URI = "https://example.com/app/callback"


class LoginFlowDriver:
    """Drives /auth/login_flow and /auth/token the way a browser client does."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        """Bind to a server."""
        self.session = session
        self.base = base

    async def start(
        self, handler: list[Any] | tuple[Any, ...], *, client_id: str = CLIENT_ID, redirect_uri: str = REDIRECT_URI,
        flow_type: str | None = None,
    ) -> tuple[int, Any]:
        """POST /auth/login_flow: (status, JSON body)."""
        body: dict[str, Any] = {"client_id": client_id, "handler": list(handler), "redirect_uri": redirect_uri}
        if flow_type is not None:
            body["type"] = flow_type
        async with self.session.post(f"{self.base}/auth/login_flow", json=body) as resp:
            return resp.status, await resp.json()

    async def step(self, flow_id: str, *, client_id: str = CLIENT_ID, **data: Any) -> tuple[int, Any]:
        """POST /auth/login_flow/{flow_id}: (status, JSON body)."""
        async with self.session.post(
            f"{self.base}/auth/login_flow/{flow_id}", json={"client_id": client_id, **data}
        ) as resp:
            return resp.status, await resp.json()

    async def token(self, **form: str) -> tuple[int, Any]:
        """POST /auth/token with form fields: (status, JSON body or None)."""
        async with self.session.post(f"{self.base}/auth/token", data=form) as resp:
            text = await resp.text()
            return resp.status, (aiohttp.helpers.json.loads(text) if text else None)  # type: ignore[attr-defined]

    async def code(self, handler: Any, steps: list[dict[str, Any]], *, client_id: str = CLIENT_ID) -> str:
        """Run a flow through the given step inputs; return the authorization code."""
        status, result = await self.start(handler, client_id=client_id)
        assert status == 200, result
        for data in steps:
            if result["type"] == "create_entry":
                break
            assert result["type"] == "form", result
            status, result = await self.step(result["flow_id"], client_id=client_id, **data)
            assert status == 200, result
        assert result["type"] == "create_entry", result
        return str(result["result"])

    async def tokens(self, handler: Any, steps: list[dict[str, Any]], *, client_id: str = CLIENT_ID) -> dict[str, Any]:
        """Log in and trade the code: access_token, refresh_token, expires_in."""
        code = await self.code(handler, steps, client_id=client_id)
        status, body = await self.token(grant_type="authorization_code", client_id=client_id, code=code)
        assert status == 200, body
        return dict(body)


class OppAuthClient:
    """A client session bound to a live test server."""

    def __init__(self, server: TestServer, session: aiohttp.ClientSession, app: web.Application) -> None:
        """Keep the pieces."""
        self.server = server
        self.session = session
        self.app = app
        self.base = str(server.make_url("")).rstrip("/")
        self.login = LoginFlowDriver(session, self.base)

    def url(self, path: str) -> str:
        """Absolute URL of a path on the server."""
        return f"{self.base}{path}"

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """session.request against the server."""
        return self.session.request(method, self.url(path), **kwargs)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """An empty configuration directory."""
    path = tmp_path / "config"
    path.mkdir()
    return path


@pytest.fixture
async def opp_auth_factory(config_dir: Path) -> AsyncIterator[Callable[..., Awaitable[AuthManager]]]:
    """Build set-up AuthManagers from configuration entries."""
    made: list[AuthManager] = []

    async def factory(
        providers: list[dict[str, Any]] | None = None,
        mfa_modules: list[dict[str, Any]] | None = None,
        http: dict[str, Any] | None = None,
        plugins: list[tuple[str, Any]] = (),  # type: ignore[assignment]
        load_entrypoints: bool = True,
        setup: bool = True,
        **kwargs: Any,
    ) -> AuthManager:
        pm = make_plugin_manager(load_entrypoints=load_entrypoints, plugins=plugins)
        core: dict[str, Any] = {}
        if providers is not None:
            core["auth_providers"] = providers
        if mfa_modules is not None:
            core["auth_mfa_modules"] = mfa_modules
        raw: dict[str, Any] = {"openpeerpower": core, "http": http or {}}
        config = validate_config(raw, pm, config_dir=config_dir, allow_insecure_example=True)
        auth = AuthManager(
            str(config_dir), pm, provider_configs=config.providers, mfa_configs=config.mfa_modules,
            http_config=config.http, config_blocks=config.blocks, **kwargs,
        )
        if setup:
            await auth.async_setup()
            made.append(auth)
        return auth

    yield factory
    for auth in made:
        await auth.async_shutdown()


@pytest.fixture
async def opp_auth_client() -> AsyncIterator[Callable[..., Awaitable[OppAuthClient]]]:
    """Serve an AuthManager's application on 127.0.0.1 and return a bound client."""
    servers: list[tuple[TestServer, aiohttp.ClientSession]] = []

    async def factory(auth: AuthManager, http: dict[str, Any] | None = None) -> OppAuthClient:
        app = create_app(auth, http)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        session = aiohttp.ClientSession()
        servers.append((server, session))
        return OppAuthClient(server, session, app)

    yield factory
    for server, session in servers:
        await session.close()
        await server.close()
