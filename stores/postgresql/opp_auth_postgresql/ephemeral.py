"""SharedState: the ephemeral state of every server on one database (see opp_auth's ephemeral seam).

- Login flows: a row per flow (its JSON state, never a password), keyed by a digest
  of the flow id. A step claims the row with a lease (one UPDATE), so two servers
  never run steps of one flow at once (an MFA code cannot be guessed on two
  servers in parallel), and a server that dies mid-step frees it when the lease ends.
- Authorization codes: a row per code keyed by a digest of the code. Taking one is
  a single ``DELETE ... RETURNING``: when two servers receive the same code at the
  same instant, exactly one gets the row.
- Plugins' small values (notify's pending login code): a row per key, keyed by a
  digest, replaced by the next put; taking one is a single ``DELETE ... RETURNING``
  (with an expected value, only while it is still that one).
- Events (failure counters, bans, lockouts cleared): change records of kind
  ``eph`` in the change feed, so they reach every server in commit order with the
  feed's catch-up; a barrier waits until the feed has applied every change
  committed before it.

Expiry is decided by the database's clock (``clock_timestamp()``), so servers
whose clocks differ agree on when a flow or a code ends. Expired rows are deleted
every ``SWEEP_INTERVAL`` seconds by whichever server gets there.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import PoolTimeout

from opp_auth import StorageBackend

if TYPE_CHECKING:
    from .backend import PostgresBackend

StorageError = StorageBackend.Error

_LOGGER = logging.getLogger(__name__)

SWEEP_INTERVAL = 60.0
CLAIM_POLL = 0.02
BARRIER_TIMEOUT = 5.0
EVENT_KIND = "eph"
KEEP = "keep"  # an eph record's retention key (async_publish_retained): the latest per topic and key outlives pruning
RETRIES = 3
VALUE_PREFIX = "value:"  # plugins' keys, digested apart from flow ids and codes
# Step locks (async_step_lock): session advisory locks on one connection per server, tried every
# STEP_LOCK_POLL seconds for at most STEP_LOCK_WAIT (then "unavailable": fail closed). The
# database ends that connection's session, and so its locks, when the server dies or stops
# talking for STEP_LOCK_IDLE seconds (idle_session_timeout; a heartbeat keeps a live one busy).
STEP_LOCK_WAIT = 10.0
STEP_LOCK_POLL = 0.02
STEP_LOCK_IDLE = 20.0
STEP_LOCK_HEARTBEAT = 5.0
MAX_STEP_LOCKS = 256  # held at once by one server (each takes a slot of the database's lock table)
STEP_LOCK_PREFIX = "step:"


def digest(secret: str) -> str:
    """A flow id or a code as stored: a reader of the database cannot use it."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _decoded(text: Any) -> dict[str, Any] | None:
    """A stored JSON object, or None."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class StepLocks:
    """A server's step locks: session advisory locks on one connection of their own (not the pool's).

    Each lock is ``pg_try_advisory_lock(hashtextextended(digest, 0))`` of a digest of the key, so
    the database never sees a username. Held locks cost no connection: a step holding one takes
    nothing from the pool, and a thousand steps of different accounts share this one connection.
    The connection is autocommit (never idle in a transaction) with ``idle_session_timeout``:
    a server that dies closes it, one that hangs stops the heartbeat and the database ends the
    session within STEP_LOCK_IDLE seconds; either way its locks go with it.
    """

    def __init__(self, backend: PostgresBackend) -> None:
        """Nothing connected yet (the first lock connects)."""
        self.backend = backend
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._connecting = asyncio.Lock()
        self._slots = asyncio.Semaphore(MAX_STEP_LOCKS)
        self._heartbeat: asyncio.Task[None] | None = None
        self._closed = False

    def _unavailable(self, why: Any) -> StorageError:
        """The error a step gets when its lock cannot be had (the engine answers 503: retry)."""
        return StorageError(f"The database is unreachable ({self.backend.describe()}): step lock: {why}")

    async def _connection(self, deadline: float) -> psycopg.AsyncConnection[Any]:
        """The lock connection, (re)opened when there is none or it broke."""
        async with self._connecting:
            conn = self._conn
            if conn is not None and not conn.closed and not conn.broken:
                return conn
            self._conn = None
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
            if self._closed:
                raise self._unavailable("closing")
            timeout = max(0.1, min(deadline - time.monotonic(), self.backend.connect_timeout))
            try:
                async with asyncio.timeout(timeout):
                    conn = await psycopg.AsyncConnection.connect(
                        self.backend.url, autocommit=True, connect_timeout=max(1, math.ceil(timeout))
                    )
            except (TimeoutError, psycopg.Error, OSError) as err:
                raise self._unavailable(err or "no connection in time") from err
            with contextlib.suppress(psycopg.Error):  # PostgreSQL before 14 has no idle_session_timeout
                await conn.execute("SELECT set_config('idle_session_timeout', %s, false)", (f"{STEP_LOCK_IDLE}s",))
            self._conn = conn
            if self._heartbeat is None or self._heartbeat.done():
                self._heartbeat = asyncio.ensure_future(self._heartbeat_loop())
            return conn

    async def _drop(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Close conn (its locks end with it) after it failed or a statement on it was cut short."""
        if self._conn is conn:
            self._conn = None
        with contextlib.suppress(Exception):
            await conn.close()

    async def _query(self, sql: str, key: str, deadline: float) -> tuple[psycopg.AsyncConnection[Any], Any]:
        """Run sql (one boolean) on the lock connection by deadline; a broken one is replaced once."""
        for attempt in (1, 2):
            conn = await self._connection(deadline)
            try:
                async with asyncio.timeout(max(0.05, deadline - time.monotonic())):
                    cur = await conn.execute(sql, (key,))
                    row = await cur.fetchone()
                return conn, bool(row and row[0])
            except (TimeoutError, psycopg.Error, OSError) as err:
                # Cut short, the connection's state is unknown: closing it is what surely releases.
                await self._drop(conn)
                if attempt == 1 and isinstance(err, psycopg.OperationalError) and time.monotonic() < deadline:
                    continue  # closed by the database (restart, idle timeout): once more on a fresh one
                raise self._unavailable(err or "no answer in time") from err
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Hold key's lock across every server for the block (StorageError when not had within STEP_LOCK_WAIT)."""
        lock = digest(STEP_LOCK_PREFIX + key)
        deadline = time.monotonic() + STEP_LOCK_WAIT
        try:
            async with asyncio.timeout(STEP_LOCK_WAIT):
                await self._slots.acquire()
        except TimeoutError:
            raise self._unavailable("too many steps at once") from None
        try:
            while True:
                conn, got = await self._query("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", lock, deadline)
                if got:
                    break
                if time.monotonic() + STEP_LOCK_POLL > deadline:
                    raise self._unavailable("another server's step of this account did not end in time")
                await asyncio.sleep(STEP_LOCK_POLL)
            try:
                yield
            finally:
                # Shielded: a cancelled step still lets go (or drops the connection, which lets go of all).
                await asyncio.shield(self._release(conn, lock))
        finally:
            self._slots.release()

    async def _release(self, conn: psycopg.AsyncConnection[Any], lock: str) -> None:
        """Unlock on the connection that locked (gone already if that connection was closed)."""
        if conn is not self._conn or conn.closed:
            return
        try:
            async with asyncio.timeout(STEP_LOCK_WAIT):
                await conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (lock,))
        except (TimeoutError, psycopg.Error, OSError) as err:
            _LOGGER.warning(
                "Releasing a step lock in %s failed (its connection is closed): %s", self.backend.describe(), err
            )
            await self._drop(conn)

    async def _heartbeat_loop(self) -> None:
        """Keep a live server's lock session from the idle timeout; stop with the connection."""
        while self._conn is not None and not self._closed:
            await asyncio.sleep(STEP_LOCK_HEARTBEAT)
            conn = self._conn
            if conn is None:
                return
            try:
                async with asyncio.timeout(STEP_LOCK_WAIT):
                    await conn.execute("SELECT 1")
            except (TimeoutError, psycopg.Error, OSError):
                await self._drop(conn)
                return

    async def async_close(self) -> None:
        """Close the connection (every lock this server holds ends)."""
        self._closed = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._heartbeat
            self._heartbeat = None
        if self._conn is not None:
            await self._drop(self._conn)


