"""Per-address bans (ip_bans.yaml) after too many failed logins, driven by the login events.

SPEC 7 with G17 fixed: failures count only within ``window`` seconds (1 h);
a hand-edited file never stops start-up (a bad entry is logged and skipped, a
bare address or one without ``banned_at`` is banned from load time); no
reverse DNS lookup is made, so nothing delays a response. Addresses on the
``ban_allowlist`` networks are never banned (a ban of one in the file is
ignored). Bans are lifted by ``opp-auth bans remove`` (server stopped) or the
admin websocket command ``config/auth/bans/remove`` (server running).

Several servers (a shared ephemeral state, :mod:`opp_auth.ephemeral`): every
server counts the failures all of them publish (the throttle's topic
``login_failures``); the server whose own failure reaches the threshold bans
and publishes the ban (topic ``ip_bans``), and a lifted ban is published too, so
a ban made on one server is refused by all within the change feed's delay (the
login engine's barrier waits for it). Bans and lifts are *retained* events
(:meth:`opp_auth.ephemeral.EphemeralState.async_publish_retained`, keyed by the
address): a server that starts replays the latest of each address, whatever its
age, after ``ip_bans.yaml`` (which only the banning server appends to). A lift so
replayed removes a ban the file holds from before it, so a lifted ban stays
lifted on a server whose file still lists it; a ban the file dates after the lift
(written by hand since) stays.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from ..ephemeral import EphemeralState
from ..events import ADDRESS_BANNED, ADDRESS_UNBANNED
from ..network import in_networks, parse_networks
from ..plugins import hookimpl

_LOGGER = logging.getLogger(__name__)

IP_BANS_FILE = "ip_bans.yaml"
FAILURE_WINDOW = 3600.0
MAX_TRACKED = 10000
TOPIC = "ip_bans"
FAILURES_TOPIC = "login_failures"  # opp_auth.throttle publishes every failure there


class BanManager:
    """Banned addresses and recent failure counts; a built-in plugin of the login events."""

    def __init__(
        self,
        config_dir: str | Path,
        threshold: int,
        enabled: bool = True,
        window: float = FAILURE_WINDOW,
        allowlist: Any = (),
    ) -> None:
        """Read nothing yet; call load()."""
        self.allowlist = parse_networks(allowlist)
        self.path = Path(config_dir) / IP_BANS_FILE
        self.threshold = threshold
        self.enabled = enabled
        self.window = window
        self.banned: dict[str, datetime] = {}
        # Told of address_banned / address_unbanned (the app sets it to the manager's events.emit).
        self.emit: Callable[..., Any] = _ignore
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self.state = EphemeralState()
        self._pending: set[asyncio.Future[Any]] = set()
        self._from_file: set[str] = set()  # bans as ip_bans.yaml has them (no shared event since)

    def share(self, state: EphemeralState) -> None:
        """Count and ban together with the other servers of a shared state (see the module docstring)."""
        self.state = state
        if state.shared:
            state.subscribe(FAILURES_TOPIC, self._apply_failure)
            state.subscribe(TOPIC, self.apply_shared)

    def _apply_failure(self, event: dict[str, Any], age: float = 0.0) -> None:
        """A failure another server counted: counted here too (it bans there, not here)."""
        ip = event.get("ip")
        if event.get("op") == "fail" and isinstance(ip, str):
            self._count(ip, time.monotonic() - max(0.0, age))

    def apply_shared(self, event: dict[str, Any], age: float = 0.0) -> None:
        """A ban made or lifted on another server."""
        ip = event.get("ip")
        if not isinstance(ip, str):
            return
        if event.get("op") == "ban":
            try:
                at = datetime.fromisoformat(str(event.get("at")))
            except ValueError:
                at = datetime.now(UTC)
            self.banned[ip] = at
            self._from_file.discard(ip)
            self._failures.pop(ip, None)
        elif event.get("op") == "unban":
            banned_at = self.banned.get(ip)
            lifted_at = datetime.now(UTC) - timedelta(seconds=max(0.0, age))  # ages are the store's clock
            if ip in self._from_file and banned_at is not None and _sort_key(banned_at) > lifted_at:
                return  # the file bans it again after the lift (by hand, or while this server was away)
            self.banned.pop(ip, None)
            self._from_file.discard(ip)

    def load(self) -> None:
        """Read ip_bans.yaml; a bad entry is skipped with an error, never a crash."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as err:
            _LOGGER.error("Unable to load %s: %s", self.path, err)
            return
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            _LOGGER.error("Unable to load %s: %s", self.path, err)
            return
        if not isinstance(data, dict):
            _LOGGER.error("Unable to load %s: expected a mapping of addresses", self.path)
            return
        for ip, info in data.items():
            try:
                address = str(ipaddress.ip_address(str(ip)))
            except ValueError:
                _LOGGER.error("Failed to load IP ban %s: not an IP address", ip)
                continue
            banned_at = info.get("banned_at") if isinstance(info, dict) else None
            if isinstance(banned_at, str):
                try:
                    banned_at = datetime.fromisoformat(banned_at)
                except ValueError:
                    _LOGGER.error("Failed to load IP ban %s: invalid banned_at %s", ip, banned_at)
                    continue
            if not isinstance(banned_at, datetime):
                banned_at = datetime.now(UTC)
            self.banned[address] = banned_at
            self._from_file.add(address)

    def is_banned(self, ip: str | None) -> bool:
        """Whether requests from ip are refused."""
        return ip is not None and ip in self.banned and not in_networks(ip, self.allowlist)

    def list_bans(self) -> list[dict[str, str]]:
        """Banned addresses with their ISO-8601 ban time, oldest first."""
        return [
            {"ip_address": ip, "banned_at": at.isoformat()}
            for ip, at in sorted(self.banned.items(), key=lambda item: _sort_key(item[1]))
        ]

    def record_failure(self, ip: str | None) -> bool:
        """Count a failure; returns True when it caused a ban."""
        if ip is None or not self.enabled or self.threshold < 1 or in_networks(ip, self.allowlist):
            return False
        if self._count(ip, time.monotonic()) < self.threshold:
            return False
        self._failures.pop(ip, None)
        self.add_ban(ip)
        return True

    def _count(self, ip: str, now: float) -> int:
        """Count a failure of ip at now; how many within the window."""
        attempts = self._failures.pop(ip, None) or deque()
        attempts.append(now)
        while attempts and now - attempts[0] > self.window:
            attempts.popleft()
        self._failures[ip] = attempts
        if len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)
        return len(attempts)

    def record_success(self, ip: str | None) -> None:
        """A successful login clears the address's count."""
        if ip is not None:
            self._failures.pop(ip, None)

    def add_ban(self, ip: str) -> None:
        """Ban an address and append it to ip_bans.yaml."""
        now = datetime.now(UTC)
        self.banned[ip] = now
        self._from_file.discard(ip)
        self._publish_later({"op": "ban", "ip": ip, "at": now.isoformat()}, ip)
        _LOGGER.warning("Banned IP %s for too many login attempts", ip)
        self.emit(ADDRESS_BANNED, details={"ip_address": ip, "threshold": self.threshold})
        try:
            with self.path.open("a", encoding="utf-8") as out:
                out.write("\n" + yaml.safe_dump({ip: {"banned_at": now.isoformat()}}))
        except OSError as err:
            _LOGGER.error("Unable to save %s: %s", self.path, err)

    def remove_ban(self, ip: str) -> bool:
        """Lift a ban (rewrites the file); False when ip was not banned."""
        if self.banned.pop(ip, None) is None:
            return False
        self._from_file.discard(ip)
        self._publish_later({"op": "unban", "ip": ip, "at": datetime.now(UTC).isoformat()}, ip)
        self.emit(ADDRESS_UNBANNED, details={"ip_address": ip})
        content = {addr: {"banned_at": at.isoformat()} for addr, at in self.banned.items()}
        try:
            self.path.write_text(yaml.safe_dump(content) if content else "", encoding="utf-8")
        except OSError as err:
            _LOGGER.error("Unable to save %s: %s", self.path, err)
        return True

    def _publish_later(self, event: dict[str, Any], ip: str) -> None:
        """Tell the other servers, and those started later (retained per address); whoever waits on pending awaits it."""
        if self.state.shared:
            task = asyncio.ensure_future(self.state.async_publish_retained(TOPIC, event, ip))
            self._pending.add(task)
            task.add_done_callback(self._published)

    def _published(self, task: asyncio.Future[Any]) -> None:
        """A published ban: forget the task, log a failure."""
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _LOGGER.error("Telling the other servers of a ban change failed: %s", task.exception())

    @hookimpl
    def opp_auth_login_failed(self, auth: Any, remote_ip: str | None, provider: Any, username: Any, reason: str) -> Any:
        """Count the failure against the address (a ban it causes reaches the other servers before the answer)."""
        if self.record_failure(remote_ip) and self._pending:
            return asyncio.gather(*self._pending, return_exceptions=True)
        return None

    @hookimpl
    def opp_auth_login_succeeded(self, auth: Any, remote_ip: str | None, user: Any, credential: Any) -> None:
        """Reset the address's count."""
        self.record_success(remote_ip)


def _ignore(*args: Any, **kwargs: Any) -> None:
    """No event consumer (a BanManager of the CLI)."""


def _sort_key(when: datetime) -> datetime:
    """Naive datetimes (hand-written without an offset) sort as UTC."""
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
