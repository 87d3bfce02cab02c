"""The embedded store at a given size: start-up, durable token changes, compaction, loop stalls.

Targets (issue 13), for a store of --users people, each with a local login and a refresh token:

- start-up (AuthManager.async_setup: the local provider's logins, .storage/auth and its
  journal, the purge of expired tokens) under 2 s;
- creating a refresh token and revoking one (each durable on return: its journal line is
  fdatasync'd) cost the same as in a store of 10 users, within 20% — measured alternately
  against a 10-user store in the same process, median of 60 each;
- the event loop never stalls over 10 ms: a ticker sleeps 1 ms at a time and records how
  late it wakes, while tokens are created and revoked, while the whole store is compacted
  into .storage/auth, and while expired tokens are looked for. Beside each wall-clock
  lag, the longest CPU time the loop's thread spent inside one callback (what our code
  holds the loop for; the wall-clock lag adds whatever other processes took the CPU).

Compaction duration and the file's size are reported too.
"""

from __future__ import annotations

import asyncio
import gc
import tempfile
import time

from _common import CLIENT_ID, Result, emit, make_auth, median, parse_args, prepared_config, users_label

from opp_auth.manager import AuthManager

BENCH = "store"
STARTUP_TARGET_S = 2.0
RATIO_TARGET = 1.2
STALL_TARGET_MS = 10.0
CHANGES = 60
TICK = 0.001


class _CallbackCpu:
    """The longest CPU time (of the loop's thread) one event-loop callback took while active.

    Wall-clock lateness counts the time other processes held the CPU; on a shared machine
    it says little about our code. The CPU the loop thread spends inside one callback is
    what our code holds the loop for, whatever else runs.
    """

    active = False
    longest = 0.0

    @classmethod
    def install(cls) -> None:
        """Wrap asyncio's Handle._run (this benchmark process only)."""
        original = asyncio.events.Handle._run

        def run(handle: asyncio.events.Handle) -> None:
            if not cls.active:
                original(handle)
                return
            start = time.thread_time()
            original(handle)
            cls.longest = max(cls.longest, time.thread_time() - start)

        asyncio.events.Handle._run = run  # type: ignore[method-assign]


_CallbackCpu.install()


class Ticker:
    """Measures how late a 1 ms sleep wakes up, and the longest loop callback in CPU time."""

    def __init__(self) -> None:
        """Not running until start()."""
        self.max_lag = 0.0
        self.max_cpu_ms = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        clock = time.perf_counter
        while True:
            start = clock()
            await asyncio.sleep(TICK)
            self.max_lag = max(self.max_lag, clock() - start - TICK)

    def start(self) -> None:
        """Begin ticking (and forget earlier results)."""
        self.max_lag = 0.0
        _CallbackCpu.longest = 0.0
        _CallbackCpu.active = True
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> float:
        """Stop; the worst lag in ms."""
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        _CallbackCpu.active = False
        self.max_cpu_ms = _CallbackCpu.longest * 1000
        return self.max_lag * 1000


async def setup(config_dir: str) -> tuple[AuthManager, float, float]:
    """A manager on config_dir with the local provider; wall and CPU seconds its start-up took."""
    auth = make_auth(config_dir, [{"type": "openpeerpower"}])
    gc.collect()
    start, cpu = time.perf_counter(), time.process_time()
    await auth.async_setup()
    return auth, time.perf_counter() - start, time.process_time() - cpu


