"""A real OpenID provider (npm oidc-provider under Node.js) on a free loopback port, test keys, opp-auth
served in front of it (``site``), Debian's Chromium (``page``) and the steps of a login through both.

``op(clients=..., accounts=..., keys=...)`` starts it (``npm ci`` in op/ first: .ci/run does it);
``op.restart(keys=...)`` starts it again on the same port with other keys (JWKS rotation);
``op.stop()`` takes it down (provider down); ``access_ttl=`` makes its access tokens expire sooner. The private keys stay with the test, so tests can
forge ID tokens signed by the provider's own key or by a stranger's.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from joserfc.jwk import RSAKey
from opp_auth_oidc import OidcAuthProvider

from opp_auth.http.app import create_app
from opp_auth.manager import AuthManager
from tests.conftest import launch_chromium, unavailable

OP_DIR = Path(__file__).parent / "op"


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_key(kid: str) -> RSAKey:
    """A fresh RSA signing key."""
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"}, private=True)


class OpenIdProvider:
    """One oidc-provider process."""

    def __init__(
        self,
        node: str,
        clients: list[dict[str, Any]],
        accounts: dict[str, Any],
        keys: list[RSAKey],
        access_ttl: int = 3600,
    ) -> None:
        """Not started yet."""
        self.node = node
        self.access_ttl = access_ttl
        self.clients = clients
        self.accounts = accounts
        self.keys = keys
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.proc: asyncio.subprocess.Process | None = None
        self.output: list[str] = []

    async def start(self) -> None:
        """Run node op.mjs and wait for it to listen."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PORT": str(self.port),
            "KEYS": json.dumps({"keys": [k.as_dict(private=True) for k in self.keys]}),
            "CLIENTS": json.dumps(self.clients),
            "ACCOUNTS": json.dumps(self.accounts),
            "ACCESS_TOKEN_TTL": str(self.access_ttl),
            "NODE_ENV": "test",
        }
        self.proc = await asyncio.create_subprocess_exec(
            self.node,
            str(OP_DIR / "op.mjs"),
            cwd=str(OP_DIR),
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(30):
                while True:
                    line = (await self.proc.stdout.readline()).decode(errors="replace")
                    if not line:
                        raise RuntimeError("oidc-provider exited:\n" + "".join(self.output))
                    self.output.append(line)
                    if line.startswith("listening"):
                        break
        except TimeoutError as err:
            raise RuntimeError("oidc-provider did not start:\n" + "".join(self.output)) from err
        asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        proc = self.proc
        while proc is not None and proc.stdout is not None:
            line = await proc.stdout.readline()
            if not line:
                return
            self.output.append(line.decode(errors="replace"))

    async def stop(self) -> None:
        """Stop the process (the provider is down)."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(3):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.proc = None

    async def restart(self, keys: list[RSAKey] | None = None) -> None:
        """Start again on the same port, optionally with other keys (the first one signs)."""
        await self.stop()
        if keys is not None:
            self.keys = keys
        await self.start()


@pytest.fixture
async def op() -> AsyncIterator[Callable[..., Any]]:
    """await op(clients=[...], accounts={...}, keys=[...], access_ttl=...): a running OpenID provider, stopped after."""
    node = shutil.which("node")
    if node is None:
        unavailable("node is not installed (Debian package nodejs)")
    if not (OP_DIR / "node_modules" / "oidc-provider").is_dir():
        unavailable(f"oidc-provider is not installed: run npm ci in {OP_DIR}")
    started: list[OpenIdProvider] = []

    async def start(
        clients: list[dict[str, Any]],
        accounts: dict[str, Any],
        keys: list[RSAKey] | None = None,
        access_ttl: int = 3600,
    ) -> OpenIdProvider:
        provider = OpenIdProvider(node, clients, accounts, keys or [make_key("key-1")], access_ttl)
        await provider.start()
        started.append(provider)
        return provider

    yield start
    for provider in started:
        await provider.stop()


CLIENT_ID = "opp-auth"
CLIENT_SECRET = "a-long-client-secret-for-tests"
ACCOUNTS = {
    "alice": {"preferred_username": "Alice", "name": "Alice Liddell", "groups": ["home-admins", "family"]},
    "bob": {"preferred_username": "bob", "name": "Bob", "groups": ["family"]},
    "mallory": {"preferred_username": "mallory", "name": "Mallory", "groups": ["strangers"]},
}
GROUPS = {"admin_groups": ["home-admins"], "user_groups": ["family"], "required_groups": ["home-admins", "family"]}


class Site:
    """opp-auth served on a known port, its OpenID provider, and a client of both."""

    def __init__(self, auth: AuthManager, server: TestServer, op: OpenIdProvider, base: str) -> None:
        self.auth = auth
        self.server = server
        self.op = op
        self.base = base
        self.client_id = f"{base}/"
        self.redirect_uri = f"{base}/static/i18n/en.json"

    @property
    def provider(self) -> OidcAuthProvider:
        return next(p for p in self.auth.auth_providers if p.type == "oidc")  # type: ignore[return-value]

    async def start(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        """POST /auth/login_flow as the login page does (with its Origin)."""
        body = {"client_id": self.client_id, "handler": ["oidc", None], "redirect_uri": self.redirect_uri}
        async with session.post(f"{self.base}/auth/login_flow", json=body, headers={"Origin": self.base}) as resp:
            assert resp.status == 200
            return dict(await resp.json())

    async def resume(self, session: aiohttp.ClientSession, flow_id: str) -> tuple[int, Any]:
        async with session.post(f"{self.base}/auth/login_flow/{flow_id}", json={"client_id": self.client_id}) as resp:
            return resp.status, await resp.json()

    async def callback(self, session: aiohttp.ClientSession, **query: str) -> tuple[int, str, str | None]:
        async with session.get(f"{self.base}/auth/oidc/callback", params=query, allow_redirects=False) as resp:
            return resp.status, await resp.text(), resp.headers.get("Location")


def client_of(base: str) -> dict[str, Any]:
    """The provider's registration of opp-auth served at base (confidential, back-channel logout)."""
    return {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uris": [f"{base}/auth/oidc/callback"],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "backchannel_logout_uri": f"{base}/auth/oidc/backchannel_logout",
        "backchannel_logout_session_required": True,
    }


def provider_config(provider: OpenIdProvider, **extra: Any) -> dict[str, Any]:
    """opp-auth's oidc provider configuration for the running provider."""
    return {
        "type": "oidc",
        "issuer": provider.issuer,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "scopes": ["openid", "profile", "groups"],
        **GROUPS,
        **extra,
    }


async def onboard(base: str) -> None:
    """Create the owner (a local user), so the login page is offered."""
    owner = {"name": "Owner", "username": "owner", "password": "owner pass", "client_id": f"{base}/", "language": "en"}
    async with aiohttp.ClientSession() as session, session.post(f"{base}/api/onboarding/users", json=owner) as resp:
        assert resp.status == 200, await resp.text()


@pytest.fixture
async def site(
    op: Any, opp_auth_factory: Callable[..., Awaitable[AuthManager]]
) -> AsyncIterator[Callable[..., Awaitable[Site]]]:
    """await site(**provider_config): the OP, opp-auth with an oidc provider for it, served on 127.0.0.1."""
    servers: list[TestServer] = []

    async def make(keys: list[RSAKey] | None = None, access_ttl: int = 3600, **extra: Any) -> Site:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        provider = await op(
            clients=[client_of(base)], accounts=copy.deepcopy(ACCOUNTS), keys=keys, access_ttl=access_ttl
        )
        config = provider_config(provider, title="Log in with the test provider", **extra)
        auth = await opp_auth_factory(
            providers=[config, {"type": "openpeerpower"}], mfa_modules=[{"type": "insecure_example", "data": []}]
        )
        server = TestServer(create_app(auth), host="127.0.0.1", port=port)
        await server.start_server()
        servers.append(server)
        await onboard(base)
        return Site(auth, server, provider, base)

    yield make
    for server in servers:
        await server.close()


def people(s: Site) -> list[Any]:
    """The users the provider created (not the owner, not system users)."""
    return [u for u in s.auth.store.users() if not u.system_generated and not u.is_owner]


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    """Debian's Chromium, headless; the test fails on a JavaScript error or CSP violation on opp-auth's pages."""
    async with launch_chromium() as browser:
        context = await browser.new_context(locale="en-US")
        page = await context.new_page()
        page.set_default_timeout(15000)
        problems: list[str] = []
        page.on("pageerror", lambda err: problems.append(f"{page.url}: {err}"))
        page.on(
            "console",
            lambda msg: (
                problems.append(f"{page.url}: {msg.text}")
                if "Content Security Policy" in msg.text and "/auth/" in page.url and ":%s" not in page.url
                else None
            ),
        )
        page.problems = problems  # type: ignore[attr-defined]
        yield page


async def browser_login(page: Any, site: Site, account: str) -> str:
    """Open opp-auth's login page, log in at the provider (its login and consent pages), return the code."""
    url = f"{site.base}/auth/authorize?" + "&".join(
        f"{k}={aiohttp.helpers.quote(v, safe='')}"
        for k, v in {"client_id": site.client_id, "redirect_uri": site.redirect_uri, "state": "client-state"}.items()
    )
    await page.goto(url)
    await page.wait_for_url(f"{site.op.issuer}/**")
    await page.fill("input[name=login]", account)
    await page.fill("input[name=password]", "any password")
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{site.op.issuer}/**")
    await page.click("button[type=submit]")  # consent
    try:
        await page.wait_for_url(f"{site.redirect_uri}?**")
    except Exception as err:
        raise AssertionError(f"login page shows: {await page.inner_text('body')!r}; problems: {page.problems}") from err
    query = parse_qs(urlsplit(page.url).query)
    assert query["state"] == ["client-state"]
    return query["code"][0]


async def trade(site: Site, code: str) -> tuple[int, Any]:
    """POST /auth/token with the authorization code."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{site.base}/auth/token",
            data={"grant_type": "authorization_code", "client_id": site.client_id, "code": code},
        ) as resp,
    ):
        return resp.status, await resp.json()


async def refresh(s: Site, refresh_token: str) -> int:
    """POST /auth/token with the refresh_token grant; the status."""
    form = {"grant_type": "refresh_token", "client_id": s.client_id, "refresh_token": refresh_token}
    async with aiohttp.ClientSession() as session, session.post(f"{s.base}/auth/token", data=form) as resp:
        return resp.status


async def set_account(op: OpenIdProvider, account: str, claims: dict[str, Any]) -> None:
    """Change an account's claims at the running provider (its test-only route)."""
    async with (
        aiohttp.ClientSession() as session,
        session.put(f"{op.issuer}/test/accounts/{account}", data=json.dumps(claims)) as resp,
    ):
        assert resp.status == 204
