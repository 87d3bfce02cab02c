"""The local provider's websocket commands config/auth_provider/openpeerpower/* (SPEC 5.6, 5.7; G6, G9, G10)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import opp_auth_local
import pytest
from opp_auth_local import STORAGE_KEY, LocalAuthProvider

from opp_auth import AuthProvider, InvalidAuthError, User, UserMeta, hookimpl
from opp_auth.manager import AuthManager
from opp_auth.testing import CLIENT_ID, OppAuthClient, async_stored_document

PREFIX = "config/auth_provider/openpeerpower/"
OWNER_PW = "owner-pass-1"
BOB_PW = "bob-pass-12"
ORPHAN_PW = "orphan-pass"
NEW_PW = "brand-new-pass"
REPLY_TIMEOUT = 5.0
CLOSED = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)


def write_logins(config_dir: Path, users: list[tuple[str, str]]) -> None:
    """Write .storage/auth_provider.openpeerpower (SPEC 1.7) with cheap cost-4 hashes."""
    entries = [
        {"username": name, "password": base64.b64encode(bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4))).decode()}
        for name, pw in users
    ]
    storage = config_dir / ".storage"
    storage.mkdir(exist_ok=True)
    (storage / STORAGE_KEY).write_text(json.dumps({"version": 1, "key": STORAGE_KEY, "data": {"users": entries}}))


async def stored_usernames(config_dir: Path) -> list[str]:
    """Usernames a restart reads (the logins file with its journal)."""
    data = await async_stored_document(config_dir, STORAGE_KEY)
    return [u["username"] for u in data["users"]]


@pytest.fixture(autouse=True)
def cheap_new_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """New passwords are hashed at cost 4: these tests are about the commands, not bcrypt's cost."""
    monkeypatch.setattr(opp_auth_local, "BCRYPT_ROUNDS", 4)


class Session:
    """An authenticated websocket numbering its commands 1, 2, 3, ..."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Wrap a socket that passed the auth phase."""
        self.ws = ws
        self.last_id = 0

    async def call(self, command: str, **fields: Any) -> dict[str, Any]:
        """Send a command; its result message."""
        self.last_id += 1
        await self.ws.send_json({"id": self.last_id, "type": command, **fields})
        reply = await self.ws.receive_json(timeout=REPLY_TIMEOUT)
        assert reply["id"] == self.last_id and reply["type"] == "result", reply
        return dict(reply)

    async def result(self, command: str, **fields: Any) -> Any:
        """The result of a command that must succeed."""
        reply = await self.call(command, **fields)
        assert reply["success"] is True, reply
        return reply["result"]

    async def error(self, command: str, **fields: Any) -> dict[str, Any]:
        """The error of a command that must fail."""
        reply = await self.call(command, **fields)
        assert reply["success"] is False, reply
        return dict(reply["error"])

    async def closed_within(self, seconds: float) -> float:
        """Assert the server closes the socket within seconds; the delay."""
        start = time.monotonic()
        msg = await self.ws.receive(timeout=seconds)
        assert msg.type in CLOSED, msg
        return time.monotonic() - start


