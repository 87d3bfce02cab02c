"""Login history: each user's recent sign-ins and failed attempts, and the devices they sign in from.

Fed by the one event stream (:mod:`opp_auth.events`): a ``login_succeeded`` is
recorded under its user, a ``login_failed`` under the user its username (as
typed, with its provider) belongs to; a failure for a name that is nobody's is
attached to no user (the audit log has it). Never a password, code or token:
only what the event carries (time, address, client id, user agent, provider,
MFA module, reason).

Bounds (docs/security.md, "Limits"; ``audit: history:`` in configuration.yaml
changes them, the constants below are the defaults): each user keeps at most
:data:`MAX_SUCCESSES` sign-ins and, separately, :data:`MAX_FAILURES`
failures, each a ring (the oldest entry of its kind is overwritten), so a
password sprayed from many addresses can push out older failures but never a
sign-in. Entries older than :data:`MAX_AGE` are not shown and are dropped at
start-up (so is what a lowered bound leaves beyond it). Client strings are clipped and stripped of control and bidi
characters before they are kept.

New devices: each user has a bounded set of remembered client ids and networks
(IPv4 /24, IPv6 /64; :data:`MAX_DEVICES` of each, the least recently seen
forgotten first). A sign-in from a client id or a network not in that set is
flagged in the history, emits a ``new_device_login`` event and fires the
``opp_auth_new_device_login`` hook (the notify module sends the user a message
when they have a notify target). The user's
first recorded sign-in only fills the set: it is no alarm (there is nothing to
compare with; a user who existed before this release starts the same way).

Storage: ``.storage/opp_auth.login_history``, journaled through the storage API
plugins use (``storage(key, version, journal=True)`` and
``async_save_changes``, so it follows the configured storage backend): one
event writes the entries it changed (the new entry, the one it pushed out, the
device entries), never the whole document, in the background, several events
sharing one write. An entry's id is its time in microseconds, so servers
sharing one storage add entries without overwriting each other's; each follows
the others' changes (``listen``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from . import events as ev
from .network import address_and_prefix
from .storage import StorageError

if TYPE_CHECKING:
    from .manager import AuthManager

_LOGGER = logging.getLogger(__name__)

STORAGE_KEY = "opp_auth.login_history"
STORAGE_VERSION = 1
MAX_SUCCESSES = 50
"""Sign-ins kept per user (a ring of its own)."""
MAX_FAILURES = 50
"""Failed attempts kept per user (a ring of its own: failures never push out sign-ins)."""
MAX_AGE = 90 * 86400.0
"""Seconds an entry is kept and shown."""
MAX_DEVICES = 20
"""Client ids, and networks, remembered per user (each)."""
RECENT_FAILURES_WINDOW = 7 * 86400.0
"""The window of the users page's "recent failures" count."""
DEFAULT_PAGE = 20
MAX_PAGE = 100
MAX_PENDING = 256
PENDING_TTL = 600.0  # an authorization code lives at most this long
MAX_CLIENT_TEXT = 256
PAGE_TEXT = 80
"""Characters of a client string the pages show in a table cell (history.js cuts the user agent there)."""
NEW_DEVICE_HOOK = "opp_auth_new_device_login"

# Reasons that are attempts to sign in as someone (a refused token or request is not).
SIGN_IN_REASONS = frozenset({"invalid_auth", "mfa_failed", "throttled", "user_inactive", "provider_unavailable"})
# C0/C1 controls (ANSI escapes start with one), bidi overrides and isolates, zero-width and
# other invisible format characters, lone surrogates: shown as U+FFFD, so a client name cannot
# rewrite a terminal or reorder what a page shows.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ud800-\udfff]")
_SUCCESS = "s"
_FAILURE = "f"
_CLIENTS = "c"
_NETWORKS = "n"
_RINGS = (_SUCCESS, _FAILURE)


