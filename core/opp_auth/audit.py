"""The audit log: every authentication event, durable, append-only and tamper-evident.

:class:`AuditLog` subscribes to the event stream (events.py). On the event
loop it only appends the event to a list (and counts anonymous failures past
the rate limit); a single writer thread turns batches into records, chains
them and appends them to the sink, so nothing here blocks the loop or fails
the action that produced the event.

The sink is replaceable (:class:`AuditSink`): :class:`AuditFiles` is the
default, JSON Lines under ``<config>/audit/``; a store plugin (PostgreSQL) can
hand its own through the ``opp_auth_audit_sink`` hook. File format, hash chain,
rotation and retention are described in docs/audit.md and implemented in
audit_files.py.

What is kept and what can be lost:

- an event is in memory until its batch is written (at most ``FLUSH_DELAY``
  seconds, or ``BATCH`` events); a clean stop writes everything and an
  ``audit_stopped`` record. A crash (SIGKILL, power) loses at most the batch in
  memory; a record half written at the crash stays as a torn line that
  ``opp-auth audit verify`` reports as such.
- a failing disk does not fail logins: the error is logged, events wait in
  memory (at most ``MAX_PENDING``; past that they are counted and dropped) and
  are written when the disk works again, followed by an ``audit_lost`` record
  with the count. Keycloak and its kind keep serving when their event store
  fails; so do we, because an audit outage must not become an outage of every
  login (the log says so loudly instead).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

import voluptuous as vol

from .events import LOGIN_FAILED, AuthEvent
from .history import MAX_AGE, MAX_DEVICES, MAX_FAILURES, MAX_SUCCESSES

if TYPE_CHECKING:
    from .events import Events

_LOGGER = logging.getLogger(__name__)

AUDIT_BLOCK = "audit"
FLUSH_DELAY = 0.2
BATCH = 500
MAX_PENDING = 100_000
RETRY_DELAY = 5.0

HISTORY_SCHEMA = vol.Schema(
    {
        vol.Optional("sign_ins", default=MAX_SUCCESSES): vol.All(int, vol.Range(min=1, max=1000)),
        vol.Optional("failures", default=MAX_FAILURES): vol.All(int, vol.Range(min=1, max=1000)),
        vol.Optional("keep_days", default=round(MAX_AGE / 86400)): vol.All(int, vol.Range(min=1, max=3650)),
        vol.Optional("devices", default=MAX_DEVICES): vol.All(int, vol.Range(min=1, max=1000)),
    }
)
"""``audit: history:``: what the login history keeps per user (history.py; its constants are the defaults)."""

AUDIT_SCHEMA = vol.Schema(
    {
        vol.Optional("enabled", default=True): bool,
        vol.Optional("max_file_mb", default=10): vol.All(int, vol.Range(min=1, max=1024)),
        vol.Optional("keep_days", default=90): vol.All(int, vol.Range(min=1, max=36500)),
        vol.Optional("max_files", default=100): vol.All(int, vol.Range(min=2, max=100_000)),
        vol.Optional("anonymous_failures_per_minute", default=600): vol.All(int, vol.Range(min=1)),
        vol.Optional("exclude_reasons", default=["unauthorized"]): [str],
        vol.Optional("history", default={}): HISTORY_SCHEMA,
    }
)
"""The ``audit:`` block of configuration.yaml (absent: every default)."""


def audit_config(conf: dict[str, Any] | None) -> dict[str, Any]:
    """The validated block with every default filled in."""
    result: dict[str, Any] = AUDIT_SCHEMA({}) if conf is None else conf
    return result


class AuditSink(Protocol):
    """Where audit records go: the default files, or a store's table (PostgreSQL).

    Every method is called from the audit writer thread, one call at a time,
    so a sink may block (disk, a database connection of its own).
    """

    def open(self, version: str) -> None:
        """Find the head of the chain and append an ``audit_started`` record."""

    def append(self, events: list[AuthEvent], extra: list[tuple[str, dict[str, Any]]]) -> None:
        """Append the records of events, then the server's own records (type, details); durable on return."""

    def close(self) -> None:
        """Append an ``audit_stopped`` record and release the files or connection."""