class Env:
    """A server with the local provider, its owner "paulus" and user "bob" (both with logins)."""

    def __init__(self, auth: AuthManager, client: OppAuthClient, owner: User, bob: User) -> None:
        """Keep the pieces."""
        self.auth = auth
        self.client = client
        self.owner = owner
        self.bob = bob
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []

    @property
    def provider(self) -> LocalAuthProvider:
        """The local provider."""
        provider = self.auth.registry.get_auth_provider("openpeerpower", None)
        assert isinstance(provider, LocalAuthProvider)
        return provider

    async def token(self, user: User) -> tuple[Any, str]:
        """A new refresh token of user and an access token from it."""
        refresh_token = await self.auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
        return refresh_token, await self.auth.access_tokens.async_create_access_token(refresh_token)

    async def connect(self, access_token: str) -> Session:
        """A websocket past the auth phase."""
        ws = await self.client.session.ws_connect(self.client.url("/api/websocket"))
        self.sockets.append(ws)
        assert (await ws.receive_json(timeout=REPLY_TIMEOUT))["type"] == "auth_required"
        await ws.send_json({"type": "auth", "access_token": access_token})
        assert (await ws.receive_json(timeout=REPLY_TIMEOUT))["type"] == "auth_ok"
        return Session(ws)

    async def session(self, user: User) -> Session:
        """A websocket of user on a fresh token."""
        return await self.connect((await self.token(user))[1])

    async def password_ok(self, username: str, password: str) -> bool:
        """Whether the provider accepts the password."""
        try:
            await self.provider.async_validate_login(username, password)
        except InvalidAuthError:
            return False
        return True

    async def api_status(self, bearer: str) -> int:
        """Status of GET /api/ with a bearer token."""
        async with self.client.request("GET", "/api/", headers={"Authorization": f"Bearer {bearer}"}) as resp:
            return resp.status


async def make_env(factory: Any, client_factory: Any, config_dir: Path, **kwargs: Any) -> Env:
    """Pre-write logins, build the manager and server, link owner and bob to their logins."""
    write_logins(config_dir, [("paulus", OWNER_PW), ("bob", BOB_PW), ("orphan", ORPHAN_PW)])
    auth = await factory(mfa_modules=[], **kwargs)
    client = await client_factory(auth)
    provider = auth.registry.get_auth_provider("openpeerpower", None)
    assert provider is not None
    owner = await auth.users.async_create_user("Paulus", [UserMeta.GROUP_ADMIN], is_owner=True)
    await auth.users.async_link_user(owner, await provider.async_get_or_create_credentials({"username": "paulus"}))
    bob = await auth.users.async_create_user("Bob", [UserMeta.GROUP_USER])
    await auth.users.async_link_user(bob, await provider.async_get_or_create_credentials({"username": "bob"}))
    return Env(auth, client, owner, bob)


@pytest.fixture
async def env(opp_auth_factory: Any, opp_auth_client: Any, config_dir: Path) -> AsyncIterator[Env]:
    """The default environment: only the local provider."""
    made = await make_env(opp_auth_factory, opp_auth_client, config_dir, providers=[{"type": "openpeerpower"}])
    yield made
    for ws in made.sockets:
        await ws.close()


@pytest.fixture
async def admin(env: Env) -> User:
    """An administrator who is not the owner (no login)."""
    return await env.auth.users.async_create_user("Ada", [UserMeta.GROUP_ADMIN])


# ---- change_password (any user, own password) ----------------------------------------------------


async def test_change_password(env: Env) -> None:
    session = await env.session(env.bob)
    assert await session.result(PREFIX + "change_password", current_password=BOB_PW, new_password=NEW_PW) is None
    assert await env.password_ok("bob", NEW_PW)
    assert not await env.password_ok("bob", BOB_PW)


async def test_change_password_revokes_other_sessions(env: Env) -> None:
    current, token = await env.token(env.bob)
    other, other_token = await env.token(env.bob)
    session = await env.connect(token)
    other_session = await env.connect(other_token)
    await session.result(PREFIX + "change_password", current_password=BOB_PW, new_password=NEW_PW)
    assert await other_session.closed_within(1.0) < 1.0
    assert set(env.bob.refresh_tokens) == {current.id}
    assert await env.api_status(other_token) == 401
    assert (await session.result("auth/current_user"))["id"] == env.bob.id


async def test_wrong_current_password(env: Env) -> None:
    session = await env.session(env.bob)
    assert await session.error(PREFIX + "change_password", current_password="wrong-pass", new_password=NEW_PW) == {
        "code": "invalid_current_password",
        "message": "Invalid current password",
    }
    assert await env.password_ok("bob", BOB_PW)


