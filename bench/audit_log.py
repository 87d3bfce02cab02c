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
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from _common import INSECURE_PROVIDER, Result, emit, make_auth, median, parse_args, percentile

EVENTS = 10_000
PER_ITERATION = 50
ROUNDS = 3


async def ticker(lateness: list[float], cpu: list[float], stop: asyncio.Event) -> None:
    """Sleep 1 ms again and again; record how late each wake-up is and the loop thread's CPU in between (ms)."""
    while not stop.is_set():
        before, before_cpu = time.perf_counter(), time.thread_time()
        await asyncio.sleep(0.001)
        lateness.append((time.perf_counter() - before) * 1000 - 1.0)
        cpu.append((time.thread_time() - before_cpu) * 1000)


async def one_round(audit_on: bool) -> tuple[float, float, float, float, float]:
    """(max lateness, p99 lateness, loop CPU between two ticks at most, idle max lateness: ms; seconds to disk)."""
    with tempfile.TemporaryDirectory() as tmp:
        auth = make_auth(tmp, [INSECURE_PROVIDER])
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
        started = time.perf_counter()
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
        if auth.audit is not None:
            await auth.audit.async_flush()
        written = time.perf_counter() - started
        await asyncio.sleep(0.05)
        stop.set()
        await tick
        await auth.async_shutdown()
        if audit_on:
            lines = sum(1 for _ in (Path(tmp) / "audit" / "audit.jsonl").open())
            assert lines >= EVENTS, lines
        return max(lateness), percentile(lateness, 99), max(cpu), idle, written


async def main() -> None:
    """Three rounds with the audit log, three without; medians with spread."""
    parse_args(__doc__ or "", default_users=1)
    with_audit = [await one_round(True) for _ in range(ROUNDS)]
    without = [await one_round(False) for _ in range(ROUNDS)]
    worst = [r[0] for r in with_audit]
    p99 = [r[1] for r in with_audit]
    base_worst = [r[0] for r in without]
    seconds = [r[4] for r in with_audit]
    cpu = [r[2] for r in with_audit]
    base_cpu = [r[2] for r in without]
    idle = [r[3] for r in with_audit]

    def spread(values: list[float]) -> str:
        return f"median of {ROUNDS}, {min(values):.2f}-{max(values):.2f}"

    emit(
        [
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
    )


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
