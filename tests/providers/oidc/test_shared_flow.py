"""The OIDC login shared by servers A and B on one PostgreSQL database, through the real OpenID provider.

Behind a load balancer the browser's callback and the client's wait step may each reach another server
than the one that started the flow. The pending entry (state -> flow, nonce, PKCE verifier) is a shared
value taken once by the server the callback reaches; the outcome is a shared value keyed by the flow id,
taken by the wait step wherever it runs. Both are sealed with .opp-auth-oidc-key.
"""

from __future__ import annotations

import asyncio
import json
import re
from html import unescape
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import aiohttp
import opp_auth_oidc
import pytest
from aiohttp.test_utils import TestServer

from opp_auth.ephemeral import digest
from opp_auth.flow import UnknownFlow
from opp_auth.http.app import create_app
from opp_auth.testing import CLIENT_ID, REDIRECT_URI, async_wait_until

from .conftest import ACCOUNTS, CLIENT_SECRET, free_port, provider_config

HANDLER = ("oidc", None)
IP = "192.0.2.10"
VALUE_PREFIX = "value:"  # opp_auth_postgresql.ephemeral's prefix of plugins' keys


@pytest.fixture
def opp_auth_storage_type() -> str:
    return "postgresql"


class Cluster:
    """Servers A and B (each an AuthManager served over HTTP) and the OpenID provider."""

    def __init__(self, op: Any, servers: dict[str, tuple[Any, str]], callback: str) -> None:
        self.op = op
        self.servers = servers
        self.callback_url = callback

    def auth(self, name: str) -> Any:
        return self.servers[name][0]

    async def start(self, name: str) -> dict[str, Any]:
        step = await self.auth(name).login_flow.async_start_login(
            HANDLER, ip_address=IP, client_id=CLIENT_ID, redirect_uri=REDIRECT_URI, client_ok=True
        )
        assert step["type"] == "external" and step["step_id"] == "wait", step
        return dict(step)

    async def wait(self, name: str, flow_id: str, user_input: dict[str, Any] | None = None) -> dict[str, Any]:
        return dict(
            await self.auth(name).login_flow.async_login_step(
                flow_id, user_input or {}, ip_address=IP, client_id=CLIENT_ID, client_ok=True
            )
        )

    async def at_provider(self, url: str, account: str) -> dict[str, str]:
        """The browser at the provider: log in and consent; the query it is sent back to the callback with."""
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            method, data = "GET", None
            for _ in range(20):
                async with browser.request(method, url, data=data, allow_redirects=False) as resp:
                    body = await resp.text()
                    location = resp.headers.get("Location")
                if location is not None:
                    target = urljoin(url, location)
                    if target.startswith(self.callback_url):
                        return {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()}
                    method, data, url = "GET", None, target
                    continue
                form = re.search(r'<form[^>]*action="([^"]+)"[^>]*>(.*?)</form>', body, re.S)
                assert form is not None, body[:2000]
                fields = {
                    unescape(n): unescape(v)
                    for n, v in re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', form.group(2))
                }
                if 'name="login"' in form.group(2):
                    fields.update(login=account, password="any password")
                method, data, url = "POST", fields, urljoin(url, unescape(form.group(1)))
        raise AssertionError("the provider never sent the browser back")

    async def callback(self, name: str, query: dict[str, str]) -> tuple[int, str, str | None]:
        base = self.servers[name][1]
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{base}/auth/oidc/callback", params=query, allow_redirects=False) as resp,
        ):
            return resp.status, await resp.text(), resp.headers.get("Location")

    async def trade(self, name: str, code: str) -> tuple[int, Any]:
        form = {"grant_type": "authorization_code", "client_id": CLIENT_ID, "code": code}
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.servers[name][1]}/auth/token", data=form) as resp,
        ):
            return resp.status, await resp.json()

    async def refresh(self, name: str, refresh_token: str) -> int:
        form = {"grant_type": "refresh_token", "client_id": CLIENT_ID, "refresh_token": refresh_token}
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.servers[name][1]}/auth/token", data=form) as resp,
        ):
            return resp.status

    async def values(self) -> list[str]:
        """The shared values' rows as stored (text)."""
        row = await self.auth("a").ephemeral._one("SELECT coalesce(json_agg(value), '[]') FROM opp_auth_values", None)
        return [str(v) for v in (json.loads(row[0]) if isinstance(row[0], str) else row[0])]


