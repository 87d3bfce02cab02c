"""Users, groups, credentials and refresh tokens: the auth domain model."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

TOKEN_TYPE_NORMAL = "normal"
TOKEN_TYPE_SYSTEM = "system"
TOKEN_TYPE_LONG_LIVED_ACCESS_TOKEN = "long_lived_access_token"

GROUP_ID_ADMIN = "system-admin"
GROUP_ID_USER = "system-users"
GROUP_ID_READ_ONLY = "system-read-only"

ACCESS_TOKEN_EXPIRATION = timedelta(minutes=30)
# Up to this many refresh tokens a user keeps them in a tuple (small), beyond in a dict (O(1) changes).
SMALL_TOKEN_COUNT = 8


def new_id() -> str:
    """A fresh uuid4 hex identifier, as Open Peer Power makes them."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


@dataclass(slots=True, eq=False)
class Group:
    """A set of users sharing a permission policy."""

    name: str | None
    policy: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_id)
    system_generated: bool = False


SYSTEM_GROUPS: dict[str, tuple[str, dict[str, Any]]] = {
    GROUP_ID_ADMIN: ("Administrators", {"entities": True}),
    GROUP_ID_USER: ("Users", {"entities": True}),
    GROUP_ID_READ_ONLY: ("Read Only", {"entities": {"all": {"read": True}}}),
}


def system_group(group_id: str) -> Group:
    """Build one of the three system groups from the code's constants."""
    name, policy = SYSTEM_GROUPS[group_id]
    return Group(name=name, policy=policy, id=group_id, system_generated=True)


def credential_lookup_key(data: dict[str, Any]) -> str:
    """Canonical text of credential data, the key of the store's credential index."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(slots=True, eq=False)
class Credentials:
    """A login identity at one auth provider, linked to at most one user."""

    auth_provider_type: str
    auth_provider_id: str | None
    data: dict[str, Any]
    id: str = field(default_factory=new_id)
    is_new: bool = True
    user_id: str | None = None
    # What the provider learnt at login (name, group) for creating the user; never stored.
    meta: Any = None

    @property
    def provider_key(self) -> tuple[str, str | None]:
        """The (type, id) pair naming the provider that issued these credentials."""
        return (self.auth_provider_type, self.auth_provider_id)


@dataclass(slots=True, eq=False)
class User:
    """A person (or a system integration) that can hold tokens."""

    name: str | None
    id: str = field(default_factory=new_id)
    is_owner: bool = False
    is_active: bool = False
    system_generated: bool = False
    local_only: bool = False
    groups: Sequence[Group] = ()
    credentials: Sequence[Credentials] = ()
    # The user's tokens: a tuple while there are few (most users hold one or two, and a dict
    # costs 184 bytes), a dict by id beyond SMALL_TOKEN_COUNT, so adding and removing one
    # stays O(1) for a user with thousands. Changed only by AuthStore (add_token / discard_token).
    _tokens: tuple[RefreshToken, ...] | dict[str, RefreshToken] = ()

    @property
    def token_list(self) -> tuple[RefreshToken, ...]:
        """The user's refresh tokens, oldest first (a snapshot)."""
        tokens = self._tokens
        return tokens if isinstance(tokens, tuple) else tuple(tokens.values())

    @property
    def token_count(self) -> int:
        """How many refresh tokens the user holds."""
        return len(self._tokens)

    @property
    def refresh_tokens(self) -> dict[str, RefreshToken]:
        """The user's refresh tokens by id (a fresh dict; change tokens through the manager)."""
        tokens = self._tokens
        return {token.id: token for token in tokens} if isinstance(tokens, tuple) else dict(tokens)

    def get_token(self, token_id: str) -> RefreshToken | None:
        """One of the user's refresh tokens by id (O(1); no dict of them all is built)."""
        tokens = self._tokens
        if isinstance(tokens, dict):
            return tokens.get(token_id)
        return next((t for t in tokens if t.id == token_id), None)

    def add_token(self, token: RefreshToken) -> None:
        """Attach a token (the store's index keeps it; O(1))."""
        tokens = self._tokens
        if isinstance(tokens, dict):
            tokens[token.id] = token
        elif len(tokens) < SMALL_TOKEN_COUNT:
            self._tokens = (*tokens, token)
        else:
            self._tokens = {t.id: t for t in tokens}
            self._tokens[token.id] = token

    def discard_token(self, token: RefreshToken) -> None:
        """Detach a token if attached (O(1))."""
        tokens = self._tokens
        if isinstance(tokens, dict):
            if tokens.get(token.id) is token:
                del tokens[token.id]
        elif token in tokens:
            self._tokens = tuple(t for t in tokens if t is not token)

    @property
    def is_admin(self) -> bool:
        """Owners, and active members of the system-admin group."""
        if self.is_owner:
            return True
        return self.is_active and any(g.id == GROUP_ID_ADMIN for g in self.groups)

    @property
    def group_ids(self) -> list[str]:
        """The ids of the user's groups, in order."""
        return [g.id for g in self.groups]

    @property
    def permissions(self) -> dict[str, Any]:
        """Merged group policy: owners may do everything."""
        if self.is_owner:
            return {"entities": True}
        return merge_policies([g.policy for g in self.groups])

    def __eq__(self, other: object) -> bool:
        """Users compare by identity fields, not by groups, credentials or tokens."""
        if not isinstance(other, User):
            return NotImplemented
        return (self.id, self.name, self.is_owner, self.is_active, self.system_generated) == (
            other.id,
            other.name,
            other.is_owner,
            other.is_active,
            other.system_generated,
        )

    __hash__ = None  # type: ignore[assignment]


