"""opp-auth-oidc against a real OpenID provider (oidc-provider under Node.js), through the HTTP API and Chromium.

The negative cases of the ID token are checked with tokens forged by the test: signed with the provider's
own key (which the test generated and handed to it) to try each claim, or with a stranger's key.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import hmac
import json
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import voluptuous as vol
from aiohttp.test_utils import TestServer
from joserfc import jwt
from joserfc.jwk import RSAKey
from opp_auth_oidc import CONFIG_SCHEMA, OidcAuthProvider, OidcError

from opp_auth import GROUP_ID_ADMIN, GROUP_ID_USER
from opp_auth.http.app import create_app
from opp_auth.manager import AuthManager

from .conftest import OpenIdProvider, make_key, unavailable

CLIENT_ID = "opp-auth"
CLIENT_SECRET = "a-long-client-secret-for-tests"
ACCOUNTS = {
    "alice": {"preferred_username": "Alice", "name": "Alice Liddell", "groups": ["home-admins", "family"]},
    "bob": {"preferred_username": "bob", "name": "Bob", "groups": ["family"]},
    "mallory": {"preferred_username": "mallory", "name": "Mallory", "groups": ["strangers"]},
}
GROUPS = {"admin_groups": ["home-admins"], "user_groups": ["family"], "required_groups": ["home-admins", "family"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


@pytest.fixture
async def site(
    op: Any, opp_auth_factory: Callable[..., Awaitable[AuthManager]]
) -> AsyncIterator[Callable[..., Awaitable[Site]]]:
    """await site(**provider_config): the OP, opp-auth with an oidc provider for it, served on 127.0.0.1."""
    servers: list[TestServer] = []

    async def make(keys: list[RSAKey] | None = None, **extra: Any) -> Site:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        client = {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [f"{base}/auth/oidc/callback"],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "backchannel_logout_uri": f"{base}/auth/oidc/backchannel_logout",
            "backchannel_logout_session_required": True,
        }
        provider = await op(clients=[client], accounts=copy.deepcopy(ACCOUNTS), keys=keys)
        config = {
            "type": "oidc",
            "issuer": provider.issuer,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "scopes": ["openid", "profile", "groups"],
            "title": "Log in with the test provider",
            **GROUPS,
            **extra,
        }
        auth = await opp_auth_factory(
            providers=[config, {"type": "openpeerpower"}], mfa_modules=[{"type": "insecure_example", "data": []}]
        )
        server = TestServer(create_app(auth), host="127.0.0.1", port=port)
        await server.start_server()
        servers.append(server)
        # The owner (a local user) exists, so the login page is offered.
        owner = {
            "name": "Owner",
            "username": "owner",
            "password": "owner pass",
            "client_id": f"{base}/",
            "language": "en",
        }
        async with aiohttp.ClientSession() as session, session.post(f"{base}/api/onboarding/users", json=owner) as resp:
            assert resp.status == 200, await resp.text()
        return Site(auth, server, provider, base)

    yield make
    for server in servers:
        await server.close()


def people(s: Site) -> list[Any]:
    """The users the provider created (not the owner, not system users)."""
    return [u for u in s.auth.store.users() if not u.system_generated and not u.is_owner]


# ---- configuration -------------------------------------------------------------------------


def test_schema() -> None:
    """Defaults, and errors that name the key."""
    conf = CONFIG_SCHEMA({"type": "oidc", "issuer": "https://id.example.org", "client_id": "x"})
    assert conf["scopes"] == ["openid", "profile", "email"]
    assert (conf["username_claim"], conf["name_claim"], conf["groups_claim"]) == (
        "preferred_username",
        "name",
        "groups",
    )
    assert conf["create_users"] is True and "client_secret" not in conf
    for key, value in [
        ("issuer", "http://id.example.org"),
        ("issuer", "ftp://id.example.org"),
        ("issuer", "https://id.example.org/?a=b"),
        ("scopes", ["profile"]),
        ("redirect_uri", "https://h.example.org/elsewhere"),
        ("no_such_key", 1),
    ]:
        with pytest.raises(vol.Invalid) as err:
            CONFIG_SCHEMA({"type": "oidc", "issuer": "https://id.example.org", "client_id": "x", key: value})
        assert key in str(err.value.path) or key in str(err.value), err.value
    assert CONFIG_SCHEMA({"type": "oidc", "issuer": "http://127.0.0.1:9/", "client_id": "x"})["issuer"]


# ---- the login through a real browser --------------------------------------------------------

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    """Debian's Chromium, headless; the test fails on a JavaScript error or CSP violation on opp-auth's pages."""
    executable = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if executable is None:
        unavailable("chromium is not installed (Debian package chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        unavailable("the playwright package is not installed")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
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
        await browser.close()


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
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{site.base}/auth/token",
            data={"grant_type": "authorization_code", "client_id": site.client_id, "code": code},
        ) as resp,
    ):
        return resp.status, await resp.json()


@pytest.mark.chromium
async def test_browser_login_through_the_provider(site: Any, page: Any) -> None:
    """Login page -> provider's login and consent -> callback -> login page -> code; user keyed by iss+sub."""
    s: Site = await site()
    status, tokens = await trade(s, await browser_login(page, s, "alice"))
    assert status == 200, tokens
    (alice,) = people(s)
    assert alice.name == "Alice Liddell"
    assert [g.id for g in alice.groups] == [GROUP_ID_ADMIN]
    assert alice.credentials[0].data == {"iss": s.op.issuer, "sub": "alice"}
    assert not page.problems, page.problems

    # Logged in at the provider already: a second login needs no form there, and finds the same user.
    await page.goto(f"{s.base}/auth/authorize?client_id={s.client_id}&redirect_uri={s.redirect_uri}")
    await page.wait_for_url(f"{s.redirect_uri}?**")
    code = parse_qs(urlsplit(page.url).query)["code"][0]
    assert (await trade(s, code))[0] == 200
    assert len(people(s)) == 1


