"""Passkey management over the real websocket API: the recent-proof rule, enrol, list, rename, remove, admin."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest

from opp_auth.testing import run_login_flow

PROVIDERS = [
    {
        "type": "insecure_example",
        "users": [
            {"username": "mia", "password": "mia-pass", "name": "Mia"},
            {"username": "boss", "password": "boss-pass", "name": "Boss"},
        ],
    }
]
WEBAUTHN = {"type": "webauthn", "rp_id": "opp.example.com"}


class Socket:
    """An authenticated websocket: call(type, **fields) -> (success, result or error)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0

    async def call(self, type_: str, **fields: Any) -> tuple[bool, Any]:
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "type": type_, **fields})
        reply = await self.ws.receive_json()
        assert reply["id"] == self.next_id
        return reply["success"], reply.get("result") if reply["success"] else reply["error"]


@pytest.fixture
async def auth(opp_auth_factory: Any) -> Any:
    """Example provider (with a PIN module) plus webauthn."""
    return await opp_auth_factory(
        providers=PROVIDERS,
        mfa_modules=[WEBAUTHN, {"type": "insecure_example", "data": []}],
    )


async def user_named(auth: Any, username: str, password: str) -> Any:
    """The user behind example credentials."""
    result = await run_login_flow(auth, ("insecure_example", None), [{"username": username, "password": password}])
    return await auth.users.async_get_or_create_user(result["result"])


@pytest.fixture
def connect(auth: Any, opp_auth_client: Any) -> Any:
    """connect(user, age=0): a websocket of a session whose login was age seconds ago (one server for all)."""
    clients: list[Any] = []

    @asynccontextmanager
    async def open_socket(user: Any, age: float = 0) -> Any:
        refresh = await auth.refresh_tokens.async_create_refresh_token(user, "https://example.com/app")
        refresh._created = (refresh.created_at - timedelta(seconds=age)).isoformat()
        access = await auth.access_tokens.async_create_access_token(refresh)
        if not clients:
            clients.append(await opp_auth_client(auth))
        client = clients[0]
        async with client.session.ws_connect(client.url("/api/websocket")) as ws:
            await ws.receive_json()
            await ws.send_json({"type": "auth", "access_token": access})
            assert (await ws.receive_json())["type"] == "auth_ok"
            yield Socket(ws)

    return open_socket


async def add_passkey(sock: Socket, authenticator: Any, name: str = "Phone") -> Any:
    """register_options, the browser's create(), register."""
    ok, options = await sock.call("auth/webauthn/register_options")
    assert ok, options
    ok, passkey = await sock.call(
        "auth/webauthn/register", name=name, credential=authenticator.create(options["publicKey"])
    )
    assert ok, passkey
    return passkey


async def test_fresh_login_enrols_lists_renames_removes(auth: Any, connect: Any, authenticator: Any) -> None:
    """A session that just logged in adds a named passkey; it is listed, renamed, removed."""
    mia = await user_named(auth, "mia", "mia-pass")
    async with connect(mia) as sock:
        ok, listing = await sock.call("auth/webauthn/passkeys")
        assert (
            ok and listing["passkeys"] == [] and 250 < listing["proof_left"] <= 300 and listing["passwordless"] is True
        )
        passkey = await add_passkey(sock, authenticator, "Mia's phone")
        assert passkey["name"] == "Mia's phone" and passkey["model"] == "iCloud Keychain"
        ok, listing = await sock.call("auth/webauthn/passkeys")
        assert [p["name"] for p in listing["passkeys"]] == ["Mia's phone"]
        assert listing["passkeys"][0]["created_at"] and listing["passkeys"][0]["last_used_at"] is None
        ok, renamed = await sock.call("auth/webauthn/rename", passkey_id=passkey["id"], name="Old phone")
        assert ok and renamed["name"] == "Old phone"
        ok, err = await sock.call("auth/webauthn/rename", passkey_id=passkey["id"], name="\u202e evil")
        assert not ok and err["code"] == "invalid_format"
        assert await auth.registry.get_auth_mfa_module("webauthn").async_is_user_setup(mia.id)
        ok, _ = await sock.call("auth/webauthn/remove", passkey_id=passkey["id"])
        assert ok
        ok, err = await sock.call("auth/webauthn/remove", passkey_id=passkey["id"])
        assert not ok and err["code"] == "not_found"
    assert not await auth.registry.get_auth_mfa_module("webauthn").async_is_user_setup(mia.id)