class SharedState(StorageBackend.EphemeralState):
    """Flows, codes and events in the database several servers share."""

    shared = True

    def __init__(self, backend: PostgresBackend) -> None:
        """Nothing opened: the backend's pool is used."""
        super().__init__()
        self.backend = backend
        self._sweeper: asyncio.Task[None] | None = None
        self.step_locks = StepLocks(backend)

    def start(self) -> None:
        """Start sweeping expired rows."""
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep_loop())

    async def async_stop(self) -> None:
        """Stop sweeping; let go of the step locks."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._sweeper
            self._sweeper = None
        await self.step_locks.async_close()

    async def _one(self, sql: str, params: Any) -> Any:
        """One statement in its own transaction, pipelined (one round trip); its first row or None.

        A pooled connection the database closed (a restart) fails: the statement is tried again
        on another one, a few times, before the database counts as unreachable.
        """
        pool = self.backend.pool
        if pool is None:
            raise StorageError(f"The database is unreachable ({self.backend.describe()}): not connected")
        for attempt in range(RETRIES + 1):
            try:
                async with pool.connection() as conn, conn.pipeline():
                    cur = conn.cursor()
                    async with conn.transaction():
                        await cur.execute(sql, params)
                    row = await cur.fetchone() if cur.description is not None else None
                    await cur.close()
                    return row
            except (TimeoutError, PoolTimeout, psycopg.Error, OSError) as err:
                if attempt < RETRIES and isinstance(err, psycopg.OperationalError) and not isinstance(err, PoolTimeout):
                    await self.backend.async_drop_broken_connections()
                    continue
                _LOGGER.warning("Shared login state in %s: %s", self.backend.describe(), err)
                raise StorageError(f"The database is unreachable ({self.backend.describe()}): {err}") from err
        raise AssertionError("unreachable")

    # ---- flows -------------------------------------------------------------------------------

    async def async_put_flow(self, flow_id: str, state: dict[str, Any], ttl: float) -> None:
        """A new flow's row."""
        from .backend import encode

        await self._one(
            "INSERT INTO opp_auth_flows (id, state, expires_at) "
            "VALUES (%s, %s, clock_timestamp() + make_interval(secs => %s))",
            (digest(flow_id), encode(state), ttl),
        )

    async def async_claim_flow(self, flow_id: str, lease: float) -> tuple[dict[str, Any], float] | None:
        """Lease the row of a live flow; wait (at most lease seconds) while another server holds it."""
        key = digest(flow_id)
        deadline = time.monotonic() + lease
        while True:
            row = await self._one(
                "WITH claimed AS (UPDATE opp_auth_flows SET lease_until = clock_timestamp() + make_interval(secs => %s) "
                "WHERE id = %s AND expires_at > clock_timestamp() "
                "AND (lease_until IS NULL OR lease_until < clock_timestamp()) "
                "RETURNING state, extract(epoch FROM clock_timestamp() - created_at)::float8 AS age) "
                "SELECT state, age, false FROM claimed "
                "UNION ALL SELECT NULL, NULL, true FROM opp_auth_flows "
                "WHERE id = %s AND expires_at > clock_timestamp() AND NOT EXISTS (SELECT 1 FROM claimed)",
                (lease, key, key),
            )
            if row is None:
                return None
            state, age, busy = row
            if not busy:
                try:
                    value = json.loads(state)
                except ValueError:
                    return None
                return (value, float(age)) if isinstance(value, dict) else None
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(CLAIM_POLL)

    async def async_save_flow(self, flow_id: str, state: dict[str, Any]) -> None:
        """The state after a step; the lease ends."""
        from .backend import encode

        await self._one(
            "UPDATE opp_auth_flows SET state = %s, lease_until = NULL WHERE id = %s", (encode(state), digest(flow_id))
        )

    async def async_drop_flow(self, flow_id: str) -> None:
        """Delete the row."""
        await self._one("DELETE FROM opp_auth_flows WHERE id = %s", (digest(flow_id),))

    # ---- codes -------------------------------------------------------------------------------

    async def async_put_code(self, code: str, client_id: str, value: dict[str, Any], ttl: float) -> None:
        """A code's row."""
        from .backend import encode

        await self._one(
            "INSERT INTO opp_auth_codes (id, client_id, value, expires_at) "
            "VALUES (%s, %s, %s, clock_timestamp() + make_interval(secs => %s))",
            (digest(code), client_id, encode(value), ttl),
        )

    async def async_take_code(self, code: str, client_id: str) -> dict[str, Any] | None:
        """One DELETE ... RETURNING: of two servers taking the same code at once, one gets it."""
        row = await self._one(
            "DELETE FROM opp_auth_codes WHERE id = %s AND client_id = %s "
            "RETURNING value, expires_at > clock_timestamp()",
            (digest(code), client_id),
        )
        if row is None or not row[1]:
            return None
        try:
            value = json.loads(row[0])
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    async def async_drop_codes(self, codes: list[str]) -> None:
        """Delete displaced codes."""
        if codes:
            await self._one("DELETE FROM opp_auth_codes WHERE id = ANY(%s)", ([digest(c) for c in codes],))

    # ---- plugins' small values -----------------------------------------------------------------

    async def async_put_value(self, key: str, value: dict[str, Any], ttl: float) -> None:
        """Insert or replace the row of key."""
        from .backend import encode

        await self._one(
            "INSERT INTO opp_auth_values (id, value, expires_at) "
            "VALUES (%s, %s, clock_timestamp() + make_interval(secs => %s)) "
            "ON CONFLICT (id) DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at",
            (digest(VALUE_PREFIX + key), encode(value), ttl),
        )

    async def async_get_value(self, key: str) -> tuple[dict[str, Any], float] | None:
        """The live row of key and its seconds left."""
        row = await self._one(
            "SELECT value, extract(epoch FROM expires_at - clock_timestamp())::float8 FROM opp_auth_values "
            "WHERE id = %s AND expires_at > clock_timestamp()",
            (digest(VALUE_PREFIX + key),),
        )
        value = _decoded(row[0]) if row is not None else None
        return (value, float(row[1])) if value is not None and row is not None else None

    async def async_take_value(self, key: str, expected: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """One DELETE ... RETURNING (an expired row goes too, unreturned); with expected, only that value."""
        from .backend import encode

        if expected is None:
            sql, params = "DELETE FROM opp_auth_values WHERE id = %s ", (digest(VALUE_PREFIX + key),)
        else:
            sql = "DELETE FROM opp_auth_values WHERE id = %s AND value = %s "
            params = (digest(VALUE_PREFIX + key), encode(expected))
        row = await self._one(sql + "RETURNING value, expires_at > clock_timestamp()", params)
        if row is None or not row[1]:
            return None
        return _decoded(row[0])

    # ---- events ------------------------------------------------------------------------------

    async def async_publish(self, topic: str, event: dict[str, Any]) -> None:
        """A change record of kind eph: every other server's feed delivers it."""
        await self.backend.async_write([], [{"t": EVENT_KIND, "topic": topic, "e": event}])

    async def async_publish_retained(self, topic: str, event: dict[str, Any], key: str) -> None:
        """An eph record that names its key: the pruner keeps the latest change of each (topic, key)."""
        await self.backend.async_write([], [{"t": EVENT_KIND, "topic": topic, "e": event, KEEP: key}])

    def apply_record(self, record: dict[str, Any]) -> None:
        """An eph record from the feed (another server's)."""
        topic, event = record.get("topic"), record.get("e")
        if isinstance(topic, str) and isinstance(event, dict):
            try:
                self.deliver(topic, event)
            except Exception:
                _LOGGER.exception("Applying a shared %s event failed", topic)

    async def async_barrier(self) -> None:
        """Wait until the feed has applied every change committed before now (StorageError if it cannot)."""
        row = await self._one("SELECT coalesce(max(seq), 0) FROM opp_auth_changes", None)
        seq = int(row[0]) if row else 0
        if self.backend.last_seq >= seq:
            return
        try:
            await self.backend.async_wait_caught_up(seq, timeout=BARRIER_TIMEOUT)
        except TimeoutError:
            raise StorageError(
                f"The database is unreachable ({self.backend.describe()}): the change feed is behind"
            ) from None

    def async_step_lock(self, key: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold key's lock on every server for one login step (:class:`StepLocks`)."""
        return self.step_locks.hold(key)

    async def async_replay(self, topic: str, seconds: float) -> None:
        """Deliver topic's events of the last seconds, and its retained ones, that this server's feed started after."""
        pool = self.backend.pool
        if pool is None:
            return
        try:
            async with pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT extract(epoch FROM clock_timestamp() - at)::float8, records FROM opp_auth_changes "
                    "WHERE (at > clock_timestamp() - make_interval(secs => %s) OR strpos(records, %s) > 0) "
                    "AND seq <= %s AND strpos(records, %s) > 0 ORDER BY seq",
                    (seconds, f'"{KEEP}":', self.backend.last_seq, f'"t":"{EVENT_KIND}"'),
                )
                rows = await cur.fetchall()
                await conn.rollback()
        except (TimeoutError, PoolTimeout, psycopg.Error, OSError) as err:
            _LOGGER.warning("Could not read the recent shared events: %s", err)
            return
        self._deliver_rows(rows, topic)

    async def async_replay_retained(self, conn: Any, upto: int) -> None:
        """Deliver every retained event up to change upto (conn: the feed's; after a reload, as at start).

        A server away longer than the retention reloads the store and lost the events it missed;
        the retained ones (bans, lifted bans) are what it must still learn.
        """
        cur = await conn.execute(
            "SELECT extract(epoch FROM clock_timestamp() - at)::float8, records FROM opp_auth_changes "
            "WHERE strpos(records, %s) > 0 AND seq <= %s AND strpos(records, %s) > 0 ORDER BY seq",
            (f'"{KEEP}":', upto, f'"t":"{EVENT_KIND}"'),
        )
        self._deliver_rows(await cur.fetchall(), None, retained=True)

    def _deliver_rows(self, rows: list[Any], topic: str | None, *, retained: bool = False) -> None:
        """The eph records (of topic; of any topic when None) of change rows (age, records text), in order."""
        for age, text in rows:
            try:
                records = json.loads(text)
            except ValueError:
                continue
            for record in records if isinstance(records, list) else ():
                if not isinstance(record, dict) or record.get("t") != EVENT_KIND:
                    continue
                name, event = record.get("topic"), record.get("e")
                if not isinstance(name, str) or not isinstance(event, dict) or (retained and KEEP not in record):
                    continue
                if topic is None or name == topic:
                    try:
                        self.deliver(name, event, float(age))
                    except Exception:
                        _LOGGER.exception("Replaying a shared %s event failed", name)

    # ---- housekeeping ------------------------------------------------------------------------

    async def async_sweep(self) -> None:
        """Delete expired flows, codes and values."""
        await self._one("DELETE FROM opp_auth_flows WHERE expires_at < clock_timestamp()", None)
        await self._one("DELETE FROM opp_auth_codes WHERE expires_at < clock_timestamp()", None)
        await self._one("DELETE FROM opp_auth_values WHERE expires_at < clock_timestamp()", None)

    async def _sweep_loop(self) -> None:
        """Now and then, the sweep (failures are retried next round)."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                await self.async_sweep()
            except StorageError as err:
                _LOGGER.debug("Sweeping expired flows and codes failed: %s", err)
