"""The PostgreSQL step lock (SharedState.async_step_lock): one step of an account at a time on every server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import psycopg
import pytest
from opp_auth_postgresql import ephemeral
from opp_auth_postgresql.backend import PostgresBackend
from opp_auth_postgresql.ephemeral import STEP_LOCK_PREFIX, SharedState, digest

from opp_auth.manager import AuthManager
from opp_auth.storage import StorageError

Factory = Callable[..., Awaitable[AuthManager]]


@pytest.fixture
def opp_auth_storage_type() -> str:
    """Every test here runs on PostgreSQL."""
    return "postgresql"


async def _state(factory: Factory) -> SharedState:
    """The shared state of a new server."""
    auth = await factory(providers=[{"type": "insecure_example", "users": []}])
    backend = auth.backend
    assert isinstance(backend, PostgresBackend)
    state = backend.ephemeral_state()
    assert isinstance(state, SharedState)
    return state


async def test_two_servers_holding_one_key_run_one_after_the_other(opp_auth_factory: Factory) -> None:
    """B's step of the same account starts only once A's ended; another account is not held up."""
    a, b = await _state(opp_auth_factory), await _state(opp_auth_factory)
    order: list[str] = []
    entered = asyncio.Event()

    async def on_a() -> None:
        async with a.async_step_lock("user:paulus"):
            order.append("a in")
            entered.set()
            await asyncio.sleep(0.3)
            order.append("a out")

    async def on_b() -> None:
        await entered.wait()
        async with b.async_step_lock("user:paulus"):
            order.append("b in")

    async def other_account() -> float:
        await entered.wait()
        start = time.monotonic()
        async with b.async_step_lock("user:someone-else"):
            return time.monotonic() - start

    _, _, elsewhere = await asyncio.gather(on_a(), on_b(), other_account())
    assert order == ["a in", "a out", "b in"]
    assert elsewhere < 0.25


async def test_the_lock_is_keyed_by_a_digest_never_the_username(
    opp_auth_factory: Factory, opp_auth_storage: dict[str, str]
) -> None:
    """What the database holds is a hash of a SHA-256 digest: the same key from any session."""
    a = await _state(opp_auth_factory)
    async with a.async_step_lock("user:paulus"):
        async with await psycopg.AsyncConnection.connect(opp_auth_storage["url"], autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (digest(STEP_LOCK_PREFIX + "user:paulus"),)
            )
            assert await cur.fetchone() == (False,)
            cur = await conn.execute("SELECT query FROM pg_stat_activity WHERE query LIKE '%%paulus%%'")
            assert all("pg_stat_activity" in row[0] for row in await cur.fetchall())


async def test_a_lock_not_had_in_time_fails_closed(
    opp_auth_factory: Factory, opp_auth_storage: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Held elsewhere past the wait: StorageError (the engine's 503), and the step never runs."""
    monkeypatch.setattr(ephemeral, "STEP_LOCK_WAIT", 0.3)
    b = await _state(opp_auth_factory)
    async with await psycopg.AsyncConnection.connect(opp_auth_storage["url"], autocommit=True) as other:
        await other.execute(
            "SELECT pg_advisory_lock(hashtextextended(%s, 0))", (digest(STEP_LOCK_PREFIX + "user:paulus"),)
        )
        ran = False
        start = time.monotonic()
        with pytest.raises(StorageError):
            async with b.async_step_lock("user:paulus"):
                ran = True
        assert not ran
        assert 0.25 < time.monotonic() - start < 2.0
    # The holder's session ended (a server that died): the lock is free at once.
    async with b.async_step_lock("user:paulus"):
        pass


async def test_the_lock_is_released_after_an_exception_and_a_cancellation(opp_auth_factory: Factory) -> None:
    """A step that raises or is cancelled lets go: the other server gets the lock at once."""
    a, b = await _state(opp_auth_factory), await _state(opp_auth_factory)
    with pytest.raises(RuntimeError):
        async with a.async_step_lock("user:paulus"):
            raise RuntimeError("the provider failed")
    async with asyncio.timeout(1.0), b.async_step_lock("user:paulus"):
        pass

    entered = asyncio.Event()

    async def long_step() -> None:
        async with a.async_step_lock("user:paulus"):
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.ensure_future(long_step())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(1.0), b.async_step_lock("user:paulus"):
        pass


async def test_a_hung_server_loses_its_locks_to_the_idle_timeout(
    opp_auth_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server whose loop stops (no heartbeat) has its lock session ended by the database."""
    monkeypatch.setattr(ephemeral, "STEP_LOCK_IDLE", 1.0)
    monkeypatch.setattr(ephemeral, "STEP_LOCK_HEARTBEAT", 3600.0)  # the hung server never speaks again
    a, b = await _state(opp_auth_factory), await _state(opp_auth_factory)
    entered = asyncio.Event()

    async def hung() -> None:
        async with a.async_step_lock("user:paulus"):
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.ensure_future(hung())
    try:
        await entered.wait()
        start = time.monotonic()
        async with b.async_step_lock("user:paulus"):
            waited = time.monotonic() - start
        assert 0.5 < waited < 5.0
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_many_accounts_at_once_hold_one_connection(
    opp_auth_factory: Factory, opp_auth_storage: dict[str, str]
) -> None:
    """200 steps of different accounts hold their locks together on one connection, none from the pool."""
    a = await _state(opp_auth_factory)
    inside = 0
    peak = 0
    go = asyncio.Event()

    async def step(i: int) -> None:
        nonlocal inside, peak
        async with a.async_step_lock(f"user:attacker-{i}"):
            inside += 1
            peak = max(peak, inside)
            await go.wait()
            inside -= 1

    tasks = [asyncio.ensure_future(step(i)) for i in range(200)]
    while peak < 200:
        await asyncio.sleep(0.01)
    pool = a.backend.pool
    assert pool is not None
    assert pool.get_stats().get("pool_size", 0) <= 10
    async with await psycopg.AsyncConnection.connect(opp_auth_storage["url"], autocommit=True) as conn:
        cur = await conn.execute("SELECT count(DISTINCT pid) FROM pg_locks WHERE locktype = 'advisory' AND granted")
        row = await cur.fetchone()
        assert row is not None and row[0] == 2  # the step locks' connection, and the listener's shared lock
    go.set()
    await asyncio.gather(*tasks)