@pytest.mark.chromium
async def test_browser_login_refused_outside_required_groups(site: Any, page: Any) -> None:
    """mallory logs in at the provider but is in no required group: the page says so, no user, no code."""
    s: Site = await site()
    await page.goto(f"{s.base}/auth/authorize?client_id={s.client_id}&redirect_uri={s.redirect_uri}")
    await page.wait_for_url(f"{s.op.issuer}/**")
    await page.fill("input[name=login]", "mallory")
    await page.fill("input[name=password]", "x")
    await page.click("button[type=submit]")
    await page.click("button[type=submit]")
    await page.wait_for_selector(".error")
    assert "not in a group allowed" in await page.inner_text(".error")
    assert page.url.startswith(f"{s.base}/auth/authorize?client_id=")
    assert not people(s)


@pytest.mark.chromium
async def test_mfa_still_applies(site: Any, page: Any) -> None:
    """After the provider, an enrolled user is asked for the MFA code on opp-auth's page."""
    s: Site = await site()
    assert (await trade(s, await browser_login(page, s, "bob")))[0] == 200
    bob = people(s)[0]
    assert [g.id for g in bob.groups] == [GROUP_ID_USER]
    await s.auth.async_enable_user_mfa(bob, "insecure_example", {"pin": "424242"})
    await page.goto(f"{s.base}/auth/authorize?client_id={s.client_id}&redirect_uri={s.redirect_uri}")
    await page.wait_for_selector("input[name=pin]")
    assert "?code=" not in page.url
    await page.fill("input[name=pin]", "424242")
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{s.redirect_uri}?**")
    assert (await trade(s, parse_qs(urlsplit(page.url).query)["code"][0]))[0] == 200


@pytest.mark.chromium
async def test_name_and_group_synced_at_each_login(site: Any, page: Any) -> None:
    """The provider renames alice and moves her from home-admins to family: the next login applies both;
    out of every required group, the login after that is refused."""
    s: Site = await site()
    assert (await trade(s, await browser_login(page, s, "alice")))[0] == 200
    (alice,) = people(s)
    assert [g.id for g in alice.groups] == [GROUP_ID_ADMIN]
    s.op.accounts["alice"] = {"preferred_username": "alice", "name": "Alice Pleasance", "groups": ["family"]}
    await s.op.restart()
    await page.context.clear_cookies()
    assert (await trade(s, await browser_login(page, s, "alice")))[0] == 200
    (alice,) = people(s)
    assert alice.name == "Alice Pleasance"
    assert [g.id for g in alice.groups] == [GROUP_ID_USER]
    s.op.accounts["alice"] = {"preferred_username": "alice", "name": "Alice Pleasance", "groups": []}
    await s.op.restart()
    await page.context.clear_cookies()
    await page.goto(f"{s.base}/auth/authorize?client_id={s.client_id}&redirect_uri={s.redirect_uri}")
    await page.wait_for_url(f"{s.op.issuer}/**")
    await page.fill("input[name=login]", "alice")
    await page.fill("input[name=password]", "x")
    await page.click("button[type=submit]")
    await page.click("button[type=submit]")
    await page.wait_for_selector(".error")
    assert "?code=" not in page.url