async def test_wrong_current_password_counts_as_failed_login(
    opp_auth_factory: Any, opp_auth_client: Any, config_dir: Path
) -> None:
    env = await make_env(
        opp_auth_factory,
        opp_auth_client,
        config_dir,
        providers=[{"type": "openpeerpower"}],
        http={"login_attempts_threshold": 1},
    )
    _, token = await env.token(env.bob)
    session = await env.connect(token)
    try:
        error = await session.error(PREFIX + "change_password", current_password="wrong-pass", new_password=NEW_PW)
        assert error["code"] == "invalid_current_password"
        # Failures are processed in the background: the ban follows shortly.
        for _ in range(50):
            if await env.api_status(token) == 403:
                break
            await asyncio.sleep(0.02)
        assert await env.api_status(token) == 403
    finally:
        await session.ws.close()


async def test_change_password_too_short(env: Env) -> None:
    session = await env.session(env.bob)
    assert await session.error(PREFIX + "change_password", current_password=BOB_PW, new_password="short") == {
        "code": "invalid_password",
        "message": "Passwords must be at least 8 characters long.",
    }
    assert await env.password_ok("bob", BOB_PW)


@pytest.mark.parametrize("new_password", ["bob", "BOB", " Bob "])
async def test_change_password_to_username_refused(
    opp_auth_factory: Any, opp_auth_client: Any, config_dir: Path, new_password: str
) -> None:
    # A short minimum, so the username rule is what refuses "bob".
    env = await make_env(
        opp_auth_factory, opp_auth_client, config_dir, providers=[{"type": "openpeerpower", "min_password_length": 3}]
    )
    session = await env.session(env.bob)
    try:
        error = await session.error(PREFIX + "change_password", current_password=BOB_PW, new_password=new_password)
        assert error == {"code": "invalid_password", "message": "The password must not be the username."}
        assert await env.password_ok("bob", BOB_PW)
    finally:
        await session.ws.close()


async def test_min_password_length_is_configurable(
    opp_auth_factory: Any, opp_auth_client: Any, config_dir: Path
) -> None:
    env = await make_env(
        opp_auth_factory, opp_auth_client, config_dir, providers=[{"type": "openpeerpower", "min_password_length": 12}]
    )
    session = await env.session(env.bob)
    try:
        error = await session.error(PREFIX + "change_password", current_password=BOB_PW, new_password="elevenchars")
        assert error == {"code": "invalid_password", "message": "Passwords must be at least 12 characters long."}
        assert (
            await session.result(PREFIX + "change_password", current_password=BOB_PW, new_password="twelve-chars")
            is None
        )
    finally:
        await session.ws.close()


async def test_change_password_without_local_login(env: Env) -> None:
    user = await env.auth.users.async_create_user("Nolo", [UserMeta.GROUP_USER])
    session = await env.session(user)
    assert await session.error(PREFIX + "change_password", current_password="x", new_password=NEW_PW) == {
        "code": "credentials_not_found",
        "message": "Credentials not found",
    }


class _OtherProvider(AuthProvider):
    """Some provider that is not the local one (this plugin's tests run with only the core and it)."""

    TYPE = "other"


class _OtherPlugin:
    """Registers _OtherProvider."""

    @hookimpl
    def opp_auth_register_auth_providers(self, register: Any) -> None:
        register(_OtherProvider)


async def test_change_password_without_local_provider(opp_auth_factory: Any, opp_auth_client: Any) -> None:
    auth = await opp_auth_factory(providers=[{"type": "other"}], mfa_modules=[], plugins=[("other", _OtherPlugin())])
    client = await opp_auth_client(auth)
    env = Env(auth, client, await auth.users.async_create_user("Paulus", [UserMeta.GROUP_ADMIN], is_owner=True), None)  # type: ignore[arg-type]
    session = await env.session(env.owner)
    try:
        error = await session.error(PREFIX + "change_password", current_password="x", new_password=NEW_PW)
        assert error["code"] == "not_configured"
    finally:
        await session.ws.close()


