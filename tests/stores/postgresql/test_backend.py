"""PostgresBackend against a real PostgreSQL: rows, the change feed, staleness, migrations, hostile keys."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from opp_auth_postgresql.backend import PostgresBackend, path_text, safe_url
from opp_auth_postgresql.schema import SCHEMA_VERSION, async_migrate

from opp_auth.manager import AuthManager
from opp_auth.storage import StorageError
from opp_auth.testing import PostgresServer, async_wait_until

Factory = Callable[..., Awaitable[AuthManager]]
EXAMPLE = {
    "type": "insecure_example",
    "users": [{"username": "alice", "password": "alice-pw", "name": "Alice"}],
}


@pytest.fixture
def opp_auth_storage_type() -> str:
    """Every test here runs on PostgreSQL."""
    return "postgresql"


async def _manager(factory: Factory) -> AuthManager:
    """A set-up manager with the example provider."""
    return await factory(providers=[EXAMPLE])


def backend_of(auth: AuthManager) -> PostgresBackend:
    """The manager's backend."""
    backend = auth.backend
    assert isinstance(backend, PostgresBackend)
    return backend


async def test_users_and_tokens_persist_as_rows(
    opp_auth_factory: Factory, opp_auth_storage: dict[str, Any], postgresql_server: PostgresServer
) -> None:
    """A user and a token survive a restart; each is one row."""
    auth = await _manager(opp_auth_factory)
    user = await auth.users.async_create_user("Zoë 🙂\x00'; DROP TABLE opp_auth_users; --")
    token = await auth.refresh_tokens.async_create_refresh_token(user, "https://example.com/app")
    await auth.async_shutdown()
    database = opp_auth_storage["url"].rsplit("/", 1)[1]
    rows = postgresql_server.execute(f"SELECT count(*) FROM pg_database WHERE datname = '{database}'")
    assert rows == [(1,)]
    again = await _manager(opp_auth_factory)
    loaded = again.users.get_user(user.id)
    assert loaded is not None and loaded.name == user.name
    assert again.store.get_refresh_token(token.id) is not None


async def test_revocation_reaches_the_other_server(opp_auth_factory: Factory) -> None:
    """Token made on A, usable on B; revoked on B, gone on A within a second."""
    a = await _manager(opp_auth_factory)
    b = await _manager(opp_auth_factory)
    await backend_of(b).connected.wait()
    await backend_of(a).connected.wait()
    user = await a.users.async_create_user("Alice")
    token = await a.refresh_tokens.async_create_refresh_token(user, "https://example.com/app")
    access = await a.access_tokens.async_create_access_token(token)
    await async_wait_until(lambda: b.store.get_refresh_token(token.id) is not None)
    assert b.access_tokens.validate_access_token(access) is not None
    on_b = b.store.get_refresh_token(token.id)
    assert on_b is not None
    await b.refresh_tokens.async_remove_refresh_token(on_b)
    delay = await async_wait_until(lambda: a.access_tokens.validate_access_token(access) is None, timeout=1.0)
    assert delay < 1.0


async def test_deactivation_and_removal_reach_the_other_server(opp_auth_factory: Factory) -> None:
    """A user deactivated on B is refused on A; removed on B, gone on A."""
    a = await _manager(opp_auth_factory)
    b = await _manager(opp_auth_factory)
    await backend_of(a).connected.wait()
    user = await a.users.async_create_user("Bob")
    token = await a.refresh_tokens.async_create_refresh_token(user, "https://example.com/app")
    access = await a.access_tokens.async_create_access_token(token)
    await async_wait_until(lambda: b.users.get_user(user.id) is not None)
    on_b = b.users.get_user(user.id)
    assert on_b is not None
    await b.users.async_update_user(on_b, is_active=False)
    await async_wait_until(lambda: a.access_tokens.validate_access_token(access) is None, timeout=1.0)
    await b.users.async_remove_user(on_b)
    await async_wait_until(lambda: a.users.get_user(user.id) is None, timeout=1.0)
    assert a.store.get_refresh_token(token.id) is None


