"""AuthStore: users, groups, credentials and refresh tokens, indexed for O(1) lookups.

Persisted in ``.storage/auth`` (version 1) in Open Peer Power's format, with the
changes since its last rewrite in the journal ``.storage/.auth.journal`` (module
journal). Every change goes through a method of AuthStore, which first encodes the
change's journal record (a change that cannot be stored is refused before memory
changes) and then changes memory; ``async_save`` returns once the records are
durable, so what a client is told about is on disk, at a cost proportional to the
change. The file itself is rewritten in the background (compaction) and at
shutdown, so a stopped server leaves a whole ``auth`` file and no journal. Token
usage (last_used_at/ip, the idle expiry) is journaled by a slow delayed write, so
using a token never writes on its own.

Indexes are O(1) per change: users, credentials (by id, by provider and login,
by provider), refresh tokens (by id, by digest of the secret, per user), the
owners and the count of people (non-system users).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import UNSET, UnsetType

from .models import (
    GROUP_ID_ADMIN,
    GROUP_ID_READ_ONLY,
    GROUP_ID_USER,
    SMALL_TOKEN_COUNT,
    SYSTEM_GROUPS,
    TOKEN_TYPE_NORMAL,
    TOKEN_TYPE_SYSTEM,
    Credentials,
    Group,
    KeyRing,
    RefreshToken,
    User,
    canonical_created,
    credential_lookup_key,
    hash_token,
    system_group,
)
from .storage import RecordList, StorageError, Store
from .validation import check_storable

if TYPE_CHECKING:
    from .backend import RecordLog, StorageBackend

_LOGGER = logging.getLogger(__name__)

STORAGE_KEY = "auth"
STORAGE_VERSION = 1
USAGE_SAVE_DELAY = 60.0

_EXPIRATIONS: dict[float, timedelta] = {}


# ---- the file in the shape opp-auth writes it, decoded straight into records ----------------
#
# At 100,000 users the generic parse (dicts of every record) is about half the start-up. The
# records below name every key the store reads; a file holding only them, with these types,
# is decoded into them without a dict per record. Any other file (another key, another type,
# Open Peer Power's token secrets, NaN, a lone surrogate...) is parsed generically, as before:
# decode_auth_file says None and the store reads dicts with the same rules.


class _UserRecord(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A user of .storage/auth."""

    id: str
    name: str | None = None
    group_ids: list[str] = []
    is_owner: bool = False
    is_active: bool = False
    system_generated: bool = False
    local_only: bool = False


