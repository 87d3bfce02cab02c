"""AuthStore: users, groups, credentials and refresh tokens, indexed for O(1) lookups.

Persisted in ``.storage/auth`` (version 1) in Open Peer Power's format. Changes
that a client is told about (a user or token created or removed) are written
before the caller returns; token usage (last_used_at/ip) only marks the store
dirty and is written by a slow delayed save, so using a token never rewrites
the file on its own.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from .models import (
    GROUP_ID_ADMIN,
    GROUP_ID_READ_ONLY,
    GROUP_ID_USER,
    SYSTEM_GROUPS,
    TOKEN_TYPE_NORMAL,
    TOKEN_TYPE_SYSTEM,
    Credentials,
    Group,
    KeyRing,
    RefreshToken,
    User,
    hash_token,
    system_group,
)
from .providers import credential_lookup_key
from .storage import RecordList, Store

_LOGGER = logging.getLogger(__name__)

STORAGE_KEY = "auth"
STORAGE_VERSION = 1
USAGE_SAVE_DELAY = 60.0

_EXPIRATIONS: dict[float, timedelta] = {}


def _shared_expiration(seconds: float) -> timedelta:
    """One timedelta object per distinct lifetime (most tokens share 30 minutes)."""
    value = _EXPIRATIONS.get(seconds)
    if value is None:
        value = _EXPIRATIONS[seconds] = timedelta(seconds=seconds)
    return value


def _parse_dt(value: Any) -> datetime | None:
    """An ISO-8601 datetime as aware UTC, or None."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