async def test_documents_reach_the_other_server(opp_auth_factory: Factory) -> None:
    """A path change and a whole save of a plugin document are seen by the other server's listeners."""
    a = await _manager(opp_auth_factory)
    b = await _manager(opp_auth_factory)
    doc_a = a.storage("test_doc", 1)
    doc_b = b.storage("test_doc", 1)
    assert await doc_a.async_load() is None
    assert await doc_b.async_load() is None
    heard: list[Any] = []
    doc_b.listen(heard.append)
    await backend_of(b).connected.wait()
    data: dict[str, Any] = {"users": {"u1": {"secret": "s1"}}}
    await doc_a.async_save_changes(data, [("users", "u1")])
    await async_wait_until(lambda: bool(heard))
    assert heard[-1] == {"users": {"u1": {"secret": "s1"}}}
    del data["users"]["u1"]
    data["users"]["%_'\x00"] = {"secret": "s2"}
    await doc_a.async_save_changes(data, [("users", "u1"), ("users", "%_'\x00")])
    await async_wait_until(lambda: heard[-1] == data)
    await doc_a.async_save({"whole": True})
    await async_wait_until(lambda: heard[-1] == {"whole": True})
    # What a restart reads is the same.
    fresh = a.storage("test_doc", 1)
    assert await fresh.async_load() == {"whole": True}


async def test_document_path_prefixes_do_not_leak(opp_auth_factory: Factory) -> None:
    """Deleting path ["a"] removes ["a", ...] rows, never ["ab"] or LIKE-wildcard look-alikes."""
    auth = await _manager(opp_auth_factory)
    doc = auth.storage("prefix_doc", 1)
    await doc.async_load()
    data: dict[str, Any] = {
        "a": {"x": 1, "y": [{"n": "k"}]},
        "ab": {"x": 2},
        "a%": {"x": 3},
        "a_": {"x": 4},
        'a"': {"x": 5},
        "a,": {"x": 6},
        "a]": {"x": 7},
        "a^": {"x": 8},
    }
    await doc.async_save_changes(data, [("a", "x"), ("a", "y", {"n": "k"}), *((k, "x") for k in list(data)[1:])])
    del data["a"]
    await doc.async_save_changes(data, [("a",)])
    expected = {k: v for k, v in data.items()}
    assert await auth.storage("prefix_doc", 1).async_load() == expected
    assert path_text(["a"]) == '["a"]'


async def test_a_path_saves_subtree_delete_is_an_index_range(opp_auth_factory: Factory) -> None:
    """The delete of a path and its descendants reads a range of an index on (key, path) in byte order,
    not every row of the document (100,000 rows at 100,000 users)."""
    auth = await _manager(opp_auth_factory)
    doc = auth.storage("subtree_doc", 1)
    await doc.async_load()
    data = {f"k{i:05d}": {"x": i} for i in range(2000)}
    await doc.async_save_changes(data, [(key, "x") for key in data])
    assert backend_of(auth).pool is not None
    async with backend_of(auth).pool.connection() as conn:
        await conn.execute("ANALYZE opp_auth_documents")
        cur = await conn.execute(
            'EXPLAIN DELETE FROM opp_auth_documents WHERE key = %s AND (path COLLATE "C") >= %s '
            'AND (path COLLATE "C") < %s',
            ("subtree_doc", '["k00007"', '["k00007"^'),
        )
        plan = "\n".join(str(row[0]) for row in await cur.fetchall())
    conditions = [line for line in plan.splitlines() if "Index Cond" in line]
    assert any("path" in line and ">=" in line for line in conditions), plan


async def test_unstorable_document_is_refused(opp_auth_factory: Factory) -> None:
    """A lone surrogate or NaN raises StorageError; nothing is written."""
    auth = await _manager(opp_auth_factory)
    doc = auth.storage("bad_doc", 1)
    await doc.async_load()
    with pytest.raises(StorageError):
        await doc.async_save({"x": "\ud800"})
    with pytest.raises(StorageError):
        await doc.async_save({"x": float("nan")})
    assert await auth.storage("bad_doc", 1).async_load() is None


async def test_concurrent_migrations(postgresql_server: PostgresServer) -> None:
    """Eight connections migrating at once leave one schema at the current version."""
    import psycopg

    url = postgresql_server.url(postgresql_server.create_database())

    async def migrate() -> int:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            return await async_migrate(conn)

    results = await asyncio.gather(*(migrate() for _ in range(8)))
    assert sorted(results) == [0] + [SCHEMA_VERSION] * 7


async def test_newer_schema_is_refused(
    opp_auth_factory: Factory, opp_auth_storage: dict[str, Any], postgresql_server: PostgresServer
) -> None:
    """A database migrated by a newer release is not touched."""
    import psycopg

    opp_auth_storage["url"] = postgresql_server.url(postgresql_server.create_database())
    auth = await _manager(opp_auth_factory)
    await auth.async_shutdown()
    with psycopg.connect(opp_auth_storage["url"], autocommit=True) as conn:
        conn.execute("UPDATE opp_auth_meta SET value = '999' WHERE name = 'schema_version'")
    with pytest.raises(StorageError, match="newer release"):
        await _manager(opp_auth_factory)


