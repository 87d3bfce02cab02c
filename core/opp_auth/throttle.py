"""Login throttling: a growing delay, then a temporary lock, per (address, account), per account and per address.

A built-in plugin of the login events (``opp_auth_login_failed`` /
``opp_auth_login_succeeded``), so every provider and MFA module is covered
without code of its own. Before a login step is processed the core asks
``auth.login_retry_after(address, username)`` (the ``opp_auth_login_retry_after``
hook, answered here); a positive answer refuses the step without calling the
provider: HTTP 429 with ``Retry-After`` for the login flow, ``auth_invalid``
in the websocket auth phase, the error ``too_many_attempts`` for websocket
commands that check a password or code (change_password, TOTP recovery codes).

Four counters, each in a bounded LRU map, each forgotten ``reset_after_seconds``
after its last failure (the "decay"):

- per (address, account): ``attempts_per_address_and_user`` failures are free,
  then each further failure locks the pair for 2^(n - free) seconds after it
  (1 s, 2 s, 4 s, ...), capped at ``max_lock_seconds`` (15 min). This is the
  brute-force brake; it applies on allow-listed networks too.
- per account: the same with ``attempts_per_user`` free failures, but it counts
  only failures from addresses the account is NOT trusted at, and it is never
  applied to a trusted address. An address is trusted for an account when it
  is in ``ban_allowlist`` or a login of that account succeeded from it earlier
  (remembered in memory, the last 16 addresses per account). So a distributed
  guesser slows down across all its addresses, while the owner at home (or
  anywhere they logged in before) is not locked out by strangers.
- per address: ``attempts_per_address`` free failures across all accounts (a
  password spray from one address), never applied to allow-listed networks.
- per prefix (IPv4 /24, IPv6 /64): ``attempts_per_prefix`` free failures across
  all accounts and all addresses of the prefix, so a spray that takes a new
  address of its /64 for each guess is braked all the same. Never applied to
  allow-listed networks, nor to an address some account logged in from (so a
  neighbour in the owner's /24, or a spray from the owner's /64, does not lock
  the owner out at home).

Locks are always temporary; nothing here is written to disk, and a restart
forgets everything. A success clears the pair (address, account) for every
username of the user, but neither the account's tally of failures from
strangers (a success at home does not vouch for them) nor the address's tally
(else anyone holding one account could reset the brake on spraying others).
Refused attempts are not failures: they do not extend a lock. A 401 on a
protected view (reason ``unauthorized``) is not a login attempt and counts
nowhere here (the IP ban still counts it).

Usernames are compared stripped and case-folded. Memory is bounded: each map
holds at most ``max_tracked`` entries, dropping the least recently failed.

Several servers (a shared ephemeral state, :mod:`opp_auth.ephemeral`): each
failure's counter changes, each success that clears something or trusts a new
address, and each clear are published on topic ``login_failures`` and applied by
every server, so a guesser who spreads attempts over all servers is counted as
by one; the login engine's barrier makes a step wait for them. A server that
starts replays the topic's events of the last ``reset_after_seconds``, and so
does ``opp-auth lockouts list`` to show the lockouts of every server.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from .ephemeral import EphemeralState
from .events import LOCKOUT_CLEARED
from .network import address_and_prefix, in_networks, parse_networks
from .plugins import hookimpl

_LOGGER = logging.getLogger(__name__)

PLUGIN_NAME = "opp_auth.throttle"
DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "attempts_per_address_and_user": 5,
    "attempts_per_user": 10,
    "attempts_per_address": 20,
    "attempts_per_prefix": 100,
    "max_lock_seconds": 900,
    "reset_after_seconds": 3600,
}
MAX_TRACKED = 10000
TOPIC = "login_failures"
KNOWN_ADDRESSES_PER_USER = 16
# Failures that are not a guess at a password, code or token.
IGNORED_REASONS = frozenset({"unauthorized"})

KIND_PAIR = "address_and_user"
KIND_USER = "user"
KIND_ADDRESS = "address"
KIND_PREFIX = "prefix"


def too_many_attempts_message(seconds: float) -> str:
    """The text every refusal shows."""
    return f"Too many login attempts, try again in {retry_after_header(seconds)} seconds"


def retry_after_header(seconds: float) -> str:
    """Whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))


