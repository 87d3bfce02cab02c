"""The audit log in the database: table ``opp_auth_audit``, one hash chain for every server.

With storage type ``postgresql`` the core's audit log (docs/audit.md) writes here
instead of ``<config>/audit/``: this module offers the sink through the
``opp_auth_audit_sink`` hook. A row holds one record, the very JSON text a line
of the files holds (same fields, ``seq``, ``prev`` and ``hash``), plus its
``seq``, time and type as columns for ``opp-auth audit show``.

Several servers append to one chain. A batch is one transaction: it takes a
transaction-level advisory lock (``LOCK_AUDIT``), reads the chain's head from
the one row of ``opp_auth_audit_head``, chains its records on, inserts them and
moves the head, then commits; so appends are serialised by the database and the
chain stays one line whatever the number of writers. The head row is kept even
when rows at the end are deleted, so the next record still links to what was
written and ``verify`` names the gap.

The table is append-only by a trigger: an UPDATE or a DELETE is refused, unless
the deleting transaction set ``opp_auth.audit_prune`` (retention, below). That
stops mistakes, not an owner of the database, who can drop the trigger; what
catches them is the chain (``opp-auth audit verify``) and a copy of the last
hash kept elsewhere (docs/security.md).

Retention: records older than ``keep_days`` are deleted at start and then once
an hour, under the same lock, with an ``audit_pruned`` record (the first and
last seq removed and the last hash) chained on, as the files do.

Everything here runs in the core's audit thread (sink methods may block) on a
connection of its own, never on the event loop; hashing yields the GIL every
64 records so the loop's thread is never kept waiting long.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg

from opp_auth import AuthEvent

from .backend import safe_url

_LOGGER = logging.getLogger(__name__)

TABLE = "opp_auth_audit"
GENESIS = "0" * 64
# Advisory lock key of the chain's appends (64-bit; chosen once, never changed).
LOCK_AUDIT = 0x6F70_7061_7574_6841
PRUNE_INTERVAL = 3600.0
READ_BATCH = 2000


def _iso(epoch: float) -> str:
    """Epoch seconds as the records write them: ISO 8601 UTC, microseconds, Z."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


parse_record = AuthEvent.parse_chained