@pytest.fixture
async def cluster(op: Any, opp_auth_factory: Any) -> Any:
    """await cluster(): the provider, and A and B serving one oidc provider on one database."""
    made: list[TestServer] = []

    async def make(mfa: bool = False) -> Cluster:
        callback = f"http://127.0.0.1:{free_port()}/auth/oidc/callback"  # the load balancer's address
        client = {
            "client_id": "opp-auth",
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [callback],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
        }
        provider = await op(clients=[client], accounts=json.loads(json.dumps(ACCOUNTS)))
        config = {
            "providers": [provider_config(provider, redirect_uri=callback)],
            "mfa_modules": [{"type": "insecure_example", "data": []}] if mfa else [],
        }
        servers: dict[str, tuple[Any, str]] = {}
        for name in ("a", "b"):
            auth = await opp_auth_factory(**config)
            assert auth.context.shared_state
            port = free_port()
            server = TestServer(create_app(auth), host="127.0.0.1", port=port)
            await server.start_server()
            made.append(server)
            servers[name] = (auth, f"http://127.0.0.1:{port}")
        return Cluster(provider, servers, callback)

    yield make
    for server in made:
        await server.close()


async def login(c: Cluster, start: str, callback: str, wait: str, account: str = "alice") -> dict[str, Any]:
    """A login: started on one server, the provider's callback on another, the wait step on a third."""
    step = await c.start(start)
    query = await c.at_provider(step["url"], account)
    status, text, location = await c.callback(callback, query)
    assert (status, location) == (302, f"/auth/authorize?resume={step['flow_id']}"), text
    return await c.wait(wait, step["flow_id"])


@pytest.mark.parametrize(
    ("start", "callback", "wait", "trade"),
    [("a", "b", "a", "b"), ("a", "a", "b", "a"), ("a", "b", "b", "a"), ("b", "a", "b", "b")],
)
async def test_each_step_on_another_server(cluster: Any, start: str, callback: str, wait: str, trade: str) -> None:
    """The flow started on one server, the callback and the wait step on either, the code traded on
    either: alice is logged in, and the refresh token (made where the code was traded) holds the
    provider's grant of that login, whichever server ran the wait step."""
    c: Cluster = await cluster()
    # alice's first login makes her user (traded where the wait step ran; see the next test for the other way).
    first = await login(c, start, callback, wait)
    assert first["type"] == "create_entry", first
    status, tokens = await c.trade(wait, first["result"])
    assert status == 200, tokens
    other = c.auth(trade)
    await async_wait_until(lambda: any(u.name == "Alice Liddell" for u in other.store.users()))
    done = await login(c, start, callback, wait)
    assert done["type"] == "create_entry", done
    status, tokens = await c.trade(trade, done["result"])
    assert status == 200, tokens
    token = other.store.get_refresh_token_by_token(tokens["refresh_token"])
    assert token is not None and token.credential.data == {"iss": c.op.issuer, "sub": "alice"}
    provider = next(p for p in other.auth_providers if p.type == "oidc")
    assert provider.sessions.has_grant(token.id)  # the provider's tokens reached the trading server
    assert await c.refresh(trade, tokens["refresh_token"]) == 200


