"""What the login history costs per event, against rewriting the whole history document per event.

Claim (issue 18): recording a sign-in or a failure is O(1) in the number of users
and of entries: the event stream's consumer updates memory and queues the changed
paths; the background write appends one journal line with those entries.

Set-up: a real AuthManager (insecure_example provider; the history's own journaled
document under .storage), a store of N users with credentials, every user with one
sign-in and one failure in the history, and the measured users with full rings.
Measured, in this process:

- in line: CPU time (time.process_time) of 20,000 events delivered to the history's
  consumer, half sign-ins from a known network, half wrong passwords whose user is found
  by username; per event.
- written: the background writes of those events (CPU per event), and the journal bytes of
  an event written alone (one login at a time) and of events sharing writes.
- baseline: the same events with what a whole-document save would add to each: encoding
  the whole history (``json.dumps``), measured on 20 events and scaled.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from _common import INSECURE_PROVIDER, Result, emit, make_auth, parse_args, populate, users_label

from opp_auth import AuthEvent
from opp_auth.history import MAX_FAILURES, MAX_SUCCESSES, STORAGE_KEY

EVENTS = 20_000
PROVIDER = ("openpeerpower", None)


def events_for(user_ids: list[str], count: int, start: float) -> list[AuthEvent]:
    """Alternating sign-ins (known network) and wrong passwords (found by name) of random users."""
    rng = random.Random(7)
    made: list[AuthEvent] = []
    for index in range(count):
        number = rng.randrange(len(user_ids))
        if index % 2 == 0:
            made.append(
                AuthEvent(
                    type="login_succeeded",
                    time=start + index * 1e-3,
                    user_id=user_ids[number],
                    username=f"user{number}",
                    provider=PROVIDER,
                    client_id="https://example.com/app",
                    remote_address="192.0.2.10",
                    user_agent="Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0",
                )
            )
        else:
            made.append(
                AuthEvent(
                    type="login_failed",
                    time=start + index * 1e-3,
                    username=f"user{number}",
                    reason="invalid_auth",
                    provider=PROVIDER,
                    client_id="https://example.com/app",
                    remote_address=f"203.0.113.{index % 250}",
                    user_agent="curl/8.5.0",
                )
            )
    return made


async def run(users: int) -> list[Result]:
    """One run at a store of users people."""
    with tempfile.TemporaryDirectory() as tmp:
        auth = make_auth(tmp, [INSECURE_PROVIDER])
        await auth.async_setup()
        populate(auth.store, users, credentials=True)
        history = auth.login_history
        user_ids = [u.id for u in auth.store.users() if not u.system_generated]
        now = time.time() - 3600
        # Every user has history; the first ten have full rings.
        for event in events_for(user_ids, 2 * len(user_ids), now - 600):
            history._on_event(event)
        for user_id in user_ids[:10]:
            for event in events_for([user_id], 2 * (MAX_SUCCESSES + MAX_FAILURES), now - 300):
                history._on_event(event)
        await history.async_flush()
        journal = Path(tmp) / ".storage" / f".{STORAGE_KEY}.journal"
        measured = events_for(user_ids[:10] if users >= 10 else user_ids, EVENTS, now)
        size_before = journal.stat().st_size if journal.exists() else 0
        cpu = time.process_time()
        for event in measured:
            history._on_event(event)
        inline = (time.process_time() - cpu) / EVENTS
        cpu = time.process_time()
        await history.async_flush()
        written = (time.process_time() - cpu) / EVENTS
        grown = (journal.stat().st_size - size_before) / EVENTS if journal.exists() else 0.0
        alone = events_for(user_ids[:10] if users >= 10 else user_ids, 50, now + EVENTS)
        appended: list[int] = []
        for event in alone:
            size_before = journal.stat().st_size
            history._on_event(event)
            await history.async_flush()
            if journal.stat().st_size > size_before:  # a compaction in between cuts the journal: not counted
                appended.append(journal.stat().st_size - size_before)
        alone_bytes = sorted(appended)[len(appended) // 2] if appended else 0
        sample = 20 if users < 10_000 else 3
        cpu = time.process_time()
        for _ in range(sample):
            whole = json.dumps(history._data)
        whole_cost = (time.process_time() - cpu) / sample
        await auth.async_shutdown()
    label = users_label(users)
    return [
        Result(
            "login_history",
            f"record one event, in line ({label})",
            inline * 1e6,
            "µs CPU",
            note="history consumer: memory + queued paths",
        ),
        Result(
            "login_history",
            f"write one event, background ({label})",
            written * 1e6,
            "µs CPU",
            note=f"{alone_bytes:.0f} bytes of journal per event written alone (median), {grown:.0f} when {EVENTS:,} share writes",
        ),
        Result(
            "login_history",
            f"baseline: whole-document encode per event ({label})",
            (inline + written + whole_cost) * 1e6,
            "µs CPU",
            note=f"document {len(whole) / 1024:.0f} KiB; ratio baseline/ours {(inline + written + whole_cost) / (inline + written):.0f}x",
        ),
    ]


def main() -> None:
    """Run once at --users."""
    args = parse_args(__doc__ or "", default_users=10_000)
    emit(asyncio.run(run(args.users)))


if __name__ == "__main__":
    sys.exit(main())