class PgAuditSink:
    """The audit sink (the core's AuditSink) and reader of table opp_auth_audit; used from one thread."""

    def __init__(self, url: str, *, connect_timeout: float = 5.0, keep_days: int = 90, **_: Any) -> None:
        """Nothing connects before open (a server) or read (a command)."""
        self.url = url
        self.connect_timeout = connect_timeout
        self.keep_seconds = keep_days * 86400.0
        self._conn: psycopg.Connection[Any] | None = None
        self._pruned_at = 0.0

    def describe(self) -> str:
        """Where the records are, for messages: the table (the database URL is in the configuration)."""
        return TABLE

    def _connect(self) -> psycopg.Connection[Any]:
        """The writer's connection (opened again after a failure)."""
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self.url,
                connect_timeout=max(1, round(self.connect_timeout)),
                application_name="opp-auth audit",
            )
        return self._conn

    def _drop(self) -> None:
        """Forget a connection that failed (the next call opens another)."""
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None

    # ---- AuditSink ------------------------------------------------------------------------------

    def open(self, version: str) -> None:
        """Connect, prune what is past keep_days, append audit_started."""
        details = {"version": version, "pid": os.getpid(), "host": socket.gethostname(), "database": True}
        self._pruned_at = 0.0
        self.append([], [("audit_started", details)])

    def append(self, events: list[AuthEvent], extra: list[tuple[str, dict[str, Any]]]) -> None:
        """Chain and insert records for events and extra (type, details) in one transaction; committed on return."""
        items: list[tuple[dict[str, Any], float]] = []
        for event in events:
            data = event.as_dict()
            data["time"] = _iso(event.time)
            items.append((data, event.time))
        now = time.time()
        for kind, details in extra:
            items.append(({"type": kind, "time": _iso(now), "details": details}, now))
        if not items:
            return
        for attempt in (1, 2):
            fresh = self._conn is None or self._conn.closed
            try:
                self._append_once(items, now)
                return
            except psycopg.OperationalError as err:
                self._drop()
                # A connection the database closed while idle (a restart, a terminated backend) fails
                # once: nothing was committed, so a fresh connection writes the batch.
                if attempt == 1 and not fresh:
                    continue
                raise OSError(f"the audit table cannot be written ({safe_url(self.url)}): {err}") from err
            except psycopg.Error as err:
                # Nothing was committed (or, had the COMMIT itself been cut, the batch comes again
                # later as further records of the one chain); the core keeps the events and retries.
                self._drop()
                raise OSError(f"the audit table cannot be written ({safe_url(self.url)}): {err}") from err

    def _append_once(self, items: list[tuple[dict[str, Any], float]], now: float) -> None:
        """One transaction: lock, read the head, prune when due, chain and insert items, move the head."""
        conn = self._connect()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_AUDIT,))
            seq, head = self._head(conn)
            batch = [(dict(data), epoch) for data, epoch in items]  # a retry chains afresh
            due = not self._pruned_at or time.monotonic() - self._pruned_at > PRUNE_INTERVAL
            if due:
                pruned = self._prune(conn, now)
                if pruned is not None:
                    batch.insert(0, ({"type": "audit_pruned", "time": _iso(now), "details": pruned}, now))
            rows: list[tuple[int, datetime, str, str]] = []
            for index, (data, epoch) in enumerate(batch):
                seq += 1
                text, head = AuthEvent.chain(data, seq, head)
                rows.append((seq, datetime.fromtimestamp(epoch, UTC), _type_column(data.get("type")), text))
                if index % 64 == 63:
                    time.sleep(0)  # let the event loop's thread take the GIL between chunks
            # COPY: rows stream as they are (psycopg's array parameters escape each element in Python,
            # about 0.1 ms a record, holding the GIL the event loop needs).
            with conn.cursor() as cur, cur.copy("COPY opp_auth_audit (seq, at, type, record) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            conn.execute(
                "INSERT INTO opp_auth_audit_head (id, seq, hash) VALUES (1, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash",
                (seq, head),
            )
        if due:  # committed: the next check is in an hour
            self._pruned_at = time.monotonic()

    def close(self) -> None:
        """Append audit_stopped and close the connection."""
        try:
            self.append([], [("audit_stopped", {"pid": os.getpid()})])
        finally:
            self._drop()

    # ---- the chain ------------------------------------------------------------------------------

    @staticmethod
    def _head(conn: psycopg.Connection[Any]) -> tuple[int, str]:
        """(seq, hash) the next record links to: the head row, else the last row (a head row lost), else genesis."""
        row = conn.execute("SELECT seq, hash FROM opp_auth_audit_head WHERE id = 1").fetchone()
        if row is not None:
            return int(row[0]), str(row[1])
        last = conn.execute("SELECT seq, record FROM opp_auth_audit ORDER BY seq DESC LIMIT 1").fetchone()
        if last is None:
            return 0, GENESIS
        _LOGGER.error("The audit head row is missing; the chain goes on from record %s", last[0])
        record = parse_record(str(last[1]))
        return int(last[0]), str(record["hash"]) if record is not None else GENESIS

    def _prune(self, conn: psycopg.Connection[Any], now: float) -> dict[str, Any] | None:
        """Delete records older than keep_days (under the lock); the audit_pruned details, or None."""
        cutoff = datetime.fromtimestamp(now - self.keep_seconds, UTC)
        row = conn.execute(
            "SELECT max(seq), min(seq) FROM opp_auth_audit WHERE seq <= "
            "(SELECT max(seq) FROM opp_auth_audit WHERE at < %s)",
            (cutoff,),
        ).fetchone()
        if row is None or row[0] is None:
            return None
        last_seq, first_seq = int(row[0]), int(row[1])
        found = conn.execute("SELECT record FROM opp_auth_audit WHERE seq = %s", (last_seq,)).fetchone()
        last = parse_record(str(found[0])) if found is not None else None
        conn.execute("SET LOCAL opp_auth.audit_prune = 'on'")
        conn.execute("DELETE FROM opp_auth_audit WHERE seq <= %s", (last_seq,))
        conn.execute("SET LOCAL opp_auth.audit_prune = 'off'")
        _LOGGER.info("Audit records %d to %d pruned (older than the keep_days)", first_seq, last_seq)
        return {
            "table": TABLE,
            "first_seq": first_seq,
            "last_seq": last_seq,
            "last_hash": last["hash"] if last is not None else None,
            "cause": "keep_days",
        }

    # ---- reading (opp-auth audit show and verify) -----------------------------------------------

    def read(self, since: datetime | None = None) -> Iterator[tuple[str, int, dict[str, Any] | None]]:
        """(table, seq, record or None when its text is no record) in seq order, from since on (read-only)."""
        rows = (
            self._snapshot("SELECT seq, record FROM opp_auth_audit ORDER BY seq")
            if since is None
            else self._snapshot("SELECT seq, record FROM opp_auth_audit WHERE at >= %s ORDER BY seq", (since,))
        )
        for seq, text in rows:
            yield TABLE, int(seq), parse_record(str(text))

    def _snapshot(self, sql: str, params: tuple[Any, ...] | None = None) -> Iterator[tuple[Any, ...]]:
        """The rows of sql, read in batches in one snapshot (rows appended meanwhile are not half seen)."""
        with psycopg.connect(self.url, connect_timeout=max(1, round(self.connect_timeout))) as conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            if not self._has_table(conn):
                return
            with conn.cursor(name="opp_auth_audit_read") as cur:
                cur.itersize = READ_BATCH
                cur.execute(sql, params)
                yield from cur

    def recorded_head(self) -> tuple[int, str] | None:
        """The head row's (seq, hash), or None."""
        with psycopg.connect(self.url, connect_timeout=max(1, round(self.connect_timeout))) as conn:
            if not self._has_table(conn):
                return None
            row = conn.execute("SELECT seq, hash FROM opp_auth_audit_head WHERE id = 1").fetchone()
        return (int(row[0]), str(row[1])) if row is not None else None

    def user_ids_named(self, name: str) -> set[str]:
        """Ids of the users whose name, or a login name of whose credentials, is name (case-insensitive)."""
        wanted = name.casefold()
        ids: set[str] = set()
        with psycopg.connect(self.url, connect_timeout=max(1, round(self.connect_timeout))) as conn:
            if not self._has_table(conn):
                return ids
            for (text,) in conn.execute("SELECT data FROM opp_auth_users"):
                user = _json(text)
                if str(user.get("name", "")).casefold() == wanted:
                    ids.add(str(user.get("id")))
            for user_id, text in conn.execute("SELECT user_id, data FROM opp_auth_credentials"):
                data = _json(text).get("data")
                login = data.get("username") if isinstance(data, dict) else None
                if isinstance(login, str) and login.casefold() == wanted:
                    ids.add(str(user_id))
        return ids

    # ---- storage copy (the chain moves as it is: the same texts, so the same hashes) -------------

    def holds_records(self) -> bool:
        """Whether the table holds a record or a head (a chain a copy must not be mixed into)."""
        with psycopg.connect(self.url, connect_timeout=max(1, round(self.connect_timeout))) as conn:
            if not self._has_table(conn):
                return False
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM opp_auth_audit) OR EXISTS (SELECT 1 FROM opp_auth_audit_head)"
            ).fetchone()
        return bool(row and row[0])

    def chain_texts(self) -> Iterator[str]:
        """Every record's stored text, in seq order, in one snapshot."""
        for (text,) in self._snapshot("SELECT record FROM opp_auth_audit ORDER BY seq"):
            yield str(text)

    def import_chain(self, texts: Iterable[str], head: tuple[int, str] | None) -> int:
        """Insert records as they are (texts of a verified chain, in order), then the head row: head when it
        is not behind the last record, else the last record's. One transaction; the table must be empty.
        The number of records inserted."""
        conn = self._connect()
        count = 0
        last: tuple[int, str] | None = None
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_AUDIT,))
                row = conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM opp_auth_audit) OR EXISTS (SELECT 1 FROM opp_auth_audit_head)"
                ).fetchone()
                if row is not None and row[0]:
                    raise OSError(f"{TABLE} already holds audit records; copy into a database without them")
                with conn.cursor() as cur, cur.copy("COPY opp_auth_audit (seq, at, type, record) FROM STDIN") as copy:
                    for text in texts:
                        record = parse_record(text)
                        sealed = AuthEvent.canonical_text(record) if record is not None else None
                        if record is None or sealed is None:
                            raise OSError(f"not an unchanged audit record: {text[:80]!r}")
                        at = datetime.fromisoformat(str(record["time"]))
                        # The writer's own form (what the head row's trigger and verify read), whatever
                        # the source's spacing or escapes.
                        copy.write_row((record["seq"], at, _type_column(record.get("type")), sealed))
                        last = (int(record["seq"]), str(record["hash"]))
                        count += 1
                final = head if head is not None and (last is None or head[0] >= last[0]) else last
                if final is not None:
                    conn.execute(
                        "INSERT INTO opp_auth_audit_head (id, seq, hash) VALUES (1, %s, %s)", (final[0], final[1])
                    )
        except (psycopg.Error, ValueError, KeyError) as err:
            self._drop()
            raise OSError(f"the audit records cannot be copied into {TABLE}: {err}") from err
        return count

    @staticmethod
    def _has_table(conn: psycopg.Connection[Any]) -> bool:
        """Whether the schema has the audit table (a server of this release started on the database)."""
        row = conn.execute("SELECT to_regclass('opp_auth_audit') IS NOT NULL").fetchone()
        return bool(row and row[0])


def _type_column(value: Any) -> str:
    """A record's type as the type column holds it: text PostgreSQL can store (a plugin's event type with
    a NUL or a lone surrogate is escaped there; the record's own text, ASCII JSON, keeps it exactly)."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text.encode("ascii", "backslashreplace").decode("ascii").replace("\x00", "\\x00")


def _json(text: Any) -> dict[str, Any]:
    """A stored JSON object, or {} when it is none."""
    try:
        value = json.loads(str(text))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