async def test_shared_values_are_sealed(cluster: Any) -> None:
    """In the database the pending entry and the outcome are sealed: no nonce, verifier, identity or token."""
    c: Cluster = await cluster()
    step = await c.start("a")
    nonce = parse_qs(urlsplit(step["url"]).query)["nonce"][0]
    (pending,) = await c.values()
    assert set(json.loads(pending)) == {"provider", "sealed"} and nonce not in pending
    query = await c.at_provider(step["url"], "alice")
    assert (await c.callback("b", query))[0] == 302
    (outcome,) = await c.values()
    assert set(json.loads(outcome)) == {"sealed"}
    for secret in ("alice", "Alice", "access_token", "refresh_token", c.op.issuer):
        assert secret not in outcome
    done = await c.wait("a", step["flow_id"])
    assert done["type"] == "create_entry", done


async def test_replayed_callback_is_refused_on_the_other_server(cluster: Any) -> None:
    """The callback reaches B; replayed on A (or B) it is refused. Two at once on A and B: one wins."""
    c: Cluster = await cluster()
    step = await c.start("a")
    query = await c.at_provider(step["url"], "alice")
    assert (await c.callback("b", query))[0] == 302
    for name in ("a", "b"):
        status, text, _ = await c.callback(name, query)
        assert status == 400 and "expired or was already used" in text
    done = await c.wait("a", step["flow_id"])
    assert done["type"] == "create_entry", done

    step = await c.start("b")
    query = await c.at_provider(step["url"], "alice")
    results = await asyncio.gather(c.callback("a", query), c.callback("b", query))
    assert sorted(r[0] for r in results) == [302, 400], results
    done = await c.wait("a", step["flow_id"])
    assert done["type"] == "create_entry", done


async def test_another_flow_cannot_take_the_outcome(cluster: Any, caplog: pytest.LogCaptureFixture) -> None:
    """alice's callback (on B) finishes alice's flow only: another flow's wait step (on A) gets nothing,
    and her outcome moved in the database to the other flow's key does not unseal there."""
    c: Cluster = await cluster()
    victim, intruder = await c.start("a"), await c.start("b")
    query = await c.at_provider(victim["url"], "alice")
    assert (await c.callback("b", query))[0] == 302
    refused = await c.wait("a", intruder["flow_id"])
    assert (refused["type"], refused["reason"]) == ("abort", "login_expired"), refused
    done = await c.wait("b", victim["flow_id"])
    assert done["type"] == "create_entry", done

    victim, intruder = await c.start("a"), await c.start("a")
    query = await c.at_provider(victim["url"], "alice")
    assert (await c.callback("b", query))[0] == 302

    def key(flow_id: str) -> str:
        return digest(f"{VALUE_PREFIX}oidc..outcome.{flow_id}")

    moved = await c.auth("a").ephemeral._one(
        "UPDATE opp_auth_values SET id = %s WHERE id = %s RETURNING id",
        (key(intruder["flow_id"]), key(victim["flow_id"])),
    )
    assert moved is not None
    refused = await c.wait("b", intruder["flow_id"])
    assert (refused["type"], refused["reason"]) == ("abort", "login_expired"), refused
    assert "does not unseal for this flow" in caplog.text


