"""trusted_header behind a real nginx, and direct requests that forge its headers.

nginx authenticates with basic auth and sets Remote-User, Remote-Name and
Remote-Groups for the upstream; it connects from 127.0.0.2, the only address
in http: trusted_proxies. Tests talk to the server directly from 127.0.0.1
(not trusted) and, with a bound source address, from 127.0.0.2 (trusted) to
check what the provider makes of odd headers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import voluptuous as vol
from multidict import CIMultiDict
from opp_auth_trusted_header import CONFIG_SCHEMA

from opp_auth import UserMeta
from opp_auth.manager import AuthManager
from opp_auth.testing import CLIENT_ID, REDIRECT_URI, OppAuthClient

from .conftest import PROXY_SOURCE, USERS, Nginx

HANDLER = ["trusted_header", None]
HTTP = {"use_x_forwarded_for": True, "trusted_proxies": [PROXY_SOURCE]}
GROUPS = {
    "admin_groups": ["home-admins"],
    "user_groups": ["family"],
    "read_only_groups": ["guests"],
    "required_groups": ["family", "home-admins", "guests"],
}

Factory = Callable[..., Awaitable[AuthManager]]


async def make_auth(factory: Factory, **extra: Any) -> AuthManager:
    """A manager with only this provider (plus insecure_example for an MFA module), trusting 127.0.0.2."""
    return await factory(
        providers=[{"type": "trusted_header", **GROUPS, **extra}],
        mfa_modules=[{"type": "insecure_example", "data": []}],
        http=HTTP,
    )


@pytest.fixture
async def served(opp_auth_client: Any) -> Callable[[AuthManager], Awaitable[OppAuthClient]]:
    """Serve a manager with its own http configuration."""

    async def serve(auth: AuthManager) -> OppAuthClient:
        return await opp_auth_client(auth, auth.http_config)

    return serve


@pytest.fixture
async def session_factory() -> AsyncIterator[Callable[..., aiohttp.ClientSession]]:
    """aiohttp sessions (optionally from a given source address), closed after the test."""
    opened: list[aiohttp.ClientSession] = []

    def make(source: str | None = None, **kwargs: Any) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(local_addr=(source, 0)) if source else None
        session = aiohttp.ClientSession(connector=connector, **kwargs)
        opened.append(session)
        return session

    yield make
    for session in opened:
        await session.close()


async def start_flow(session: aiohttp.ClientSession, base: str, headers: Any = None) -> tuple[int, Any]:
    """POST /auth/login_flow for the trusted_header provider."""
    body = {"client_id": CLIENT_ID, "handler": HANDLER, "redirect_uri": REDIRECT_URI}
    async with session.post(f"{base}/auth/login_flow", json=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def trade(session: aiohttp.ClientSession, base: str, code: str) -> tuple[int, Any]:
    """POST /auth/token with an authorization code."""
    form = {"grant_type": "authorization_code", "client_id": CLIENT_ID, "code": code}
    async with session.post(f"{base}/auth/token", data=form) as resp:
        return resp.status, await resp.json()


def basic(user: str) -> dict[str, str]:
    """Session headers carrying nginx's basic-auth credentials of a test user."""
    return {"Authorization": aiohttp.encode_basic_auth(user, USERS[user])}


def test_schema() -> None:
    """Defaults, header names checked, unknown keys refused."""
    conf = CONFIG_SCHEMA({"type": "trusted_header"})
    assert conf["username_header"] == "Remote-User"
    assert conf["name_header"] == "Remote-Name"
    assert conf["groups_header"] == "Remote-Groups"
    assert conf["create_users"] is True
    for bad in ("Remote User", "", "X:Y", "Ä"):
        with pytest.raises(vol.Invalid, match="header name"):
            CONFIG_SCHEMA({"type": "trusted_header", "username_header": bad})
    with pytest.raises(vol.Invalid):
        CONFIG_SCHEMA({"type": "trusted_header", "remote_user": "x"})


