"""PostgresBackend: the auth store and plugin documents as rows, changes pushed to every server.

Each server keeps the core's in-memory indexes as a cache. A change is written as
the rows it touches (a user, a token, a document path), in one transaction that
also appends its change records to ``opp_auth_changes`` (a growing ``seq``) and
notifies channel ``opp_auth_changes``. Commits take a transaction-level advisory
lock first, so ``seq`` order is commit order and a reader that saw ``seq`` N has
seen every change before it.

A dedicated connection per server LISTENs. On a notification (or a reconnect,
or a ping every second) it reads every change after the last ``seq`` it applied
and replays the ones other servers made into its cache. A notification is only
a hint to read: one lost, forged or replayed changes nothing by itself, and a
reconnect catches up from the last ``seq``. Changes older than
``change_retention_hours`` are pruned; a server that was away longer reloads
everything.

Staleness: while the listener cannot reach the database, the cache answers
token checks for ``staleness_seconds`` after the last successful contact, then
``fresh_until`` passes and the core refuses every token (fail closed) until the
listener is back and has caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import voluptuous as vol
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from opp_auth import StorageBackend

from .ephemeral import EVENT_KIND, KEEP, SharedState
from .schema import CHANNEL, LOCK_SERVERS, LOCK_WRITE, async_migrate

StorageError = StorageBackend.Error

_LOGGER = logging.getLogger(__name__)

TYPE = "postgresql"
PING_INTERVAL = 1.0
DEFAULT_STALENESS = 30.0
MAX_BACKOFF = 2.0
CATCH_UP_BATCH = 500
PRUNE_INTERVAL = 3600.0
# A single document written whole, or one path's value, may not exceed this (a plugin bug or
# an attack that would otherwise fill the database and every server's memory).
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024

UNAVAILABLE = "The database is unreachable"
# The longest path text a row takes: (key, path) is the primary key, and a btree row holds at most
# 2,704 bytes (compressed); a longer path (a long username's selector) is saved with the whole document.
MAX_PATH_TEXT = 2000


def _url(value: Any) -> str:
    """A postgresql:// or postgres:// URL (libpq's URI form)."""
    if not isinstance(value, str) or urlsplit(value).scheme not in ("postgresql", "postgres"):
        raise vol.Invalid("must be a URL such as postgresql://user:password@host:5432/database")
    return value


CONFIG_SCHEMA = vol.Schema(
    {
        vol.Required("type"): TYPE,
        vol.Required("url"): _url,
        vol.Optional("pool_size", default=10): vol.All(int, vol.Range(min=1, max=1000)),
        vol.Optional("staleness_seconds", default=DEFAULT_STALENESS): vol.All(
            vol.Coerce(float), vol.Range(min=0, max=86400)
        ),
        vol.Optional("connect_timeout", default=5.0): vol.All(vol.Coerce(float), vol.Range(min=0.5, max=120)),
        vol.Optional("change_retention_hours", default=24.0): vol.All(
            vol.Coerce(float), vol.Range(min=0.1, max=24 * 365)
        ),
    }
)


