"""The ephemeral-state seam: where the short-lived state that decides a login lives.

Login flows in progress, authorization codes, failure counters (the throttle's
and the IP ban's) and bans live in the memory of the process that made them:
the structures of ``flow.py``, ``codes.py``, ``throttle.py`` and ``http/ban.py``,
bounded and expiring. That is the default, :class:`EphemeralState` itself
(``shared`` False): its methods do nothing, and nothing else is paid for.

A storage backend that several processes share returns a shared one from
:meth:`opp_auth.StorageBackend.ephemeral_state` (``opp-auth-postgresql`` does),
and the same structures then also write through to it:

- a flow's state (:meth:`opp_auth.LoginFlow.dump_state`, explicit JSON, never a
  password) after each step that leaves it open, so the next step may reach any
  process; a step *claims* the flow first (a lease), so two processes never run
  steps of one flow at once;
- a code as a row taken at most once (:meth:`async_take_code` is one atomic
  delete), keyed by a digest of the code;
- a plugin's small value (:meth:`async_put_value`, through
  :meth:`opp_auth.PluginContext.async_put_shared`), keyed by a digest of its key,
  replaced by the next put and taken at most once (:meth:`async_take_value`);
- counter changes and bans as *events* every process applies to its own
  structures (:meth:`async_publish`, :meth:`subscribe`); :meth:`async_barrier`
  waits until every event published before it was applied here, so a login step
  is checked against the failures every process counted; a ban or a lifted ban
  is *retained* (:meth:`async_publish_retained`), replayed at start whatever its age;
- a lock per account (or address) held for one login step in every process
  (:meth:`async_step_lock`), so two guesses at one account never run at once;
- expiry by the shared store's clock (ages, never one process's wall clock).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar


def digest(secret: str) -> str:
    """What a shared store keys a flow id or a code by (a reader of the store cannot use it)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


class EphemeralState:
    """The default: every piece of ephemeral state stays in this process (see the module docstring)."""

    shared: ClassVar[bool] = False

    def __init__(self) -> None:
        """No subscribers."""
        self._subscribers: dict[str, list[Callable[[dict[str, Any], float], None]]] = {}

    # ---- flows -------------------------------------------------------------------------------

    async def async_put_flow(self, flow_id: str, state: dict[str, Any], ttl: float) -> None:
        """Store a new flow's state (JSON), alive ttl seconds by the store's clock.

        The server that starts a flow keeps its place in the fair shares (``shares.py``) until
        the flow ends, wherever it ends, or expires.
        """

    async def async_claim_flow(self, flow_id: str, lease: float) -> tuple[dict[str, Any], float] | None:
        """Claim a live flow for one step (lease seconds at most): its state and age in seconds; None if none.

        Waits while another process holds the flow (its step runs), at most lease seconds.
        """
        return None

    async def async_save_flow(self, flow_id: str, state: dict[str, Any]) -> None:
        """Store the state after a step and release the claim."""

    async def async_drop_flow(self, flow_id: str) -> None:
        """Forget a flow (finished, aborted)."""

    # ---- authorization codes -----------------------------------------------------------------

    async def async_put_code(self, code: str, client_id: str, value: dict[str, Any], ttl: float) -> None:
        """Store a code's value (JSON), redeemable by client_id for ttl seconds."""

    async def async_take_code(self, code: str, client_id: str) -> dict[str, Any] | None:
        """The value of a live code of client_id, removed in the same step (at most one caller gets it)."""
        return None

    async def async_drop_codes(self, codes: list[str]) -> None:
        """Forget codes (displaced by fairer shares)."""

    # ---- small values of plugins (PluginContext.async_put_shared and friends) -----------------
    # A plugin's short-lived secret that any process must find (notify's pending login code).
    # In memory (shared False) these do nothing: a plugin keeps such a value in its own memory.

    async def async_put_value(self, key: str, value: dict[str, Any], ttl: float) -> None:
        """Store value (JSON) under key, replacing any, alive ttl seconds by the store's clock."""

    async def async_get_value(self, key: str) -> tuple[dict[str, Any], float] | None:
        """The live value under key and the seconds it has left; None when there is none."""
        return None

    async def async_take_value(self, key: str, expected: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Remove the live value under key and return it (at most one caller gets it); None when none.

        expected: take it only if it is still this value (as async_get_value returned it), so a
        value replaced meanwhile stays and the caller gets None.
        """
        return None

    # ---- events every process applies ----------------------------------------------------------

    async def async_publish(self, topic: str, event: dict[str, Any]) -> None:
        """Have every other process's subscribers of topic called with event (JSON)."""

    async def async_publish_retained(self, topic: str, event: dict[str, Any], key: str) -> None:
        """async_publish, and the latest event of (topic, key) is kept for good (a ban, a lifted ban).

        :meth:`async_replay` delivers it whatever its age, so a process started any time later
        learns it; an earlier retained event of the same key is then forgotten.
        """
        await self.async_publish(topic, event)

    def subscribe(self, topic: str, callback: Callable[[dict[str, Any], float], None]) -> None:
        """callback(event, age in seconds) for each event another process published on topic."""
        self._subscribers.setdefault(topic, []).append(callback)

    def deliver(self, topic: str, event: dict[str, Any], age: float = 0.0) -> None:
        """Call topic's subscribers (the shared store calls this)."""
        for callback in self._subscribers.get(topic, ()):
            callback(event, age)

    async def async_barrier(self) -> None:
        """Return once every event published (anywhere) before the call was delivered here."""

    @contextlib.asynccontextmanager
    async def async_step_lock(self, key: str) -> AsyncIterator[None]:
        """Hold key's lock in every process for one login step (here: nothing; the engine locks in-process).

        key names an account or an address (never a password); a shared store keys its lock by a
        digest of it. A step of the same key in another process waits until this one ends; the
        lock is released when the block ends, raises or is cancelled, and by the store when the
        process dies. StorageError (the engine answers "unavailable, retry") when it cannot be
        had in time: fail closed.
        """
        yield

    async def async_replay(self, topic: str, seconds: float) -> None:
        """Deliver the events of topic published in the last seconds, and its retained events of any age.

        For a process catching up at start.
        """


__all__ = ["EphemeralState", "digest"]