def account_key(username: Any) -> str | None:
    """The throttle's key of an account: Unicode NFKC, case-folded, stripped; None when there is none.

    Broader than :func:`normalize_username`: names a directory may take for one account (NFC and
    NFD, full-width letters, ligatures, a no-break space around it: LDAP's string preparation
    folds these) share one counter and one step lock, so typing each form buys no fresh attempts.
    Merging only ever throttles more.
    """
    if not isinstance(username, str):
        return None
    key = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", username).casefold()).strip()
    return key or None


def normalize_username(username: Any) -> str | None:
    """The account key of a username: stripped, case-folded; None when there is none."""
    if not isinstance(username, str):
        return None
    key = username.strip().casefold()
    return key or None


def _prefix(ip: str) -> str | None:
    """The IPv4 /24 or IPv6 /64 of ip; None when ip is not an address."""
    parsed = address_and_prefix(ip)
    return parsed[1] if parsed is not None else None


class _Counters:
    """failures and last failure time per key, LRU-bounded, forgotten after a quiet period."""

    def __init__(self, max_size: int, forget_after: float) -> None:
        """Empty."""
        self.max_size = max_size
        self.forget_after = forget_after
        self.items: OrderedDict[Any, list[float]] = OrderedDict()

    def add(self, key: Any, now: float) -> int:
        """Count a failure; returns the count."""
        entry = self.items.pop(key, None)
        if entry is None or now - entry[1] > self.forget_after:
            entry = [0, now]
        entry[0] += 1
        entry[1] = now
        self.items[key] = entry
        while len(self.items) > self.max_size:
            self.items.popitem(last=False)
        return int(entry[0])

    def get(self, key: Any, now: float) -> list[float] | None:
        """[failures, last] of a key still remembered."""
        entry = self.items.get(key)
        if entry is not None and now - entry[1] > self.forget_after:
            del self.items[key]
            return None
        return entry


