"""Events: the core's event hooks fired through pluggy, in line or in the background, and the login throttle's question."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .context import PluginContext
    from .models import Credentials, User
    from .plugins import OppAuthPluginManager

_LOGGER = logging.getLogger(__name__)


class Events:
    """Fires the ``opp_auth_*`` event hooks with the plugin context as ``auth``; tracks background deliveries."""

    def __init__(self, pm: OppAuthPluginManager, context: PluginContext) -> None:
        """Fire through pm, handing plugins context."""
        self._pm = pm
        self._context = context
        self.background: set[asyncio.Future[Any]] = set()

    async def async_fire(self, hookname: str, **kwargs: Any) -> None:
        """Call an event hook and await every result; one plugin's failure is logged by its guard."""
        await self._pm.acall(hookname, auth=self._context, **kwargs)

    def fire_later(self, hookname: str, **kwargs: Any) -> asyncio.Future[Any]:
        """Fire an event in the background (the caller's answer does not wait for plugins); the task."""
        return self.spawn(self.async_fire(hookname, **kwargs))

    def login_failed(
        self, remote_ip: str | None, provider: tuple[str, str | None] | None, username: str | None, reason: str
    ) -> asyncio.Future[Any]:
        """A login attempt or request failed: logged, and opp_auth_login_failed in the background (the task)."""
        _LOGGER.warning("Login attempt or request with invalid authentication from %s (%s)", remote_ip, reason)
        return self.fire_later(
            "opp_auth_login_failed", remote_ip=remote_ip, provider=provider, username=username, reason=reason
        )

    def login_succeeded(self, remote_ip: str | None, user: User | None, credential: Credentials | None) -> None:
        """A login succeeded: opp_auth_login_succeeded in the background."""
        self.fire_later("opp_auth_login_succeeded", remote_ip=remote_ip, user=user, credential=credential)

    def login_retry_after(self, remote_ip: str | None, username: str | None) -> float:
        """Seconds before remote_ip may try to log in as username (0: now): the largest answer of the throttles."""
        waits = self._pm.call("opp_auth_login_retry_after", auth=self._context, remote_ip=remote_ip, username=username)
        return max((float(w) for w in waits if isinstance(w, (int, float)) and w > 0), default=0.0)

    def spawn(self, coro: Any) -> asyncio.Future[Any]:
        """Run a coroutine in the background, keeping a reference until it ends; the task."""
        task: asyncio.Future[Any] = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    async def async_drain(self) -> None:
        """Wait for every background delivery (at shutdown)."""
        while self.background:
            await asyncio.gather(*list(self.background), return_exceptions=True)