def merge_policies(policies: list[dict[str, Any]]) -> dict[str, Any]:
    """Union of several permission policies (True wins over any dict)."""
    merged: dict[str, Any] = {}
    for policy in policies:
        for category, value in policy.items():
            current = merged.get(category)
            if current is True or value is True:
                merged[category] = True
            elif isinstance(value, dict):
                merged[category] = _merge_dicts(current or {}, value)
    return merged


def _merge_dicts(left: dict[str, Any], right: dict[str, Any]) -> dict[str, Any]:
    """Recursively union two nested policy dicts."""
    out = dict(left)
    for key, value in right.items():
        if out.get(key) is True or value is True:
            out[key] = True
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


def iso_utc(moment: datetime) -> str:
    """A datetime as ISO-8601 text in UTC ("+00:00"); a naive one is taken as UTC."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC).isoformat()
    if moment.utcoffset():
        moment = moment.astimezone(UTC)
    return moment.isoformat()


def canonical_created(text: Any) -> str | None:
    """A stored created_at as iso_utc text, or None when it is not a date and time.

    Text already in that form (every file opp-auth or Open Peer Power wrote) is returned
    as it is, after the parse that proves it is a date: no datetime is kept per token.
    """
    if text.__class__ is not str:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return text if is_iso_utc_shape(text) else iso_utc(parsed)


def is_iso_utc_shape(text: str) -> bool:
    """Whether text that fromisoformat accepted is exactly what iso_utc gives for it.

    That is "YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00" with microseconds only when not 0
    (fromisoformat also takes week dates, basic forms, another separator, a comma or
    "Z", which iso_utc writes differently).
    """
    length = len(text)
    if length == 32:
        return text[4:20:3] == "--T::." and text[26:] == "+00:00" and text[20:26] != "000000"
    return length == 25 and text[4:20:3] == "--T::+" and text[19:] == "+00:00"


def hash_token(token: str) -> bytes:
    """What is kept of a refresh token's secret: its SHA-256 digest."""
    return hashlib.sha256(token.encode()).digest()


class KeyRing:
    """Derives per-token signing keys from a server secret kept outside .storage (G8)."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        """Hold the server secret."""
        self._secret = secret

    def jwt_key(self, token_id: str) -> str:
        """The HS256 key of a refresh token's access tokens."""
        return hmac.new(self._secret, b"jwt-key:" + token_id.encode(), hashlib.sha512).hexdigest()

    def plugin_key(self, purpose: str) -> bytes:
        """A 32-byte key of a plugin's purpose (PluginContext.derive_key)."""
        return hmac.new(
            self._secret, b"plugin-key:" + purpose.encode("utf-8", "surrogatepass"), hashlib.sha256
        ).digest()