# ---- create / delete (administrators) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "fields"),
    [
        ("create", {"user_id": "?", "username": "eve", "password": NEW_PW}),
        ("delete", {"username": "bob"}),
        ("admin_change_password", {"user_id": "?", "password": NEW_PW}),
    ],
)
async def test_non_admin_is_unauthorized(env: Env, command: str, fields: dict[str, Any]) -> None:
    session = await env.session(env.bob)
    fields = {k: (env.bob.id if v == "?" else v) for k, v in fields.items()}
    assert await session.error(PREFIX + command, **fields) == {"code": "unauthorized", "message": "Unauthorized"}
    assert (await stored_usernames(Path(env.auth.config_dir))) == ["paulus", "bob", "orphan"]
    assert await env.password_ok("bob", BOB_PW)


async def test_create_login(env: Env, admin: User) -> None:
    eve = await env.auth.users.async_create_user("Eve", [UserMeta.GROUP_USER])
    session = await env.session(admin)
    assert await session.result(PREFIX + "create", user_id=eve.id, username="Eve", password=NEW_PW) is None
    assert await env.password_ok("eve", NEW_PW)
    assert "eve" in (await stored_usernames(Path(env.auth.config_dir)))
    (listed,) = [u for u in await session.result("config/auth/list") if u["id"] == eve.id]
    assert listed["username"] == "eve" and listed["credentials"] == [{"type": "openpeerpower"}]


async def test_create_for_unknown_user(env: Env, admin: User) -> None:
    session = await env.session(admin)
    assert await session.error(PREFIX + "create", user_id="nope", username="eve", password=NEW_PW) == {
        "code": "not_found",
        "message": "User not found",
    }


async def test_create_for_system_user(env: Env, admin: User) -> None:
    system_user = await env.auth.users.async_create_system_user("Integration")
    session = await env.session(admin)
    assert await session.error(PREFIX + "create", user_id=system_user.id, username="eve", password=NEW_PW) == {
        "code": "system_generated",
        "message": "Cannot add credentials to a system generated user.",
    }


@pytest.mark.parametrize("username", ["bob", " BOB "])
async def test_create_existing_username(env: Env, admin: User, username: str) -> None:
    eve = await env.auth.users.async_create_user("Eve", [UserMeta.GROUP_USER])
    session = await env.session(admin)
    assert await session.error(PREFIX + "create", user_id=eve.id, username=username, password=NEW_PW) == {
        "code": "username_exists",
        "message": "Username already exists",
    }
    assert eve.credentials == () and await env.password_ok("bob", BOB_PW)


@pytest.mark.parametrize("username", ["eve\n", "e\u202eve", "eve\u2028", "e\u200bve", "\x00eve"], ids=repr)
async def test_create_refuses_usernames_the_login_form_would_refuse(env: Env, admin: User, username: str) -> None:
    """A login that could never log in is not created (issue 11: control, format and separator characters)."""
    eve = await env.auth.users.async_create_user("Eve", [UserMeta.GROUP_USER])
    session = await env.session(admin)
    error = await session.error(PREFIX + "create", user_id=eve.id, username=username, password=NEW_PW)
    assert error["code"] == "invalid_username"
    assert (await stored_usernames(Path(env.auth.config_dir))) == ["paulus", "bob", "orphan"]
    assert eve.credentials == ()


async def test_create_second_username_for_user_refused(env: Env, admin: User) -> None:
    session = await env.session(admin)
    error = await session.error(PREFIX + "create", user_id=env.bob.id, username="robert", password=NEW_PW)
    assert error["code"] == "credentials_exist"
    assert "robert" not in (await stored_usernames(Path(env.auth.config_dir)))


@pytest.mark.parametrize(("password", "reason"), [("short", "at least 8"), ("Eve-the-user", "username")])
async def test_create_with_invalid_password(env: Env, admin: User, password: str, reason: str) -> None:
    eve = await env.auth.users.async_create_user("Eve", [UserMeta.GROUP_USER])
    session = await env.session(admin)
    error = await session.error(PREFIX + "create", user_id=eve.id, username="eve-the-user", password=password)
    assert error["code"] == "invalid_password" and reason in error["message"]
    assert "eve-the-user" not in (await stored_usernames(Path(env.auth.config_dir)))
    assert eve.credentials == ()