async def test_an_expired_pending_entry_is_refused(cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A callback on B within the pending entry's life finishes the login; past it (by the database's
    clock), the callback is refused on any server and the flow ends at its wait step."""
    monkeypatch.setattr(opp_auth_oidc, "PENDING_TTL", 4.0)
    c: Cluster = await cluster()
    fresh, stale = await c.start("a"), await c.start("a")
    fresh_query = await c.at_provider(fresh["url"], "alice")
    stale_query = await c.at_provider(stale["url"], "bob")
    assert (await c.callback("b", fresh_query))[0] == 302
    done = await c.wait("a", fresh["flow_id"])
    assert done["type"] == "create_entry", done
    await asyncio.sleep(4.5)
    for name in ("b", "a"):
        status, text, _ = await c.callback(name, stale_query)
        assert status == 400 and "expired or was already used" in text
    ended = await c.wait("a", stale["flow_id"])
    assert (ended["type"], ended["reason"]) == ("abort", "login_expired"), ended


async def test_mfa_on_the_other_server_and_forged_flow_rows(cluster: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Past the wait step (on B) alice's MFA step is answered on A. A flow row rewritten to name bob,
    or another flow's row carrying alice's proof, is refused: the row never decides whose login it is."""
    c: Cluster = await cluster(mfa=True)
    for account in ("alice", "bob"):  # their users, with this provider's credentials
        first = await login(c, "a", "a", "a", account)
        assert first["type"] == "create_entry", first
        assert (await c.trade("a", first["result"]))[0] == 200
    users = {u.name: u for u in c.auth("a").store.users()}
    alice, bob = users["Alice Liddell"], users["Bob"]
    for name in ("a", "b"):
        await async_wait_until(lambda n=name: all(c.auth(n).store.get_user(u.id) is not None for u in (alice, bob)))
        module = c.auth(name).registry.get_auth_mfa_module("insecure_example")
        for user in (alice, bob):
            await module.async_setup_user(user.id, {"pin": "1234"})

    mfa = await login(c, "a", "b", "b")
    assert (mfa["type"], mfa["step_id"]) == ("form", "mfa"), mfa
    done = await c.wait("a", mfa["flow_id"], {"pin": "1234"})
    assert done["type"] == "create_entry", done

    async def row(flow_id: str) -> dict[str, Any]:
        stored = await c.auth("a").ephemeral._one("SELECT state FROM opp_auth_flows WHERE id = %s", (digest(flow_id),))
        return dict(json.loads(stored[0]))

    async def write(flow_id: str, state: dict[str, Any]) -> None:
        await c.auth("a").ephemeral._one(
            "UPDATE opp_auth_flows SET state = %s WHERE id = %s", (json.dumps(state), digest(flow_id))
        )

    # alice at her MFA step; the row rewritten to name bob and his credentials: refused.
    mfa = await login(c, "a", "b", "b")
    state = await row(mfa["flow_id"])
    bob_credentials = next(cr for cr in bob.credentials if cr.auth_provider_type == "oidc")
    state["flow"]["user_id"] = bob.id
    state["flow"]["credentials"] = {"id": bob_credentials.id}
    await write(mfa["flow_id"], state)
    with pytest.raises(UnknownFlow):
        await c.wait("a", mfa["flow_id"], {"pin": "1234"})
    assert "no proof that this flow verified" in caplog.text

    # A flow still waiting for the provider, given alice's MFA state (and proof) of another flow: refused.
    mfa = await login(c, "a", "b", "b")
    proven = await row(mfa["flow_id"])
    waiting = await c.start("b")
    state = await row(waiting["flow_id"])
    state["flow"] = proven["flow"]
    state["step"] = proven["step"]
    await write(waiting["flow_id"], state)
    taken = await c.wait("a", waiting["flow_id"], {"pin": "1234"})
    assert (taken["type"], taken["reason"]) == ("abort", "login_expired"), taken
    done = await c.wait("b", mfa["flow_id"], {"pin": "1234"})  # alice's own flow still finishes
    assert done["type"] == "create_entry", done


async def test_a_new_users_first_code_is_traded_on_another_server(cluster: Any) -> None:
    """alice's very first login, waited for on A and traded on B: B makes her user with the name A's provider
    read from the claims, holds the provider's grant, and refreshes."""
    c: Cluster = await cluster()
    first = await login(c, "a", "b", "a")
    assert first["type"] == "create_entry", first
    status, tokens = await c.trade("b", first["result"])
    assert status == 200, tokens
    other = c.auth("b")
    token = other.store.get_refresh_token_by_token(tokens["refresh_token"])
    assert token is not None and token.user.name == "Alice Liddell"
    provider = next(p for p in other.auth_providers if p.type == "oidc")
    assert provider.sessions.has_grant(token.id)
    assert await c.refresh("b", tokens["refresh_token"]) == 200