class AuthStore:
    """In-memory auth data with its indexes, backed by one storage file."""

    def __init__(self, config_dir: str) -> None:
        """Nothing is loaded until async_load."""
        self._store = Store(config_dir, STORAGE_KEY, STORAGE_VERSION, private=True)
        self._users: dict[str, User] = {}
        self._groups: dict[str, Group] = {}
        self._credentials: dict[str, Credentials] = {}
        self._cred_index: dict[tuple[str, str | None, str], Credentials] = {}
        # Providers may normalise credential data (case-insensitive usernames); the manager sets this.
        self.key_for: Callable[[str, str | None, dict[str, Any]], str] = lambda _t, _i, data: credential_lookup_key(
            data
        )
        self._tokens_by_id: dict[str, RefreshToken] = {}
        self._tokens_by_token: dict[bytes, RefreshToken] = {}
        self.keyring: KeyRing | None = None
        # Idle expiry for normal tokens; Open Peer Power's tokens start their clock when loaded.
        self.idle_expiry: float | None = None
        self._group_sets: dict[tuple[str, ...], tuple[Group, ...]] = {}
        self.loaded = False

    # ---- loading -------------------------------------------------------------------------

    async def async_load(self) -> None:
        """Read .storage/auth (once), applying Open Peer Power's soft migrations."""
        if self.loaded:
            return
        data = await self._store.async_load()
        self._build(data)
        self.loaded = True

    def _build(self, data: dict[str, Any] | None) -> None:
        """Populate from file data (None: a fresh store with the system groups)."""
        if data is None:
            for gid in (GROUP_ID_ADMIN, GROUP_ID_USER, GROUP_ID_READ_ONLY):
                self._groups[gid] = system_group(gid)
            return
        groups: dict[str, Group] = {}
        legacy_group_id: str | None = None
        has_groups = "groups" in data and bool(data.get("groups"))
        for gdata in data.get("groups", []):
            gid = gdata["id"]
            if gid in SYSTEM_GROUPS:
                groups[gid] = system_group(gid)
            elif "policy" not in gdata:
                # Open Peer Power's pre-policy "all access" group: its members become admins.
                legacy_group_id = gid
            else:
                groups[gid] = Group(id=gid, name=gdata.get("name"), policy=gdata["policy"])
        for gid in (GROUP_ID_ADMIN, GROUP_ID_READ_ONLY, GROUP_ID_USER):
            if gid not in groups:
                groups[gid] = system_group(gid)
        self._groups = groups
        for udata in data.get("users", []):
            user = User(
                id=udata["id"],
                name=udata.get("name"),
                is_owner=bool(udata.get("is_owner", False)),
                is_active=bool(udata.get("is_active", False)),
                system_generated=bool(udata.get("system_generated", False)),
                local_only=bool(udata.get("local_only", False)),
            )
            member_of: list[Group] = []
            for gid in udata.get("group_ids", []):
                if gid == legacy_group_id:
                    gid = GROUP_ID_ADMIN
                group = groups.get(gid)
                if group is not None and group not in member_of:
                    member_of.append(group)
            if not has_groups and not user.system_generated:
                member_of = [groups[GROUP_ID_ADMIN]]
            user.groups = self.shared_groups(member_of)
            self._users[user.id] = user
        for cdata in data.get("credentials", []):
            owner = self._users.get(cdata.get("user_id"))
            if owner is None:
                continue
            cred = Credentials(
                id=cdata["id"],
                auth_provider_type=cdata["auth_provider_type"],
                auth_provider_id=cdata.get("auth_provider_id"),
                data=cdata.get("data") or {},
                is_new=False,
                user_id=owner.id,
            )
            self._index_credentials(owner, cred)
        for rdata in data.get("refresh_tokens", []):
            self._load_token(rdata)

    def _load_token(self, rdata: dict[str, Any]) -> None:
        """One refresh token from the file, skipping pre-0.76 and broken records.

        Open Peer Power stored the secret (``token``) and the signing key
        (``jwt_key``); we keep only the secret's digest (``token_hash``) and
        derive the keys of new tokens from the server secret (``jwt_key`` null).
        """
        has_hash = isinstance(rdata.get("token_hash"), str)
        if "jwt_key" not in rdata and not has_hash:
            return
        user_id = rdata.get("user_id")
        user = self._users.get(user_id) if isinstance(user_id, str) else None
        if user is None:
            return
        created_at = _parse_dt(rdata.get("created_at"))
        if created_at is None:
            _LOGGER.error(
                "Ignoring refresh token %s with invalid created_at %s for user_id %s",
                rdata.get("id"),
                rdata.get("created_at"),
                rdata.get("user_id"),
            )
            return
        try:
            token_hash = bytes.fromhex(rdata["token_hash"]) if has_hash else hash_token(rdata["token"])
        except (KeyError, ValueError, TypeError, AttributeError):
            _LOGGER.error("Ignoring refresh token %s without a usable secret", rdata.get("id"))
            return
        jwt_key = rdata.get("jwt_key")
        if jwt_key is None and self.keyring is None:
            _LOGGER.error("Ignoring refresh token %s: its signing key needs the server secret", rdata.get("id"))
            return
        token_type = rdata.get("token_type")
        if token_type is None:
            token_type = TOKEN_TYPE_SYSTEM if rdata.get("client_id") is None else TOKEN_TYPE_NORMAL
        credential_id = rdata.get("credential_id")
        cred = self._credentials.get(credential_id) if isinstance(credential_id, str) and credential_id else None
        expire_at = rdata.get("expire_at") if "expire_at" in rdata else self.default_expire_at(token_type)
        if not isinstance(expire_at, (int, float)) or isinstance(expire_at, bool):
            expire_at = None
        token = RefreshToken(
            id=rdata["id"],
            user=user,
            client_id=_intern(rdata.get("client_id")),
            client_name=rdata.get("client_name"),
            client_icon=rdata.get("client_icon"),
            token_type=token_type,
            created_at=created_at,
            access_token_expiration=_shared_expiration(float(rdata.get("access_token_expiration", 1800.0))),
            token_hash=token_hash,
            jwt_key=jwt_key,
            keyring=self.keyring,
            last_used_at=_parse_dt(rdata.get("last_used_at")),
            last_used_ip=_intern(rdata.get("last_used_ip")),
            credential=cred,
            version=_intern(rdata.get("version")),
            expire_at=expire_at,
        )
        self._index_token(token)

    # ---- saving --------------------------------------------------------------------------

    def _data_to_save(self) -> dict[str, Any]:
        """The file's data; records are rendered later, in the writer thread."""
        users, groups, creds, tokens = self._users, self._groups, self._credentials, self._tokens_by_id
        return {
            "users": RecordList(lambda: list(users.values()), _user_record),
            "groups": RecordList(lambda: list(groups.values()), _group_record),
            "credentials": RecordList(lambda: list(creds.values()), _credential_record),
            "refresh_tokens": RecordList(lambda: list(tokens.values()), _token_record),
        }

    async def async_save(self) -> None:
        """Write now and wait until it is durable (for changes a client is told about)."""
        await self._store.async_save_func(self._data_to_save)

    async def async_wait_saved(self) -> None:
        """Wait until changes already made are durable (a write in flight, or one that failed, is retried)."""
        await self._store.async_wait_saved()

    def schedule_usage_save(self) -> None:
        """Write token usage eventually (coalesced, slow)."""
        if not self._store.has_pending_save:
            self._store.async_delay_save(self._data_to_save, USAGE_SAVE_DELAY)

    async def async_flush(self) -> None:
        """Write anything pending (shutdown)."""
        await self._store.async_flush()

    # ---- indexes -------------------------------------------------------------------------

    def _index_credentials(self, user: User, cred: Credentials) -> None:
        """Attach credentials to a user and index them."""
        cred.user_id = user.id
        cred.is_new = False
        user.credentials = (*user.credentials, cred)
        self._credentials[cred.id] = cred
        self._cred_index[self._cred_key(cred)] = cred

    def _cred_key(self, cred: Credentials) -> tuple[str, str | None, str]:
        """The credential index key."""
        return (
            cred.auth_provider_type,
            cred.auth_provider_id,
            self.key_for(cred.auth_provider_type, cred.auth_provider_id, cred.data),
        )

    def reindex_credentials(self) -> None:
        """Rebuild the credential index (after providers decided how they normalise)."""
        self._cred_index = {self._cred_key(c): c for c in self._credentials.values()}

    def _unindex_credentials(self, cred: Credentials) -> None:
        """Forget credentials in every index."""
        self._credentials.pop(cred.id, None)
        key = self._cred_key(cred)
        if self._cred_index.get(key) is cred:
            del self._cred_index[key]

    def _index_token(self, token: RefreshToken) -> None:
        """Attach a token to its user and index it."""
        user = token.user
        user.token_list = (*user.token_list, token)
        self._tokens_by_id[token.id] = token
        self._tokens_by_token[token.token_hash] = token

    def _unindex_token(self, token: RefreshToken) -> None:
        """Forget a token."""
        user = token.user
        user.token_list = tuple(t for t in user.token_list if t is not token)
        self._tokens_by_id.pop(token.id, None)
        if self._tokens_by_token.get(token.token_hash) is token:
            del self._tokens_by_token[token.token_hash]

    # ---- queries -------------------------------------------------------------------------

    def users(self) -> list[User]:
        """All users, in creation order."""
        return list(self._users.values())

    def get_user(self, user_id: str) -> User | None:
        """A user by id."""
        return self._users.get(user_id)

    def user_count(self) -> int:
        """How many users exist."""
        return len(self._users)

    def groups(self) -> list[Group]:
        """All groups."""
        return list(self._groups.values())

    def get_group(self, group_id: str) -> Group | None:
        """A group by id."""
        return self._groups.get(group_id)

    def credentials_for_provider(self, key: tuple[str, str | None]) -> list[Credentials]:
        """Credentials issued by one provider."""
        return [c for c in self._credentials.values() if (c.auth_provider_type, c.auth_provider_id) == key]

    def find_credentials(self, key: tuple[str, str | None], data: dict[str, Any]) -> Credentials | None:
        """Credentials of a provider with exactly this data."""
        return self._cred_index.get((key[0], key[1], self.key_for(key[0], key[1], data)))

    def get_credentials(self, credential_id: str) -> Credentials | None:
        """Credentials by id."""
        return self._credentials.get(credential_id)

    def user_for_credentials(self, credentials: Credentials) -> User | None:
        """The user credentials are linked to."""
        if credentials.user_id is None:
            return None
        return self._users.get(credentials.user_id)

    def get_refresh_token(self, token_id: str) -> RefreshToken | None:
        """A refresh token by id."""
        return self._tokens_by_id.get(token_id)

    def get_refresh_token_by_token(self, token: str) -> RefreshToken | None:
        """A refresh token by its secret, compared in constant time after the index lookup."""
        if not isinstance(token, str):
            return None
        digest = hash_token(token)
        found = self._tokens_by_token.get(digest)
        if found is None or not hmac.compare_digest(found.token_hash, digest):
            return None
        return found

    def refresh_tokens(self) -> list[RefreshToken]:
        """Every refresh token."""
        return list(self._tokens_by_id.values())

    # ---- changes (callers save) ---------------------------------------------------------

    def add_user(self, user: User) -> None:
        """Insert a user."""
        user.groups = self.shared_groups(user.groups)
        self._users[user.id] = user

    def default_expire_at(self, token_type: str) -> float | None:
        """When a normal token that was just made or used expires (None: never)."""
        if self.idle_expiry is None or token_type != TOKEN_TYPE_NORMAL:
            return None
        return time.time() + self.idle_expiry

    def shared_groups(self, groups: Any) -> tuple[Group, ...]:
        """One tuple object per distinct group list, shared by every user with that list."""
        key = tuple(groups)
        return self._group_sets.setdefault(tuple(g.id for g in key), key)

    def remove_user(self, user: User) -> list[RefreshToken]:
        """Delete a user with their credentials and tokens; returns the removed tokens."""
        for cred in user.credentials:
            self._unindex_credentials(cred)
        tokens = list(user.token_list)
        for token in tokens:
            self._unindex_token(token)
        self._users.pop(user.id, None)
        return tokens

    def add_group(self, group: Group) -> None:
        """Insert a group."""
        self._groups[group.id] = group

    def link_credentials(self, user: User, credentials: Credentials) -> None:
        """Attach credentials to a user."""
        self._index_credentials(user, credentials)

    def remove_credentials(self, credentials: Credentials) -> None:
        """Detach and forget credentials (tokens minted through them are removed too)."""
        user = self.user_for_credentials(credentials)
        self._unindex_credentials(credentials)
        if user is not None:
            user.credentials = tuple(c for c in user.credentials if c is not credentials)
            for token in user.token_list:
                if token.credential is credentials:
                    self._unindex_token(token)

    def add_refresh_token(self, token: RefreshToken) -> None:
        """Insert a token."""
        self._index_token(token)

    def remove_refresh_token(self, token: RefreshToken) -> None:
        """Delete a token."""
        self._unindex_token(token)


