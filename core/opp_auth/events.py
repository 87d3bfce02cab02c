"""Events: the one stream of authentication events, and the core's ``opp_auth_*`` hooks.

Every authentication event has one schema, :class:`AuthEvent`, with ``type``
from :data:`EVENT_TYPES`. Each is emitted once, from the one place where the
thing happens (the login engine, the user and token operations of the manager,
bans, the throttle, the local provider's password change), whatever the way in
(HTTP, websocket, CLI, onboarding). It reaches:

- core consumers (the audit log, metrics, login history) through
  :meth:`Events.subscribe`: a plain callable called in line with the event; it
  must not block (append to a buffer, count); one that raises is logged and
  the action that produced the event goes on. With no subscriber and no plugin
  implementing ``opp_auth_event`` an emission costs a dictionary lookup;
- plugins through the ``opp_auth_event(auth, event)`` hook, in the background.

An event never carries a password, a code, a token or another secret:
:meth:`Events.emit` takes only the fields of :class:`AuthEvent`, the callers
hand it identifiers (user id, token id, module id), and strings that come from
a client (the username as typed, the user agent) are clipped to a bounded length.
Where the event came from (address, user agent, the acting user, the way in)
is filled from :data:`ORIGIN`, set by the HTTP pipeline for each request, the
websocket handler for each connection and the CLI for its command.

The older specific hooks (``opp_auth_login_failed``, ``opp_auth_user_created``...)
keep firing as before.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .context import PluginContext
    from .models import Credentials, RefreshToken, User
    from .plugins import OppAuthPluginManager

_LOGGER = logging.getLogger(__name__)

# ---- the schema ---------------------------------------------------------------------------

LOGIN_SUCCEEDED = "login_succeeded"
LOGIN_FAILED = "login_failed"
MFA_USED = "mfa_used"
REFRESH_TOKEN_CREATED = "refresh_token_created"
REFRESH_TOKEN_REMOVED = "refresh_token_removed"
LONG_LIVED_TOKEN_CREATED = "long_lived_token_created"
LONG_LIVED_TOKEN_REMOVED = "long_lived_token_removed"
USER_CREATED = "user_created"
USER_CHANGED = "user_changed"
USER_ACTIVATED = "user_activated"
USER_DEACTIVATED = "user_deactivated"
USER_REMOVED = "user_removed"
CREDENTIALS_ADDED = "credentials_added"
CREDENTIALS_REMOVED = "credentials_removed"
PASSWORD_CHANGED = "password_changed"
MFA_ENROLLED = "mfa_enrolled"
MFA_REMOVED = "mfa_removed"
ADDRESS_BANNED = "address_banned"
ADDRESS_UNBANNED = "address_unbanned"
LOCKOUT_CLEARED = "lockout_cleared"
NEW_DEVICE_LOGIN = "new_device_login"

EVENT_TYPES: Mapping[str, str] = MappingProxyType(
    {
        LOGIN_SUCCEEDED: (
            "a login finished: an authorization code was issued (details.purpose: authorize or link_user; "
            "details.step_seconds: the server's time on the last step)"
        ),
        LOGIN_FAILED: (
            "a login attempt or an authenticated request was refused; reason says why "
            "(a refused login step carries details.step_seconds)"
        ),
        MFA_USED: "a second factor was passed during a login (mfa_module)",
        REFRESH_TOKEN_CREATED: "a refresh token (a session) was created (token_id, client_id)",
        REFRESH_TOKEN_REMOVED: "a refresh token was removed (details.cause: revoked, expired, user_removed)",
        LONG_LIVED_TOKEN_CREATED: "a long-lived access token was created (token_id, client_name)",
        LONG_LIVED_TOKEN_REMOVED: "a long-lived access token was removed",
        USER_CREATED: "a user was created (details.system_generated, details.owner)",
        USER_CHANGED: "a user was renamed, regrouped or restricted (details.changed: the field names)",
        USER_ACTIVATED: "a user was activated",
        USER_DEACTIVATED: "a user was deactivated",
        USER_REMOVED: "a user was removed with their credentials and tokens",
        CREDENTIALS_ADDED: "credentials of a provider were linked to an existing user (link_user)",
        CREDENTIALS_REMOVED: "credentials were removed from a user",
        PASSWORD_CHANGED: "a password was changed (username, provider)",
        MFA_ENROLLED: "a user enrolled in an MFA module (mfa_module)",
        MFA_REMOVED: "a user's enrolment in an MFA module was removed (mfa_module)",
        ADDRESS_BANNED: "an address was banned (details.ip_address)",
        ADDRESS_UNBANNED: "a ban was lifted (details.ip_address; actor_id: who lifted it)",
        LOCKOUT_CLEARED: "login lockouts were cleared (details.ip_address, details.username, details.cleared)",
        NEW_DEVICE_LOGIN: (
            "a login succeeded from a client id or network (IPv4 /24, IPv6 /64) never seen for that user"
            " (details.new: client, network; details.network); emitted by the login history, after the"
            " login_succeeded it follows; a user's first recorded login is none"
        ),
    }
)
"""Every event type, with what it means (docs/audit.md shows this table)."""

FAILURE_REASONS: Mapping[str, str] = MappingProxyType(
    {
        "invalid_auth": "wrong username or password (or what the provider checks)",
        "mfa_failed": "a wrong second-factor code, or too many of them",
        "throttled": "refused by the login throttle before anything was checked",
        "banned": "a request from a banned address",
        "provider_unavailable": "the provider could not be reached (LDAP down, command failed)",
        "user_inactive": "the user is deactivated",
        "invalid_username": "a username with control or format characters (never checked)",
        "invalid_client": "a client id or redirect uri refused, or not the flow's",
        "invalid_flow": "a step of an unknown or expired login flow",
        "invalid_handler": "a login with an unknown provider",
        "ip_changed": "a step of a login flow from another address than its start",
        "invalid_token": "a websocket authenticated with an invalid access token",
        "unauthorized": "a request to a protected resource without valid credentials (HTTP 401)",
        "invalid_request": "a token request refused (invalid grant, code or client)",
    }
)
"""The documented ``reason`` of a login_failed event; plugins may report others of their own."""

# The reason the older login_failed hook gives, where the event names it otherwise.
_EVENT_REASON = {"invalid_code": "mfa_failed", "cannot_connect": "provider_unavailable"}
MAX_TEXT = 256
MAX_USER_AGENT = 512
MAX_DETAILS = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthEvent:
    """One authentication event (see :data:`EVENT_TYPES`); never a password, code, token or secret.

    :ivar type: one of :data:`EVENT_TYPES`.
    :ivar time: when, in seconds since the epoch (UTC).
    :ivar user_id: the user the event is about, when known.
    :ivar username: the login name: as typed for a failure (clipped to 256
        characters), the credentials' name for a success, or None.
    :ivar reason: why a ``login_failed`` happened (:data:`FAILURE_REASONS`), else None.
    :ivar provider: ``(type, id)`` of the auth provider, when one is involved.
    :ivar mfa_module: the MFA module id, when one is involved.
    :ivar client_id: the OAuth client id of the login or the refresh token.
    :ivar client_name: the long-lived token's name.
    :ivar token_id: the id (never the secret) of the refresh token concerned.
    :ivar remote_address: the client address after reverse-proxy handling.
    :ivar user_agent: the client's User-Agent header (clipped to 512 characters).
    :ivar actor_id: the user who did it, when that is not the user it is about
        (an administrator deactivating someone), or None.
    :ivar via: the way in: ``http``, ``websocket``, ``cli`` or None (the server itself).
    :ivar details: a small read-only mapping of event-specific facts.
    """

    type: str
    time: float
    user_id: str | None = None
    username: str | None = None
    reason: str | None = None
    provider: tuple[str, str | None] | None = None
    mfa_module: str | None = None
    client_id: str | None = None
    client_name: str | None = None
    token_id: str | None = None
    remote_address: str | None = None
    user_agent: str | None = None
    actor_id: str | None = None
    via: str | None = None
    details: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def failed(self) -> bool:
        """Whether this is a refused login or request."""
        return self.type == LOGIN_FAILED

    def as_dict(self) -> dict[str, Any]:
        """The event as JSON-ready data; fields that are None are left out."""
        data: dict[str, Any] = {}
        for name in _FIELD_NAMES:
            value = getattr(self, name)
            if value is None or (name == "details" and not value):
                continue
            if name == "provider":
                value = list(value)
            elif name == "details":
                value = dict(value)
            data[name] = value
        return data

    # ---- the audit log's hash chain (one format for every sink: files, a store's table) ----------

    @staticmethod
    def chain(data: dict[str, Any], seq: int, prev: str) -> tuple[str, str]:
        """Seal an audit record: seq and prev are set in data; returns (its text, its hash).

        The hash is the SHA-256 (hex) of the record's canonical JSON (sorted keys, ASCII, no
        spaces) without "hash"; the text is that JSON with ``"hash"`` appended, on one line.
        """
        data["seq"] = seq
        data["prev"] = prev
        body = _CANONICAL(data)
        digest = hashlib.sha256(body.encode("ascii")).hexdigest()
        return f'{body[:-1]},"hash":"{digest}"}}', digest

    @staticmethod
    def canonical_text(record: dict[str, Any]) -> str | None:
        """The text :meth:`chain` writes for a stored record (as parse_chained gives it), or None when
        its hash does not match (the record was changed). What a copy of the chain stores: one ASCII
        line whatever spacing or escapes the text it was read from had."""
        data = {key: value for key, value in record.items() if key not in ("seq", "prev", "hash")}
        text, digest = AuthEvent.chain(data, record["seq"], record["prev"])
        return text if digest == record["hash"] else None

    @staticmethod
    def parse_chained(text: bytes | str) -> dict[str, Any] | None:
        """A stored audit record, or None when text is no JSON object with seq, prev and hash."""
        try:
            record = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(record, dict):
            return None
        if not isinstance(record.get("seq"), int) or not isinstance(record.get("hash"), str):
            return None
        if not isinstance(record.get("prev"), str):
            return None
        return record


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode
"""The text an audit record's hash is computed over."""