def safe_url(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    user = userinfo.split(":", 1)[0]
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def encode(value: Any) -> str:
    """JSON text for a column; StorageError when value cannot be stored (not JSON, lone surrogates, too big)."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        size = len(text.encode("utf-8"))
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError) as err:
        raise StorageError(f"the change cannot be stored: {type(err).__name__}: {err}") from None
    if size > MAX_DOCUMENT_BYTES:
        raise StorageError(f"the change cannot be stored: {size} bytes, more than {MAX_DOCUMENT_BYTES}")
    return text


def path_text(path: Iterable[Any]) -> str:
    """A document path as stored: its JSON array, ASCII-escaped, so prefixes compare as text.

    The same path always gives the same text (a selector step is a one-item object).
    """
    return json.dumps(list(path), ensure_ascii=True, separators=(",", ":"))


def _subtree_range(text: str) -> tuple[str, str]:
    """The byte-order range of the path texts of ``text`` and every path below it (texts are ASCII).

    A path's text without its closing ``]`` ends with a whole JSON value, which a longer path
    follows with ``,`` and the path itself with ``]``: the texts t with ``text[:-1]`` <= t <
    ``text[:-1] + "^"`` (``^`` is the character after ``]``) are exactly the subtree.
    """
    stem = text[:-1]
    return stem, stem + chr(ord("]") + 1)


def _entity(record: dict[str, Any]) -> list[tuple[str, str]]:
    """The entries an auth record sets or deletes (for ordering own and remote changes)."""
    kind = record.get("t")
    if kind in ("user", "group", "cred", "token"):
        value = record.get("v")
        return [(str(kind), str(value.get("id")))] if isinstance(value, dict) else []
    if kind in ("del_user", "del_cred", "del_token", "usage"):
        name = {"del_user": "user", "del_cred": "cred", "del_token": "token", "usage": "token"}[str(kind)]
        return [(name, str(record.get("id")))]
    if kind == "del_tokens":
        return [("token", str(i)) for i in record.get("ids") or ()]
    return []


class PostgresBackend(StorageBackend):
    """Storage type ``postgresql``: one database shared by several servers."""

    TYPE = TYPE
    CONFIG_SCHEMA = CONFIG_SCHEMA
    shares_config_dir = True

    def __init__(self, config: dict[str, Any], config_dir: str) -> None:
        """Nothing connects before async_open."""
        super().__init__(config, config_dir)
        self.url: str = config["url"]
        self.staleness: float = config.get("staleness_seconds", DEFAULT_STALENESS)
        self.connect_timeout: float = config.get("connect_timeout", 5.0)
        self.retention_hours: float = config.get("change_retention_hours", 24.0)
        self.pool: AsyncConnectionPool | None = None
        self.origin = uuid.uuid4().hex
        # The last change this server applied (or wrote and then read back).
        self.last_seq = 0
        self._own: dict[tuple[str, str], int] = {}  # entry -> seq of this server's latest write of it
        self._own_docs: dict[str, int] = {}  # document key -> seq of this server's latest write
        self._auth_log: AuthLog | None = None
        self._documents: dict[str, PgDocument] = {}
        self._shared: SharedState | None = None
        self._listener: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._last_contact = time.monotonic()
        self._closing = False
        self._resync = False
        self._alone: psycopg.AsyncConnection[Any] | None = None  # the servers' lock, held alone (copy)
        self.connected = asyncio.Event()
        self._caught_up = asyncio.Condition()

    def describe(self) -> str:
        """The database URL without its password."""
        return safe_url(self.url)

    # ---- lifecycle ---------------------------------------------------------------------------

    def _new_pool(self) -> AsyncConnectionPool:
        """A pool of connections to the database (not opened)."""
        return AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=max(1, int(self.config.get("pool_size", 10))),
            open=False,
            timeout=self.connect_timeout,
            reconnect_timeout=365 * 86400.0,
            kwargs={"connect_timeout": max(1, math.ceil(self.connect_timeout))},
            name="opp-auth",
        )

    async def _async_renew_pool(self) -> None:
        """After contact with the database came back: a fresh pool, the old one closed in the background.

        The old pool replaces each connection the outage broke with attempts whose delays double
        (1, 2, 4... s): after a long outage its next attempt can come long after the database is
        back, and writes would keep answering 503 until then.
        """
        fresh = self._new_pool()
        try:
            await fresh.open(wait=True, timeout=self.connect_timeout)
        except Exception as err:  # noqa: BLE001 - keep the old pool; its own attempts go on
            _LOGGER.warning("A fresh connection pool to %s could not open: %s", self.describe(), err)
            with contextlib.suppress(Exception):
                await fresh.close(timeout=1.0)
            return
        old, self.pool = self.pool, fresh
        if old is not None:
            asyncio.ensure_future(old.close(timeout=10.0)).add_done_callback(_consume)

    async def async_open(self) -> None:
        """Open the pool, migrate the schema, note where the change feed starts."""
        self.pool = self._new_pool()
        try:
            await self.pool.open(wait=True, timeout=self.connect_timeout)
            async with self.pool.connection() as conn:
                await async_migrate(conn)
                # A storage copy holds the servers' lock alone while it runs (async_servers_running):
                # nothing may write to the database meanwhile.
                cur = await conn.execute("SELECT pg_try_advisory_lock_shared(%s)", (LOCK_SERVERS,))
                row = await cur.fetchone()
                if not (row and row[0]):
                    raise StorageError(
                        f"opp-auth storage copy is using the database {self.describe()}; start again once it has ended"
                    )
                await conn.execute("SELECT pg_advisory_unlock_shared(%s)", (LOCK_SERVERS,))
                cur = await conn.execute("SELECT coalesce(max(seq), 0) FROM opp_auth_changes")
                row = await cur.fetchone()
                self.last_seq = int(row[0]) if row else 0
        except (TimeoutError, psycopg.Error, OSError, Exception) as err:
            await self._close_pool()
            if isinstance(err, StorageError):
                raise
            raise StorageError(f"Cannot use the database {self.describe()}: {err}") from err
        self._last_contact = time.monotonic()

    async def async_check_secret(self, fingerprint: str) -> None:
        """The first server records its secret's fingerprint; a server with another secret is refused."""
        assert self.pool is not None
        try:
            async with self.pool.connection() as conn:
                await conn.execute(
                    "INSERT INTO opp_auth_meta (name, value) VALUES ('secret_fingerprint', %s) "
                    "ON CONFLICT (name) DO NOTHING",
                    (fingerprint,),
                )
                cur = await conn.execute("SELECT value FROM opp_auth_meta WHERE name = 'secret_fingerprint'")
                row = await cur.fetchone()
        except (psycopg.Error, OSError) as err:
            raise StorageError(f"Cannot use the database {self.describe()}: {err}") from err
        if row is None or row[0] != fingerprint:
            raise StorageError(
                f"The servers using {self.describe()} sign tokens with another secret than this one's "
                f"{self.config_dir}/.opp-auth-secret, so their tokens would not work here. Copy .opp-auth-secret "
                "from a server that already uses this database (every server needs the same file)."
            )

    async def async_close(self) -> None:
        """Write what is pending, stop listening, close the pool."""
        if self._shared is not None:
            await self._shared.async_stop()
        for document in list(self._documents.values()):
            try:
                await document.async_flush()
            except StorageError as err:
                _LOGGER.error("Changes not saved at shutdown: %s", err)
        self._closing = True
        for task in (self._listener, self._pruner):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._listener = self._pruner = None
        if self._alone is not None:
            with contextlib.suppress(Exception):
                await self._alone.close()
            self._alone = None
        await self._close_pool()

    async def async_drop_broken_connections(self) -> None:
        """After a pooled connection failed: test every idle one and replace those the database closed.

        A restarted database leaves every idle connection broken; without this, each retry would
        take the next broken one and a write would fail although the database is back.
        """
        if self.pool is not None:
            with contextlib.suppress(TimeoutError, psycopg.Error, OSError):
                await self.pool.check()

    async def _close_pool(self) -> None:
        """Close the pool (quietly)."""
        if self.pool is not None:
            pool, self.pool = self.pool, None
            with contextlib.suppress(Exception):
                await pool.close(timeout=2.0)

    def start_listening(self) -> None:
        """Start the listener (once the auth store is loaded: it replays into it)."""
        if self._listener is None and not self._closing:
            self._listener = asyncio.ensure_future(self._listen_loop())
            self._pruner = asyncio.ensure_future(self._prune_loop())
            if self._shared is not None:
                self._shared.start()

    # ---- the parts the core asks for -------------------------------------------------------

    def auth_log(self) -> AuthLog:
        """The auth store's rows."""
        if self._auth_log is None:
            self._auth_log = AuthLog(self)
        return self._auth_log

    def ephemeral_state(self) -> SharedState:
        """Flows, codes, failure counters and bans shared by every server on the database."""
        if self._shared is None:
            self._shared = SharedState(self)
        return self._shared

    def document(
        self,
        key: str,
        version: int,
        *,
        private: bool = True,
        migrate: Callable[[int, Any], Any] | None = None,
        journal: bool = False,
    ) -> PgDocument:
        """A plugin document as rows of opp_auth_documents."""
        document = PgDocument(self, key, version, migrate)
        self._documents[key] = document
        return document

    # ---- writing ---------------------------------------------------------------------------

    async def async_write(self, ops: list[tuple[str, Any]], records: list[dict[str, Any]]) -> int:
        """Run statements and append their change records in one transaction; the change's seq.

        StorageError when the database cannot be reached (the caller keeps its change queued)
        or refuses the change (IntegrityError: a race another server won; raised as ConflictError).
        """
        if self.pool is None:
            raise StorageError(f"{UNAVAILABLE} ({self.describe()}): not connected")
        text = encode(records)
        for attempt in (1, 2):
            try:
                seq = await self._write_once(ops, text)
                break
            except psycopg.IntegrityError as err:
                raise ConflictError(f"The database refused the change: {err.diag.message_primary or err}") from err
            except psycopg.DataError as err:
                raise StorageError(f"The database refused the change: {err.diag.message_primary or err}") from err
            except (TimeoutError, psycopg.Error, OSError) as err:
                # A pooled connection the database closed (a restart) fails once: try a fresh one. Had the
                # commit itself gone through, the second write repeats records that set or delete whole
                # entries: the same state, and one more change row that replays harmlessly.
                if attempt == 1 and isinstance(err, psycopg.OperationalError) and not isinstance(err, PoolTimeout):
                    await self.async_drop_broken_connections()
                    continue
                _LOGGER.warning("Writing to %s failed: %s", self.describe(), err)
                raise StorageError(f"{UNAVAILABLE} ({self.describe()}): {err}") from err
        for record in records:
            for entry in _entity(record):
                self._own[entry] = seq
            if str(record.get("t", "")).startswith("doc"):
                self._own_docs[record["k"]] = seq
        self._last_contact = time.monotonic()
        return seq

    async def _write_once(self, ops: list[tuple[str, Any]], records_text: str) -> int:
        """One transaction, pipelined: the row statements, then the change row with its number and NOTIFY.

        The advisory lock is taken by the last statement and held to the commit, so change numbers
        follow commit order (row locks order writes of the same rows before that).
        """
        assert self.pool is not None
        async with self.pool.connection() as conn, conn.pipeline():
            final = conn.cursor()
            async with conn.transaction():
                async with conn.cursor() as cur:
                    for sql, params in ops:
                        if isinstance(params, list):
                            await cur.executemany(sql, params)
                        else:
                            await cur.execute(sql, params)
                await final.execute(
                    "WITH lock AS (SELECT pg_advisory_xact_lock(%s)), "
                    "change AS (INSERT INTO opp_auth_changes (origin, records) SELECT %s, %s FROM lock RETURNING seq) "
                    "SELECT seq, pg_notify(%s, seq::text) FROM change",
                    (LOCK_WRITE, self.origin, records_text, CHANNEL),
                )
            # Read after the COMMIT was queued: statements, change row and commit in one round trip.
            row = await final.fetchone()
            await final.close()
            assert row is not None
            return int(row[0])

    # ---- the change feed ------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        """LISTEN on a connection of its own; catch up at each notification, ping, reconnect."""
        backoff = 0.1
        lost = False
        while not self._closing:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=max(1, math.ceil(self.connect_timeout))
                )
                await conn.execute(f"LISTEN {CHANNEL}")
                # Held while this server runs: `opp-auth storage copy` refuses while anyone holds it.
                await conn.execute("SELECT pg_advisory_lock_shared(%s)", (LOCK_SERVERS,))
                await self._catch_up(conn)
                if lost:  # back after an outage: writes work again now, not at the old pool's next attempt
                    await self._async_renew_pool()
                    lost = False
                self.fresh_until = math.inf
                self.connected.set()
                backoff = 0.1
                while not self._closing:
                    notified = False
                    async for _notify in conn.notifies(timeout=PING_INTERVAL, stop_after=1):
                        notified = True
                    if notified or self._resync:
                        await self._catch_up(conn)
                    else:
                        await asyncio.wait_for(conn.execute("SELECT 1"), self.connect_timeout)
                    self._last_contact = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - any failure: reconnect, never stop listening
                if self.connected.is_set():
                    _LOGGER.warning(
                        "Lost the change feed of %s (%s); token checks answered from cache for %.0f s",
                        self.describe(),
                        err,
                        self.staleness,
                    )
                self.connected.clear()
                self.fresh_until = self._last_contact + self.staleness
                lost = True
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
            if not self._closing:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def schedule_resync(self) -> None:
        """Have the listener replace the cache with the database's content (after a lost race)."""
        self._resync = True

    async def _catch_up(self, conn: Any) -> None:
        """Apply every change after last_seq, in order; reload everything when some were pruned."""
        cur = await conn.execute("SELECT value FROM opp_auth_meta WHERE name = 'pruned_through'")
        row = await cur.fetchone()
        if self._resync or (row is not None and int(row[0]) > self.last_seq):
            self._resync = False
            await self._reload_all(conn)
        while True:
            cur = await conn.execute(
                "SELECT seq, origin, records FROM opp_auth_changes WHERE seq > %s ORDER BY seq LIMIT %s",
                (self.last_seq, CATCH_UP_BATCH),
            )
            rows = await cur.fetchall()
            for seq, origin, text in rows:
                self._apply(int(seq), origin, text)
            if len(rows) < CATCH_UP_BATCH:
                break
        self._forget_own()
        async with self._caught_up:
            self._caught_up.notify_all()

    def _apply(self, seq: int, origin: str, text: str) -> None:
        """One change: remote auth records into the cache, document records into their documents."""
        self.last_seq = max(self.last_seq, seq)
        if origin == self.origin:
            return
        try:
            records = json.loads(text)
        except ValueError:
            _LOGGER.error("Ignoring change %s: not JSON", seq)
            return
        if not isinstance(records, list):
            return
        auth: list[dict[str, Any]] = []
        for record in records:
            if not isinstance(record, dict):
                continue
            kind = str(record.get("t", ""))
            if kind.startswith("doc"):
                self._apply_document(seq, record)
            elif kind == EVENT_KIND:
                if self._shared is not None:
                    self._shared.apply_record(record)
            elif not any(self._own.get(entry, 0) > seq for entry in _entity(record)):
                # An entry this server wrote after this change already holds the later state.
                auth.append(record)
        if auth:
            self.publish_remote(auth)

    def _apply_document(self, seq: int, record: dict[str, Any]) -> None:
        """A document change from another server."""
        key = record.get("k")
        document = self._documents.get(key) if isinstance(key, str) else None
        if document is None or not document.loaded:
            return
        if self._own_docs.get(document.key, 0) > seq or record.get("t") == "doc_all":
            # A whole rewrite, or a change older than one of ours: read the document again.
            document.schedule_reload()
        else:
            document.apply_remote(record)

    def _forget_own(self) -> None:
        """Drop the notes of own writes the feed has passed."""
        if self._own:
            self._own = {k: s for k, s in self._own.items() if s > self.last_seq}
        if self._own_docs:
            self._own_docs = {k: s for k, s in self._own_docs.items() if s > self.last_seq}

    async def _reload_all(self, conn: Any) -> None:
        """Changes this server missed were pruned: replace the cache with the database's content."""
        _LOGGER.warning("Changes missed while away from %s were pruned: reloading everything", self.describe())
        data, seq = await load_auth(conn)
        self.last_seq = seq
        self.publish_remote([{"t": "all", "v": data}])
        if self._shared is not None:  # the bans and lifted bans it missed
            await self._shared.async_replay_retained(conn, seq)
        for document in self._documents.values():
            if document.loaded:
                document.schedule_reload()

    async def async_wait_caught_up(self, seq: int, timeout: float = 5.0) -> bool:
        """Wait until the feed has applied change seq (tests and the copy command)."""
        async with asyncio.timeout(timeout), self._caught_up:
            await self._caught_up.wait_for(lambda: self.last_seq >= seq)
        return True

    async def _prune_loop(self) -> None:
        """Now and then delete changes older than the retention (one server wins each round)."""
        while not self._closing:
            await asyncio.sleep(PRUNE_INTERVAL)
            try:
                await self.async_prune()
            except Exception as err:  # noqa: BLE001 - retried next round
                _LOGGER.warning("Pruning old changes failed: %s", err)

    async def async_prune(self, older_than_hours: float | None = None) -> int:
        """Delete changes older than the retention; how many."""
        hours = self.retention_hours if older_than_hours is None else older_than_hours
        assert self.pool is not None
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_WRITE,))
            # The latest change of each retained event's (topic, key) stays (a ban, a lifted ban): a
            # server started any time later replays it. Such a change holds that one record only.
            cur = await conn.execute(
                "DELETE FROM opp_auth_changes WHERE at < now() - make_interval(secs => %s) "
                f"AND seq NOT IN (SELECT DISTINCT ON (r ->> 'topic', r ->> '{KEEP}') c.seq "
                "FROM opp_auth_changes c, json_array_elements(c.records::json) r "
                "WHERE strpos(c.records, %s) > 0 AND json_typeof(r) = 'object' AND r ->> 't' = %s "
                f"AND r ->> '{KEEP}' IS NOT NULL ORDER BY r ->> 'topic', r ->> '{KEEP}', c.seq DESC) RETURNING seq",
                (hours * 3600.0, f'"{KEEP}":', EVENT_KIND),
            )
            seqs = [int(r[0]) for r in await cur.fetchall()]
            if seqs:
                await conn.execute(
                    "UPDATE opp_auth_meta SET value = greatest(value::bigint, %s)::text WHERE name = 'pruned_through'",
                    (max(seqs),),
                )
        return len(seqs)

    # ---- storage copy ----------------------------------------------------------------------

    async def async_export(self) -> dict[str, Any]:
        """Everything in the database."""
        assert self.pool is not None
        async with self.pool.connection() as conn:
            auth, _seq = await load_auth(conn)
            cur = await conn.execute("SELECT key, version FROM opp_auth_document_versions ORDER BY key")
            documents: dict[str, Any] = {}
            for key, version in await cur.fetchall():
                documents[key] = (int(version), await load_document(conn, key))
        return {"auth": auth if any(auth.get(k) for k in auth) else None, "documents": documents}

    async def async_import(self, exported: dict[str, Any]) -> None:
        """Write everything in one transaction (the database must hold no opp-auth data)."""
        assert self.pool is not None
        auth = exported.get("auth") or {}
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_WRITE,))
            for table in ("users", "refresh_tokens", "documents"):
                cur = await conn.execute(f"SELECT 1 FROM opp_auth_{table} LIMIT 1")
                if await cur.fetchone() is not None:
                    raise StorageError(f"{self.describe()} already holds opp-auth data; copy into an empty database")
            async with conn.cursor() as cur:
                users = [u for u in auth.get("users", []) if isinstance(u, dict) and isinstance(u.get("id"), str)]
                user_ids = {u["id"] for u in users}
                await cur.executemany(
                    "INSERT INTO opp_auth_users (id, data) VALUES (%s, %s)", [(u["id"], encode(u)) for u in users]
                )
                groups = [g for g in auth.get("groups", []) if isinstance(g, dict) and isinstance(g.get("id"), str)]
                await cur.executemany(
                    "INSERT INTO opp_auth_groups (id, data) VALUES (%s, %s)", [(g["id"], encode(g)) for g in groups]
                )
                creds = [c for c in auth.get("credentials", []) if isinstance(c, dict) and c.get("user_id") in user_ids]
                await cur.executemany(
                    "INSERT INTO opp_auth_credentials (id, user_id, data) VALUES (%s, %s, %s)",
                    [(c["id"], c["user_id"], encode(c)) for c in creds],
                )
                tokens = [
                    t for t in auth.get("refresh_tokens", []) if isinstance(t, dict) and t.get("user_id") in user_ids
                ]
                await cur.executemany(
                    "INSERT INTO opp_auth_refresh_tokens (id, user_id, credential_id, data) VALUES (%s, %s, %s, %s)",
                    [(t["id"], t["user_id"], t.get("credential_id"), encode(t)) for t in tokens],
                )
                for key, (version, data) in (exported.get("documents") or {}).items():
                    await cur.execute(
                        "INSERT INTO opp_auth_document_versions (key, version) VALUES (%s, %s)", (key, version)
                    )
                    await cur.execute(
                        "INSERT INTO opp_auth_documents (key, path, seq, value) "
                        "VALUES (%s, '[]', nextval('opp_auth_document_seq'), %s)",
                        (key, encode(data)),
                    )
                await cur.execute(
                    "INSERT INTO opp_auth_changes (origin, records) VALUES (%s, %s)",
                    (self.origin, encode([{"t": "all_imported"}])),
                )

    async def async_servers_running(self) -> bool:
        """Whether a server holds the database (its listener's shared lock). When none does, this backend
        takes the lock alone and keeps it until it is closed: a server (or a command) that starts on the
        database meanwhile is refused (storage copy: the data must stand still)."""
        assert self.pool is not None
        conn = await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, connect_timeout=max(1, math.ceil(self.connect_timeout))
        )
        try:
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_SERVERS,))
            row = await cur.fetchone()
        except BaseException:
            await conn.close()
            raise
        if not (row and row[0]):
            await conn.close()
            return True
        if self._alone is not None:
            await self._alone.close()
        self._alone = conn  # closed (the lock with it) by async_close
        return False


