"""Catching up when changes were pruned, a lost race, and a websocket closed by another server's revocation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from opp_auth_postgresql.backend import PostgresBackend

from opp_auth.manager import AuthManager
from opp_auth.storage import StorageError
from opp_auth.testing import OppAuthClient, PostgresServer, async_wait_until

Factory = Callable[..., Awaitable[AuthManager]]
EXAMPLE = {"type": "insecure_example", "users": [{"username": "alice", "password": "alice-pw", "name": "Alice"}]}


@pytest.fixture
def opp_auth_storage_type() -> str:
    """PostgreSQL only."""
    return "postgresql"


def backend_of(auth: AuthManager) -> PostgresBackend:
    """The manager's backend."""
    assert isinstance(auth.backend, PostgresBackend)
    return auth.backend


async def test_pruned_changes_make_a_server_reload_everything(
    opp_auth_factory: Factory, postgresql_server: PostgresServer
) -> None:
    """A is away while B removes a user, adds one and the changes are pruned: A reloads and matches the database."""
    a = await opp_auth_factory(providers=[EXAMPLE])
    b = await opp_auth_factory(providers=[EXAMPLE])
    await backend_of(a).connected.wait()
    gone = await a.users.async_create_user("Gone")
    token = await a.refresh_tokens.async_create_refresh_token(gone, "https://example.com/app")
    await async_wait_until(lambda: b.users.get_user(gone.id) is not None)
    # A's listener goes away (and stays away while B works): cancel it.
    listener = backend_of(a)._listener
    assert listener is not None
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)
    backend_of(a)._listener = None
    on_b = b.users.get_user(gone.id)
    assert on_b is not None
    await b.users.async_remove_user(on_b)
    kept = await b.users.async_create_user("Kept")
    assert await backend_of(b).async_prune(older_than_hours=0) > 0
    assert a.users.get_user(gone.id) is not None  # A has not heard
    backend_of(a).start_listening()
    await async_wait_until(lambda: a.users.get_user(gone.id) is None and a.users.get_user(kept.id) is not None)
    assert a.store.get_refresh_token(token.id) is None
    assert {u.id for u in a.store.users()} == {u.id for u in b.store.users()}


async def test_a_lost_race_is_refused_and_the_cache_follows_the_database(opp_auth_factory: Factory) -> None:
    """B removes a user while A (not yet told) makes them a token: A's write is refused (503), nothing is kept."""
    a = await opp_auth_factory(providers=[EXAMPLE])
    b = await opp_auth_factory(providers=[EXAMPLE])
    await backend_of(a).connected.wait()
    user = await a.users.async_create_user("Raced")
    await async_wait_until(lambda: b.users.get_user(user.id) is not None)
    listener = backend_of(a)._listener
    assert listener is not None
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)
    backend_of(a)._listener = None
    on_b = b.users.get_user(user.id)
    assert on_b is not None
    await b.users.async_remove_user(on_b)
    with pytest.raises(StorageError):
        await a.refresh_tokens.async_create_refresh_token(user, "https://example.com/app")
    backend_of(a).start_listening()
    await async_wait_until(lambda: a.users.get_user(user.id) is None)
    assert not [t for t in a.store.refresh_tokens() if t.user.id == user.id]


async def test_revocation_on_another_server_closes_the_websocket(
    opp_auth_factory: Factory, opp_auth_client: Callable[..., Awaitable[OppAuthClient]]
) -> None:
    """A websocket open on A closes when B revokes its refresh token (without A receiving a message)."""
    a = await opp_auth_factory(providers=[EXAMPLE])
    b = await opp_auth_factory(providers=[EXAMPLE])
    await backend_of(a).connected.wait()
    user = await a.users.async_create_user("Sock", ["system-admin"])
    token = await a.refresh_tokens.async_create_refresh_token(user, "https://example.com/app")
    access = await a.access_tokens.async_create_access_token(token)
    client = await opp_auth_client(a)
    ws = await client.session.ws_connect(client.url("/api/websocket"))
    try:
        assert (await ws.receive_json(timeout=5))["type"] == "auth_required"
        await ws.send_json({"type": "auth", "access_token": access})
        assert (await ws.receive_json(timeout=5))["type"] == "auth_ok"
        await async_wait_until(lambda: b.store.get_refresh_token(token.id) is not None)
        on_b = b.store.get_refresh_token(token.id)
        assert on_b is not None
        await b.refresh_tokens.async_remove_refresh_token(on_b)
        msg: Any = await ws.receive(timeout=2.0)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED), msg
    finally:
        await ws.close()
