"""Per-address bans (ip_bans.yaml) after too many failed logins, driven by the login events.

SPEC 7 with G17 fixed: failures count only within ``window`` seconds (1 h);
a hand-edited file never stops start-up (a bad entry is logged and skipped, a
bare address or one without ``banned_at`` is banned from load time); no
reverse DNS lookup is made, so nothing delays a response. Addresses on the
``ban_allowlist`` networks are never banned (a ban of one in the file is
ignored). Bans are lifted by ``opp-auth bans remove`` (server stopped) or the
admin websocket command ``config/auth/bans/remove`` (server running).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from ..events import ADDRESS_BANNED, ADDRESS_UNBANNED
from ..network import in_networks, parse_networks
from ..plugins import hookimpl

_LOGGER = logging.getLogger(__name__)

IP_BANS_FILE = "ip_bans.yaml"
FAILURE_WINDOW = 3600.0
MAX_TRACKED = 10000


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
        now = time.monotonic()
        attempts = self._failures.pop(ip, None) or deque()
        attempts.append(now)
        while attempts and now - attempts[0] > self.window:
            attempts.popleft()
        self._failures[ip] = attempts
        if len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)
        if len(attempts) < self.threshold:
            return False
        self._failures.pop(ip, None)
        self.add_ban(ip)
        return True

    def record_success(self, ip: str | None) -> None:
        """A successful login clears the address's count."""
        if ip is not None:
            self._failures.pop(ip, None)

    def add_ban(self, ip: str) -> None:
        """Ban an address and append it to ip_bans.yaml."""
        now = datetime.now(UTC)
        self.banned[ip] = now
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
        self.emit(ADDRESS_UNBANNED, details={"ip_address": ip})
        content = {addr: {"banned_at": at.isoformat()} for addr, at in self.banned.items()}
        try:
            self.path.write_text(yaml.safe_dump(content) if content else "", encoding="utf-8")
        except OSError as err:
            _LOGGER.error("Unable to save %s: %s", self.path, err)
        return True

    @hookimpl
    def opp_auth_login_failed(
        self, auth: Any, remote_ip: str | None, provider: Any, username: Any, reason: str
    ) -> None:
        """Count the failure against the address."""
        self.record_failure(remote_ip)

    @hookimpl
    def opp_auth_login_succeeded(self, auth: Any, remote_ip: str | None, user: Any, credential: Any) -> None:
        """Reset the address's count."""
        self.record_success(remote_ip)


def _ignore(*args: Any, **kwargs: Any) -> None:
    """No event consumer (a BanManager of the CLI)."""


def _sort_key(when: datetime) -> datetime:
    """Naive datetimes (hand-written without an offset) sort as UTC."""
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