async def change_costs(auth: AuthManager, count: int) -> tuple[list[float], list[float]]:
    """Seconds per durable create and per durable revoke of a refresh token, count of each."""
    user = auth.store.users()[len(auth.store.users()) // 2]
    creates, revokes = [], []
    for _ in range(count):
        start = time.perf_counter()
        token = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
        creates.append(time.perf_counter() - start)
        start = time.perf_counter()
        await auth.refresh_tokens.async_remove_refresh_token(token)
        revokes.append(time.perf_counter() - start)
    return creates, revokes


async def measure(users: int) -> list[Result]:
    """Everything, for one store size."""
    label = users_label(users)
    ticker = Ticker()
    with tempfile.TemporaryDirectory() as big_dir, tempfile.TemporaryDirectory() as small_dir:
        prepared_config(users, big_dir)
        prepared_config(10, small_dir)
        auth, startup, startup_cpu = await setup(big_dir)
        small, _, _ = await setup(small_dir)
        try:
            assert len(auth.store.users()) == users
            await change_costs(auth, 5)  # warm-up
            await change_costs(small, 5)
            big_c, big_r, small_c, small_r = [], [], [], []
            ticker.start()
            for _ in range(CHANGES // 10):
                # Alternate, so disk and CPU noise hit both stores alike.
                c, r = await change_costs(auth, 10)
                big_c += c
                big_r += r
                c, r = await change_costs(small, 10)
                small_c += c
                small_r += r
            change_stall = await ticker.stop()
            change_cpu = ticker.max_cpu_ms

            ticker.start()
            start = time.perf_counter()
            await auth.store.async_compact()
            compaction = time.perf_counter() - start
            compaction_stall = await ticker.stop()
            compaction_cpu = ticker.max_cpu_ms
            size = (auth.store._store.path).stat().st_size

            ticker.start()
            start = time.perf_counter()
            purged = await auth.refresh_tokens.async_purge_expired_tokens()
            purge = time.perf_counter() - start
            purge_stall = await ticker.stop()
            purge_cpu = ticker.max_cpu_ms
            assert purged == 0
        finally:
            await auth.async_shutdown()
            await small.async_shutdown()
    create_ratio = median(big_c) / median(small_c)
    revoke_ratio = median(big_r) / median(small_r)
    return [
        Result(BENCH, f"start-up (AuthManager.async_setup), {label}", startup, "s", STARTUP_TARGET_S,
               note="local provider's logins + .storage/auth + expired-token purge"),
        Result(BENCH, f"start-up CPU time (all threads), {label}", startup_cpu, "s",
               note="time.process_time: what start-up costs whatever else runs on the machine"),
        Result(BENCH, f"create refresh token (durable), {label}", median(big_c) * 1000, "ms",
               note=f"median of {len(big_c)}; 10 users: {median(small_c) * 1000:.2f} ms"),
        Result(BENCH, f"create refresh token, {label} / 10 users", create_ratio, "×", RATIO_TARGET,
               note="alternating rounds of 10 against a 10-user store"),
        Result(BENCH, f"revoke refresh token (durable), {label}", median(big_r) * 1000, "ms",
               note=f"median of {len(big_r)}; 10 users: {median(small_r) * 1000:.2f} ms"),
        Result(BENCH, f"revoke refresh token, {label} / 10 users", revoke_ratio, "×", RATIO_TARGET),
        Result(BENCH, f"max event-loop lag while creating/revoking tokens, {label}", change_stall, "ms",
               STALL_TARGET_MS),
        Result(BENCH, f"longest loop callback in CPU time while creating/revoking tokens, {label}", change_cpu,
               "ms", STALL_TARGET_MS, note="thread CPU of the loop inside one callback"),
        Result(BENCH, f"max event-loop lag during a compaction, {label}", compaction_stall, "ms", STALL_TARGET_MS,
               note=f"compaction {compaction:.2f} s, .storage/auth {size / 1e6:.1f} MB"),
        Result(BENCH, f"longest loop callback in CPU time during a compaction, {label}", compaction_cpu, "ms",
               STALL_TARGET_MS, note="thread CPU of the loop inside one callback"),
        Result(BENCH, f"max event-loop lag during the expired-token purge, {label}", purge_stall, "ms",
               STALL_TARGET_MS, note=f"scan of every token in {purge * 1000:.0f} ms, in slices"),
        Result(BENCH, f"longest loop callback in CPU time during the expired-token purge, {label}", purge_cpu, "ms",
               STALL_TARGET_MS, note="thread CPU of the loop inside one callback"),
    ]


def main() -> None:
    """One store size per run (run_all.py runs each size several times)."""
    args = parse_args(__doc__.splitlines()[0])
    emit(asyncio.run(measure(min(args.users, 1_000) if args.quick else args.users)))


if __name__ == "__main__":
    main()