async def test_login_through_nginx(opp_auth_factory: Factory, served: Any, nginx: Any, session_factory: Any) -> None:
    """Behind nginx: alice's login creates an admin named from Remote-Name; bob a user; tokens work."""
    auth = await make_auth(opp_auth_factory)
    client = await served(auth)
    proxy: Nginx = nginx(client.server.port)

    session = session_factory(headers=basic("alice"))
    status, result = await start_flow(session, proxy.base)
    assert status == 200 and result["type"] == "create_entry", result
    status, tokens = await trade(session, proxy.base, result["result"])
    assert status == 200, tokens
    alice = next(u for u in auth.store.users() if not u.system_generated)
    assert alice.name == "Alice Liddell"
    assert [g.id for g in alice.groups] == [UserMeta.GROUP_ADMIN]
    assert alice.credentials[0].data == {"username": "alice"}
    # (nginx's basic auth owns the Authorization header, so the access token is tried on the server directly)
    async with client.request("GET", "/api/", headers={"Authorization": f"Bearer {tokens['access_token']}"}) as r:
        assert r.status == 200

    bob_session = session_factory(headers=basic("bob"))
    status, result = await start_flow(bob_session, proxy.base)
    assert result["type"] == "create_entry", result
    assert (await trade(bob_session, proxy.base, result["result"]))[0] == 200
    bob = next(u for u in auth.store.users() if u.name == "bob")
    assert [g.id for g in bob.groups] == [UserMeta.GROUP_USER]

    # A second login of alice finds the same user.
    status, result = await start_flow(session, proxy.base)
    assert (await trade(session, proxy.base, result["result"]))[0] == 200
    assert len([u for u in auth.store.users() if not u.system_generated]) == 2


async def test_client_cannot_override_what_nginx_sets(
    opp_auth_factory: Factory, served: Any, nginx: Any, session_factory: Any
) -> None:
    """A client that sends its own Remote-User through nginx is still logged in as who nginx says."""
    auth = await make_auth(opp_auth_factory)
    client = await served(auth)
    proxy: Nginx = nginx(client.server.port)
    session = session_factory(headers=basic("carol"))
    forged = CIMultiDict([("Remote-User", "alice"), ("Remote-Groups", "home-admins")])
    status, result = await start_flow(session, proxy.base, headers=forged)
    assert result["type"] == "create_entry", result
    assert (await trade(session, proxy.base, result["result"]))[0] == 200
    (carol,) = [u for u in auth.store.users() if not u.system_generated]
    assert carol.name == "carol"
    assert [g.id for g in carol.groups] == [UserMeta.GROUP_READ_ONLY]


async def test_required_groups_through_nginx(
    opp_auth_factory: Factory, served: Any, nginx: Any, session_factory: Any
) -> None:
    """dave is in no group nginx knows: not_allowed, no user."""
    auth = await make_auth(opp_auth_factory)
    client = await served(auth)
    proxy: Nginx = nginx(client.server.port)
    status, result = await start_flow(session_factory(headers=basic("dave")), proxy.base)
    assert status == 200
    assert result["type"] == "abort" and result["reason"] == "not_allowed", result
    assert not [u for u in auth.store.users() if not u.system_generated]


async def test_mfa_still_applies_behind_nginx(
    opp_auth_factory: Factory, served: Any, nginx: Any, session_factory: Any
) -> None:
    """An enrolled user gets the MFA step after the proxy's word; no code before the right pin."""
    auth = await make_auth(opp_auth_factory)
    client = await served(auth)
    proxy: Nginx = nginx(client.server.port)
    session = session_factory(headers=basic("alice"))
    status, result = await start_flow(session, proxy.base)
    assert (await trade(session, proxy.base, result["result"]))[0] == 200
    alice = next(u for u in auth.store.users() if not u.system_generated)
    await auth.users.async_enable_user_mfa(alice, "insecure_example", {"pin": "123456"})

    status, result = await start_flow(session, proxy.base)
    assert result["type"] == "form" and result["step_id"] == "mfa", result
    body = {"client_id": CLIENT_ID, "pin": "000000"}
    async with session.post(f"{proxy.base}/auth/login_flow/{result['flow_id']}", json=body) as resp:
        wrong = await resp.json()
    assert wrong["type"] == "form" and wrong["errors"] == {"base": "invalid_code"}
    body["pin"] = "123456"
    async with session.post(f"{proxy.base}/auth/login_flow/{result['flow_id']}", json=body) as resp:
        right = await resp.json()
    assert right["type"] == "create_entry", right
    # The MFA step was answered without the header's help: it comes from nginx again, but an MFA step
    # from the untrusted address directly is refused as "IP address changed" by the engine.