async def test_old_session_must_reauthenticate_with_the_password(auth: Any, connect: Any, authenticator: Any) -> None:
    """Ten minutes after login, adding needs the password again; a wrong one is refused and reported."""
    mia = await user_named(auth, "mia", "mia-pass")
    failures: list[str] = []
    original = auth.events.login_failed
    auth.events.login_failed = lambda ip, provider, username, reason: (
        failures.append(reason),
        original(ip, provider, username, reason),
    )
    async with connect(mia, age=600) as sock:
        ok, err = await sock.call("auth/webauthn/register_options")
        assert not ok and err["code"] == "reauth_required"
        ok, err = await sock.call("auth/webauthn/register", name="x", credential="{}")
        assert not ok and err["code"] == "reauth_required"
        ok, err = await sock.call("auth/webauthn/reauth", password="wrong")
        assert not ok and err["code"] == "invalid_auth" and failures == ["invalid_auth"]
        ok, proof = await sock.call("auth/webauthn/reauth", password="mia-pass")
        assert ok and 290 < proof["proof_left"] <= 300
        await add_passkey(sock, authenticator)


async def test_proof_belongs_to_one_session(auth: Any, connect: Any) -> None:
    """A re-authentication in one session does not let another old session of the same user enrol."""
    mia = await user_named(auth, "mia", "mia-pass")
    async with connect(mia, age=600) as first, connect(mia, age=600) as second:
        assert (await first.call("auth/webauthn/reauth", password="mia-pass"))[0]
        ok, err = await second.call("auth/webauthn/register_options")
        assert not ok and err["code"] == "reauth_required"


async def test_reauth_with_another_factor_or_a_passkey(auth: Any, connect: Any, authenticator: Any) -> None:
    """A code of another enrolled module (the PIN) or an enrolled passkey is a proof too."""
    mia = await user_named(auth, "mia", "mia-pass")
    async with connect(mia) as sock:
        await add_passkey(sock, authenticator)
    await auth.users.async_enable_user_mfa(mia, "insecure_example", {"pin": "4321"})
    async with connect(mia, age=600) as sock:
        ok, err = await sock.call("auth/webauthn/reauth", code="0000", code_module_id="insecure_example")
        assert not ok and err["code"] == "invalid_code"
        ok, _ = await sock.call("auth/webauthn/reauth", code="4321", code_module_id="insecure_example")
        assert ok
    async with connect(mia, age=600) as sock:
        ok, options = await sock.call("auth/webauthn/reauth_options")
        assert ok
        ok, err = await sock.call(
            "auth/webauthn/reauth", credential=authenticator.get(options["publicKey"], bad_signature=True)
        )
        assert not ok and err["code"] == "invalid_code"
        ok, err = await sock.call("auth/webauthn/reauth", credential=authenticator.get(options["publicKey"]))
        assert not ok and err["code"] == "invalid_code"  # the refused answer spent the challenge
        ok, options = await sock.call("auth/webauthn/reauth_options")
        ok, _ = await sock.call("auth/webauthn/reauth", credential=authenticator.get(options["publicKey"]))
        assert ok
        ok, _ = await sock.call("auth/webauthn/register_options")
        assert ok


async def test_registration_is_checked(auth: Any, connect: Any, authenticator: Any) -> None:
    """A wrong origin, a replayed challenge, a duplicate key and junk are refused with a code, never a 500."""
    mia = await user_named(auth, "mia", "mia-pass")
    async with connect(mia) as sock:
        ok, options = await sock.call("auth/webauthn/register_options")
        ok, err = await sock.call(
            "auth/webauthn/register",
            name="x",
            credential=authenticator.create(options["publicKey"], origin="https://evil.example.net"),
        )
        assert not ok and err["code"] == "invalid_credential"
        ok, err = await sock.call(
            "auth/webauthn/register", name="x", credential=authenticator.create(options["publicKey"])
        )
        assert not ok and err["code"] == "invalid_challenge"  # spent by the refused attempt
        ok, options = await sock.call("auth/webauthn/register_options")
        created = authenticator.create(options["publicKey"], rp_id="evil.example.net")
        ok, err = await sock.call("auth/webauthn/register", name="x", credential=created)
        assert not ok and err["code"] == "invalid_credential"
        for junk in ["", "null", "[1]", "{" * 3000, json.dumps({"id": "a", "response": {}})]:
            await sock.call("auth/webauthn/register_options")
            ok, err = await sock.call("auth/webauthn/register", name="x", credential=junk)
            assert not ok and err["code"] in ("invalid_credential", "invalid_format"), err
        ok, options = await sock.call("auth/webauthn/register_options")
        ok, err = await sock.call(
            "auth/webauthn/register", name="", credential=authenticator.create(options["publicKey"])
        )
        assert not ok and err["code"] == "invalid_format"
        await add_passkey(sock, authenticator)
        ok, listing = await sock.call("auth/webauthn/passkeys")
        assert len(listing["passkeys"]) == 1