_FIELD_NAMES = tuple(f.name for f in fields(AuthEvent))
_SETTABLE = frozenset(_FIELD_NAMES) - {"type", "time"}


@dataclass(slots=True)
class Origin:
    """Where events come from in the current context: the way in, address, user agent and acting user."""

    via: str | None = None
    remote_address: str | None = None
    user_agent: str | None = None
    actor_id: str | None = None


ORIGIN: contextvars.ContextVar[Any] = contextvars.ContextVar("opp_auth_event_origin", default=None)
"""An :class:`Origin`, or the aiohttp request being served (read lazily, only when an event is emitted)."""
set_origin = ORIGIN.set


def clip(value: Any, limit: int = MAX_TEXT) -> str | None:
    """A string of at most limit characters (a longer one ends with an ellipsis), or None."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _no_describer(source: Any) -> Origin:
    """Before the HTTP layer is imported nothing sets a request as the origin."""
    return Origin()


describe_origin: Callable[[Any], Origin] = _no_describer
"""How an origin that is not an :class:`Origin` (the request the pipeline set) becomes one.

The HTTP layer installs its reader when imported (opp_auth.http.middleware), so this module
needs nothing of aiohttp and the pipeline sets the request itself, with no object per request.
"""


def _origin() -> Origin:
    """The origin of the current context."""
    source = ORIGIN.get()
    if source is None or isinstance(source, Origin):
        return source or Origin()
    return describe_origin(source)


def _details(details: Any) -> Mapping[str, Any]:
    """A small read-only copy: at most MAX_DETAILS keys, scalar values, strings clipped."""
    if not details:
        return MappingProxyType({})
    clean: dict[str, Any] = {}
    for key, value in list(details.items())[:MAX_DETAILS]:
        if value is None or isinstance(value, (bool, int, float)):
            clean[str(key)] = value
        elif isinstance(value, (list, tuple)):
            clean[str(key)] = [v if isinstance(v, (bool, int, float)) else clip(v) for v in value[:MAX_DETAILS]]
        else:
            clean[str(key)] = clip(value)
    return MappingProxyType(clean)


def token_event_type(refresh_token: RefreshToken, created: bool) -> str:
    """refresh_token_* or long_lived_token_* for a token."""
    from .models import TOKEN_TYPE_LONG_LIVED_ACCESS_TOKEN

    if refresh_token.token_type == TOKEN_TYPE_LONG_LIVED_ACCESS_TOKEN:
        return LONG_LIVED_TOKEN_CREATED if created else LONG_LIVED_TOKEN_REMOVED
    return REFRESH_TOKEN_CREATED if created else REFRESH_TOKEN_REMOVED


def token_fields(refresh_token: RefreshToken) -> dict[str, Any]:
    """The event fields of a refresh token: its user, id, client and credentials' provider (never its secret)."""
    credential = refresh_token.credential
    return {
        "user_id": refresh_token.user.id,
        "token_id": refresh_token.id,
        "client_id": refresh_token.client_id,
        "client_name": refresh_token.client_name,
        "provider": credential.provider_key if credential is not None else None,
    }