def clean_text(value: Any, limit: int = MAX_CLIENT_TEXT) -> str | None:
    """A client-supplied string safe to keep and show: controls replaced, at most limit characters."""
    if value is None:
        return None
    text = ev.clip(value, limit) or ""
    return _UNSAFE.sub("\ufffd", text)


def network_of(address: str | None) -> str | None:
    """The network an address counts as for new-device checks: IPv4 /24, IPv6 /64 (None when not an address)."""
    if not address:
        return None
    return _network_of(address)


@functools.lru_cache(maxsize=4096)
def _network_of(address: str) -> str | None:
    """network_of, remembered (a zone index, fe80::1%eth0, is dropped)."""
    found = address_and_prefix(address.split("%", 1)[0])
    return found[1] if found is not None else None


def _iso(timestamp: float) -> str:
    """A timestamp as ISO 8601 in UTC."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def entry_json(entry: dict[str, Any]) -> dict[str, Any]:
    """A stored entry as the websocket API shows it (docs/api.md)."""
    provider = entry.get("p")
    new = entry.get("new") or ()
    return {
        "id": entry["n"],
        "time": _iso(entry["t"]),
        "success": bool(entry.get("ok")),
        "reason": entry.get("r"),
        "remote_address": entry.get("ip"),
        "network": entry.get("net"),
        "client_id": entry.get("c"),
        "user_agent": entry.get("ua"),
        "provider": {"type": provider[0], "id": provider[1]} if isinstance(provider, list) and provider else None,
        "mfa_module": entry.get("m"),
        "username": entry.get("u"),
        "new_client": "client" in new,
        "new_network": "network" in new,
        "first_sign_in": bool(entry.get("first")),
    }


class LoginHistory:
    """Per-user rings of sign-ins and failures, and remembered devices; see the module docstring."""

    def __init__(self, auth: AuthManager, limits: dict[str, int] | None = None) -> None:
        """Nothing loaded yet; events are heard once async_load has run.

        limits: the validated ``audit: history:`` block (sign_ins, failures, keep_days, devices).
        """
        self._auth = auth
        limits = limits or {}
        self._bounds = {
            _SUCCESS: int(limits.get("sign_ins", MAX_SUCCESSES)),
            _FAILURE: int(limits.get("failures", MAX_FAILURES)),
        }
        self._max_age = float(limits["keep_days"]) * 86400.0 if "keep_days" in limits else MAX_AGE
        self._max_devices = int(limits.get("devices", MAX_DEVICES))
        self._store = auth.storage(STORAGE_KEY, STORAGE_VERSION, private=True, journal=True)
        self._users: dict[str, dict[str, Any]] = {}
        self._data: dict[str, Any] = {"users": self._users}
        # user id -> the latest entry id (microseconds since the epoch, made unique per user)
        self._last: dict[str, int] = {}
        self._dirty: dict[tuple[str, ...], None] = {}
        self._flush: asyncio.Future[None] | None = None
        # Sign-ins of credentials that get their user only at the code exchange: (provider, name) -> event.
        self._pending: OrderedDict[tuple[Any, str], ev.AuthEvent] = OrderedDict()
        self._unsubscribe: Any = None

    # ---- loading ----------------------------------------------------------------------------

    async def async_load(self) -> None:
        """Read the stored history, drop what has expired, follow other servers' changes, and start listening."""
        self._use(await self._store.async_load())
        self._store.listen(self._use)
        if self._unsubscribe is None:
            self._unsubscribe = self._auth.events.subscribe(self._on_event)

    def _use(self, data: Any) -> None:
        """Take stored data (at start, or another server's change on a shared storage).

        Entries recorded here and not yet written are kept over what came in.
        """
        users = data.get("users") if isinstance(data, dict) else None
        cutoff = time.time() - self._max_age
        fresh: dict[str, dict[str, Any]] = {}
        last: dict[str, int] = {}
        for user_id, node in (users or {}).items():
            if not isinstance(node, dict):
                continue
            clean: dict[str, Any] = {}
            for kind in (_SUCCESS, _FAILURE):
                ring = node.get(kind)
                kept = [
                    (key, entry)
                    for key, entry in (ring.items() if isinstance(ring, dict) else ())
                    if _valid_entry(entry) and key == str(entry["n"]) and entry["t"] >= cutoff
                ]
                # Oldest first, the newest within the bound (a lowered bound leaves no more).
                clean[kind] = dict(sorted(kept, key=lambda item: item[1]["n"])[-self._bounds[kind] :])
                last[user_id] = max([last.get(user_id, 0), *(entry["n"] for entry in clean[kind].values())])
            for kind in (_CLIENTS, _NETWORKS):
                seen = node.get(kind)
                known = (
                    [(k, v) for k, v in seen.items() if isinstance(v, (int, float))] if isinstance(seen, dict) else []
                )
                if len(known) > self._max_devices:  # the most recently seen within the bound
                    known = sorted(known, key=lambda item: item[1])[-self._max_devices :]
                clean[kind] = dict(known)
            fresh[user_id] = clean
        for path in self._dirty:  # not written yet: ours wins
            _copy_path(self._data, {"users": fresh}, path)
            if len(path) == 4 and path[2] in _RINGS and path[1] in fresh:  # rings stay oldest first
                ring = fresh[path[1]][path[2]]
                fresh[path[1]][path[2]] = dict(sorted(ring.items(), key=lambda item: item[1]["n"]))
        self._users = fresh
        self._data = {"users": fresh}
        self._last = {uid: max(n, self._last.get(uid, 0)) for uid, n in last.items()}

    def close(self) -> None:
        """Stop listening to events."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    async def async_flush(self) -> None:
        """Wait until every recorded entry is written (at shutdown)."""
        while self._flush is not None:
            await asyncio.shield(self._flush)
        if self._dirty:
            await self._async_write()

    # ---- reading ----------------------------------------------------------------------------

    def entries(self, user_id: str, *, limit: int = DEFAULT_PAGE, before: int | None = None) -> list[dict[str, Any]]:
        """The user's entries, newest first, with ids below before (a cursor), at most limit (JSON-ready)."""
        node = self._users.get(user_id)
        if node is None or limit <= 0:
            return []
        cutoff = time.time() - self._max_age
        found = [
            entry
            for kind in (_SUCCESS, _FAILURE)
            for entry in node[kind].values()
            if entry["t"] >= cutoff and (before is None or entry["n"] < before)
        ]
        found.sort(key=lambda e: e["n"], reverse=True)
        return [entry_json(e) for e in found[:limit]]

    def summary(self, user_id: str) -> dict[str, Any]:
        """The users page's line: the last sign-in (or None) and failures in the last RECENT_FAILURES_WINDOW."""
        node = self._users.get(user_id)
        if node is None:
            return {"last_sign_in": None, "recent_failures": 0}
        now = time.time()
        successes = [e for e in node[_SUCCESS].values() if e["t"] >= now - self._max_age]
        last = max(successes, key=lambda e: e["n"]) if successes else None
        failures = sum(1 for e in node[_FAILURE].values() if e["t"] >= now - RECENT_FAILURES_WINDOW)
        return {"last_sign_in": entry_json(last) if last else None, "recent_failures": failures}

    def devices(self, user_id: str) -> dict[str, list[str]]:
        """The client ids and networks remembered for a user (most recently seen first)."""
        node = self._users.get(user_id) or {}
        return {
            "clients": sorted(node.get(_CLIENTS, {}), key=lambda k: -node[_CLIENTS][k]),
            "networks": sorted(node.get(_NETWORKS, {}), key=lambda k: -node[_NETWORKS][k]),
        }

    # ---- recording ----------------------------------------------------------------------------

    def _on_event(self, event: ev.AuthEvent) -> None:
        """The event stream's consumer: in line, memory only; the write happens in the background."""
        kind = event.type
        if kind == ev.LOGIN_SUCCEEDED:
            if event.user_id is not None:
                self._record_success(event.user_id, event)
            elif event.username is not None and event.provider is not None:
                self._remember_pending(event)
        elif kind == ev.LOGIN_FAILED:
            if event.reason in SIGN_IN_REASONS:
                user_id = event.user_id or self._user_for_name(event.provider, event.username)
                if user_id is not None and self._auth.store.get_user(user_id) is not None:
                    self._record(user_id, _FAILURE, self._entry(event, ok=False))
        elif kind in (ev.USER_CREATED, ev.CREDENTIALS_ADDED):
            if event.user_id is not None and event.username is not None and event.provider is not None:
                pending = self._pending.pop((event.provider, event.username), None)
                if pending is not None and time.time() - pending.time <= PENDING_TTL:
                    self._record_success(event.user_id, pending)
        elif kind == ev.USER_REMOVED and event.user_id is not None:
            self._forget(event.user_id)

    def _user_for_name(self, provider: tuple[str, str | None] | None, username: str | None) -> str | None:
        """The id of the user whose credentials of provider carry username (as the provider matches it), or None."""
        if provider is None or not username:
            return None
        try:
            credentials = self._auth.store.find_credentials(provider, {"username": username})
        except Exception:  # a provider's credential_key failing must not lose the event for the others
            _LOGGER.exception("Cannot look up the user of a failed login")
            return None
        user_id = credentials.user_id if credentials is not None else None
        return user_id if user_id is not None and self._auth.store.get_user(user_id) is not None else None

    def _remember_pending(self, event: ev.AuthEvent) -> None:
        """Keep the sign-in of new credentials until their user is created (bounded, expiring)."""
        assert event.username is not None
        self._pending[(event.provider, event.username)] = event
        self._pending.move_to_end((event.provider, event.username))
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)

    @staticmethod
    def _entry(event: ev.AuthEvent, *, ok: bool) -> dict[str, Any]:
        """The stored form of an event (short keys: a history file of many users stays small)."""
        entry: dict[str, Any] = {"t": round(event.time, 6), "ok": ok}
        values = {
            "ip": clean_text(event.remote_address, 64),
            "net": network_of(event.remote_address),
            "c": clean_text(event.client_id),
            "ua": clean_text(event.user_agent),
            "p": [clean_text(event.provider[0], 64), clean_text(event.provider[1], 64)] if event.provider else None,
            "m": clean_text(event.mfa_module, 64),
            "r": None if ok else clean_text(event.reason, 64),
            "u": clean_text(event.username, 64),
        }
        entry.update((key, value) for key, value in values.items() if value is not None)
        return entry

    def _record_success(self, user_id: str, event: ev.AuthEvent) -> None:
        """A sign-in: the entry, flagged when its client or network is new; the devices remembered."""
        if self._auth.store.get_user(user_id) is None:
            return
        entry = self._entry(event, ok=True)
        node = self._node(user_id)
        clients, networks = node[_CLIENTS], node[_NETWORKS]
        client, network = entry.get("c") or "", entry.get("net")
        new: list[str] = []
        if not clients and not networks:
            entry["first"] = True
        else:
            if client not in clients:
                new.append("client")
            if network is not None and network not in networks:
                new.append("network")
        if new:
            entry["new"] = new
        self._record(user_id, _SUCCESS, entry)
        now = entry["t"]
        self._see(user_id, _CLIENTS, client, now)
        if network is not None:
            self._see(user_id, _NETWORKS, network, now)
        if new:
            self._announce(user_id, event, new)

    def _announce(self, user_id: str, event: ev.AuthEvent, new: list[str]) -> None:
        """Emit new_device_login after the event being delivered (so every consumer sees the sign-in first)."""
        values: dict[str, Any] = {
            "user_id": user_id,
            "username": event.username,
            "provider": event.provider,
            "mfa_module": event.mfa_module,
            "client_id": event.client_id,
            "remote_address": event.remote_address,
            "user_agent": event.user_agent,
            "via": event.via,
            "details": {"new": new, "network": network_of(event.remote_address)},
        }
        events = self._auth.events

        def announce() -> None:
            event = events.emit(ev.NEW_DEVICE_LOGIN, **values)
            if event is not None:
                events.fire_later(NEW_DEVICE_HOOK, event=event)

        try:
            asyncio.get_running_loop().call_soon(announce)
        except RuntimeError:
            announce()

    def _node(self, user_id: str) -> dict[str, Any]:
        """The user's history, created empty on first use."""
        node = self._users.get(user_id)
        if node is None:
            node = self._users[user_id] = {_SUCCESS: {}, _FAILURE: {}, _CLIENTS: {}, _NETWORKS: {}}
        return node

    def _record(self, user_id: str, kind: str, entry: dict[str, Any]) -> None:
        """Add entry to the user's ring of kind, dropping its oldest beyond the bound; O(bound).

        The id is the time in microseconds (one more than the user's latest when equal), so
        entries that several servers write to one shared storage do not overwrite each other.
        """
        node = self._node(user_id)
        entry_id = max(int(entry["t"] * 1_000_000), self._last.get(user_id, 0) + 1)
        self._last[user_id] = entry_id
        entry["n"] = entry_id
        ring = node[kind]
        ring[str(entry_id)] = entry
        self._changed(("users", user_id, kind, str(entry_id)))
        while len(ring) > self._bounds[kind]:
            oldest = next(iter(ring))  # rings are kept oldest first (ids only grow here; loads sort)
            del ring[oldest]
            self._changed(("users", user_id, kind, oldest))

    def _see(self, user_id: str, kind: str, key: str, now: float) -> None:
        """Remember a client id or network as seen now; forget the least recently seen beyond the bound."""
        seen = self._users[user_id][kind]
        seen[key] = now
        self._changed(("users", user_id, kind, key))
        while len(seen) > self._max_devices:
            oldest = min(seen, key=seen.__getitem__)
            del seen[oldest]
            self._changed(("users", user_id, kind, oldest))

    def _forget(self, user_id: str) -> None:
        """A removed user's history goes with them."""
        self._last.pop(user_id, None)
        if self._users.pop(user_id, None) is not None:
            self._changed(("users", user_id))

    def _changed(self, path: tuple[str, ...]) -> None:
        """Queue path for the next background write."""
        self._dirty[path] = None
        if self._flush is None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop (a synchronous caller): written with the next change or at shutdown
            self._flush = self._auth.events.spawn(self._async_write())

    async def _async_write(self) -> None:
        """Write queued paths until none is left; a failure is logged (the history is no reason to refuse a login)."""
        try:
            await asyncio.sleep(0)  # let the events of the same step queue up
            while self._dirty:
                paths, self._dirty = list(self._dirty), {}
                try:
                    await self._store.async_save_changes(self._data, paths)
                except StorageError as err:
                    _LOGGER.error("Login history not saved: %s", err)
        finally:
            self._flush = None


def _copy_path(source: dict[str, Any], target: dict[str, Any], path: tuple[str, ...]) -> None:
    """Make target's entry at path what source's is (deleted when source has none)."""
    node: Any = source
    for key in path:
        node = node.get(key, _MISSING) if isinstance(node, dict) else _MISSING
    parent = target
    for key in path[:-1]:
        child = parent.get(key)
        if not isinstance(child, dict):
            if node is _MISSING:
                return
            child = parent[key] = {}
        parent = child
    if node is _MISSING:
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = node


_MISSING = object()


def _valid_entry(entry: Any) -> bool:
    """Whether a stored entry has its id and time (anything else in it is optional)."""
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("n"), int)
        and not isinstance(entry.get("n"), bool)
        and isinstance(entry.get("t"), (int, float))
    )
