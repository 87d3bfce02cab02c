"""opp-auth-oidc against a real OpenID provider (oidc-provider under Node.js), through the HTTP API and Chromium.

The negative cases of the ID token are checked with tokens forged by the test: signed with the provider's
own key (which the test generated and handed to it) to try each claim, or with a stranger's key.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import voluptuous as vol
from joserfc import jwt
from opp_auth_oidc import CONFIG_SCHEMA, OidcError

from opp_auth import UserMeta

from .conftest import (
    CLIENT_ID,
    Site,
    browser_login,
    free_port,
    make_key,
    people,
    refresh,
    set_account,
    trade,
)

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


@pytest.mark.chromium
async def test_browser_login_through_the_provider(site: Any, page: Any) -> None:
    """Login page -> provider's login and consent -> callback -> login page -> code; user keyed by iss+sub."""
    s: Site = await site()
    status, tokens = await trade(s, await browser_login(page, s, "alice"))
    assert status == 200, tokens
    (alice,) = people(s)
    assert alice.name == "Alice Liddell"
    assert [g.id for g in alice.groups] == [UserMeta.GROUP_ADMIN]
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
    assert [g.id for g in bob.groups] == [UserMeta.GROUP_USER]
    await s.auth.users.async_enable_user_mfa(bob, "insecure_example", {"pin": "424242"})
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
    assert [g.id for g in alice.groups] == [UserMeta.GROUP_ADMIN]
    s.op.accounts["alice"] = {"preferred_username": "alice", "name": "Alice Pleasance", "groups": ["family"]}
    await s.op.restart()
    await page.context.clear_cookies()
    assert (await trade(s, await browser_login(page, s, "alice")))[0] == 200
    (alice,) = people(s)
    assert alice.name == "Alice Pleasance"
    assert [g.id for g in alice.groups] == [UserMeta.GROUP_USER]
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
    sids = [tuple(s.provider.sessions.sids(token_id)) for token_id in s.provider.sessions.entries]
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
    user = await s.auth.users.async_create_user("alice", ["system-users"])
    creds = provider.async_create_credentials({"iss": s.op.issuer, "sub": "alice"})
    await s.auth.users.async_link_user(user, creds)
    tokens = [await s.auth.refresh_tokens.async_create_refresh_token(user, s.client_id, credential=creds) for _ in range(2)]

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
    await set_account(s.op, "alice", {"preferred_username": "alice", "name": "Alice Liddell", "groups": ["strangers"]})
    assert await refresh(s, tokens["refresh_token"]) != 200
    await set_account(s.op, "alice", {"preferred_username": "alice", "name": "Alice L.", "groups": ["family"]})
    assert await refresh(s, tokens["refresh_token"]) == 200
    (alice,) = people(s)
    assert alice.name == "Alice L." and [g.id for g in alice.groups] == [UserMeta.GROUP_USER]
