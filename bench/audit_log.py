"""Writing 10,000 audit events never stalls the event loop more than 5 ms (issue 18).

Set-up: a real AuthManager (insecure_example provider) whose audit log writes the
files under a temporary configuration directory (batches of 500 in the audit
thread, fsync per batch). A ticker task sleeps 1 ms in a loop and records how late
it wakes. A producer emits 10,000 login_failed events of known users (never rate
limited) through the event stream, 50 per loop iteration, as a burst of failed
logins would; then the log is flushed to disk.

Measured, three rounds, each with a fresh directory: the largest and the 99th
percentile lateness of the ticker while the events are emitted and written, and
the same with the audit log off (the producer's own cost: the baseline). The
store size does not enter (the audit log never reads the store), so this runs at
one size only.

The same rounds again with storage type postgresql, where the records go to the
database's audit table (opp_auth_postgresql.audit: batches of 500, one
transaction each, on the audit thread's own connection): a throw-away
PostgreSQL (``opp_auth.testing.PostgresServer``) with fsync and synchronous
commit ON, as a real server has them, and a fresh database per round. Skipped,
with a row that says so, when PostgreSQL or opp-auth-postgresql is missing.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import INSECURE_PROVIDER, Result, emit, make_auth, median, parse_args, percentile

from opp_auth.config import validate_config
from opp_auth.manager import AuthManager
from opp_auth.plugins import make_plugin_manager

EVENTS = 10_000
PER_ITERATION = 50
ROUNDS = 3
TAIL = 3.0


async def ticker(lateness: list[float], cpu: list[float], stop: asyncio.Event) -> None:
    """Sleep 1 ms again and again; record how late each wake-up is and the loop thread's CPU in between (ms)."""
    while not stop.is_set():
        before, before_cpu = time.perf_counter(), time.thread_time()
        await asyncio.sleep(0.001)
        lateness.append((time.perf_counter() - before) * 1000 - 1.0)
        cpu.append((time.thread_time() - before_cpu) * 1000)


def make_pg_auth(config_dir: str, url: str) -> AuthManager:
    """An AuthManager on storage type postgresql (its audit log goes to the database)."""
    pm = make_plugin_manager()
    raw: dict[str, Any] = {
        "openpeerpower": {"auth_providers": [INSECURE_PROVIDER], "storage": {"type": "postgresql", "url": url}}
    }
    config = validate_config(raw, pm, config_dir=Path(config_dir), allow_insecure_example=True)
    return AuthManager(
        config_dir,
        pm,
        provider_configs=config.providers,
        storage=config.storage_class(config.storage, config_dir),
        audit_config=config.audit,
    )


def audit_rows(url: str) -> int:
    """Rows of the database's audit table."""
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM opp_auth_audit").fetchone()
    return int(row[0]) if row else 0