class ConflictError(StorageError):
    """The database refused a change because another server's change came first (a race)."""


# ---- reading -------------------------------------------------------------------------------


async def load_auth(conn: Any) -> tuple[dict[str, Any], int]:
    """The auth data in .storage/auth's format and the seq of the last change it contains (one snapshot)."""
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        cur = await conn.execute("SELECT coalesce(max(seq), 0) FROM opp_auth_changes")
        row = await cur.fetchone()
        seq = int(row[0]) if row else 0
        data: dict[str, Any] = {}
        for name in ("users", "groups", "credentials", "refresh_tokens"):
            # One JSON array built by the server: one parse, not one per row.
            cur = await conn.execute(
                f"SELECT '[' || coalesce(string_agg(data, ',' ORDER BY pos), '') || ']' FROM opp_auth_{name}"
            )
            row = await cur.fetchone()
            data[name] = json.loads(row[0]) if row else []
        cur = await conn.execute("SELECT id, usage FROM opp_auth_refresh_tokens WHERE usage IS NOT NULL")
        usage = {token_id: json.loads(text) for token_id, text in await cur.fetchall()}
    if usage:
        for token in data["refresh_tokens"]:
            found = usage.get(token.get("id"))
            if isinstance(found, dict):
                token.update(found)
    return data, seq