@pytest.mark.chromium
async def test_jwks_rotation(site: Any, page: Any) -> None:
    """The provider restarts signing with a new key: the unknown kid makes opp-auth fetch the JWKS once more."""
    old = make_key("key-1")
    s: Site = await site(keys=[old])
    assert (await trade(s, await browser_login(page, s, "alice")))[0] == 200
    await s.op.restart(keys=[make_key("key-2"), old])
    s.provider._keys_refetched = -1e9  # the previous refetch is long ago
    await page.context.clear_cookies()
    assert (await trade(s, await browser_login(page, s, "alice")))[0] == 200
    assert {k.kid for k in (await s.provider.async_keys()).keys} == {"key-1", "key-2"}


# ---- the HTTP API and the callback -----------------------------------------------------------


async def test_flow_starts_with_an_external_step(site: Any) -> None:
    """PKCE S256, state, nonce, the callback as redirect_uri, the configured scopes."""
    s: Site = await site()
    async with aiohttp.ClientSession() as session:
        step = await s.start(session)
    assert step["type"] == "external" and step["step_id"] == "wait", step
    query = parse_qs(urlsplit(step["url"]).query)
    assert step["url"].startswith(f"{s.op.issuer}/")
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    assert query["redirect_uri"] == [f"{s.base}/auth/oidc/callback"]
    assert query["scope"] == ["openid profile groups"]
    assert len(query["state"][0]) >= 40 and len(query["nonce"][0]) >= 40
    assert query["client_id"] == [CLIENT_ID] and query["response_type"] == ["code"]


async def test_replayed_or_unknown_state_and_bad_code(site: Any) -> None:
    """A bogus code is refused by the provider: sso_failed, no login; the state cannot be used twice."""
    s: Site = await site()
    async with aiohttp.ClientSession() as session:
        step = await s.start(session)
        state = parse_qs(urlsplit(step["url"]).query)["state"][0]
        status, _, location = await s.callback(session, state=state, code="not-a-code")
        assert status == 302 and location == f"/auth/authorize?resume={step['flow_id']}"
        status, result = await s.resume(session, step["flow_id"])
        assert result["type"] == "abort" and result["reason"] == "sso_failed", result
        status, text, _ = await s.callback(session, state=state, code="not-a-code")
        assert status == 400 and "expired or was already used" in text
        for query in ({}, {"state": ""}, {"state": "x" * 5000, "code": "y"}, {"code": "z"}):
            status, _, _ = await s.callback(session, **query)
            assert status == 400
        # The flow was never fed by the client's own input.
        step = await s.start(session)
        async with session.post(
            f"{s.base}/auth/login_flow/{step['flow_id']}", json={"client_id": s.client_id, "iss": "x", "sub": "alice"}
        ) as resp:
            result = await resp.json()
        assert result["type"] == "abort" and result["reason"] == "login_expired", result
    assert not people(s)


async def test_provider_error_answer(site: Any) -> None:
    """The provider sends error=access_denied back: sso_denied."""
    s: Site = await site()
    async with aiohttp.ClientSession() as session:
        step = await s.start(session)
        state = parse_qs(urlsplit(step["url"]).query)["state"][0]
        status, _, _ = await s.callback(session, state=state, error="access_denied")
        assert status == 302
        _, result = await s.resume(session, step["flow_id"])
    assert result["type"] == "abort" and result["reason"] == "sso_denied", result


