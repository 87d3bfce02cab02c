"""The websocket API: auth phase, envelope, errors, limits, plugins and the profile commands (SPEC 5.5, 5.6; G5, G6, G15, G18)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest
import voluptuous as vol

from opp_auth import User, UserMeta, hookimpl, websocket
from opp_auth.http import websocket_api
from opp_auth.manager import AuthManager
from opp_auth.testing import CLIENT_ID, OppAuthClient

ALICE_LOGIN = [{"username": "alice", "password": "alice-pw"}]
PROVIDERS = [{"type": "insecure_example", "users": [{"username": "alice", "password": "alice-pw", "name": "Alice"}]}]
MFA_MODULES = [{"type": "insecure_example", "data": []}]
MFA_NAME = "Insecure Personal Identify Number"
EXAMPLE = ["insecure_example", None]
REPLY_TIMEOUT = 5.0
CLOSED = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)


@pytest.fixture
async def auth(opp_auth_factory: Any) -> AuthManager:
    """A manager with an insecure_example provider and MFA module."""
    return await opp_auth_factory(providers=PROVIDERS, mfa_modules=MFA_MODULES)


@pytest.fixture
async def client(auth: AuthManager, opp_auth_client: Any) -> OppAuthClient:
    """A live server for auth."""
    return await opp_auth_client(auth)


@pytest.fixture
def connect(client: OppAuthClient, ws_connector: Any) -> Any:
    """Opens websockets to the server (a Any of tests/http/conftest.py)."""
    return ws_connector(client)


@pytest.fixture
async def owner(auth: AuthManager) -> User:
    """The owner (an administrator)."""
    return await auth.users.async_create_user("Paulus", [UserMeta.GROUP_ADMIN], is_owner=True)


@pytest.fixture
async def bob(auth: AuthManager) -> User:
    """An ordinary user."""
    return await auth.users.async_create_user("Bob", [UserMeta.GROUP_USER])


async def api_status(client: OppAuthClient, path: str = "/api/", bearer: str | None = None) -> int:
    """Status of GET path, with a bearer token or none."""
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    async with client.request("GET", path, headers=headers) as resp:
        return resp.status


async def auth_reply(ws: aiohttp.ClientWebSocketResponse, message: Any) -> dict[str, Any]:
    """Send an auth-phase message (JSON, or raw text) after auth_required; the server's answer."""
    assert (await ws.receive_json(timeout=REPLY_TIMEOUT))["type"] == "auth_required"
    if isinstance(message, str):
        await ws.send_str(message)
    else:
        await ws.send_json(message)
    return dict(await ws.receive_json(timeout=REPLY_TIMEOUT))


async def assert_closed(ws: aiohttp.ClientWebSocketResponse, within: float = 1.0) -> None:
    """The server closes the socket without sending anything else."""
    msg = await ws.receive(timeout=within)
    assert msg.type in CLOSED, msg


async def mint(auth: AuthManager, user: User) -> tuple[Any, str]:
    """A new refresh token of user and an access token from it."""
    refresh_token = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    return refresh_token, await auth.access_tokens.async_create_access_token(refresh_token)


def jwt_claims(token: str) -> dict[str, Any]:
    """The (unverified) payload of a JWT."""
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


# ---- auth phase -------------------------------------------------------------------------------


async def test_auth_required_then_auth_ok(auth: AuthManager, connect: Any, owner: User) -> None:
    ws = await connect.open()
    assert await ws.receive_json(timeout=REPLY_TIMEOUT) == {"type": "auth_required", "ha_version": auth.version}
    _, token = await mint(auth, owner)
    await ws.send_json({"type": "auth", "access_token": token})
    assert await ws.receive_json(timeout=REPLY_TIMEOUT) == {"type": "auth_ok", "ha_version": auth.version}


async def test_invalid_access_token_is_refused_and_disconnected(connect: Any) -> None:
    ws = await connect.open()
    reply = await auth_reply(ws, {"type": "auth", "access_token": "not-a-token"})
    assert reply == {"type": "auth_invalid", "message": "Invalid access token or password"}
    await assert_closed(ws)


async def test_api_password_is_accepted_by_schema_but_always_fails(connect: Any) -> None:
    ws = await connect.open()
    reply = await auth_reply(ws, {"type": "auth", "api_password": "anything"})
    assert reply == {"type": "auth_invalid", "message": "Invalid access token or password"}
    await assert_closed(ws)


async def test_access_token_of_revoked_refresh_token_is_refused(auth: AuthManager, connect: Any, owner: User) -> None:
    refresh_token, token = await mint(auth, owner)
    await auth.refresh_tokens.async_remove_refresh_token(refresh_token)
    ws = await connect.open()
    assert (await auth_reply(ws, {"type": "auth", "access_token": token}))["type"] == "auth_invalid"