async def one_round(audit_on: bool, url: str | None = None) -> tuple[float, float, float, float, float, float, float]:
    """(max lateness, p99 lateness, loop CPU between two ticks at most while emitting, idle max lateness: ms;
    seconds to disk; loop CPU between two ticks at most after the producer stopped, ms; loop-thread CPU per
    event while emitting, µs).

    url: a fresh database: the audit log goes there (storage type postgresql).
    """
    with tempfile.TemporaryDirectory() as tmp:
        auth = make_pg_auth(tmp, url) if url is not None else make_auth(tmp, [INSECURE_PROVIDER])
        if url is not None:
            assert type(auth.audit.sink).__name__ == "PgAuditSink", auth.audit  # type: ignore[union-attr]
        if not audit_on:
            auth.audit = None
        await auth.async_setup()
        lateness: list[float] = []
        cpu: list[float] = []
        stop = asyncio.Event()
        tick = asyncio.ensure_future(ticker(lateness, cpu, stop))
        await asyncio.sleep(0.3)
        idle = max(lateness)
        lateness.clear()
        cpu.clear()
        started, started_cpu = time.perf_counter(), time.thread_time()
        for first in range(0, EVENTS, PER_ITERATION):
            for n in range(first, first + PER_ITERATION):
                auth.events.emit(
                    "login_failed",
                    user_id=f"user{n % 500}",
                    username=f"user{n % 500}",
                    reason="invalid_auth",
                    provider=("insecure_example", None),
                    remote_address=f"192.0.2.{n % 250}",
                    user_agent="Mozilla/5.0 (X11; Linux x86_64) bench",
                    client_id="https://example.com/app",
                )
            await asyncio.sleep(0)
        emitted = len(cpu)  # ticks while the producer ran; the rest: the writer finishing alone
        emit_cpu_us = (time.thread_time() - started_cpu) * 1e6 / EVENTS
        if auth.audit is not None:
            await auth.audit.async_flush()
        else:
            await asyncio.sleep(TAIL)  # the baseline's loop over as long a tail (pings of a database store)
        written = time.perf_counter() - started
        await asyncio.sleep(0.05)
        stop.set()
        await tick
        await auth.async_shutdown()
        if audit_on and url is not None:
            assert audit_rows(url) >= EVENTS
            assert not (Path(tmp) / "audit").exists()
        elif audit_on:
            lines = sum(1 for _ in (Path(tmp) / "audit" / "audit.jsonl").open())
            assert lines >= EVENTS, lines
        return (
            max(lateness),
            percentile(lateness, 99),
            max(cpu[:emitted]),
            idle,
            written,
            max(cpu[emitted:], default=0.0),
            emit_cpu_us,
        )