async def test_provider_down(site: Any, opp_auth_factory: Any) -> None:
    """Down during the callback: cannot_connect; down at start: cannot_connect at once; never a 500."""
    s: Site = await site()
    async with aiohttp.ClientSession() as session:
        step = await s.start(session)
        state = parse_qs(urlsplit(step["url"]).query)["state"][0]
        await s.op.stop()
        status, _, _ = await s.callback(session, state=state, code="whatever")
        assert status == 302
        _, result = await s.resume(session, step["flow_id"])
        assert result["type"] == "abort" and result["reason"] == "cannot_connect", result
    auth = await opp_auth_factory(
        providers=[
            {
                "type": "oidc",
                "issuer": f"http://127.0.0.1:{free_port()}",
                "client_id": "x",
                "redirect_uri": "http://127.0.0.1:1/auth/oidc/callback",
            }
        ]
    )
    from opp_auth.testing import run_login_flow

    result = await run_login_flow(auth, ("oidc", None), [])
    assert result["type"] == "abort" and result["reason"] == "cannot_connect", result


# ---- the ID token, forged --------------------------------------------------------------------


def claims_for(s: Site, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": s.op.issuer, "sub": "alice", "aud": CLIENT_ID, "exp": now + 300, "iat": now, "nonce": "n-1"}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def sign(claims: dict[str, Any], key: Any, alg: str = "RS256", kid: str | None = "key-1") -> str:
    header = {"alg": alg, **({"kid": kid} if kid else {})}
    return jwt.encode(header, claims, key, algorithms=[alg])


def _part(data: Any) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned(claims: dict[str, Any]) -> str:
    """alg none, no signature."""
    return f"{_part({'alg': 'none', 'kid': 'key-1'})}.{_part(claims)}."


def hmac_with(secret: bytes, claims: dict[str, Any]) -> str:
    """HS256 keyed with the given bytes (the provider's public key, the classic confusion attack); by hand,
    as joserfc refuses to make an oct key of a public key at all."""
    signing_input = f"{_part({'alg': 'HS256', 'kid': 'key-1'})}.{_part(claims)}"
    return f"{signing_input}.{_part(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


async def test_forged_id_tokens_are_refused(site: Any) -> None:
    """Wrong issuer, audience, azp, expired, future iat, nonce, bad signature, unknown kid, none, HMAC."""
    key = make_key("key-1")
    s: Site = await site(keys=[key])
    provider = s.provider
    await provider.async_metadata()
    good = sign(claims_for(s), key)
    assert (await provider.async_verify_id_token(good, "n-1"))["sub"] == "alice"
    public_pem = key.as_pem(private=False)
    cases = {
        "wrong issuer": sign(claims_for(s, iss="http://127.0.0.1:1"), key),
        "wrong audience": sign(claims_for(s, aud="someone-else"), key),
        "several audiences, no azp": sign(claims_for(s, aud=[CLIENT_ID, "other"]), key),
        "azp of another client": sign(claims_for(s, azp="other"), key),
        "expired": sign(claims_for(s, exp=int(time.time()) - 120), key),
        "issued in the future": sign(claims_for(s, iat=int(time.time()) + 600), key),
        "no exp": sign(claims_for(s, exp=None), key),
        "replayed nonce": sign(claims_for(s, nonce="n-0"), key),
        "no nonce": sign(claims_for(s, nonce=None), key),
        "bad signature": sign(claims_for(s), make_key("key-1")),
        "unknown kid": sign(claims_for(s), make_key("key-9"), kid="key-9"),
        "alg none": unsigned(claims_for(s)),
        "HMAC with the public key": hmac_with(public_pem, claims_for(s)),
        "HMAC with the public JWK": hmac_with(json.dumps(key.as_dict(private=False)).encode(), claims_for(s)),
        "not a JWT": "a.b.c",
        "garbage": "\x00" * 100,
    }
    for name, token in cases.items():
        with pytest.raises(OidcError):
            await provider.async_verify_id_token(token, "n-1")
            pytest.fail(f"{name} was accepted")
    # Small leeway: a token that expired 30 seconds ago still passes.
    assert await provider.async_verify_id_token(sign(claims_for(s, exp=int(time.time()) - 30), key), "n-1")


# ---- back-channel logout ---------------------------------------------------------------------


async def refresh(s: Site, refresh_token: str) -> int:
    form = {"grant_type": "refresh_token", "client_id": s.client_id, "refresh_token": refresh_token}
    async with aiohttp.ClientSession() as session, session.post(f"{s.base}/auth/token", data=form) as resp:
        return resp.status


@pytest.mark.chromium
async def test_back_channel_logout_of_one_session(site: Any, page: Any) -> None:
    """Two browsers log in as alice; signing out of one at the provider revokes exactly its refresh token."""
    s: Site = await site()
    first = (await trade(s, await browser_login(page, s, "alice")))[1]
    other_context = await page.context.browser.new_context(locale="en-US")
    other = await other_context.new_page()
    second = (await trade(s, await browser_login(other, s, "alice")))[1]
    assert await refresh(s, first["refresh_token"]) == 200
    assert await refresh(s, second["refresh_token"]) == 200
    sids = [tuple(v) for v in s.provider.token_sids.values()]
    assert len(sids) == 2 and sids[0] != sids[1], sids

    # RP-less logout at the provider in the first browser: the provider posts a logout token to us.
    await page.goto(f"{s.op.issuer}/session/end")
    await page.click("button[name=logout][value=yes], button[autofocus]")
    for _ in range(100):
        if await refresh(s, first["refresh_token"]) != 200:
            break
        await asyncio.sleep(0.1)
    assert await refresh(s, first["refresh_token"]) == 400, s.op.output
    assert await refresh(s, second["refresh_token"]) == 200
    await other_context.close()


async def test_logout_tokens_forged_or_without_sid(site: Any) -> None:
    """Logout tokens are checked like ID tokens plus the event; one without sid revokes all of the user's."""
    key = make_key("key-1")
    s: Site = await site(keys=[key])
    provider = s.provider
    user = await s.auth.async_create_user("alice", ["system-users"])
    creds = provider.async_create_credentials({"iss": s.op.issuer, "sub": "alice"})
    await s.auth.async_link_user(user, creds)
    tokens = [await s.auth.async_create_refresh_token(user, s.client_id, credential=creds) for _ in range(2)]

    async def post(token: str) -> int:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{s.base}/auth/oidc/backchannel_logout", data={"logout_token": token}) as resp,
        ):
            return resp.status

    now = int(time.time())
    event = {"http://schemas.openid.net/event/backchannel-logout": {}}
    base = {"iss": s.op.issuer, "aud": CLIENT_ID, "iat": now, "exp": now + 120, "sub": "alice", "events": event}
    forged = [
        sign({**base, "jti": "1", "aud": "other"}, key),
        sign({**base, "jti": "2", "iss": "http://127.0.0.1:1"}, key),
        sign({**base, "jti": "3", "events": {}}, key),
        sign({**base, "jti": "4", "nonce": "n"}, key),
        sign({**base, "jti": "5"}, make_key("key-1")),
        unsigned({**base, "jti": "6"}),
        hmac_with(key.as_pem(private=False), {**base, "jti": "7"}),
        sign({k: v for k, v in base.items() if k != "sub"} | {"jti": "8"}, key),
        "not.a.jwt",
        "",
    ]
    for token in forged:
        assert await post(token) == 400, token
    assert all(s.auth.store.get_refresh_token(t.id) for t in tokens)
    good = sign({**base, "jti": "9"}, key)
    assert await post(good) == 200
    assert not any(s.auth.store.get_refresh_token(t.id) for t in tokens)
    assert await post(good) == 400  # replayed jti


@pytest.mark.chromium
async def test_refresh_rechecks_the_provider(site: Any, page: Any) -> None:
    """Out of every required group at the provider: the next refresh is refused; back in: accepted and synced."""
    s: Site = await site(recheck_interval=0)
    status, tokens = await trade(s, await browser_login(page, s, "alice"))
    assert status == 200
    assert await refresh(s, tokens["refresh_token"]) == 200

    async def set_account(claims: dict[str, Any]) -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.put(f"{s.op.issuer}/test/accounts/alice", data=json.dumps(claims)) as resp,
        ):
            assert resp.status == 204

    await set_account({"preferred_username": "alice", "name": "Alice Liddell", "groups": ["strangers"]})
    assert await refresh(s, tokens["refresh_token"]) != 200
    await set_account({"preferred_username": "alice", "name": "Alice L.", "groups": ["family"]})
    assert await refresh(s, tokens["refresh_token"]) == 200
    (alice,) = people(s)
    assert alice.name == "Alice L." and [g.id for g in alice.groups] == [GROUP_ID_USER]
    # The provider down: the refresh cannot be confirmed and is refused.
    await s.op.stop()
    assert await refresh(s, tokens["refresh_token"]) != 200