async def test_delete_username_with_credentials(env: Env, admin: User) -> None:
    session = await env.session(admin)
    assert await session.result(PREFIX + "delete", username="bob") is None
    assert env.bob.credentials == ()
    assert (await stored_usernames(Path(env.auth.config_dir))) == ["paulus", "orphan"]
    assert not await env.password_ok("bob", BOB_PW)


async def test_delete_username_without_credentials(env: Env, admin: User) -> None:
    session = await env.session(admin)
    assert await session.result(PREFIX + "delete", username="orphan") is None
    assert (await stored_usernames(Path(env.auth.config_dir))) == ["paulus", "bob"]


async def test_delete_unknown_username(env: Env, admin: User) -> None:
    session = await env.session(admin)
    assert await session.error(PREFIX + "delete", username="nobody") == {
        "code": "auth_not_found",
        "message": "Given username was not found.",
    }


async def test_cannot_delete_owners_username(env: Env, admin: User) -> None:
    session = await env.session(admin)
    assert (await session.error(PREFIX + "delete", username="paulus"))["code"] == "cannot_delete_owner"
    assert await env.password_ok("paulus", OWNER_PW)
    assert len(env.owner.credentials) == 1


# ---- admin_change_password (owner only) -------------------------------------------------------------


async def test_owner_changes_users_password_and_ends_their_sessions(env: Env) -> None:
    _, bob_token = await env.token(env.bob)
    bob_session = await env.connect(bob_token)
    session = await env.session(env.owner)
    assert await session.result(PREFIX + "admin_change_password", user_id=env.bob.id, password=NEW_PW) is None
    assert await bob_session.closed_within(1.0) < 1.0
    assert env.bob.refresh_tokens == {}
    assert await env.api_status(bob_token) == 401
    assert await env.password_ok("bob", NEW_PW) and not await env.password_ok("bob", BOB_PW)


async def test_owner_changing_own_password_keeps_current_session(env: Env) -> None:
    current, token = await env.token(env.owner)
    other, _ = await env.token(env.owner)
    session = await env.connect(token)
    await session.result(PREFIX + "admin_change_password", user_id=env.owner.id, password=NEW_PW)
    assert set(env.owner.refresh_tokens) == {current.id}
    assert (await session.result("auth/current_user"))["id"] == env.owner.id


async def test_admin_who_is_not_owner_cannot_change_passwords(env: Env, admin: User) -> None:
    session = await env.session(admin)
    assert await session.error(PREFIX + "admin_change_password", user_id=env.bob.id, password=NEW_PW) == {
        "code": "unauthorized",
        "message": "Unauthorized",
    }
    assert await env.password_ok("bob", BOB_PW)


async def test_admin_change_password_unknown_user(env: Env) -> None:
    session = await env.session(env.owner)
    assert await session.error(PREFIX + "admin_change_password", user_id="nope", password=NEW_PW) == {
        "code": "user_not_found",
        "message": "User not found",
    }


async def test_admin_change_password_user_without_login(env: Env) -> None:
    user = await env.auth.users.async_create_user("Nolo", [UserMeta.GROUP_USER])
    session = await env.session(env.owner)
    assert await session.error(PREFIX + "admin_change_password", user_id=user.id, password=NEW_PW) == {
        "code": "credentials_not_found",
        "message": "Credentials not found",
    }


async def test_admin_change_password_policy(env: Env) -> None:
    _, bob_token = await env.token(env.bob)
    session = await env.session(env.owner)
    assert (await session.error(PREFIX + "admin_change_password", user_id=env.bob.id, password="short"))[
        "code"
    ] == "invalid_password"
    assert await env.password_ok("bob", BOB_PW)
    assert await env.api_status(bob_token) == 200