_INTERNED: dict[str, str] = {}


def _intern(value: Any) -> Any:
    """Share one string object for repeated values (client ids, versions)."""
    if not isinstance(value, str) or len(value) > 200:
        return value
    if len(_INTERNED) > 10000:
        return value
    return _INTERNED.setdefault(value, value)


def _user_record(user: User) -> dict[str, Any]:
    """A user as stored."""
    record = {
        "id": user.id,
        "group_ids": [g.id for g in user.groups],
        "is_owner": user.is_owner,
        "is_active": user.is_active,
        "name": user.name,
        "system_generated": user.system_generated,
    }
    # Written only when set, so Open Peer Power's files (SPEC 1.6) round-trip unchanged.
    if user.local_only:
        record["local_only"] = True
    return record


def _group_record(group: Group) -> dict[str, Any]:
    """A group as stored: system groups keep only id and name."""
    record: dict[str, Any] = {"id": group.id, "name": group.name}
    if not group.system_generated:
        record["policy"] = group.policy
    return record


def _credential_record(cred: Credentials) -> dict[str, Any]:
    """Credentials as stored."""
    return {
        "id": cred.id,
        "user_id": cred.user_id,
        "auth_provider_type": cred.auth_provider_type,
        "auth_provider_id": cred.auth_provider_id,
        "data": cred.data,
    }


def _token_record(token: RefreshToken) -> dict[str, Any]:
    """A refresh token as stored: the digest of its secret, never the secret (G8)."""
    return {
        "id": token.id,
        "user_id": token.user.id,
        "client_id": token.client_id,
        "client_name": token.client_name,
        "client_icon": token.client_icon,
        "token_type": token.token_type,
        "created_at": token.created_at.isoformat(),
        "access_token_expiration": token.access_token_expiration.total_seconds(),
        "token_hash": token.token_hash.hex(),
        "jwt_key": token.stored_jwt_key,
        "last_used_at": token.last_used_at.isoformat() if token.last_used_at else None,
        "last_used_ip": token.last_used_ip,
        "credential_id": token.credential.id if token.credential else None,
        "version": token.version,
        "expire_at": token.expire_at,
    }
