"""Event-loop stalls while AuthStore.async_save writes a store of 100,000 users.

Target: while .storage/auth with 100,000 users (each with a login and one
refresh token) is written, the event loop is never held for more than 10 ms.
A ticker task sleeps 1 ms at a time and records how late it wakes; the largest
overshoot during a save is the stall. Save duration and file size are reported.
"""

from __future__ import annotations

import asyncio
import gc
import os
import tempfile
import time

from _common import Result, emit, median, parse_args, populate

from opp_auth.store import AuthStore

BENCH = "store_save"
TARGET_MS = 10.0
TICK = 0.001


class Ticker:
    """Measures how late a 1 ms sleep wakes up."""

    def __init__(self) -> None:
        """Not running until start()."""
        self.max_lag = 0.0
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        """Sleep 1 ms forever, keeping the worst overshoot."""
        clock = time.perf_counter
        while True:
            start = clock()
            await asyncio.sleep(TICK)
            lag = clock() - start - TICK
            self.ticks += 1
            self.max_lag = max(self.max_lag, lag)

    def start(self) -> None:
        """Begin ticking (and forget earlier results)."""
        self.max_lag = 0.0
        self.ticks = 0
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> float:
        """Stop; the worst lag in ms."""
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        return self.max_lag * 1000


async def main() -> None:
    """Fill a store, then time a few saves with the ticker running."""
    args = parse_args(__doc__.splitlines()[0])
    users = 10_000 if args.quick else 100_000
    saves = 3
    with tempfile.TemporaryDirectory() as config_dir:
        store = AuthStore(config_dir)
        await store.async_load()
        populate(store, users, credentials=True)
        gc.collect()
        ticker = Ticker()

        # The noise floor: the same ticker with nothing else to do.
        ticker.start()
        await asyncio.sleep(1.0)
        idle_lag = await ticker.stop()

        lags, durations = [], []
        for _ in range(saves):
            ticker.start()
            await asyncio.sleep(0.05)
            start = time.perf_counter()
            await store.async_save()
            durations.append(time.perf_counter() - start)
            await asyncio.sleep(0.05)
            lags.append(await ticker.stop())
        size = os.path.getsize(os.path.join(config_dir, ".storage", "auth"))

        # What the file holds comes back.
        reloaded = AuthStore(config_dir)
        reloaded.keyring = store.keyring
        await reloaded.async_load()
        assert len(reloaded.users()) == users and len(reloaded.refresh_tokens()) == users

    label = f"{users:,} users"
    emit([
        Result(BENCH, f"max event-loop lag during async_save, {label}", max(lags), "ms", TARGET_MS,
               note=f"worst of {saves} saves ({', '.join(f'{lag:.2f}' for lag in lags)} ms); idle ticker: {idle_lag:.2f} ms"),
        Result(BENCH, f"async_save duration, {label}", median(durations), "s",
               note=f"median of {saves}; encoded on the loop in 1 ms slices, fsync'd atomic write in the executor"),
        Result(BENCH, f".storage/auth size, {label}", size / 1e6, "MB", note=f"{size / users:.0f} bytes per user (user, login, token)"),
    ])


if __name__ == "__main__":
    asyncio.run(main())