async def load_document(conn: Any, key: str) -> Any:
    """A document's data: its whole-document row, then its path rows in write order."""
    cur = await conn.execute("SELECT path, value FROM opp_auth_documents WHERE key = %s ORDER BY seq", (key,))
    data: Any = None
    records: list[dict[str, Any]] = []
    for path, value in await cur.fetchall():
        keys = json.loads(path)
        if not keys:
            data = json.loads(value) if value is not None else None
            records = []
        elif value is None:
            records.append({"t": "del", "p": keys, "n": 0})
        else:
            records.append({"t": "set", "p": keys, "v": json.loads(value), "n": 0})
    if records:
        data = apply_path_records(data, records, key)
    return data


# ---- the auth store's persistence ------------------------------------------------------------


def _auth_ops(record: dict[str, Any]) -> list[tuple[str, Any]]:
    """The statements one auth record needs (rows it touches, nothing else)."""
    kind = record.get("t")
    if kind == "user":
        v = record["v"]
        return [
            (
                "INSERT INTO opp_auth_users (id, data) VALUES (%s, %s) ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data",
                (v["id"], encode(v)),
            )
        ]
    if kind == "group":
        v = record["v"]
        return [
            (
                "INSERT INTO opp_auth_groups (id, data) VALUES (%s, %s) "
                "ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data",
                (v["id"], encode(v)),
            )
        ]
    if kind == "cred":
        v = record["v"]
        return [
            (
                "INSERT INTO opp_auth_credentials (id, user_id, data) VALUES (%s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET user_id = EXCLUDED.user_id, data = EXCLUDED.data",
                (v["id"], v["user_id"], encode(v)),
            )
        ]
    if kind == "token":
        v = record["v"]
        return [
            (
                "INSERT INTO opp_auth_refresh_tokens (id, user_id, credential_id, data) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET user_id = EXCLUDED.user_id, "
                "credential_id = EXCLUDED.credential_id, data = EXCLUDED.data, usage = NULL",
                (v["id"], v["user_id"], v.get("credential_id"), encode(v)),
            )
        ]
    if kind == "del_user":
        return [("DELETE FROM opp_auth_users WHERE id = %s", (record["id"],))]
    if kind == "del_cred":
        return [
            ("DELETE FROM opp_auth_refresh_tokens WHERE credential_id = %s", (record["id"],)),
            ("DELETE FROM opp_auth_credentials WHERE id = %s", (record["id"],)),
        ]
    if kind == "del_token":
        return [("DELETE FROM opp_auth_refresh_tokens WHERE id = %s", (record["id"],))]
    if kind == "del_tokens":
        return [("DELETE FROM opp_auth_refresh_tokens WHERE id = ANY(%s)", (list(record["ids"]),))]
    if kind == "usage":
        usage = {k: record.get(k) for k in ("last_used_at", "last_used_ip", "expire_at")}
        return [("UPDATE opp_auth_refresh_tokens SET usage = %s WHERE id = %s", (encode(usage), record["id"]))]
    raise StorageError(f"Unknown change record type {kind!r}")