async def test_staleness_window_then_fail_closed(
    opp_auth_factory: Factory, postgresql_server: PostgresServer, opp_auth_storage: dict[str, Any]
) -> None:
    """Database gone: tokens answered from cache for staleness_seconds, then refused; back: accepted again."""
    opp_auth_storage["staleness_seconds"] = 1.5
    auth = await _manager(opp_auth_factory)
    await backend_of(auth).connected.wait()
    user = await auth.users.async_create_user("Carol")
    token = await auth.refresh_tokens.async_create_refresh_token(user, "https://example.com/app")
    access = await auth.access_tokens.async_create_access_token(token)
    postgresql_server.stop()
    try:
        lost = time.monotonic()
        await async_wait_until(lambda: not backend_of(auth).connected.is_set(), timeout=5.0)
        if time.monotonic() - lost < 1.0:
            assert auth.access_tokens.validate_access_token(access) is not None
        await async_wait_until(lambda: auth.access_tokens.validate_access_token(access) is None, timeout=5.0)
        assert time.monotonic() - lost < 1.5 + 2 * 1.0 + 5.0
        with pytest.raises(StorageError):
            await auth.refresh_tokens.async_create_refresh_token(user, "https://example.com/app")
    finally:
        postgresql_server.start()
    await async_wait_until(lambda: auth.access_tokens.validate_access_token(access) is not None, timeout=10.0)
    assert await auth.refresh_tokens.async_create_refresh_token(user, "https://example.com/app") is not None


async def test_a_restart_that_broke_every_pooled_connection_costs_no_write(
    opp_auth_factory: Factory, postgresql_server: PostgresServer
) -> None:
    """Ten idle connections, all closed by a restart: the next write and the next shared flow succeed."""
    auth = await _manager(opp_auth_factory)
    backend = backend_of(auth)
    assert backend.pool is not None
    held = [await backend.pool.getconn() for _ in range(10)]
    for conn in held:
        await backend.pool.putconn(conn)
    assert backend.pool.get_stats()["pool_available"] >= 5
    user = await auth.users.async_create_user("Dave")
    postgresql_server.stop()
    postgresql_server.start()
    # Every idle connection is now broken; more of them than the retries of one statement.
    assert await auth.refresh_tokens.async_create_refresh_token(user, "https://example.com/app") is not None
    shared = backend.ephemeral_state()
    await shared.async_put_flow("after-restart", {"step": "init"}, 60.0)
    claimed = await shared.async_claim_flow("after-restart", 5.0)
    assert claimed is not None and claimed[0] == {"step": "init"}


async def test_a_schema_chosen_by_search_path_holds_every_table(
    opp_auth_factory: Factory, opp_auth_storage: dict[str, Any], postgresql_server: PostgresServer
) -> None:
    """`options=-csearch_path=auth` in the URL (as the README says): every table lives in that schema."""
    import psycopg

    database = postgresql_server.create_database()
    with psycopg.connect(postgresql_server.url(database), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA auth")
    opp_auth_storage["url"] = postgresql_server.url(database) + "?options=-csearch_path%3Dauth"
    auth = await _manager(opp_auth_factory)
    user = await auth.users.async_create_user("Erin")
    assert await auth.refresh_tokens.async_create_refresh_token(user, "https://example.com/app") is not None
    shared = backend_of(auth).ephemeral_state()
    await shared.async_put_flow("in-schema", {"step": "init"}, 60.0)
    assert await shared.async_claim_flow("in-schema", 5.0) is not None
    other = await _manager(opp_auth_factory)
    assert [u.name for u in await other.users.async_get_users() if u.name == "Erin"] == ["Erin"]
    with psycopg.connect(postgresql_server.url(database)) as conn:
        tables = conn.execute(
            "SELECT schemaname, count(*) FROM pg_tables WHERE tablename LIKE 'opp_auth%%' GROUP BY schemaname"
        ).fetchall()
        flows = conn.execute("SELECT count(*) FROM auth.opp_auth_flows").fetchone()
    assert dict(tables).keys() == {"auth"}, tables
    assert dict(tables)["auth"] >= 5
    assert flows is not None and flows[0] == 1  # the shared flow (claimed: leased, not deleted) is there too


async def test_listener_killed_catches_up(opp_auth_factory: Factory, postgresql_server: PostgresServer) -> None:
    """pg_terminate_backend on A's listener while B revokes: A catches up on reconnect."""
    a = await _manager(opp_auth_factory)
    b = await _manager(opp_auth_factory)
    await backend_of(a).connected.wait()
    user = await a.users.async_create_user("Dan")
    token = await a.refresh_tokens.async_create_refresh_token(user, "https://example.com/app")
    access = await a.access_tokens.async_create_access_token(token)
    await async_wait_until(lambda: b.store.get_refresh_token(token.id) is not None)
    # Kill every LISTENing backend session of this database: A's (and B's) listeners.
    database = backend_of(a).url.rsplit("/", 1)[1]
    postgresql_server.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND query LIKE %s",
        database,
        "%SELECT 1%",
    )
    on_b = b.store.get_refresh_token(token.id)
    assert on_b is not None
    await b.refresh_tokens.async_remove_refresh_token(on_b)
    await async_wait_until(lambda: a.access_tokens.validate_access_token(access) is None, timeout=3.0)


