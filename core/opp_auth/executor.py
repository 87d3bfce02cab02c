"""Executor: blocking work off the event loop, and CPU-heavy password checks a bounded number at once."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")

# How long a thread may hold the GIL while another waits for it. The store's writer threads (a
# compaction encodes and writes a 90 MB file at 100,000 users) otherwise hold it for up to
# Python's default 5 ms at a time while the event loop waits: at 1 ms the longest loop lag during
# a compaction at 100,000 users measured 5.4-5.6 ms against 8.8-10.7 ms (bench/README.md).
SWITCH_INTERVAL = 0.001


def prefer_loop_latency() -> None:
    """Let the event loop's thread have the GIL back within SWITCH_INTERVAL (never lengthens it)."""
    if sys.getswitchinterval() > SWITCH_INTERVAL:
        sys.setswitchinterval(SWITCH_INTERVAL)


class Executor:
    """Runs blocking calls in the loop's default executor."""

    def __init__(self, max_password_checks: int | None = None) -> None:
        """At most max_password_checks password checks at once (default: the CPU count, at least 2)."""
        self._password_checks = asyncio.Semaphore(max_password_checks or max(2, os.cpu_count() or 2))

    async def async_add_executor_job(self, func: Callable[..., _T], *args: Any) -> _T:
        """Run blocking work in the default executor."""
        return await asyncio.get_running_loop().run_in_executor(None, func, *args)

    async def async_password_check(self, func: Callable[..., _T], *args: Any) -> _T:
        """Run a CPU-heavy password check off the loop, a bounded number at once."""
        async with self._password_checks:
            return await asyncio.get_running_loop().run_in_executor(None, func, *args)