async def main() -> None:
    """Three rounds with the audit log, three without; medians with spread."""
    parse_args(__doc__ or "", default_users=1)
    with_audit = [await one_round(True) for _ in range(ROUNDS)]
    without = [await one_round(False) for _ in range(ROUNDS)]
    in_database = await postgresql_rounds()
    worst = [r[0] for r in with_audit]
    p99 = [r[1] for r in with_audit]
    base_worst = [r[0] for r in without]
    seconds = [r[4] for r in with_audit]
    cpu = [r[2] for r in with_audit]
    base_cpu = [r[2] for r in without]
    idle = [r[3] for r in with_audit]

    def spread(values: list[float]) -> str:
        return f"median of {ROUNDS}, {min(values):.2f}-{max(values):.2f}"

    per_event, base_per_event = [r[6] for r in with_audit], [r[6] for r in without]
    rows = [
        Result(
            "audit_log",
            "loop-thread CPU per event emitted, audit log on files",
            median(per_event),
            "µs",
            note=f"{spread(per_event)}; without the audit log {median(base_per_event):.1f} µs "
            f"({spread(base_per_event)}); the event's whole path on the loop (every subscriber), CPU time",
        ),
        Result(
            "audit_log",
            f"largest loop stall, {EVENTS:,} events emitted and written",
            median(worst),
            "ms",
            5.0,
            note=f"{spread(worst)}; without the audit log {median(base_worst):.2f} ms; "
            f"the idle loop just before {median(idle):.2f} ms (wall clock: the machine is shared)",
        ),
        Result(
            "audit_log",
            "largest loop-thread CPU between two wake-ups, while writing",
            median(cpu),
            "ms",
            5.0,
            note=f"{spread(cpu)}; without the audit log {median(base_cpu):.2f} ms (CPU time: other processes do not count)",
        ),
        Result("audit_log", "p99 loop lateness while writing", median(p99), "ms", note=spread(p99)),
        Result(
            "audit_log",
            f"{EVENTS:,} events on disk (fsync'd) after",
            median(seconds) * 1000,
            "ms",
            note=spread([s * 1000 for s in seconds]),
        ),
    ]
    if isinstance(in_database, str):
        rows.append(Result("audit_log", "PostgreSQL sink", 0.0, "-", note=f"not measured: {in_database}"))
    else:
        in_db, db_base = in_database
        pg_worst, pg_cpu, pg_p99 = [r[0] for r in in_db], [r[2] for r in in_db], [r[1] for r in in_db]
        pg_seconds = [r[4] * 1000 for r in in_db]
        base_pg_worst, base_pg_cpu = [r[0] for r in db_base], [r[2] for r in db_base]
        pg_tail, base_pg_tail = [r[5] for r in in_db], [r[5] for r in db_base]
        pg_per_event, base_pg_per_event = [r[6] for r in in_db], [r[6] for r in db_base]
        rows.append(
            Result(
                "audit_log",
                "loop-thread CPU per event emitted, audit log in PostgreSQL",
                median(pg_per_event),
                "µs",
                note=f"{spread(pg_per_event)}; PostgreSQL storage without the audit log "
                f"{median(base_pg_per_event):.1f} µs ({spread(base_pg_per_event)}), CPU time",
            )
        )
        rows += [
            Result(
                "audit_log",
                f"PostgreSQL sink: largest loop stall, {EVENTS:,} events emitted and written",
                median(pg_worst),
                "ms",
                5.0,
                note=f"{spread(pg_worst)}; PostgreSQL storage without the audit log {median(base_pg_worst):.2f} ms; "
                "wall clock, the database on the same 2 CPUs (shared machine)",
            ),
            Result(
                "audit_log",
                "PostgreSQL sink: largest loop-thread CPU between two wake-ups, while emitting and writing",
                median(pg_cpu),
                "ms",
                5.0,
                note=f"{spread(pg_cpu)}; PostgreSQL storage without the audit log {median(base_pg_cpu):.2f} ms "
                "(CPU time: other processes do not count)",
            ),
            Result(
                "audit_log",
                "PostgreSQL sink: largest loop-thread CPU between two wake-ups, the writer finishing alone",
                median(pg_tail),
                "ms",
                note=f"{spread(pg_tail)}; PostgreSQL storage without the audit log, {TAIL:.0f} s idle after the "
                f"producer: {median(base_pg_tail):.2f} ms (the store's own pings)",
            ),
            Result(
                "audit_log",
                "PostgreSQL sink: p99 loop lateness while writing",
                median(pg_p99),
                "ms",
                note=spread(pg_p99),
            ),
            Result(
                "audit_log",
                f"PostgreSQL sink: {EVENTS:,} events committed (fsync on) after",
                median(pg_seconds),
                "ms",
                note=spread(pg_seconds),
            ),
        ]
    emit(rows)


Rounds = list[tuple[float, float, float, float, float, float, float]]


async def postgresql_rounds() -> tuple[Rounds, Rounds] | str:
    """ROUNDS rounds with the audit log in a throw-away PostgreSQL (fsync on) and ROUNDS on the same storage
    with the audit log off (the baseline), or why not."""
    try:
        import opp_auth_postgresql  # noqa: F401
    except ImportError:
        return "opp-auth-postgresql is not installed"
    from opp_auth.testing import PostgresServer, postgresql_bin_dir

    bin_dir = postgresql_bin_dir()
    if bin_dir is None:
        return "PostgreSQL is not installed"
    server = PostgresServer(bin_dir)
    server.start()
    try:
        # A real server's durability (the test fixture turns it off).
        server.execute("ALTER SYSTEM SET fsync = on")
        server.execute("ALTER SYSTEM SET synchronous_commit = on")
        server.stop()
        server._run(
            "pg_ctl", "-D", server.data, "-o", f"-p {server.port} -k {server.root} -c listen_addresses=127.0.0.1",
            "-l", str(Path(server.root) / "log"), "-w", "start",
        )  # fmt: skip
        with_audit = [await one_round(True, server.url(server.create_database())) for _ in range(ROUNDS)]
        without = [await one_round(False, server.url(server.create_database())) for _ in range(ROUNDS)]
        return with_audit, without
    finally:
        server.destroy()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