async def test_url_password_is_not_shown() -> None:
    """Messages name the database without its password."""
    assert safe_url("postgresql://u:secret@h:5432/d") == "postgresql://u:***@h:5432/d"


async def test_unreachable_database_at_start(opp_auth_factory: Factory, tmp_path: Path) -> None:
    """No database at the URL: start-up fails with a StorageError naming it (no password)."""
    from opp_auth.testing import _free_port

    backend = PostgresBackend(
        {"type": "postgresql", "url": f"postgresql://u:pw@127.0.0.1:{_free_port()}/x", "connect_timeout": 1.0},
        str(tmp_path),
    )
    with pytest.raises(StorageError, match=r"u:\*\*\*@127\.0\.0\.1"):
        await backend.async_open()


async def test_a_server_with_another_secret_is_refused(
    opp_auth_factory: Factory, opp_auth_storage: dict[str, Any], tmp_path: Path, config_dir: Path
) -> None:
    """Two servers on one database with different .opp-auth-secret files: the second does not start."""
    import shutil

    from opp_auth.config import validate_config
    from opp_auth.plugins import make_plugin_manager

    await _manager(opp_auth_factory)
    other = tmp_path / "other"
    other.mkdir()

    def manager() -> AuthManager:
        pm = make_plugin_manager()
        config = validate_config({"openpeerpower": {"storage": opp_auth_storage}}, pm, config_dir=other)
        return AuthManager(
            str(other), pm, provider_configs=config.providers, storage=config.storage_class(config.storage, str(other))
        )

    refused = manager()
    with pytest.raises(StorageError, match="another secret"):
        await refused.async_setup()
    await refused.backend.async_close()
    # With the first server's secret file it starts.
    shutil.copy(config_dir / ".opp-auth-secret", other / ".opp-auth-secret")
    accepted = manager()
    await accepted.async_setup()
    await accepted.async_shutdown()


async def test_a_password_check_outside_a_login_waits_for_the_other_servers_failures(
    opp_auth_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Failures counted on B throttle a websocket password check on A at once (the barrier), not a
    notification later: async_login_retry_after applies the feed up to now before answering."""
    from opp_auth.http.app import create_app

    http = {"login_throttle": {"attempts_per_address_and_user": 3}}
    a = await opp_auth_factory(providers=[EXAMPLE], http=http)
    b = await opp_auth_factory(providers=[EXAMPLE], http=http)
    create_app(a), create_app(b)  # each registers its throttle, shared through the storage
    await backend_of(a).connected.wait()
    await backend_of(b).connected.wait()
    real_catch_up = backend_of(a)._catch_up

    async def slow_catch_up(conn: Any) -> None:  # A's notifications arrive late
        await asyncio.sleep(0.3)
        await real_catch_up(conn)

    monkeypatch.setattr(backend_of(a), "_catch_up", slow_catch_up)
    for _ in range(4):
        b.events.login_failed("203.0.113.9", ("insecure_example", None), "alice", "invalid_auth")
    await b.events.async_drain()
    assert b.context.login_retry_after("203.0.113.9", "alice") > 0, "B itself does not throttle"
    assert await a.context.async_login_retry_after("203.0.113.9", "alice") > 0


async def test_contact_regained_brings_a_fresh_connection_pool(
    opp_auth_factory: Factory, postgresql_server: PostgresServer
) -> None:
    """When the change feed is back after an outage, writes get a fresh pool at once: the old one's
    replacement attempts back off (1, 2, 4... s) and a login right after the database returned got
    503 "couldn't get a connection" (tests/stores/postgresql/test_processes.py saw it in CI)."""
    auth = await _manager(opp_auth_factory)
    backend = backend_of(auth)
    user = await auth.users.async_create_user("Grace")
    old = backend.pool
    postgresql_server.stop()
    try:
        await async_wait_until(lambda: not backend.connected.is_set(), timeout=5.0)
    finally:
        postgresql_server.start()
    await async_wait_until(lambda: backend.connected.is_set(), timeout=10.0)
    assert backend.pool is not None and backend.pool is not old
    assert await auth.refresh_tokens.async_create_refresh_token(user, "https://example.com/app") is not None
    await async_wait_until(lambda: old is not None and old.closed, timeout=12.0)