class _CredentialRecord(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """Credentials of .storage/auth."""

    id: str
    auth_provider_type: str
    user_id: str | None = None
    auth_provider_id: str | None = None
    data: dict[str, Any] | None = None


class _TokenRecord(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A refresh token of .storage/auth as opp-auth writes it (the digest of its secret)."""

    id: str
    user_id: str
    token_hash: str
    created_at: str
    client_id: str | None = None
    client_name: str | None = None
    client_icon: str | None = None
    token_type: str | None = None
    access_token_expiration: int | float = 1800.0
    jwt_key: str | None = None
    last_used_at: str | None = None
    last_used_ip: str | None = None
    credential_id: str | None = None
    version: str | None = None
    expire_at: int | float | UnsetType | None = UNSET


class _AuthData(msgspec.Struct, forbid_unknown_fields=True):
    """The data of .storage/auth."""

    users: list[_UserRecord] = []
    groups: list[dict[str, Any]] = []
    credentials: list[_CredentialRecord] = []
    refresh_tokens: list[_TokenRecord] = []


class _AuthEnvelope(msgspec.Struct):
    """The storage file around it (its other keys are not read)."""

    version: int
    data: _AuthData


_DECODER = msgspec.json.Decoder(_AuthEnvelope)


def decode_auth_file(raw: bytes) -> dict[str, Any] | None:
    """The envelope of .storage/auth with its data as records, or None: parse the file generically.

    None for every file not in the shape above, whatever is wrong with it: the generic parse
    reports a file that cannot be read, with its path.
    """
    try:
        envelope = _DECODER.decode(raw)
    except Exception:  # noqa: BLE001 - anything it cannot decode is the generic parse's to judge
        return None
    return {"version": envelope.version, "data": envelope.data}


def _user_from_dict(udata: dict[str, Any]) -> _UserRecord:
    """A user of a generically parsed file, with the rules of every release (any value taken for its truth)."""
    return _UserRecord(
        id=udata["id"],
        name=udata.get("name"),
        group_ids=udata.get("group_ids", ()),
        is_owner=bool(udata.get("is_owner", False)),
        is_active=bool(udata.get("is_active", False)),
        system_generated=bool(udata.get("system_generated", False)),
        local_only=bool(udata.get("local_only", False)),
    )


def _credentials_from_dict(cdata: dict[str, Any]) -> _CredentialRecord:
    """Credentials of a generically parsed file."""
    return _CredentialRecord(
        id=cdata["id"],
        auth_provider_type=cdata["auth_provider_type"],
        user_id=cdata.get("user_id"),
        auth_provider_id=cdata.get("auth_provider_id"),
        data=cdata.get("data"),
    )


def _token_from_dict(rdata: Any) -> _TokenRecord | dict[str, Any]:
    """A token of a generically parsed file as the typed record when it takes it (the same rules as
    decoding), else the dict itself for _load_token."""
    try:
        return msgspec.convert(rdata, _TokenRecord)
    except msgspec.ValidationError:
        return rdata  # type: ignore[no-any-return]


def _token_dict(record: _TokenRecord) -> dict[str, Any]:
    """A token record as the generic parse gives it (a key absent from the file stays absent)."""
    return {name: value for name in record.__struct_fields__ if (value := getattr(record, name)) is not UNSET}


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

    def __init__(
        self,
        config_dir: str,
        backend: StorageBackend | None = None,
        *,
        key_for: Callable[[str, str | None, dict[str, Any]], str] | None = None,
        keyring: KeyRing | None = None,
        idle_expiry: float | None = None,
    ) -> None:
        """Nothing is loaded until async_load; backend: where changes persist (default .storage/auth).

        key_for(type, id, data): the credential index key as the issuing provider normalises
        it (default: the data's canonical text); keyring: derives the signing keys of tokens;
        idle_expiry: seconds a normal refresh token may go unused (None: forever).
        """
        self._store: RecordLog = (
            backend.auth_log()
            if backend is not None
            else Store(config_dir, STORAGE_KEY, STORAGE_VERSION, private=True, journal=True, decode=decode_auth_file)
        )
        # Past this time.monotonic() instant the cache may be stale: tokens are refused (backend.fresh_until).
        self._backend = backend
        self._store.snapshot_func = self._data_to_save
        self._users: dict[str, User] = {}
        self._owners: dict[str, User] = {}
        self._people = 0  # users that are not system-generated
        self._groups: dict[str, Group] = {}
        self._credentials: dict[str, Credentials] = {}
        self._cred_index: dict[tuple[str, str | None, str], Credentials] = {}
        self._creds_by_provider: dict[tuple[str, str | None], dict[str, Credentials]] = {}
        # Providers may normalise credential data (case-insensitive usernames).
        self.key_for: Callable[[str, str | None, dict[str, Any]], str] = key_for or _canonical_key
        self._tokens_by_id: dict[str, RefreshToken] = {}
        self._tokens_by_token: dict[bytes, RefreshToken] = {}
        self.keyring = keyring
        # Idle expiry for normal tokens; Open Peer Power's tokens start their clock when loaded.
        self.idle_expiry = idle_expiry
        self._group_sets: dict[tuple[str, ...], tuple[Group, ...]] = {}
        self.loaded = False
        self._journaling = True
        self._indexed_with: Callable[[str, str | None, dict[str, Any]], str] | None = None
        self._usage_dirty: dict[str, RefreshToken] = {}
        self._usage_handle: asyncio.TimerHandle | None = None
        self._usage_task: asyncio.Future[None] | None = None

    # ---- loading -------------------------------------------------------------------------

    async def async_load(self) -> None:
        """Read .storage/auth (once), applying Open Peer Power's soft migrations."""
        if self.loaded:
            return
        # Hundreds of thousands of new objects (the parsed file, then the store built from it)
        # would trigger full collections over and over, each walking everything made so far:
        # the collector stays off from the parse to the end of the build (a quarter of the
        # start-up at 100,000 users). Then what was built is frozen (long-lived: the store),
        # so later full collections need not walk it, which at 100,000 users would stall the
        # loop for a good part of a second.
        collecting = gc.isenabled()
        gc.disable()
        try:
            data, records = await self._store.async_load_journaled()
            self._build(data)
            for record in records:
                self._replay(record)
            del data, records
        finally:
            if collecting:
                gc.enable()
        gc.freeze()
        self._indexed_with = self.key_for
        self.loaded = True

    def _build(self, data: _AuthData | dict[str, Any] | None) -> None:
        """Populate from file data: decoded records (decode_auth_file), a generic parse, or None (no file).

        Records of a generic parse go through the same loops (users and credentials converted
        with the same rules, each token through the careful path _load_token).
        """
        if data is None:
            for gid in (GROUP_ID_ADMIN, GROUP_ID_USER, GROUP_ID_READ_ONLY):
                self._groups[gid] = system_group(gid)
            return
        if isinstance(data, _AuthData):
            group_records: list[dict[str, Any]] = data.groups
        else:
            group_records = data.get("groups", [])
        groups: dict[str, Group] = {}
        legacy_group_id: str | None = None
        has_groups = bool(group_records)
        for gdata in group_records:
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
        if isinstance(data, _AuthData):
            self._build_users(data.users, groups, legacy_group_id, has_groups)
            self._build_credentials(data.credentials)
            self._build_tokens(data.refresh_tokens)
            return
        self._build_users([_user_from_dict(u) for u in data.get("users", [])], groups, legacy_group_id, has_groups)
        users = self._users
        self._build_credentials(
            [_credentials_from_dict(c) for c in data.get("credentials", []) if users.get(c.get("user_id")) is not None]
        )
        self._build_tokens([_token_from_dict(r) for r in data.get("refresh_tokens", [])])

    def _build_users(
        self, records: list[_UserRecord], groups: dict[str, Group], legacy_group_id: str | None, has_groups: bool
    ) -> None:
        """The users of the file, indexed (one loop with no call per user beyond the object's own)."""
        admin = groups[GROUP_ID_ADMIN]
        # Users share a handful of group lists: resolve each distinct list of stored ids once.
        resolved: dict[tuple[Any, ...], tuple[Group, ...]] = {}
        users, owners = self._users, self._owners
        people = 0
        for udata in records:
            system_generated = udata.system_generated
            if not has_groups and not system_generated:
                shared = resolved.get(("<admin>",))
                if shared is None:
                    shared = resolved[("<admin>",)] = self.shared_groups([admin])
            else:
                gids = tuple(udata.group_ids)
                shared = resolved.get(gids)
                if shared is None:
                    member_of: list[Group] = []
                    for gid in gids:
                        if gid == legacy_group_id:
                            gid = GROUP_ID_ADMIN
                        group = groups.get(gid)
                        if group is not None and group not in member_of:
                            member_of.append(group)
                    shared = resolved[gids] = self.shared_groups(member_of)
            user = User(
                udata.name, udata.id, udata.is_owner, udata.is_active, system_generated, udata.local_only, shared
            )
            if user.id in users:
                self._unput_user(users[user.id])
            users[user.id] = user
            if user.is_owner:
                owners[user.id] = user
            if not system_generated:
                people += 1
        self._people += people

    def _build_credentials(self, records: list[_CredentialRecord]) -> None:
        """The credentials of the file, indexed (skipping those of unknown users)."""
        users, by_id, index, by_provider = self._users, self._credentials, self._cred_index, self._creds_by_provider
        key_for = self.key_for
        for cdata in records:
            owner = users.get(cdata.user_id)  # type: ignore[arg-type]
            if owner is None:
                continue
            # _credentials_from, inlined (100,000 credentials at start-up for a large installation).
            ptype, pid, cred_data = cdata.auth_provider_type, cdata.auth_provider_id, cdata.data or {}
            cred = Credentials(ptype, pid, cred_data, cdata.id, False, owner.id)
            previous = by_id.get(cred.id)
            if previous is not None:
                self._do_remove_credentials(previous, keep_tokens=True)
            owner.credentials = (*owner.credentials, cred)
            by_id[cred.id] = cred
            index[(ptype, pid, key_for(ptype, pid, cred_data))] = cred
            provider = by_provider.get((ptype, pid))
            if provider is None:
                provider = by_provider[(ptype, pid)] = {}
            provider[cred.id] = cred

    def _build_tokens(self, records: Sequence[_TokenRecord | dict[str, Any]]) -> None:
        """The refresh tokens of the file, indexed: _load_token's checks, inlined for 100,000 tokens.

        A record of a generic parse that the typed record does not take (a dict) goes through
        _load_token where it stands in the list (a later record with its id replaces it).
        """
        users, creds, by_id, by_secret = self._users, self._credentials, self._tokens_by_id, self._tokens_by_token
        keyring = self.keyring
        fromisoformat = datetime.fromisoformat
        fromhex = bytes.fromhex
        interned = _INTERNED
        new_token = RefreshToken.restore
        expirations = _EXPIRATIONS
        default_expire: dict[str, float | None] = {}
        small = SMALL_TOKEN_COUNT
        for rdata in records:
            if isinstance(rdata, dict):
                self._load_token(rdata)
                continue
            user = users.get(rdata.user_id)
            if user is None:
                continue
            token_id = rdata.id
            if not token_id:
                self._load_token(_token_dict(rdata))  # logged and skipped there
                continue
            created = rdata.created_at
            jwt_key = rdata.jwt_key
            try:
                # The form every file holds is kept as it is (see canonical_created), once parsed.
                if (
                    len(created) != 32
                    or created[4:20:3] != "--T::."
                    or created[26:] != "+00:00"
                    or created[20:26] == "000000"
                    or (jwt_key is None and keyring is None)
                ):
                    raise ValueError
                fromisoformat(created)
                token_hash = fromhex(rdata.token_hash)
            except ValueError:
                # Another form of the date, a digest that is not hex, no way to sign: the careful path.
                self._load_token(_token_dict(rdata))
                continue
            token_type = rdata.token_type
            client_id = rdata.client_id
            if token_type is None:
                token_type = TOKEN_TYPE_SYSTEM if client_id is None else TOKEN_TYPE_NORMAL
            if client_id is not None:
                client_id = interned.get(client_id) or _intern(client_id)
            credential_id = rdata.credential_id
            cred = creds.get(credential_id) if credential_id else None
            expire_at = rdata.expire_at
            if expire_at is UNSET:
                if token_type not in default_expire:
                    default_expire[token_type] = self.default_expire_at(token_type)
                expire_at = default_expire[token_type]
            lifetime = rdata.access_token_expiration
            expiration = expirations.get(lifetime)
            if expiration is None:
                expiration = _shared_expiration(float(lifetime))
            last_used_at = None if rdata.last_used_at is None else _parse_dt(rdata.last_used_at)
            last_used_ip = rdata.last_used_ip
            if last_used_ip is not None:
                last_used_ip = _intern(last_used_ip)
            version = rdata.version
            if version is not None:
                version = interned.get(version) or _intern(version)
            previous = by_id.get(token_id)
            if previous is not None:
                self._unindex_token(previous)
            token = new_token(
                user,
                client_id,
                expiration,
                rdata.client_name,
                rdata.client_icon,
                token_type,
                token_id,
                token_hash,
                created,
                jwt_key,
                keyring,
                last_used_at,
                last_used_ip,
                cred,
                version,
                expire_at,
            )
            # User.add_token, inlined for the common case: a user with a few tokens.
            held = user._tokens
            if held.__class__ is tuple and len(held) < small:
                user._tokens = (*held, token)
            else:
                user.add_token(token)
            by_id[token_id] = token
            by_secret[token_hash] = token

    def _replay(self, record: dict[str, Any]) -> None:
        """Apply one journal record (set or delete a whole entry by id: replaying one twice is harmless).

        An entry whose user or credentials are missing is skipped: that can only happen
        when the base already holds a later state in which they were removed, and the
        journal removes this entry again further on.
        """
        kind = record.get("t")
        try:
            if kind == "token":
                self._load_token(record["v"])
            elif kind == "del_token":
                token = self._tokens_by_id.get(record["id"])
                if token is not None:
                    self._unindex_token(token)
            elif kind == "del_tokens":
                for token_id in record["ids"]:
                    token = self._tokens_by_id.get(token_id)
                    if token is not None:
                        self._unindex_token(token)
            elif kind == "usage":
                token = self._tokens_by_id.get(record["id"])
                if token is not None:
                    token.last_used_at = _parse_dt(record.get("last_used_at"))
                    token.last_used_ip = _intern(record.get("last_used_ip"))
                    token.expire_at = _expire_value(record.get("expire_at"))
            elif kind == "user":
                self._replay_user(record["v"])
            elif kind == "del_user":
                user = self._users.get(record["id"])
                if user is not None:
                    self._do_remove_user(user)
            elif kind == "cred":
                self._replay_credentials(record["v"])
            elif kind == "del_cred":
                cred = self._credentials.get(record["id"])
                if cred is not None:
                    self._do_remove_credentials(cred)
            elif kind == "group":
                gdata = record["v"]
                gid = gdata["id"]
                self._groups[gid] = (
                    system_group(gid)
                    if gid in SYSTEM_GROUPS
                    else Group(id=gid, name=gdata.get("name"), policy=gdata["policy"])
                )
            else:
                _LOGGER.warning("Ignoring journal record %s of unknown type %r", record.get("n"), kind)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            _LOGGER.error("Ignoring malformed journal record %s (%s): %s", record.get("n"), kind, err)

    def apply_remote(self, records: list[dict[str, Any]]) -> RemoteChanges:
        """Apply change records another server committed (shared backends); says what they removed.

        Same records as the journal's, so the same _replay; what a removal or a deactivation
        took away is returned for the manager to close sessions and fire events.
        """
        changes = RemoteChanges()
        for record in records:
            kind = record.get("t")
            if kind == "all":
                self._resync(record["v"], changes)
                continue
            if kind in ("del_token", "del_tokens"):
                ids = [record.get("id")] if kind == "del_token" else list(record.get("ids") or ())
                changes.tokens.extend(t for t in (self._tokens_by_id.get(i) for i in ids if isinstance(i, str)) if t)
            elif kind == "del_user":
                user = self._users.get(record.get("id"))  # type: ignore[arg-type]
                if user is not None:
                    changes.removed_users.append(user)
            elif kind == "del_cred":
                cred = self._credentials.get(record.get("id"))  # type: ignore[arg-type]
                user = self.user_for_credentials(cred) if cred is not None else None
                if user is not None:
                    changes.tokens.extend(t for t in user.token_list if t.credential is cred)
            self._replay(record)
            if kind == "user":
                user = self._users.get(record["v"]["id"]) if isinstance(record.get("v"), dict) else None
                if user is not None:
                    changes.updated_users.append(user)
        return changes

    def _resync(self, data: dict[str, Any], changes: RemoteChanges) -> None:
        """Make memory hold exactly data (the whole stored state, after missed changes were pruned)."""
        for gdata in data.get("groups", []):
            self._replay({"t": "group", "v": gdata})
        user_ids = {u.get("id") for u in data.get("users", [])}
        for user in [u for u in self._users.values() if u.id not in user_ids]:
            changes.removed_users.append(user)
            changes.tokens.extend(self._do_remove_user(user))
        for udata in data.get("users", []):
            self._replay({"t": "user", "v": udata})
            kept = self._users.get(udata.get("id"))
            if kept is not None:
                changes.updated_users.append(kept)
        cred_ids = {c.get("id") for c in data.get("credentials", [])}
        for cred in [c for c in self._credentials.values() if c.id not in cred_ids]:
            self._do_remove_credentials(cred, keep_tokens=True)
        for cdata in data.get("credentials", []):
            old = self._credentials.get(cdata.get("id"))
            if old is None or old.data != cdata.get("data") or old.user_id != cdata.get("user_id"):
                self._replay({"t": "cred", "v": cdata})
        token_ids = {t.get("id") for t in data.get("refresh_tokens", [])}
        for token in [t for t in self._tokens_by_id.values() if t.id not in token_ids]:
            changes.tokens.append(token)
            self._unindex_token(token)
        for rdata in data.get("refresh_tokens", []):
            if rdata.get("id") not in self._tokens_by_id:
                self._load_token(rdata)

    def _replay_user(self, udata: dict[str, Any]) -> None:
        """A user record: update the user in place, or add them."""
        groups = self.shared_groups([self._groups[g] for g in udata.get("group_ids", []) if g in self._groups])
        user = self._users.get(udata["id"])
        is_new = user is None
        if user is None:
            user = User(id=udata["id"], name=udata.get("name"))
        user.name = udata.get("name")
        user.is_active = bool(udata.get("is_active", False))
        user.local_only = bool(udata.get("local_only", False))
        user.groups = groups
        if is_new:
            user.is_owner = bool(udata.get("is_owner", False))
            user.system_generated = bool(udata.get("system_generated", False))
            self._put_user(user)
        else:
            self._set_flags(user, bool(udata.get("is_owner", False)), bool(udata.get("system_generated", False)))

    def _replay_credentials(self, cdata: dict[str, Any]) -> None:
        """A credentials record: replace them, or link them to their user."""
        owner = self._users.get(cdata["user_id"])
        old = self._credentials.get(cdata["id"])
        if old is not None:
            self._do_remove_credentials(old, keep_tokens=True)
        if owner is None:
            return
        cred = _credentials_from(cdata, owner.id)
        self._index_credentials(owner, cred)
        if old is not None:
            for token in owner.token_list:
                if token.credential is old:
                    token.credential = cred

    def _load_token(self, rdata: dict[str, Any]) -> None:
        """One refresh token from the file, skipping pre-0.76 and broken records.

        Open Peer Power stored the secret (``token``) and the signing key
        (``jwt_key``); we keep only the secret's digest (``token_hash``) and
        derive the keys of new tokens from the server secret (``jwt_key`` null).
        """
        has_hash = isinstance(rdata.get("token_hash"), str)
        if "jwt_key" not in rdata and not has_hash:
            return
        token_id = rdata.get("id")
        if token_id.__class__ is not str or not token_id:
            # Access tokens and journal records name a token by its id: a new one made up at each
            # load would let a revocation journaled under one id miss the token after a restart.
            _LOGGER.error("Ignoring refresh token with invalid id %r for user_id %s", token_id, rdata.get("user_id"))
            return
        user_id = rdata.get("user_id")
        user = self._users.get(user_id) if isinstance(user_id, str) else None
        if user is None:
            return
        created = canonical_created(rdata.get("created_at"))
        if created is None:
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
        expire_at = _expire_value(rdata["expire_at"]) if "expire_at" in rdata else self.default_expire_at(token_type)
        previous = self._tokens_by_id.get(token_id)
        if previous is not None:
            self._unindex_token(previous)
        token = RefreshToken(
            id=token_id,
            user=user,
            client_id=_intern(rdata.get("client_id")),
            client_name=rdata.get("client_name"),
            client_icon=rdata.get("client_icon"),
            token_type=token_type,
            created_at=datetime.fromisoformat(created),
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
        """Return once every change made so far is durable (its journal records are on disk)."""
        await self._store.async_commit()

    async def async_wait_saved(self) -> None:
        """Wait until changes already made are durable (a write in flight, or one that failed, is retried)."""
        await self._store.async_commit()

    async def async_compact(self) -> None:
        """Rewrite .storage/auth with everything and empty the journal (also done in the background)."""
        await self._store.async_compact()

    def schedule_usage_save(self, token: RefreshToken | None = None) -> None:
        """Journal a token's usage eventually (coalesced, slow); without a token, every token's."""
        if token is None:
            self._usage_dirty.update(self._tokens_by_id)
        else:
            self._usage_dirty[token.id] = token
        if self._usage_handle is None and self._usage_task is None:
            self._usage_handle = asyncio.get_running_loop().call_later(USAGE_SAVE_DELAY, self._usage_timer)

    def _usage_timer(self) -> None:
        """Timer callback: journal the usage noted since the last write."""
        self._usage_handle = None
        task = self._usage_task = asyncio.ensure_future(self._async_write_usage())
        task.add_done_callback(self._usage_written)

    def _usage_written(self, task: asyncio.Future[None]) -> None:
        """Log a failed usage write (nobody waits for it); the next use tries again."""
        self._usage_task = None
        if not task.cancelled() and task.exception() is not None:
            _LOGGER.error("Saving token usage failed: %s", task.exception())

    async def _async_write_usage(self) -> None:
        """Append one usage record per token used since the last write, then commit."""
        dirty, self._usage_dirty = self._usage_dirty, {}
        for token_id, token in dirty.items():
            if self._tokens_by_id.get(token_id) is token:
                self._log(
                    {
                        "t": "usage",
                        "id": token_id,
                        "last_used_at": token.last_used_at.isoformat() if token.last_used_at else None,
                        "last_used_ip": token.last_used_ip,
                        "expire_at": token.expire_at,
                    }
                )
        await self._store.async_commit()

    async def async_flush(self) -> None:
        """Write everything, usage included, into a whole .storage/auth (shutdown)."""
        if self._usage_handle is not None:
            self._usage_handle.cancel()
            self._usage_handle = None
        if self._usage_task is not None:
            await asyncio.gather(self._usage_task, return_exceptions=True)
        try:
            if self._usage_dirty:
                await self._async_write_usage()
            await self._store.async_flush()
        except StorageError as err:
            # Nobody is left to tell: what reached the disk loads consistently at the next start.
            _LOGGER.error("Changes not saved at shutdown: %s", err)

    def _log(self, record: dict[str, Any]) -> None:
        """Queue a change's journal record before memory changes (StorageError: refused, nothing changed).

        The record is checked first (opp_auth.validation.check_storable): a value the file could not
        hold (a lone surrogate, NaN, nesting past the limit) raises InvalidData and nothing changes.
        """
        if self._journaling:
            check_storable(record.get("v", record), str(record.get("t", "record")))
            self._store.journal_append(record)

    @contextlib.contextmanager
    def unjournaled(self) -> Iterator[None]:
        """Change memory without journaling (building a store the way a load does; write it with async_compact)."""
        self._journaling = False
        try:
            yield
        finally:
            self._journaling = True

    # ---- indexes -------------------------------------------------------------------------

    def _put_user(self, user: User) -> None:
        """Index a user."""
        self._users[user.id] = user
        if user.is_owner:
            self._owners[user.id] = user
        if not user.system_generated:
            self._people += 1

    def _set_flags(self, user: User, is_owner: bool, system_generated: bool) -> None:
        """Change the flags the owner and people indexes follow (the user keeps their place)."""
        if user.id in self._users:
            if user.is_owner:
                self._owners.pop(user.id, None)
            if not user.system_generated:
                self._people -= 1
        user.is_owner = is_owner
        user.system_generated = system_generated
        if user.id in self._users:
            if is_owner:
                self._owners[user.id] = user
            if not system_generated:
                self._people += 1

    def _unput_user(self, user: User) -> None:
        """Forget a user in the indexes."""
        if self._users.pop(user.id, None) is None:
            return
        self._owners.pop(user.id, None)
        if not user.system_generated:
            self._people -= 1

    def _index_credentials(self, user: User, cred: Credentials) -> None:
        """Attach credentials to a user and index them."""
        cred.user_id = user.id
        cred.is_new = False
        user.credentials = (*user.credentials, cred)
        self._credentials[cred.id] = cred
        self._cred_index[self._cred_key(cred)] = cred
        self._creds_by_provider.setdefault(cred.provider_key, {})[cred.id] = cred

    def _cred_key(self, cred: Credentials) -> tuple[str, str | None, str]:
        """The credential index key."""
        return (
            cred.auth_provider_type,
            cred.auth_provider_id,
            self.key_for(cred.auth_provider_type, cred.auth_provider_id, cred.data),
        )

    def reindex_credentials(self) -> None:
        """Rebuild the credential index (after providers decided how they normalise).

        Nothing to do when the load already indexed with the same key function (100,000
        credentials cost a noticeable part of start-up).
        """
        if self._indexed_with is not None and self._indexed_with == self.key_for:
            return
        self._indexed_with = self.key_for
        self._cred_index = {self._cred_key(c): c for c in self._credentials.values()}

    def _unindex_credentials(self, cred: Credentials) -> None:
        """Forget credentials in every index."""
        self._credentials.pop(cred.id, None)
        key = self._cred_key(cred)
        if self._cred_index.get(key) is cred:
            del self._cred_index[key]
        by_provider = self._creds_by_provider.get(cred.provider_key)
        if by_provider is not None and by_provider.get(cred.id) is cred:
            del by_provider[cred.id]

    def _index_token(self, token: RefreshToken) -> None:
        """Attach a token to its user and index it."""
        token.user.add_token(token)
        self._tokens_by_id[token.id] = token
        self._tokens_by_token[token.token_hash] = token

    def _unindex_token(self, token: RefreshToken) -> None:
        """Forget a token."""
        token.user.discard_token(token)
        self._tokens_by_id.pop(token.id, None)
        self._usage_dirty.pop(token.id, None)
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

    def owner(self) -> User | None:
        """The owner (the first, should there be several), if one exists; O(1)."""
        return next(iter(self._owners.values()), None)

    def has_non_system_user(self) -> bool:
        """Whether any person (not an integration) has an account; O(1)."""
        return self._people > 0

    def credentials_for_provider(self, key: tuple[str, str | None]) -> list[Credentials]:
        """Credentials issued by one provider (an index: no scan of other providers' credentials)."""
        return list(self._creds_by_provider.get(key, {}).values())

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
        """A refresh token by id; None while the cache may be stale (fail closed, backend.fresh_until)."""
        if self._backend is not None and _monotonic() > self._backend.fresh_until:
            return None
        return self._tokens_by_id.get(token_id)

    @property
    def refresh_token_lookup(self) -> Callable[[str], RefreshToken | None]:
        """get_refresh_token as the cheapest callable that answers the same: with a backend whose
        cache never goes stale (the JSON store, ``always_fresh``) the index's own ``get``, which runs
        no Python code; with any other, get_refresh_token and its staleness check."""
        # Declared by the backend's own class: a subclass of the JSON backend (say, one that shares
        # its files and may go stale) is asked on every check unless it declares it again.
        if self._backend is None or type(self._backend).__dict__.get("always_fresh", False) is True:
            return self._tokens_by_id.get
        return self.get_refresh_token

    def get_refresh_token_by_token(self, token: str) -> RefreshToken | None:
        """A refresh token by its secret, compared in constant time after the index lookup."""
        if not isinstance(token, str):
            return None
        if self._backend is not None and _monotonic() > self._backend.fresh_until:
            return None
        digest = hash_token(token)
        found = self._tokens_by_token.get(digest)
        if found is None or not hmac.compare_digest(found.token_hash, digest):
            return None
        return found

    def refresh_tokens(self) -> list[RefreshToken]:
        """Every refresh token."""
        return list(self._tokens_by_id.values())

    async def async_expired_tokens(self, now: float) -> list[RefreshToken]:
        """Tokens whose idle expiry is past, looked for in slices of about 1 ms (no loop stall)."""
        expired: list[RefreshToken] = []
        tokens = list(self._tokens_by_id.values())
        step = 2000
        for start in range(0, len(tokens), step):
            expired.extend(t for t in tokens[start : start + step] if t.expire_at is not None and now > t.expire_at)
            if start + step < len(tokens):
                await asyncio.sleep(0)
        # Tokens removed meanwhile are not returned.
        return [t for t in expired if self._tokens_by_id.get(t.id) is t]

    # ---- changes (callers save) ---------------------------------------------------------

    def add_user(self, user: User) -> None:
        """Insert a user."""
        user.groups = self.shared_groups(user.groups)
        self._log({"t": "user", "v": _user_record(user)})
        self._put_user(user)

    def update_user(
        self,
        user: User,
        *,
        name: str | None = None,
        is_active: bool | None = None,
        groups: Any = None,
        is_owner: bool | None = None,
        local_only: bool | None = None,
    ) -> None:
        """Change a user's name, activity, groups, ownership or local_only flag (None: unchanged)."""
        record = _user_record(user)
        if local_only is not None:
            record.pop("local_only", None)
            if local_only:
                record["local_only"] = True
        if name is not None:
            record["name"] = name
        if is_active is not None:
            record["is_active"] = is_active
        shared = self.shared_groups(groups) if groups is not None else None
        if shared is not None:
            record["group_ids"] = [g.id for g in shared]
        if is_owner is not None:
            record["is_owner"] = is_owner
        self._log({"t": "user", "v": record})
        if name is not None:
            user.name = name
        if is_active is not None:
            user.is_active = is_active
        if shared is not None:
            user.groups = shared
        if is_owner is not None:
            self._set_flags(user, is_owner, user.system_generated)
        if local_only is not None:
            user.local_only = local_only

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
        if user.id in self._users:
            self._log({"t": "del_user", "id": user.id})
        return self._do_remove_user(user)

    def _do_remove_user(self, user: User) -> list[RefreshToken]:
        """Remove a user and what hangs off them from memory."""
        for cred in user.credentials:
            self._unindex_credentials(cred)
        tokens = list(user.token_list)
        for token in tokens:
            self._unindex_token(token)
        self._unput_user(user)
        return tokens

    def add_group(self, group: Group) -> None:
        """Insert a group."""
        self._log({"t": "group", "v": _group_record(group)})
        self._groups[group.id] = group

    def link_credentials(self, user: User, credentials: Credentials) -> None:
        """Attach credentials to a user."""
        record = _credential_record(credentials)
        record["user_id"] = user.id
        self._log({"t": "cred", "v": record})
        self._index_credentials(user, credentials)

    def update_credentials_data(self, credentials: Credentials, data: dict[str, Any]) -> None:
        """Replace what linked credentials identify (a login its provider renamed); their tokens keep them."""
        record = _credential_record(credentials)
        record["data"] = data
        self._log({"t": "cred", "v": record})
        old_key = self._cred_key(credentials)
        if self._cred_index.get(old_key) is credentials:
            del self._cred_index[old_key]
        credentials.data = data
        self._cred_index[self._cred_key(credentials)] = credentials

    def remove_credentials(self, credentials: Credentials) -> None:
        """Detach and forget credentials (tokens minted through them are removed too)."""
        if self._credentials.get(credentials.id) is credentials:
            self._log({"t": "del_cred", "id": credentials.id})
        self._do_remove_credentials(credentials)

    def _do_remove_credentials(self, credentials: Credentials, keep_tokens: bool = False) -> None:
        """Remove credentials (and, unless keep_tokens, the tokens minted through them) from memory."""
        user = self.user_for_credentials(credentials)
        self._unindex_credentials(credentials)
        if user is not None:
            user.credentials = tuple(c for c in user.credentials if c is not credentials)
            if not keep_tokens:
                for token in user.token_list:
                    if token.credential is credentials:
                        self._unindex_token(token)

    def add_refresh_token(self, token: RefreshToken) -> None:
        """Insert a token."""
        self._log({"t": "token", "v": _token_record(token)})
        self._index_token(token)

    def remove_refresh_token(self, token: RefreshToken) -> None:
        """Delete a token."""
        if self._tokens_by_id.get(token.id) is token:
            self._log({"t": "del_token", "id": token.id})
        self._unindex_token(token)

    def remove_refresh_tokens(self, tokens: list[RefreshToken]) -> list[RefreshToken]:
        """Delete several tokens with one journal record; returns those that were there."""
        present = [t for t in tokens if self._tokens_by_id.get(t.id) is t]
        if present:
            self._log({"t": "del_tokens", "ids": [t.id for t in present]})
        for token in present:
            self._unindex_token(token)
        return present

    def set_token_expiry(self, token: RefreshToken, expire_at: float | None) -> None:
        """Set when an unused token expires (None: never)."""
        record = _token_record(token)
        record["expire_at"] = expire_at
        self._log({"t": "token", "v": record})
        token.expire_at = expire_at


class RemoteChanges:
    """What change records from another server removed or updated (AuthStore.apply_remote)."""

    __slots__ = ("removed_users", "tokens", "updated_users")

    def __init__(self) -> None:
        """Nothing yet."""
        self.tokens: list[RefreshToken] = []
        self.removed_users: list[User] = []
        self.updated_users: list[User] = []


_monotonic = time.monotonic


def _credentials_from(cdata: dict[str, Any], user_id: str) -> Credentials:
    """The credentials of a stored record, linked to user_id."""
    return Credentials(
        cdata["auth_provider_type"], cdata.get("auth_provider_id"), cdata.get("data") or {}, cdata["id"], False, user_id
    )


def _canonical_key(_type: str, _id: str | None, data: dict[str, Any]) -> str:
    """The credential index key when no provider normalises it."""
    return credential_lookup_key(data)


def _expire_value(value: Any) -> float | None:
    """A stored expire_at: epoch seconds, or None."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    return value


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
        "created_at": token.created_iso,
        "access_token_expiration": token.access_token_expiration.total_seconds(),
        "token_hash": token.token_hash.hex(),
        "jwt_key": token.stored_jwt_key,
        "last_used_at": token.last_used_at.isoformat() if token.last_used_at else None,
        "last_used_ip": token.last_used_ip,
        "credential_id": token.credential.id if token.credential else None,
        "version": token.version,
        "expire_at": token.expire_at,
    }