async def test_access_token_of_inactive_user_is_refused(auth: AuthManager, connect: Any, bob: User) -> None:
    _, token = await mint(auth, bob)
    await auth.users.async_deactivate_user(bob)
    ws = await connect.open()
    assert (await auth_reply(ws, {"type": "auth", "access_token": token}))["type"] == "auth_invalid"


@pytest.mark.parametrize(
    "message",
    [
        {"type": "login", "access_token": "x"},
        {"type": "auth", "access_token": 42},
        {"type": "auth", "access_token": "x", "api_password": "y"},
        {"type": "auth", "access_token": "x", "extra": 1},
        ["auth"],
        "{not json",
    ],
    ids=["wrong-type", "token-not-string", "both-secrets", "extra-key", "not-an-object", "not-json"],
)
async def test_malformed_auth_message_is_refused_with_details(connect: Any, message: Any) -> None:
    ws = await connect.open()
    reply = await auth_reply(ws, message)
    assert reply["type"] == "auth_invalid"
    assert reply["message"].startswith("Auth message incorrectly formatted: ")
    assert len(reply["message"]) > len("Auth message incorrectly formatted: ")
    await assert_closed(ws)


async def test_auth_phase_times_out(
    connect: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(websocket_api, "AUTH_TIMEOUT", 0.3)
    ws = await connect.open()
    start = time.monotonic()
    assert (await ws.receive_json(timeout=REPLY_TIMEOUT))["type"] == "auth_required"
    msg = await ws.receive(timeout=REPLY_TIMEOUT)
    assert msg.type in CLOSED, msg
    assert 0.25 <= time.monotonic() - start < 2.0
    assert "Did not receive auth message within" in caplog.text


async def test_failed_websocket_auth_counts_as_failed_login(
    opp_auth_factory: Any, opp_auth_client: Any, ws_connector: Any
) -> None:
    auth = await opp_auth_factory(providers=PROVIDERS, mfa_modules=[], http={"login_attempts_threshold": 1})
    client = await opp_auth_client(auth)
    owner = await auth.users.async_create_user("Paulus", [UserMeta.GROUP_ADMIN], is_owner=True)
    _, token = await mint(auth, owner)
    connector = ws_connector(client)
    ws = await connector.open()
    assert (await auth_reply(ws, {"type": "auth", "access_token": "bad"}))["type"] == "auth_invalid"
    # The failure is processed in the background: the ban follows shortly.
    for _ in range(50):
        if await api_status(client, bearer=token) == 403:
            break
        await asyncio.sleep(0.02)
    assert await api_status(client, bearer=token) == 403


async def test_successful_websocket_auth_resets_failed_login_count(
    opp_auth_factory: Any, opp_auth_client: Any, ws_connector: Any
) -> None:
    auth = await opp_auth_factory(providers=PROVIDERS, mfa_modules=[], http={"login_attempts_threshold": 2})
    client = await opp_auth_client(auth)
    owner = await auth.users.async_create_user("Paulus", [UserMeta.GROUP_ADMIN], is_owner=True)
    _, token = await mint(auth, owner)
    connector = ws_connector(client)
    ws = await connector.open()
    assert (await auth_reply(ws, {"type": "auth", "access_token": "bad"}))["type"] == "auth_invalid"
    await asyncio.sleep(0.1)
    session = await connector.auth(token)
    await asyncio.sleep(0.1)
    ws = await connector.open()
    assert (await auth_reply(ws, {"type": "auth", "access_token": "bad"}))["type"] == "auth_invalid"
    await asyncio.sleep(0.1)
    assert await api_status(client, bearer=token) == 200
    assert (await session.result("auth/current_user"))["id"] == owner.id


# ---- commands: envelope and errors --------------------------------------------------------------


async def test_home_assistant_js_websocket_session(auth: AuthManager, client: OppAuthClient, connect: Any) -> None:
    """The exact exchange of home-assistant-js-websocket: auth phase, then increasing ids."""
    tokens = await client.login.tokens(EXAMPLE, ALICE_LOGIN)
    (alice,) = [u for u in await auth.users.async_get_users() if u.name == "Alice"]
    ws = await connect.open()
    assert json.loads((await ws.receive(timeout=REPLY_TIMEOUT)).data) == {"type": "auth_required", "ha_version": auth.version}
    await ws.send_str(json.dumps({"type": "auth", "access_token": tokens["access_token"]}))
    assert json.loads((await ws.receive(timeout=REPLY_TIMEOUT)).data) == {"type": "auth_ok", "ha_version": auth.version}

    async def exchange(message: dict[str, Any]) -> Any:
        await ws.send_str(json.dumps(message))
        return json.loads((await ws.receive(timeout=REPLY_TIMEOUT)).data)

    assert await exchange({"type": "auth/current_user", "id": 1}) == {
        "id": 1,
        "type": "result",
        "success": True,
        "result": {
            "id": alice.id,
            "name": "Alice",
            "is_owner": False,
            "is_admin": False,
            "credentials": [{"auth_provider_type": "insecure_example", "auth_provider_id": None}],
            "mfa_modules": [{"id": "insecure_example", "name": MFA_NAME, "enabled": False}],
        },
    }
    assert await exchange({"type": "frontend/get_user_data", "key": "language", "id": 2}) == {
        "id": 2, "type": "result", "success": True, "result": {"value": None},
    }
    id_reuse = {"code": "id_reuse", "message": "Identifier values have to increase."}
    assert await exchange({"type": "auth/current_user", "id": 2}) == {"id": 2, "type": "result", "success": False, "error": id_reuse}
    assert await exchange({"type": "auth/current_user", "id": 1}) == {"id": 1, "type": "result", "success": False, "error": id_reuse}
    reply = await exchange({"type": "auth/current_user", "id": 7})
    assert reply["id"] == 7 and reply["success"] is True


async def test_unknown_command_gets_error_and_connection_stays_open(connect: Any, auth: AuthManager, owner: User) -> None:
    session = await connect.user(auth, owner)
    assert await session.error("no/such_command") == {"code": "unknown_command", "message": "Unknown command."}
    assert (await session.result("auth/current_user"))["id"] == owner.id


@pytest.mark.parametrize(
    ("message", "reply_id"),
    [
        ({"type": "auth/current_user"}, 0),
        ({"id": "one", "type": "auth/current_user"}, 0),
        # JSON true is not an integer id, though Python counts bool as int: never echoed back.
        ({"id": True, "type": "auth/current_user"}, 0),
        ({"id": 5}, 5),
        ("hello", 0),
    ],
    ids=["no-id", "id-not-int", "id-true", "no-type", "not-an-object"],
)
async def test_malformed_command_message_gets_invalid_format(
    connect: Any, auth: AuthManager, owner: User, message: Any, reply_id: int
) -> None:
    session = await connect.user(auth, owner)
    await session.ws.send_json(message)
    reply = await session.receive()
    assert reply["id"] == reply_id and reply["success"] is False
    assert reply["error"]["code"] == "invalid_format"
    assert reply["error"]["message"].startswith("Message incorrectly formatted: ")
    session.last_id = 100
    assert (await session.result("auth/current_user"))["id"] == owner.id


async def test_command_schema_mismatch_gets_invalid_format(connect: Any, auth: AuthManager, owner: User) -> None:
    session = await connect.user(auth, owner)
    error = await session.error("auth/sign_path")
    assert error["code"] == "invalid_format"
    assert error["message"].startswith("Message format incorrect: ")
    assert "path" in error["message"]


async def test_invalid_json_command_closes_connection(connect: Any, auth: AuthManager, owner: User) -> None:
    session = await connect.user(auth, owner)
    await session.ws.send_str("{not json")
    await session.closed_within(1.0)


async def test_flood_is_rate_limited_and_other_clients_stay_served(
    connect: Any, auth: AuthManager, owner: User, bob: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(websocket_api, "RATE_BURST", 10.0)
    monkeypatch.setattr(websocket_api, "RATE_PER_SECOND", 20.0)
    flooder = await connect.user(auth, owner)
    other = await connect.user(auth, bob)
    count = 200
    start = time.monotonic()
    for msg_id in range(1, count + 1):
        await flooder.ws.send_json({"id": msg_id, "type": "auth/current_user"})
    elapsed = time.monotonic() - start
    # Another client is answered while the flood is being processed.
    other_start = time.monotonic()
    assert (await other.result("auth/current_user"))["id"] == bob.id
    assert time.monotonic() - other_start < 1.0
    replies = [await flooder.receive() for _ in range(count)]
    elapsed = time.monotonic() - start
    assert sorted(r["id"] for r in replies) == list(range(1, count + 1))
    limited = [r for r in replies if not r["success"]]
    assert all(r["error"] == {"code": "rate_limited", "message": "Too many messages, slow down"} for r in limited)
    served = count - len(limited)
    assert 10 <= served <= 10 + 20 * elapsed + 1
    # The allowance refills with time: the same connection is served again.
    await asyncio.sleep(0.2)
    flooder.last_id = count
    assert (await flooder.result("auth/current_user"))["id"] == owner.id


# ---- plugin commands ----------------------------------------------------------------------------


def _echo(conn: Any, msg: dict[str, Any]) -> None:
    """A synchronous plugin command."""
    conn.send_result(msg["id"], {"echo": msg["text"], "user": conn.user.name})


async def _fail_value(conn: Any, msg: dict[str, Any]) -> None:
    raise ValueError("secret detail")


async def _fail_timeout(conn: Any, msg: dict[str, Any]) -> None:
    raise TimeoutError


async def _fail_unauthorized(conn: Any, msg: dict[str, Any]) -> None:
    raise websocket.Unauthorized()


async def _fail_command(conn: Any, msg: dict[str, Any]) -> None:
    raise websocket.CommandError("my_code", "My message")


class CommandPlugin:
    """A plugin that adds websocket commands through the hook."""

    @hookimpl
    def opp_auth_register_websocket_commands(self, register: Any) -> None:
        """Register echo and failing commands."""
        register(_echo, {vol.Required("type"): "x/echo", vol.Required("text"): str})
        register(_fail_value, {vol.Required("type"): "x/value_error"})
        register(_fail_timeout, {vol.Required("type"): "x/timeout"})
        register(_fail_unauthorized, {vol.Required("type"): "x/unauthorized"})
        register(_fail_command, {vol.Required("type"): "x/command_error"})


@pytest.fixture
async def plugin_connect(opp_auth_factory: Any, opp_auth_client: Any, ws_connector: Any) -> tuple[AuthManager, Any]:
    """A server whose manager has CommandPlugin, and a connector to it."""
    auth = await opp_auth_factory(providers=PROVIDERS, mfa_modules=[], plugins=[("x", CommandPlugin())])
    return auth, ws_connector(await opp_auth_client(auth))


async def test_plugin_registers_command_through_hook(plugin_connect: tuple[AuthManager, Any]) -> None:
    auth, connector = plugin_connect
    user = await auth.users.async_create_user("Pat", [UserMeta.GROUP_USER])
    session = await connector.user(auth, user)
    assert await session.result("x/echo", text="hi") == {"echo": "hi", "user": "Pat"}
    error = await session.error("x/echo", text=3)
    assert error["code"] == "invalid_format"


@pytest.mark.parametrize(
    ("command", "error"),
    [
        ("x/value_error", {"code": "unknown_error", "message": "Unknown error"}),
        ("x/timeout", {"code": "timeout", "message": "Timeout"}),
        ("x/unauthorized", {"code": "unauthorized", "message": "Unauthorized"}),
        ("x/command_error", {"code": "my_code", "message": "My message"}),
    ],
)
async def test_handler_failure_maps_to_error_reply(
    plugin_connect: tuple[AuthManager, Any], command: str, error: dict[str, str]
) -> None:
    auth, connector = plugin_connect
    user = await auth.users.async_create_user("Pat", [UserMeta.GROUP_USER])
    session = await connector.user(auth, user)
    assert await session.error(command) == error
    assert (await session.result("x/echo", text="still here"))["echo"] == "still here"


def test_registry_refuses_duplicate_command() -> None:
    registry = websocket_api.CommandRegistry()
    registry.register(_echo, {vol.Required("type"): "x/dup"})
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(_fail_value, {vol.Required("type"): "x/dup"})


# ---- auth/current_user, long-lived tokens, refresh tokens -----------------------------------------


async def test_current_user_of_owner(connect: Any, auth: AuthManager, owner: User) -> None:
    session = await connect.user(auth, owner)
    assert await session.result("auth/current_user") == {
        "id": owner.id,
        "name": "Paulus",
        "is_owner": True,
        "is_admin": True,
        "credentials": [],
        "mfa_modules": [{"id": "insecure_example", "name": MFA_NAME, "enabled": False}],
    }


async def test_long_lived_access_token_works_as_bearer(
    connect: Any, client: OppAuthClient, auth: AuthManager, bob: User
) -> None:
    session = await connect.user(auth, bob)
    token = await session.result("auth/long_lived_access_token", lifespan=3, client_name="CLI", client_icon="mdi:console")
    assert isinstance(token, str)
    assert await api_status(client, bearer=token) == 200
    claims = jwt_claims(token)
    assert claims["exp"] - claims["iat"] == 3 * 86400
    (llat,) = [t for t in bob.refresh_tokens.values() if t.token_type == "long_lived_access_token"]
    assert claims["iss"] == llat.id
    assert (llat.client_id, llat.client_name, llat.client_icon) == (None, "CLI", "mdi:console")


async def test_long_lived_access_token_duplicate_name_is_named_error(connect: Any, auth: AuthManager, bob: User) -> None:
    session = await connect.user(auth, bob)
    await session.result("auth/long_lived_access_token", lifespan=1, client_name="CLI")
    assert await session.error("auth/long_lived_access_token", lifespan=1, client_name="CLI") == {
        "code": "invalid_info",
        "message": "CLI already exists",
    }


async def test_long_lived_access_token_needs_positive_lifespan(connect: Any, auth: AuthManager, bob: User) -> None:
    session = await connect.user(auth, bob)
    assert (await session.error("auth/long_lived_access_token", lifespan=0, client_name="CLI"))["code"] == "invalid_format"


async def test_refresh_tokens_lists_only_callers_tokens(connect: Any, auth: AuthManager, bob: User, owner: User) -> None:
    current, token = await mint(auth, bob)
    other, _ = await mint(auth, bob)
    await mint(auth, owner)
    session = await connect.auth(token)
    listed = {t["id"]: t for t in await session.result("auth/refresh_tokens")}
    assert set(listed) == {current.id, other.id}
    assert listed[current.id]["is_current"] is True and listed[other.id]["is_current"] is False
    entry = listed[other.id]
    assert set(entry) == {
        "id", "client_id", "client_name", "client_icon", "type", "created_at", "is_current", "last_used_at", "last_used_ip",
        "expire_at", "auth_provider_type",
    }
    assert entry["client_id"] == "https://example.com/app" and entry["type"] == "normal"
    assert datetime.fromisoformat(entry["created_at"]) == other.created_at


async def test_delete_refresh_token_closes_sessions_of_that_token(
    connect: Any, client: OppAuthClient, auth: AuthManager, bob: User
) -> None:
    _, token = await mint(auth, bob)
    victim, victim_token = await mint(auth, bob)
    session = await connect.auth(token)
    doomed = await connect.auth(victim_token)
    assert await session.result("auth/delete_refresh_token", refresh_token_id=victim.id) == {}
    assert await doomed.closed_within(1.0) < 1.0
    assert victim.id not in bob.refresh_tokens
    assert await api_status(client, bearer=victim_token) == 401
    assert (await session.result("auth/current_user"))["id"] == bob.id


async def test_delete_current_refresh_token_answers_then_closes(connect: Any, auth: AuthManager, bob: User) -> None:
    current, token = await mint(auth, bob)
    session = await connect.auth(token)
    assert await session.result("auth/delete_refresh_token", refresh_token_id=current.id) == {}
    await session.closed_within(1.0)


async def test_delete_unknown_refresh_token(connect: Any, auth: AuthManager, bob: User) -> None:
    session = await connect.user(auth, bob)
    assert await session.error("auth/delete_refresh_token", refresh_token_id="nope") == {
        "code": "invalid_token_id",
        "message": "Received invalid token",
    }


async def test_cannot_delete_another_users_refresh_token(connect: Any, auth: AuthManager, bob: User, owner: User) -> None:
    owners_token, _ = await mint(auth, owner)
    session = await connect.user(auth, bob)
    assert (await session.error("auth/delete_refresh_token", refresh_token_id=owners_token.id))["code"] == "invalid_token_id"
    assert owners_token.id in owner.refresh_tokens


async def test_revoking_through_token_endpoint_closes_websocket(
    connect: Any, client: OppAuthClient
) -> None:
    tokens = await client.login.tokens(EXAMPLE, ALICE_LOGIN)
    session = await connect.auth(tokens["access_token"])
    async with client.request("POST", "/auth/token", data={"token": tokens["refresh_token"], "action": "revoke"}) as resp:
        assert resp.status == 200
    await session.closed_within(1.0)


async def test_delete_all_refresh_tokens_of_one_type(connect: Any, auth: AuthManager, bob: User) -> None:
    current, token = await mint(auth, bob)
    other, _ = await mint(auth, bob)
    session = await connect.auth(token)
    await session.result("auth/long_lived_access_token", lifespan=1, client_name="CLI")
    assert await session.result("auth/delete_all_refresh_tokens", token_type="long_lived_access_token") == {}
    assert set(bob.refresh_tokens) == {current.id, other.id}
    assert (await session.result("auth/current_user"))["id"] == bob.id


async def test_delete_all_refresh_tokens_can_keep_current(connect: Any, auth: AuthManager, bob: User) -> None:
    current, token = await mint(auth, bob)
    await mint(auth, bob)
    session = await connect.auth(token)
    assert await session.result("auth/delete_all_refresh_tokens", delete_current_token=False) == {}
    assert set(bob.refresh_tokens) == {current.id}
    assert (await session.result("auth/current_user"))["id"] == bob.id


async def test_delete_all_refresh_tokens_ends_own_session(connect: Any, auth: AuthManager, bob: User) -> None:
    _, token = await mint(auth, bob)
    await mint(auth, bob)
    session = await connect.auth(token)
    assert await session.result("auth/delete_all_refresh_tokens") == {}
    assert bob.refresh_tokens == {}
    await session.closed_within(1.0)


# ---- signed paths ------------------------------------------------------------------------------


async def test_signed_path_allows_get_without_bearer(connect: Any, client: OppAuthClient, auth: AuthManager, bob: User) -> None:
    session = await connect.user(auth, bob)
    assert await api_status(client) == 401
    signed = (await session.result("auth/sign_path", path="/api/"))["path"]
    assert signed.startswith("/api/?authSig=")
    claims = jwt_claims(signed.split("authSig=", 1)[1])
    assert claims["exp"] - claims["iat"] == 30
    async with client.request("GET", signed) as resp:
        assert resp.status == 200
        assert await resp.json() == {"message": "API running."}


async def test_signature_for_another_path_is_refused(connect: Any, client: OppAuthClient, auth: AuthManager, bob: User) -> None:
    session = await connect.user(auth, bob)
    signed = (await session.result("auth/sign_path", path="/api/other", expires=60))["path"]
    signature = signed.split("authSig=", 1)[1]
    assert await api_status(client, f"/api/?authSig={signature}") == 401


async def test_signed_query_is_bound_to_the_signature(connect: Any, client: OppAuthClient, auth: AuthManager, bob: User) -> None:
    """G5: the query string is part of what is signed; adding or changing a parameter breaks it."""
    session = await connect.user(auth, bob)
    signed = (await session.result("auth/sign_path", path="/api/?size=large&b=2"))["path"]
    assert signed.startswith("/api/?size=large&b=2&authSig=")
    assert await api_status(client, signed) == 200
    assert await api_status(client, signed + "&extra=1") == 401
    assert await api_status(client, signed.replace("size=large", "size=small")) == 401


async def test_ping_gets_pong(connect: Any, auth: AuthManager, bob: User) -> None:
    """Keep-alive pings from home-assistant-js-websocket get a pong with the same id."""
    session = await connect.user(auth, bob)
    msg_id = await session.send("ping")
    assert await session.receive() == {"id": msg_id, "type": "pong"}


async def test_expired_signature_is_refused(client: OppAuthClient, auth: AuthManager, bob: User) -> None:
    refresh_token, _ = await mint(auth, bob)
    # auth/sign_path accepts at least one second; signing in the past via the same method avoids sleeping.
    signed = auth.access_tokens.sign_path("/api/", timedelta(seconds=-10), refresh_token.id)
    assert await api_status(client, signed) == 401


async def test_signature_of_deactivated_user_is_refused(connect: Any, client: OppAuthClient, auth: AuthManager, bob: User) -> None:
    session = await connect.user(auth, bob)
    signed = (await session.result("auth/sign_path", path="/api/"))["path"]
    await auth.users.async_deactivate_user(bob)
    assert await api_status(client, signed) == 401


async def test_signature_of_deleted_refresh_token_is_refused(client: OppAuthClient, connect: Any, auth: AuthManager, bob: User) -> None:
    refresh_token, token = await mint(auth, bob)
    session = await connect.auth(token)
    signed = (await session.result("auth/sign_path", path="/api/"))["path"]
    await auth.refresh_tokens.async_remove_refresh_token(refresh_token)
    assert await api_status(client, signed) == 401


async def test_sign_path_needs_absolute_path(connect: Any, auth: AuthManager, bob: User) -> None:
    session = await connect.user(auth, bob)
    assert (await session.error("auth/sign_path", path="api/"))["code"] == "invalid_format"


# ---- MFA setup ------------------------------------------------------------------------------------


async def _start_setup(session: Any) -> dict[str, Any]:
    """Start enrolment in the insecure_example module; the form."""
    form = await session.result("auth/setup_mfa", mfa_module_id="insecure_example")
    assert form["type"] == "form" and form["handler"] == "insecure_example" and form["step_id"] == "init"
    return dict(form)


async def test_mfa_setup_and_depose_end_to_end(connect: Any, auth: AuthManager, bob: User) -> None:
    session = await connect.user(auth, bob)
    form = await _start_setup(session)
    assert [(f["name"], f["type"]) for f in form["data_schema"]] == [("pin", "string")]
    entry = await session.result("auth/setup_mfa", flow_id=form["flow_id"], user_input={"pin": "1234"})
    assert entry["type"] == "create_entry"
    assert entry["flow_id"] == form["flow_id"] and entry["handler"] == "insecure_example"
    assert entry["title"] == MFA_NAME and entry["data"] == {"result": "1234"}
    me = await session.result("auth/current_user")
    assert me["mfa_modules"] == [{"id": "insecure_example", "name": MFA_NAME, "enabled": True}]
    assert await session.result("auth/depose_mfa", mfa_module_id="insecure_example") == "done"
    me = await session.result("auth/current_user")
    assert me["mfa_modules"] == [{"id": "insecure_example", "name": MFA_NAME, "enabled": False}]


async def test_setup_mfa_unknown_module(connect: Any, auth: AuthManager, bob: User) -> None:
    session = await connect.user(auth, bob)
    assert await session.error("auth/setup_mfa", mfa_module_id="nope") == {
        "code": "no_module",
        "message": "MFA module nope is not found",
    }


async def test_setup_flow_belongs_to_its_starter(connect: Any, auth: AuthManager, bob: User, owner: User) -> None:
    starter = await connect.user(auth, bob)
    intruder = await connect.user(auth, owner)
    form = await _start_setup(starter)
    error = await intruder.error("auth/setup_mfa", flow_id=form["flow_id"], user_input={"pin": "6666"})
    assert error == {"code": "invalid_flow_id", "message": "Invalid flow specified"}
    assert await auth.users.async_get_enabled_mfa(owner) == {}
    entry = await starter.result("auth/setup_mfa", flow_id=form["flow_id"], user_input={"pin": "1234"})
    assert entry["type"] == "create_entry"


async def test_setup_mfa_unknown_flow_gets_reply(connect: Any, auth: AuthManager, bob: User) -> None:
    session = await connect.user(auth, bob)
    error = await session.error("auth/setup_mfa", flow_id="no-such-flow", user_input={"pin": "1"})
    assert error == {"code": "invalid_flow_id", "message": "Invalid flow specified"}


async def test_setup_mfa_bad_input_gets_reply(connect: Any, auth: AuthManager, bob: User) -> None:
    session = await connect.user(auth, bob)
    form = await _start_setup(session)
    error = await session.error("auth/setup_mfa", flow_id=form["flow_id"], user_input={"pin": "1", "extra": 2})
    assert error["code"] == "invalid_format"
    assert await auth.users.async_get_enabled_mfa(bob) == {}


@pytest.mark.parametrize(
    "fields",
    [{}, {"mfa_module_id": "insecure_example", "flow_id": "x"}],
    ids=["neither", "both"],
)
async def test_setup_mfa_needs_exactly_module_or_flow(connect: Any, auth: AuthManager, bob: User, fields: dict[str, Any]) -> None:
    session = await connect.user(auth, bob)
    assert (await session.error("auth/setup_mfa", **fields))["code"] == "invalid_format"


@pytest.mark.parametrize(
    ("command", "fields"),
    [("auth/setup_mfa", {"mfa_module_id": "insecure_example"}), ("auth/depose_mfa", {"mfa_module_id": "insecure_example"})],
)
async def test_system_user_cannot_manage_mfa(connect: Any, auth: AuthManager, command: str, fields: dict[str, Any]) -> None:
    system_user = await auth.users.async_create_system_user("Integration")
    session = await connect.user(auth, system_user)
    assert await session.error(command, **fields) == {"code": "not_system_user", "message": "Not allowed as system user"}


async def test_depose_unknown_module_fails(connect: Any, auth: AuthManager, bob: User) -> None:
    session = await connect.user(auth, bob)
    error = await session.error("auth/depose_mfa", mfa_module_id="nope")
    assert error["code"] == "disable_failed"
    assert error["message"].startswith("Cannot disable MFA Module nope: ")


# ---- profile settings (frontend/*_user_data) --------------------------------------------------------


async def test_user_data_round_trip(connect: Any, auth: AuthManager, bob: User) -> None:
    session = await connect.user(auth, bob)
    assert await session.result("frontend/set_user_data", key="language", value="de") is None
    assert await session.result("frontend/set_user_data", key="theme", value={"dark": True}) is None
    assert await session.result("frontend/get_user_data", key="language") == {"value": "de"}
    assert await session.result("frontend/get_user_data") == {"value": {"language": "de", "theme": {"dark": True}}}


async def test_user_data_is_per_user(connect: Any, auth: AuthManager, bob: User, owner: User) -> None:
    bobs = await connect.user(auth, bob)
    owners = await connect.user(auth, owner)
    await bobs.result("frontend/set_user_data", key="language", value="de")
    assert await owners.result("frontend/get_user_data", key="language") == {"value": None}
    assert await owners.result("frontend/get_user_data") == {"value": {}}


@pytest.mark.storage_types("json")  # reads the .storage files
async def test_user_data_is_stored_on_server(connect: Any, auth: AuthManager, bob: User, config_dir: Any) -> None:
    session = await connect.user(auth, bob)
    await session.result("frontend/set_user_data", key="language", value="nl")
    stored = json.loads((config_dir / ".storage" / "opp_auth.user_data").read_text())
    assert stored["data"]["users"][bob.id] == {"language": "nl"}


async def test_user_data_null_value_removes_key(connect: Any, auth: AuthManager, bob: User) -> None:
    session = await connect.user(auth, bob)
    await session.result("frontend/set_user_data", key="language", value="de")
    await session.result("frontend/set_user_data", key="language", value=None)
    assert await session.result("frontend/get_user_data") == {"value": {}}


async def test_user_data_refuses_oversized_value(connect: Any, auth: AuthManager, bob: User) -> None:
    session = await connect.user(auth, bob)
    error = await session.error("frontend/set_user_data", key="blob", value="x" * 70000)
    assert error["code"] == "invalid_format"
    assert await session.result("frontend/get_user_data", key="blob") == {"value": None}


async def test_handler_exception_is_logged_with_traceback(
    plugin_connect: tuple[AuthManager, Any], caplog: pytest.LogCaptureFixture
) -> None:
    auth, connector = plugin_connect
    user = await auth.users.async_create_user("Pat", [UserMeta.GROUP_USER])
    session = await connector.user(auth, user)
    with caplog.at_level(logging.ERROR, logger="opp_auth.http.websocket_api"):
        await session.error("x/value_error")
    (record,) = [r for r in caplog.records if r.name == "opp_auth.http.websocket_api"]
    assert record.exc_info is not None and "secret detail" in str(record.exc_info[1])


async def test_refresh_token_set_expiry_switches_one_token(connect: Any, auth: AuthManager, bob: User, owner: User) -> None:
    """auth/refresh_token_set_expiry turns idle expiry off and on for the caller's own token only."""
    current, token = await mint(auth, bob)
    others, _ = await mint(auth, owner)
    session = await connect.auth(token)
    assert await session.result("auth/refresh_token_set_expiry", refresh_token_id=current.id, enable_expiry=False) == {}
    assert current.expire_at is None
    listed = {t["id"]: t for t in await session.result("auth/refresh_tokens")}
    assert listed[current.id]["expire_at"] is None
    assert await session.result("auth/refresh_token_set_expiry", refresh_token_id=current.id, enable_expiry=True) == {}
    assert current.expire_at is not None
    error = await session.error("auth/refresh_token_set_expiry", refresh_token_id=others.id, enable_expiry=False)
    assert error == {"code": "invalid_token_id", "message": "Received invalid token"}


def test_token_list_text_is_what_send_result_would_send() -> None:
    """auth/refresh_tokens writes its JSON directly: the same text as encoding the dicts of _token_info.

    Odd values an old file can hold (a number as client name, a list as icon, an integer or
    non-finite expire_at, non-ASCII and line separators) are encoded as the generic path does.
    """
    import json
    import math
    from datetime import UTC, datetime, timedelta

    from opp_auth.http.websocket_commands import _token_info, token_list_json
    from opp_auth.models import Credentials, RefreshToken, User

    user = User(name="u", is_active=True)
    cred = Credentials("openpeerpower", None, {"username": "u"})
    odd: list[tuple[Any, Any, Any, Any, Any, Any, Any]] = [
        ("https://example.com/app", None, None, None, None, None, None),
        (5, 'é\u2028"x', None, 1.5, None, None, cred),
        ("c", 7, "icon", math.inf, datetime(2026, 1, 1, tzinfo=UTC), "10.0.0.1", cred),
        (None, None, ["a"], 12, None, "::1", None),
        ("c", "n", None, math.nan, datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC), None, cred),
    ]
    tokens = []
    for client_id, name, icon, expire_at, used_at, used_ip, credential in odd:
        token = RefreshToken(user, "x", timedelta(minutes=30), credential=credential, expire_at=expire_at)
        token.client_id, token.client_name, token.client_icon = client_id, name, icon
        token.last_used_at, token.last_used_ip = used_at, used_ip
        tokens.append(token)
    current = tokens[2].id

    def expire(token: RefreshToken) -> Any:
        return token.expire_at

    expected = json.dumps([_token_info(t, current, t.expire_at) for t in tokens], default=str, separators=(",", ":"))
    assert token_list_json(tokens, current, expire) == expected
    assert token_list_json([], current, expire) == "[]"