class AuthLog:
    """The auth store's RecordLog over the database (see opp_auth.backend.RecordLog)."""

    def __init__(self, backend: PostgresBackend) -> None:
        """Nothing queued."""
        self.backend = backend
        self.snapshot_func: Callable[[], Any] | None = None
        self._queue: list[tuple[dict[str, Any], list[tuple[str, Any]]]] = []
        self._seq = 0  # records queued so far
        self._done = 0  # records committed so far
        self._writer: asyncio.Future[None] | None = None

    async def async_load_journaled(self) -> tuple[Any | None, list[dict[str, Any]]]:
        """The rows as .storage/auth data (None when the database holds no user and no group)."""
        assert self.backend.pool is not None
        try:
            async with self.backend.pool.connection() as conn:
                data, seq = await load_auth(conn)
        except (psycopg.Error, OSError) as err:
            raise StorageError(f"Cannot read {self.backend.describe()}: {err}") from err
        # Changes from the start of this server on are replayed by the listener (idempotent).
        self.backend.last_seq = min(self.backend.last_seq, seq)
        self.backend.start_listening()
        if not data["users"] and not data["groups"]:
            return None, []
        return data, []

    def journal_append(self, record: dict[str, Any]) -> int:
        """Queue a record with its statements (encoded now: a value that cannot be stored raises here)."""
        ops = _auth_ops(record)
        self._queue.append((record, ops))
        self._seq += 1
        return self._seq

    async def async_commit(self) -> None:
        """Return once every queued record is committed (several callers share one transaction)."""
        target = self._seq
        while self._done < target:
            if self._writer is None:
                writer = self._writer = asyncio.ensure_future(self._async_write())
                writer.add_done_callback(_consume)
            await asyncio.shield(self._writer)

    async def _async_write(self) -> None:
        """Write what is queued in one transaction."""
        try:
            batch = list(self._queue)
            if not batch:
                return
            ops = [op for _record, record_ops in batch for op in record_ops]
            try:
                await self.backend.async_write(ops, [record for record, _ in batch])
            except ConflictError:
                # Another server's change won a race (a user removed meanwhile): drop ours, and
                # let the feed bring the cache to the database's state.
                del self._queue[: len(batch)]
                self._done += len(batch)
                self.backend.schedule_resync()
                raise
            del self._queue[: len(batch)]
            self._done += len(batch)
        finally:
            self._writer = None

    async def async_compact(self) -> None:
        """Nothing to compact: each change wrote its rows."""

    async def async_flush(self) -> None:
        """Commit what is queued (shutdown)."""
        if self._queue:
            await self.async_commit()