class AuditLog:
    """Batches events off the loop into a sink; at most one write at a time, in its own thread."""

    def __init__(
        self, sink: AuditSink, config: dict[str, Any] | None = None, *, version: str = "", clock: Any = time.monotonic
    ) -> None:
        """Write to sink, with the audit: block's rate limit and exclusions."""
        conf = audit_config(config)
        self.sink = sink
        self._version = version
        self._clock = clock
        self._exclude = frozenset(conf["exclude_reasons"])
        self._rate = conf["anonymous_failures_per_minute"] / 60.0
        self._burst = float(conf["anonymous_failures_per_minute"])
        self._tokens = self._burst
        self._refilled = clock()
        self._pending: list[AuthEvent] = []
        self._suppressed = 0
        self._lost = 0
        self._timer: asyncio.TimerHandle | None = None
        self._writing: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="opp-auth-audit")
        self._unsubscribe: Callable[[], None] | None = None
        self._open = False
        self._failing_since: float | None = None

    # ---- lifecycle --------------------------------------------------------------------------

    async def async_start(self, events: Events) -> None:
        """Open the sink (an audit_started record) and subscribe to the event stream."""
        from .audit_files import AuditLocked

        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._thread, self.sink.open, self._version)
            self._open = True
        except AuditLocked as err:
            # Two writers would interleave two chains in one file; this process writes none.
            _LOGGER.error("The audit log is off in this process: %s", err)
            return
        except Exception as err:  # noqa: BLE001 - a sink (maybe a plugin's) never fails a login
            # Logins go on; events wait in memory and the open is retried with the next batch.
            _LOGGER.error("The audit log cannot be opened (%s); events are kept in memory until it can", err)
        self._unsubscribe = events.subscribe(self.record)

    async def async_stop(self) -> None:
        """Write every pending event and an audit_stopped record; stop listening."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.async_flush()
        loop = asyncio.get_running_loop()
        if self._open:
            try:
                await loop.run_in_executor(self._thread, self.sink.close)
            except Exception:
                _LOGGER.exception("Closing the audit log failed")
            self._open = False
        if self._pending:
            _LOGGER.error("%d audit events could not be written before the stop", len(self._pending))
        self._thread.shutdown(wait=True)

    # ---- the subscriber (on the loop: O(1), never raises) ---------------------------------

    def record(self, event: AuthEvent) -> None:
        """Take an event for the next batch (anonymous failures past the rate are counted, not kept)."""
        if event.type == LOGIN_FAILED:
            if event.reason in self._exclude:
                return
            if event.user_id is None and not self._take_token():
                self._suppressed += 1
                self._schedule()
                return
        if len(self._pending) >= MAX_PENDING:
            self._lost += 1
            return
        self._pending.append(event)
        self._schedule()

    def _take_token(self) -> bool:
        """The anonymous-failure token bucket: refill by elapsed time, take one if there is one."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def _schedule(self) -> None:
        """Write soon: at once when a batch is full, else after FLUSH_DELAY."""
        if self._writing is not None:
            return  # the writer takes whatever is pending when it finishes its batch
        if len(self._pending) >= BATCH:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._start_writer()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_DELAY, self._start_writer)

    def _start_writer(self) -> None:
        """Start the writer task (one at a time)."""
        self._timer = None
        if self._writing is None:
            self._writing = asyncio.ensure_future(self._async_write_pending())

    # ---- the writer ---------------------------------------------------------------------------

    async def async_flush(self) -> None:
        """Write everything pending now (shutdown, tests); returns when it is on disk or failed."""
        if self._writing is not None:
            await asyncio.shield(self._writing)
        if self._pending or self._suppressed or self._lost:
            self._writing = asyncio.ensure_future(self._async_write_pending(retry=False))
            await asyncio.shield(self._writing)

    async def _async_write_pending(self, retry: bool = True) -> None:
        """Write batches until nothing is pending; on a failure keep them and retry later."""
        loop = asyncio.get_running_loop()
        try:
            while self._pending or self._suppressed or self._lost:
                batch = self._pending[:BATCH]
                extra: list[tuple[str, dict[str, Any]]] = []
                if self._suppressed:
                    extra.append(
                        ("audit_suppressed", {"count": self._suppressed, "cause": "anonymous_failures_per_minute"})
                    )
                if self._lost:
                    extra.append(("audit_lost", {"count": self._lost, "cause": "write_failures"}))
                try:
                    if not self._open:
                        await loop.run_in_executor(self._thread, self.sink.open, self._version)
                        self._open = True
                    await loop.run_in_executor(self._thread, self.sink.append, batch, extra)
                except Exception as err:  # noqa: BLE001 - kept in memory and retried
                    self._failed(err)
                    if retry:
                        self._timer = loop.call_later(RETRY_DELAY, self._start_writer)
                    return
                if self._failing_since is not None:
                    _LOGGER.warning("The audit log is written again")
                    self._failing_since = None
                del self._pending[: len(batch)]
                for kind, details in extra:
                    if kind == "audit_suppressed":
                        self._suppressed -= details["count"]
                    else:
                        self._lost -= details["count"]
        finally:
            self._writing = None

    def _failed(self, err: Exception) -> None:
        """Log a write failure (once per minute while it lasts)."""
        now = time.monotonic()
        if self._failing_since is None or now - self._failing_since > 60:
            _LOGGER.error(
                "Writing the audit log failed (%s); %d events wait in memory (at most %d are kept)",
                err,
                len(self._pending),
                MAX_PENDING,
            )
            self._failing_since = now

    @property
    def pending(self) -> int:
        """Events not written yet."""
        return len(self._pending)


def build_audit_log(
    pm: Any, context: Any, config_dir: str, config: dict[str, Any] | None, version: str, storage: Any = None
) -> AuditLog | None:
    """The server's audit log: the sink a plugin offers (opp_auth_audit_sink), else the files; None when disabled."""
    conf = audit_config(config)
    if not conf["enabled"]:
        return None
    sink = offered_sink(pm, context, conf, storage)
    if sink is None:
        from .audit_files import AuditFiles

        sink = AuditFiles(config_dir, **conf)
    return AuditLog(sink, conf, version=version)


def offered_sink(pm: Any, context: Any, conf: dict[str, Any], storage: Any) -> AuditSink | None:
    """The sink a plugin offers for this storage (opp_auth_audit_sink), or None: the files.

    A plugin whose hook raises is logged by name and the files are used.
    """
    try:
        sink: AuditSink | None = pm.hook.opp_auth_audit_sink(auth=context, config=conf, storage=storage)
    except Exception:
        _LOGGER.exception("A plugin's opp_auth_audit_sink failed; the audit log goes to the files")
        return None
    return sink


def record_offline(
    config_dir: Any, config: dict[str, Any] | None, events: list[AuthEvent], sink: AuditSink | None = None
) -> None:
    """Append events from a command: to sink (the storage's, PostgreSQL), else to the audit files (the command
    holds the directory lock, so no server writes them)."""
    conf = audit_config(config)
    if not conf["enabled"] or not events:
        return
    from . import __version__
    from .audit_files import AuditFiles

    if sink is None:
        sink = AuditFiles(config_dir, **conf)
    try:
        sink.open(__version__)
        sink.append(events, [])
        sink.close()
    except OSError as err:
        _LOGGER.error("The audit log cannot be written (%s): %d events not recorded", err, len(events))