class Events:
    """Fires the ``opp_auth_*`` event hooks with the plugin context as ``auth``; tracks background deliveries."""

    def __init__(self, pm: OppAuthPluginManager, context: PluginContext) -> None:
        """Fire through pm, handing plugins context."""
        self._pm = pm
        self._context = context
        self.background: set[asyncio.Future[Any]] = set()
        self._subscribers: tuple[Callable[[AuthEvent], Any], ...] = ()
        self._event_hook = pm.hook.opp_auth_event

    # ---- the event stream -----------------------------------------------------------------

    def subscribe(self, callback: Callable[[AuthEvent], Any]) -> Callable[[], None]:
        """Call callback(event) for every event from now on, in line (it must not block); the unsubscribe."""
        self._subscribers = (*self._subscribers, callback)

        def unsubscribe() -> None:
            self._subscribers = tuple(s for s in self._subscribers if s is not callback)

        return unsubscribe

    @property
    def listened(self) -> bool:
        """Whether anybody (a subscriber or a plugin) receives events."""
        return bool(self._subscribers) or bool(self._event_hook.get_hookimpls())

    def emit(self, event_type: str, **values: Any) -> AuthEvent | None:
        """Build the event of event_type and deliver it; None when nobody listens (nothing was built).

        values: fields of :class:`AuthEvent`; the origin's address, user agent,
        actor and way in fill those not given. Never raises for a consumer's sake.
        """
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type!r}")
        subscribers = self._subscribers
        hooked = bool(self._event_hook.get_hookimpls())
        if not subscribers and not hooked:
            return None
        unknown = set(values) - _SETTABLE
        if unknown:
            raise TypeError(f"AuthEvent has no field {', '.join(sorted(unknown))}")
        origin = _origin()
        actor = values.get("actor_id", origin.actor_id)
        event = AuthEvent(
            type=event_type,
            time=time.time(),
            user_id=values.get("user_id"),
            username=clip(values.get("username")),
            reason=values.get("reason"),
            provider=_provider(values.get("provider")),
            mfa_module=values.get("mfa_module"),
            client_id=clip(values.get("client_id"), MAX_USER_AGENT),
            client_name=clip(values.get("client_name")),
            token_id=values.get("token_id"),
            remote_address=values.get("remote_address", origin.remote_address),
            user_agent=clip(values.get("user_agent", origin.user_agent), MAX_USER_AGENT),
            actor_id=None if actor == values.get("user_id") else actor,
            via=values.get("via", origin.via),
            details=_details(values.get("details")),
        )
        self.deliver(event, subscribers, hooked)
        return event

    def deliver(
        self, event: AuthEvent, subscribers: tuple[Callable[[AuthEvent], Any], ...] | None = None, hooked: bool = True
    ) -> None:
        """Hand a built event to every subscriber (in line) and to the plugins' opp_auth_event (background)."""
        for callback in self._subscribers if subscribers is None else subscribers:
            try:
                callback(event)
            except Exception:
                _LOGGER.exception("Event consumer %r failed on a %s event", callback, event.type)
        if hooked:
            self.fire_later("opp_auth_event", event=event)

    async def async_fire(self, hookname: str, **kwargs: Any) -> None:
        """Call an event hook and await every result; one plugin's failure is logged by its guard."""
        await self._pm.acall(hookname, auth=self._context, **kwargs)

    def fire_later(self, hookname: str, **kwargs: Any) -> asyncio.Future[Any]:
        """Fire an event in the background (the caller's answer does not wait for plugins); the task."""
        return self.spawn(self.async_fire(hookname, **kwargs))

    def user(self, event_type: str, user: User, credentials: Credentials | None = None, **values: Any) -> None:
        """An event about a user (and the credentials involved)."""
        if credentials is not None:
            values.setdefault("provider", credentials.provider_key)
            values.setdefault("username", login_name(credentials))
        if event_type == USER_CREATED:
            values.setdefault(
                "details",
                {
                    "name": user.name,
                    "groups": [g.id for g in user.groups],
                    "owner": user.is_owner,
                    "system_generated": user.system_generated,
                    "active": user.is_active,
                },
            )
        self.emit(event_type, user_id=user.id, **values)

    def user_changed(self, user: User, before: tuple[Any, ...]) -> None:
        """user_activated / user_deactivated and user_changed (with the names of the changed fields)."""
        after = user_state(user)
        if before[0] != after[0]:
            self.emit(USER_ACTIVATED if after[0] else USER_DEACTIVATED, user_id=user.id)
        changed = [name for name, old, new in zip(_STATE_FIELDS[1:], before[1:], after[1:], strict=True) if old != new]
        if changed:
            self.emit(USER_CHANGED, user_id=user.id, details={"changed": changed})

    def credentials_removed(self, credentials: Credentials) -> None:
        """credentials_removed for credentials (their user when still known)."""
        self.emit(
            CREDENTIALS_REMOVED,
            user_id=getattr(credentials, "user_id", None),
            provider=credentials.provider_key,
            username=login_name(credentials),
        )

    def token(self, refresh_token: RefreshToken, *, created: bool, cause: str | None = None) -> None:
        """refresh_token_* / long_lived_token_* for a token (cause: revoked, expired, user_removed)."""
        if self._subscribers or self._event_hook.get_hookimpls():
            details = {"cause": cause} if cause else None
            self.emit(token_event_type(refresh_token, created), details=details, **token_fields(refresh_token))

    def login_failed(
        self,
        remote_ip: str | None,
        provider: tuple[str, str | None] | None,
        username: str | None,
        reason: str,
        *,
        plugins: bool = True,
        **values: Any,
    ) -> asyncio.Future[Any] | None:
        """A login attempt or request failed: logged, a login_failed event, and opp_auth_login_failed.

        The hook (which throttles and bans count) fires in the background unless
        plugins is False (a refusal that is no guess: throttled, banned); the task, or None.
        """
        if plugins:
            _LOGGER.warning("Login attempt or request with invalid authentication from %s (%s)", remote_ip, reason)
        self.emit(
            LOGIN_FAILED,
            remote_address=remote_ip,
            provider=provider,
            username=username,
            reason=_EVENT_REASON.get(reason, reason),
            **values,
        )
        if not plugins:
            return None
        return self.fire_later(
            "opp_auth_login_failed", remote_ip=remote_ip, provider=provider, username=username, reason=reason
        )

    def login_succeeded(self, remote_ip: str | None, user: User | None, credential: Credentials | None) -> None:
        """A login or a websocket's auth phase succeeded: opp_auth_login_succeeded in the background.

        The login_succeeded event is the login engine's (a websocket opening with
        a token is no sign-in).
        """
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


def _provider(value: Any) -> tuple[str, str | None] | None:
    """A provider key as a tuple."""
    if value is None:
        return None
    kind, ident = value
    return (str(kind), None if ident is None else str(ident))


_STATE_FIELDS = ("is_active", "name", "groups", "local_only")


def user_state(user: User) -> tuple[Any, ...]:
    """What user_changed compares: active, name, group ids, local_only."""
    return (user.is_active, user.name, sorted(g.id for g in user.groups), user.local_only)


def login_name(credentials: Credentials) -> str | None:
    """The login name in credentials' data (local, LDAP, command line providers), or None."""
    data = getattr(credentials, "data", None) or {}
    name = data.get("username")
    return name if isinstance(name, str) else None
