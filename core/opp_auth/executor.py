"""Executor: blocking work off the event loop, and CPU-heavy password checks a bounded number at once."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")


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