async def test_admin_lists_and_removes_a_users_passkeys(auth: Any, connect: Any, authenticator: Any) -> None:
    """An administrator sees and removes another user's passkey; a normal user may not."""
    mia = await user_named(auth, "mia", "mia-pass")
    boss = await user_named(auth, "boss", "boss-pass")
    await auth.users.async_update_user(boss, group_ids=["system-admin"])
    async with connect(mia) as sock:
        passkey = await add_passkey(sock, authenticator)
        ok, err = await sock.call("auth/webauthn/admin/passkeys", user_id=boss.id)
        assert not ok and err["code"] == "unauthorized"
    async with connect(boss) as sock:
        ok, listing = await sock.call("auth/webauthn/admin/passkeys", user_id=mia.id)
        assert ok and [p["id"] for p in listing["passkeys"]] == [passkey["id"]]
        ok, err = await sock.call("auth/webauthn/admin/passkeys", user_id="nobody")
        assert not ok and err["code"] == "not_found"
        ok, _ = await sock.call("auth/webauthn/admin/remove", user_id=mia.id, passkey_id=passkey["id"])
        assert ok
    assert not await auth.registry.get_auth_mfa_module("webauthn").async_is_user_setup(mia.id)


async def test_setup_mfa_points_to_the_profile(auth: Any, connect: Any) -> None:
    """auth/setup_mfa cannot run the browser ceremony: it aborts with passkey_setup_on_profile."""
    mia = await user_named(auth, "mia", "mia-pass")
    async with connect(mia) as sock:
        ok, result = await sock.call("auth/setup_mfa", mfa_module_id="webauthn")
        assert ok and result["type"] == "abort" and result["reason"] == "passkey_setup_on_profile"


async def test_trusted_network_login_is_no_proof_for_adding_a_passkey(
    opp_auth_factory: Any, opp_auth_client: Any
) -> None:
    """Red team: a session from a trusted_networks login (a pick of the user, no password) works only
    inside the network, yet it could enrol a passkey within 5 minutes of that login, and the passkey then
    logged in from anywhere with the user's password credentials. Such a login proves a place, not the
    person: adding a passkey needs a re-authentication."""
    auth = await opp_auth_factory(
        providers=[*PROVIDERS, {"type": "trusted_networks", "trusted_networks": ["127.0.0.1/32"]}],
        mfa_modules=[WEBAUTHN],
    )
    mia = await user_named(auth, "mia", "mia-pass")
    picked = await run_login_flow(auth, ("trusted_networks", None), [{"user": mia.id}])
    refresh = await auth.refresh_tokens.async_create_refresh_token(mia, "https://example.com/app", credential=picked["result"])
    access = await auth.access_tokens.async_create_access_token(refresh, "127.0.0.1")
    client = await opp_auth_client(auth)
    async with client.session.ws_connect(client.url("/api/websocket")) as ws:
        await ws.receive_json()
        await ws.send_json({"type": "auth", "access_token": access})
        assert (await ws.receive_json())["type"] == "auth_ok"
        sock = Socket(ws)
        ok, listing = await sock.call("auth/webauthn/passkeys")
        assert ok and listing["proof_left"] == 0
        ok, err = await sock.call("auth/webauthn/register_options")
        assert not ok and err["code"] == "reauth_required"
        ok, proof = await sock.call("auth/webauthn/reauth", password="mia-pass")
        assert ok and proof["proof_left"] > 290
        ok, _ = await sock.call("auth/webauthn/register_options")
        assert ok