def _consume(fut: asyncio.Future[None]) -> None:
    """Each waiter got the exception raised; mark it retrieved."""
    if not fut.cancelled():
        fut.exception()


# ---- plugin documents ------------------------------------------------------------------------


class PgDocument:
    """A plugin document (the API of opp_auth.storage.Store) as rows of opp_auth_documents.

    A whole save replaces the document's rows with one; a path save
    (``async_save_changes``) writes one row per path and deletes the rows below
    it. Loading applies the rows in write order, as a journal is replayed.
    """

    def __init__(
        self, backend: PostgresBackend, key: str, version: int, migrate: Callable[[int, Any], Any] | None
    ) -> None:
        """Nothing read before async_load."""
        self.backend = backend
        self.key = key
        self.version = version
        self._migrate = migrate
        self._data: Any = None
        self.loaded = False
        self._listeners: list[Callable[[Any], None]] = []
        self._delay_handle: asyncio.TimerHandle | None = None
        self._data_func: Callable[[], Any] | None = None
        self._reload: asyncio.Future[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def has_pending_save(self) -> bool:
        """Whether data waits for a delayed write."""
        return self._data_func is not None

    def listen(self, callback: Callable[[Any], None]) -> None:
        """callback(data) after another server changed this document."""
        self._listeners.append(callback)

    async def async_load(self) -> Any | None:
        """The document (migrated when stored at an older version); None when there is none."""
        data, seq = await self._async_read()
        self._data = data
        self.loaded = True
        if seq < self.backend.last_seq:
            # The feed went past this snapshot before the document was registered as loaded.
            self.schedule_reload()
        return data

    async def _async_read(self) -> tuple[Any, int]:
        """The document and the seq of the last change its snapshot holds."""
        pool = self.backend.pool
        if pool is None:
            raise StorageError(f"{UNAVAILABLE} ({self.backend.describe()}): not connected")
        try:
            async with pool.connection() as conn, conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                cur = await conn.execute("SELECT coalesce(max(seq), 0) FROM opp_auth_changes")
                row = await cur.fetchone()
                seq = int(row[0]) if row else 0
                cur = await conn.execute("SELECT version FROM opp_auth_document_versions WHERE key = %s", (self.key,))
                row = await cur.fetchone()
                version = int(row[0]) if row else None
                data = await load_document(conn, self.key)
        except (psycopg.Error, OSError) as err:
            raise StorageError(f"Cannot read {self.key} from {self.backend.describe()}: {err}") from err
        if version is not None and version != self.version:
            if self._migrate is None or version > self.version:
                raise StorageError(
                    f"{self.key} in {self.backend.describe()} has version {version}, this opp-auth reads "
                    f"version {self.version}. It was written by a newer release: upgrade opp-auth."
                )
            data = self._migrate(version, data)
        return data, seq

    async def async_save(self, data: Any) -> None:
        """Replace the whole document."""
        self._cancel_delay()
        text = encode(data)
        ops: list[tuple[str, Any]] = [
            ("DELETE FROM opp_auth_documents WHERE key = %s", (self.key,)),
            (
                "INSERT INTO opp_auth_documents (key, path, seq, value) "
                "VALUES (%s, '[]', nextval('opp_auth_document_seq'), %s)",
                (self.key, text),
            ),
            self._version_op(),
        ]
        async with self._lock:
            await self.backend.async_write(ops, [{"t": "doc_all", "k": self.key}])
        self._data = data

    async def async_save_func(self, data_func: Callable[[], Any]) -> None:
        """Save what data_func returns now."""
        await self.async_save(data_func())

    async def async_save_changes(self, data: Any, paths: Iterable[tuple[str, ...]]) -> None:
        """Write the entries of data at paths (a missing one is deleted), one row each."""
        ops: list[tuple[str, Any]] = [self._version_op()]
        records: list[dict[str, Any]] = []
        for path in paths:
            try:
                keys = StorageBackend.check_path(path)
            except ValueError as err:
                raise StorageError(f"Cannot save a change to {self.key}: {err}") from None
            node = StorageBackend.value_at(data, keys)
            text = path_text(keys)
            if len(text) > MAX_PATH_TEXT:
                await self.async_save(data)
                return
            ops.append(
                (
                    # The path and its descendants: a range of the (key, path COLLATE "C") index
                    # (starts_with read every row of the document: 100,000 at 100,000 users).
                    "DELETE FROM opp_auth_documents WHERE key = %s "
                    'AND (path COLLATE "C") >= %s AND (path COLLATE "C") < %s',
                    (self.key, *_subtree_range(text)),
                )
            )
            if node is StorageBackend.MISSING:
                ops.append(
                    (
                        "INSERT INTO opp_auth_documents (key, path, seq, value) "
                        "VALUES (%s, %s, nextval('opp_auth_document_seq'), NULL)",
                        (self.key, text),
                    )
                )
                records.append({"t": "doc_del", "k": self.key, "p": keys})
            else:
                ops.append(
                    (
                        "INSERT INTO opp_auth_documents (key, path, seq, value) "
                        "VALUES (%s, %s, nextval('opp_auth_document_seq'), %s)",
                        (self.key, text, encode(node)),
                    )
                )
                records.append({"t": "doc", "k": self.key, "p": keys, "v": node})
        if not records:
            return
        async with self._lock:
            await self.backend.async_write(ops, records)
        self._data = data

    def _version_op(self) -> tuple[str, Any]:
        """Record the document's version."""
        return (
            "INSERT INTO opp_auth_document_versions (key, version) VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET version = EXCLUDED.version",
            (self.key, self.version),
        )

    def async_delay_save(self, data_func: Callable[[], Any], delay: float = 1.0) -> None:
        """Save later, coalescing: the latest data_func is called when the timer fires."""
        self._data_func = data_func
        if self._delay_handle is None:
            self._delay_handle = asyncio.get_running_loop().call_later(delay, self._fire_delayed)

    def _fire_delayed(self) -> None:
        """Timer: start the delayed write."""
        self._delay_handle = None
        func, self._data_func = self._data_func, None
        if func is not None:
            task = asyncio.ensure_future(self.async_save(func()))
            task.add_done_callback(_log_failure)

    def _cancel_delay(self) -> None:
        """Forget the timer (a write now includes its data)."""
        if self._delay_handle is not None:
            self._delay_handle.cancel()
            self._delay_handle = None

    async def async_wait_saved(self) -> None:
        """Write a delayed save now."""
        await self.async_flush()

    async def async_flush(self) -> None:
        """Write a delayed save now (shutdown)."""
        self._cancel_delay()
        func, self._data_func = self._data_func, None
        if func is not None:
            await self.async_save(func())

    async def async_remove(self) -> None:
        """Delete the document."""
        self._cancel_delay()
        self._data_func = None
        ops: list[tuple[str, Any]] = [
            ("DELETE FROM opp_auth_documents WHERE key = %s", (self.key,)),
            ("DELETE FROM opp_auth_document_versions WHERE key = %s", (self.key,)),
        ]
        async with self._lock:
            await self.backend.async_write(ops, [{"t": "doc_all", "k": self.key}])
        self._data = None

    # ---- changes from other servers ---------------------------------------------------------

    def apply_remote(self, record: dict[str, Any]) -> None:
        """Another server set or deleted a path: apply it to the data, tell the listeners."""
        keys = record.get("p")
        if not isinstance(keys, list) or not keys:
            self.schedule_reload()
            return
        kind = "set" if record.get("t") == "doc" else "del"
        self._data = apply_path_records(self._data, [{"t": kind, "p": keys, "v": record.get("v"), "n": 0}], self.key)
        self._tell()

    def schedule_reload(self) -> None:
        """Read the whole document again (soon) and tell the listeners."""
        if self._reload is None:
            self._reload = asyncio.ensure_future(self._async_reload())

    async def _async_reload(self) -> None:
        """Reload, retrying while the database is away."""
        try:
            while True:
                try:
                    self._data, _seq = await self._async_read()
                    break
                except StorageError as err:
                    _LOGGER.warning("Reloading %s failed (retrying): %s", self.key, err)
                    await asyncio.sleep(1.0)
        finally:
            self._reload = None
        self._tell()

    def _tell(self) -> None:
        """Call the listeners with the current data."""
        for callback in self._listeners:
            try:
                callback(self._data)
            except Exception:
                _LOGGER.exception("A listener of %s failed", self.key)


def apply_path_records(data: Any, records: list[dict[str, Any]], where: str = "") -> Any:
    """Apply set/del records (``{"t", "p": [steps], "v"}``) by the core's document path rules."""
    for record in records:
        try:
            data = StorageBackend.apply_path_record(data, record)
        except ValueError as err:
            _LOGGER.error("Ignoring a stored change of %s: %s", where, err)
    return data


def _log_failure(task: asyncio.Future[None]) -> None:
    """A delayed save has no caller to tell."""
    if not task.cancelled() and task.exception() is not None:
        _LOGGER.error("Delayed save failed: %s", task.exception())