@dataclass(slots=True, eq=False, init=False)
class RefreshToken:
    """A long-lived secret a client trades for short-lived access tokens.

    Only the SHA-256 digest of the secret is kept (``token_hash``); the plaintext
    ``token`` exists only on a freshly created object until it is handed out.
    Signing keys of new tokens are derived from the server secret; tokens made
    by Open Peer Power keep the key they were stored with.
    ``RefreshToken.TYPE_NORMAL`` is the ``token_type`` of a token made by a login.
    """

    TYPE_NORMAL: ClassVar[str] = TOKEN_TYPE_NORMAL

    user: User
    client_id: str | None
    access_token_expiration: timedelta
    client_name: str | None
    client_icon: str | None
    token_type: str
    id: str
    token_hash: bytes
    token: str | None
    # When the token was made, as its canonical ISO-8601 text (UTC, "+00:00"): the form the file
    # and the profile's list show, kept as read (no datetime or float built per token at load).
    _created: str
    _jwt_key: str | None
    keyring: KeyRing | None
    last_used_at: datetime | None
    last_used_ip: str | None
    credential: Credentials | None
    version: str | None
    expire_at: float | None

    def __init__(
        self,
        user: User,
        client_id: str | None,
        access_token_expiration: timedelta,
        client_name: str | None = None,
        client_icon: str | None = None,
        token_type: str = TOKEN_TYPE_NORMAL,
        id: str | None = None,
        created_at: datetime | None = None,
        token: str | None = None,
        token_hash: bytes | None = None,
        jwt_key: str | None = None,
        keyring: KeyRing | None = None,
        last_used_at: datetime | None = None,
        last_used_ip: str | None = None,
        credential: Credentials | None = None,
        version: str | None = None,
        expire_at: float | None = None,
    ) -> None:
        """A new token (fresh secret unless token or token_hash is given)."""
        if token is None and token_hash is None:
            token = secrets.token_hex(64)
        if jwt_key is None and keyring is None:
            jwt_key = secrets.token_hex(64)
        self.user = user
        self.client_id = client_id
        self.access_token_expiration = access_token_expiration
        self.client_name = client_name
        self.client_icon = client_icon
        self.token_type = token_type
        self.id = id or new_id()
        self.token = token
        self.token_hash = token_hash if token_hash is not None else hash_token(token)  # type: ignore[arg-type]
        self._created = iso_utc(created_at or utcnow())
        self._jwt_key = jwt_key
        self.keyring = keyring
        self.last_used_at = last_used_at
        self.last_used_ip = last_used_ip
        self.credential = credential
        self.version = version
        # Epoch seconds after which an unused token is gone (None: never); moved on every use.
        self.expire_at = expire_at

    @classmethod
    def restore(
        cls,
        user: User,
        client_id: str | None,
        access_token_expiration: timedelta,
        client_name: str | None,
        client_icon: str | None,
        token_type: str,
        id: str,
        token_hash: bytes,
        created: str,
        jwt_key: str | None,
        keyring: KeyRing | None,
        last_used_at: datetime | None,
        last_used_ip: str | None,
        credential: Credentials | None,
        version: str | None,
        expire_at: float | None,
    ) -> RefreshToken:
        """A stored token as the loader rebuilds it: every field given, nothing generated or checked.

        The store's loader calls this once per token (100,000 at start-up for a large
        installation), so it takes positional values and skips __init__'s defaults;
        created is the canonical ISO-8601 text (``canonical_created``).
        """
        self = cls.__new__(cls)
        self.user = user
        self.client_id = client_id
        self.access_token_expiration = access_token_expiration
        self.client_name = client_name
        self.client_icon = client_icon
        self.token_type = token_type
        self.id = id
        self.token = None
        self.token_hash = token_hash
        self._created = created
        self._jwt_key = jwt_key
        self.keyring = keyring
        self.last_used_at = last_used_at
        self.last_used_ip = last_used_ip
        self.credential = credential
        self.version = version
        self.expire_at = expire_at
        return self

    @property
    def created_at(self) -> datetime:
        """When the token was made (UTC)."""
        return datetime.fromisoformat(self._created)

    @property
    def created_iso(self) -> str:
        """When the token was made, as ISO-8601 text in UTC (what the file and the profile show)."""
        return self._created

    @property
    def jwt_key(self) -> str:
        """The key that signs this token's access tokens."""
        if self._jwt_key is not None:
            return self._jwt_key
        assert self.keyring is not None
        return self.keyring.jwt_key(self.id)

    @property
    def stored_jwt_key(self) -> str | None:
        """The key kept in the file (tokens made by Open Peer Power), else None."""
        return self._jwt_key

    def __repr__(self) -> str:
        """Never print the secrets."""
        return f"<RefreshToken {self.id} user={self.user.id} type={self.token_type}>"


@dataclass(slots=True)
class UserMeta:
    """What a provider knows about the person behind new credentials.

    ``group`` is a group id; the system groups are ``UserMeta.GROUP_ADMIN``,
    ``UserMeta.GROUP_USER`` and ``UserMeta.GROUP_READ_ONLY``.
    """

    GROUP_ADMIN: ClassVar[str] = GROUP_ID_ADMIN
    GROUP_USER: ClassVar[str] = GROUP_ID_USER
    GROUP_READ_ONLY: ClassVar[str] = GROUP_ID_READ_ONLY

    name: str | None
    is_active: bool = True
    group: str | None = None
    local_only: bool = False