class LoginThrottle:
    """Failure counters and the growing delay they impose; see the module docstring."""

    def __init__(
        self,
        *,
        enabled: bool = True,
        attempts_per_address_and_user: int = 5,
        attempts_per_user: int = 10,
        attempts_per_address: int = 20,
        attempts_per_prefix: int = 100,
        max_lock_seconds: float = 900,
        reset_after_seconds: float = 3600,
        allowlist: Iterable[Any] = (),
        max_tracked: int = MAX_TRACKED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Counters start empty."""
        self.enabled = enabled
        self.free = {
            KIND_PAIR: attempts_per_address_and_user,
            KIND_USER: attempts_per_user,
            KIND_ADDRESS: attempts_per_address,
            KIND_PREFIX: attempts_per_prefix,
        }
        self.max_lock = float(max_lock_seconds)
        self.allowlist = parse_networks(allowlist)
        self.clock = clock
        self.max_tracked = max_tracked
        self.maps = {kind: _Counters(max_tracked, float(reset_after_seconds)) for kind in self.free}
        # Told of lockout_cleared (the app sets it to the manager's events.emit).
        self.emit: Callable[..., Any] = lambda *args, **kwargs: None
        self._known: OrderedDict[str, OrderedDict[str, None]] = OrderedDict()
        self._known_refs: dict[str, int] = {}  # address -> how many accounts logged in from it
        self.reset_after = float(reset_after_seconds)
        self.state = EphemeralState()

    def share(self, state: EphemeralState) -> None:
        """Count together with the other servers of a shared state (see the module docstring)."""
        self.state = state
        if state.shared:
            state.subscribe(TOPIC, self.apply_shared)

    def apply_shared(self, event: dict[str, Any], age: float = 0.0) -> None:
        """An event another server published (age: seconds since)."""
        op = event.get("op")
        if op == "fail":
            now = self.clock() - max(0.0, age)
            for item in event.get("keys") or ():
                if isinstance(item, list) and len(item) == 2 and item[0] in self.maps:
                    kind, key = item
                    if kind == KIND_PAIR:
                        if not (isinstance(key, list) and len(key) == 2):
                            continue
                        key = (key[0], key[1])
                    elif not isinstance(key, str):
                        continue
                    self.maps[kind].add(key, now)
        elif op == "success":
            usernames = event.get("usernames")
            if isinstance(usernames, list):
                self.record_success(event.get("ip"), [u for u in usernames if isinstance(u, str)])
        elif op == "clear":
            self._clear(event.get("ip"), event.get("username"))

    def _publish(self, event: dict[str, Any]) -> Any:
        """Publish to the other servers (an awaitable for the hook caller), or None without a shared state."""
        return self.state.async_publish(TOPIC, event) if self.state.shared else None

    @classmethod
    def from_http_config(cls, http_config: dict[str, Any], **kwargs: Any) -> LoginThrottle:
        """Built from the http: block (login_throttle and ban_allowlist; missing keys take defaults)."""
        conf = {**DEFAULTS, **(http_config.get("login_throttle") or {})}
        return cls(**conf, allowlist=http_config.get("ban_allowlist") or (), **kwargs)

    # ---- decisions --------------------------------------------------------------------------

    def is_allowlisted(self, ip: str | None) -> bool:
        """Whether ip is on a network that is never banned or locked per address."""
        return in_networks(ip, self.allowlist)

    def is_trusted(self, ip: str | None, username: str) -> bool:
        """Whether the account lock is waived for ip (allow-listed, or the account logged in from it)."""
        known = self._known.get(username)
        return (known is not None and ip in known) or self.is_allowlisted(ip)

    def is_known_address(self, ip: str | None) -> bool:
        """Whether some account logged in from ip (the last 16 addresses of each account)."""
        return ip in self._known_refs

    def _wait(self, kind: str, key: Any, now: float) -> float:
        """Seconds left of the lock a counter imposes."""
        entry = self.maps[kind].get(key, now)
        if entry is None:
            return 0.0
        excess = int(entry[0]) - self.free[kind]
        if excess < 0:
            return 0.0
        delay = self.max_lock if excess >= 32 else min(self.max_lock, float(2**excess))
        return max(0.0, entry[1] + delay - now)

    def retry_after(self, ip: str | None, username: Any) -> float:
        """Seconds before ip may try to log in as username; 0 means now."""
        if not self.enabled:
            return 0.0
        now = self.clock()
        user = account_key(username)
        wait = 0.0
        if ip is not None and not self.is_allowlisted(ip):
            wait = self._wait(KIND_ADDRESS, ip, now)
            prefix = _prefix(ip)
            if prefix is not None and not self.is_known_address(ip):
                wait = max(wait, self._wait(KIND_PREFIX, prefix, now))
        if user is not None:
            wait = max(wait, self._wait(KIND_PAIR, (ip, user), now))
            if not self.is_trusted(ip, user):
                wait = max(wait, self._wait(KIND_USER, user, now))
        return wait

    # ---- events -----------------------------------------------------------------------------

    def record_failure(self, ip: str | None, username: Any, reason: str = "invalid_auth") -> list[list[Any]]:
        """Count a failed attempt; the counters it counted in, as [kind, key] (JSON)."""
        if not self.enabled or reason in IGNORED_REASONS:
            return []
        now = self.clock()
        user = account_key(username)
        counted: list[list[Any]] = []
        if ip is not None and not self.is_allowlisted(ip):
            self.maps[KIND_ADDRESS].add(ip, now)
            counted.append([KIND_ADDRESS, ip])
            prefix = _prefix(ip)
            if prefix is not None:
                self.maps[KIND_PREFIX].add(prefix, now)
                counted.append([KIND_PREFIX, prefix])
        if user is not None:
            self.maps[KIND_PAIR].add((ip, user), now)
            counted.append([KIND_PAIR, [ip, user]])
            if not self.is_trusted(ip, user):
                self.maps[KIND_USER].add(user, now)
                counted.append([KIND_USER, user])
        return counted

    def record_success(self, ip: str | None, usernames: Iterable[Any]) -> bool:
        """A login succeeded from ip for an account with these usernames; whether anything changed but order."""
        if ip is None:
            return False
        changed = False
        for name in {account_key(u) for u in usernames} - {None}:
            assert name is not None
            changed |= self.maps[KIND_PAIR].items.pop((ip, name), None) is not None
            known = self._known.pop(name, None) or OrderedDict()
            if ip in known:
                known.move_to_end(ip)
            else:
                changed = True
                known[ip] = None
                self._known_refs[ip] = self._known_refs.get(ip, 0) + 1
            while len(known) > KNOWN_ADDRESSES_PER_USER:
                self._unref(known.popitem(last=False)[0])
            self._known[name] = known
            while len(self._known) > self.max_tracked:
                for old in self._known.popitem(last=False)[1]:
                    self._unref(old)
        return changed

    def _unref(self, ip: str) -> None:
        """One account fewer remembers ip."""
        left = self._known_refs.pop(ip) - 1
        if left:
            self._known_refs[ip] = left

    # ---- administration ---------------------------------------------------------------------

    def lockouts(self) -> list[dict[str, Any]]:
        """Counters that refuse attempts right now, longest first."""
        now = self.clock()
        found: list[dict[str, Any]] = []
        for kind, counters in self.maps.items():
            for key in list(counters.items):
                wait = self._wait(kind, key, now)
                if wait <= 0:
                    continue
                ip, user = key if kind == KIND_PAIR else ((None, key) if kind == KIND_USER else (key, None))
                found.append(
                    {
                        "type": kind,
                        "ip_address": ip,
                        "username": user,
                        "failures": int(counters.items[key][0]),
                        "retry_after": math.ceil(wait),
                    }
                )
        found.sort(key=lambda item: -item["retry_after"])
        return found

    def clear(self, ip: str | None = None, username: Any = None) -> int:
        """Forget counters matching the filters (both None: all), on every server sharing them; how many here."""
        cleared = self._clear(ip, username)
        self.emit(LOCKOUT_CLEARED, details={"ip_address": ip, "username": username, "cleared": cleared})
        if self.state.shared:
            task = asyncio.ensure_future(
                self.state.async_publish(TOPIC, {"op": "clear", "ip": ip, "username": username})
            )
            task.add_done_callback(_log_publish_failure)
        return cleared

    def _clear(self, ip: Any, username: Any) -> int:
        """Forget counters matching the filters; how many."""
        ip = ip if isinstance(ip, str) else None
        user = account_key(username)
        cleared = 0
        for kind, counters in self.maps.items():
            for key in list(counters.items):
                if kind == KIND_PAIR:
                    match = (ip is None or key[0] == ip) and (user is None or key[1] == user)
                elif kind == KIND_USER:
                    match = ip is None and (user is None or key == user)
                elif kind == KIND_PREFIX:
                    match = user is None and (ip is None or key == ip or key == _prefix(ip))
                else:
                    match = user is None and (ip is None or key == ip)
                if match:
                    del counters.items[key]
                    cleared += 1
        return cleared

    # ---- hooks ------------------------------------------------------------------------------

    @hookimpl
    def opp_auth_login_failed(self, auth: Any, remote_ip: str | None, provider: Any, username: Any, reason: str) -> Any:
        """Count the failure (and, with a shared state, have every server count it: awaited before the answer)."""
        counted = self.record_failure(remote_ip, username, reason)
        # The IP ban counts every failure, so each one is published (with no counter when the throttle skipped it).
        return self._publish({"op": "fail", "ip": remote_ip, "keys": counted})

    @hookimpl
    def opp_auth_login_succeeded(self, auth: Any, remote_ip: str | None, user: Any, credential: Any) -> Any:
        """Clear the address and pairs; trust the address for the account from now on (on every server)."""
        creds = list(getattr(user, "credentials", None) or [])
        if credential is not None:
            creds.append(credential)
        usernames = [(getattr(c, "data", None) or {}).get("username") for c in creds]
        if self.record_success(remote_ip, usernames):
            return self._publish({"op": "success", "ip": remote_ip, "usernames": [u for u in usernames if u]})
        return None

    @hookimpl
    def opp_auth_login_retry_after(self, auth: Any, remote_ip: str | None, username: Any) -> float:
        """Seconds to wait before this attempt."""
        return self.retry_after(remote_ip, username)


def _log_publish_failure(task: asyncio.Future[Any]) -> None:
    """A clear that could not reach the other servers is logged (they keep their counters)."""
    if not task.cancelled() and task.exception() is not None:
        _LOGGER.error("Clearing lockouts on the other servers failed: %s", task.exception())