@pytest.mark.parametrize(
    "headers",
    [
        {"Remote-User": "alice", "Remote-Groups": "home-admins"},
        {"Remote-User": "alice", "X-Forwarded-For": "127.0.0.2"},
    ],
    ids=["forged", "forged-with-xff"],
)
async def test_direct_request_forging_the_header_is_refused(
    opp_auth_factory: Factory, served: Any, session_factory: Any, headers: dict[str, str]
) -> None:
    """From 127.0.0.1 (not a trusted proxy) the headers count for nothing."""
    auth = await make_auth(opp_auth_factory)
    client = await served(auth)
    status, result = await start_flow(session_factory(), client.base, headers=headers)
    assert status == 200
    assert result["type"] == "abort" and result["reason"] == "not_allowed", result
    assert not [u for u in auth.store.users() if not u.system_generated]


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("Remote-User", "")],
        [("Remote-User", "   ")],
        [("Remote-User", "alice"), ("Remote-User", "bob")],
        [("Remote-User", "alice\u202e")],
        [("Remote-User", "a" * 300)],
    ],
    ids=["absent", "empty", "blank", "repeated", "bidi", "huge"],
)
async def test_trusted_peer_with_bad_header_is_refused(
    opp_auth_factory: Factory, served: Any, session_factory: Any, headers: list[tuple[str, str]]
) -> None:
    """Even from the trusted proxy's address: absent, empty, repeated or unsafe usernames offer nothing."""
    auth = await make_auth(opp_auth_factory, required_groups=None)
    client = await served(auth)
    session = session_factory(source=PROXY_SOURCE)
    status, result = await start_flow(session, client.base, headers=CIMultiDict(headers))
    assert status == 200
    assert result["type"] == "abort" and result["reason"] == "not_allowed", result
    assert not [u for u in auth.store.users() if not u.system_generated]


@pytest.mark.parametrize("value", [b"alice\x01", b"alice\x7f", b"\xff\xfealice", b"al\xe2\x80\xaeice"])
async def test_raw_bytes_from_trusted_peer_never_log_in(opp_auth_factory: Factory, served: Any, value: bytes) -> None:
    """Control characters and undecodable bytes aiohttp's client will not send, written on the socket itself."""
    auth = await make_auth(opp_auth_factory, required_groups=None)
    client = await served(auth)
    body = json.dumps({"client_id": CLIENT_ID, "handler": HANDLER, "redirect_uri": REDIRECT_URI}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port, local_addr=(PROXY_SOURCE, 0))
    writer.write(
        b"POST /auth/login_flow HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
        b"Remote-User: " + value + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    response = await reader.read()
    writer.close()
    status = int(response.split(b" ", 2)[1])
    if status == 200:
        result = json.loads(response.split(b"\r\n\r\n", 1)[1])
        assert result["type"] == "abort" and result["reason"] == "not_allowed", result
    else:
        assert status == 400, response
    assert not [u for u in auth.store.users() if not u.system_generated]


async def test_username_normalised_like_local(opp_auth_factory: Factory, served: Any, session_factory: Any) -> None:
    """' Alice ' and 'ALICE' from the trusted peer are the same credentials as 'alice'."""
    auth = await make_auth(opp_auth_factory, required_groups=None)
    client = await served(auth)
    session = session_factory(source=PROXY_SOURCE)
    for spelling in (" Alice ", "ALICE", "alice"):
        status, result = await start_flow(session, client.base, headers={"Remote-User": spelling})
        assert result["type"] == "create_entry", result
        assert (await trade(session, client.base, result["result"]))[0] == 200
    (user,) = [u for u in auth.store.users() if not u.system_generated]
    assert [c.data for c in user.credentials] == [{"username": "alice"}]


async def test_create_users_false(opp_auth_factory: Factory, served: Any, session_factory: Any) -> None:
    """create_users: false logs in only people who already have these credentials."""
    auth = await make_auth(opp_auth_factory, required_groups=None, create_users=False)
    client = await served(auth)
    session = session_factory(source=PROXY_SOURCE)
    status, result = await start_flow(session, client.base, headers={"Remote-User": "alice"})
    assert result["type"] == "abort" and result["reason"] == "not_allowed", result


async def test_flow_keeps_no_headers(opp_auth_factory: Factory, served: Any, session_factory: Any) -> None:
    """The engine drops the starting request's headers from the flow context after the first step."""
    auth = await make_auth(opp_auth_factory, required_groups=None)
    await auth.users.async_create_user("x", ["system-users"])
    client = await served(auth)
    session = session_factory(source=PROXY_SOURCE)
    status, result = await start_flow(session, client.base, headers={"Remote-User": "alice"})
    assert (await trade(session, client.base, result["result"]))[0] == 200
    alice = next(u for u in auth.store.users() if u.name == "alice")
    await auth.users.async_enable_user_mfa(alice, "insecure_example", {"pin": "123456"})
    status, result = await start_flow(session, client.base, headers={"Remote-User": "alice", "Cookie": "secret=1"})
    assert result["step_id"] == "mfa"
    flow = auth.login_flow.async_get(result["flow_id"])
    assert "headers" not in flow.context
    assert flow.context["peer_address"] == PROXY_SOURCE
