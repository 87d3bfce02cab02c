"""Bounded one-time authorization codes, each bound to a client id and a purpose.

A code is issued only by the login engine (``login_flow.py``) after the one MFA
decision, for one purpose: ``authorize`` codes are redeemed by ``/auth/token``,
``link_user`` codes by ``/auth/link_user``. Redeeming checks the client id and
the purpose; a code presented for the wrong purpose is used up. Codes live ten
minutes and are fair shares by the address they were issued to
(:class:`opp_auth.shares.AddressShares`): at most ``MAX_CODES`` for strangers
and as many for addresses that logged in before or sit in a trusted network,
``MAX_CODES_PER_ADDRESS`` per address and ``MAX_CODES_PER_PREFIX`` per IPv4 /24
or IPv6 /64. Past its share an address, prefix or full pool loses its own
oldest code, never the code of an address that holds less.

With a shared ephemeral state (several servers on one database) each code is
also a row there (:meth:`AuthorizationCodes.async_issue`), and redeeming takes
that row in one atomic step (:meth:`AuthorizationCodes.async_redeem`), so a
code is exchanged at most once whichever servers receive it, at whatever
instant. The local entries still bound what one server issues.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from .ephemeral import EphemeralState
from .models import Credentials, UserMeta
from .shares import AddressShares, KnownAddresses

AUTHORIZE = "authorize"
LINK_USER = "link_user"
PURPOSES = frozenset({AUTHORIZE, LINK_USER})
CODE_TTL = 600.0
MAX_CODES = 10000
MAX_CODES_PER_ADDRESS = 30
MAX_CODES_PER_PREFIX = 100


class _Entry(NamedTuple):
    created: float
    purpose: str
    credentials: Credentials


class AuthorizationCodes:
    """The codes waiting to be redeemed (in memory only, like Open Peer Power's)."""

    def __init__(
        self,
        *,
        ttl: float = CODE_TTL,
        max_codes: int = MAX_CODES,
        max_per_address: int = MAX_CODES_PER_ADDRESS,
        max_per_prefix: int = MAX_CODES_PER_PREFIX,
        known: KnownAddresses | None = None,
        trusted: Callable[[str], bool] | None = None,
        state: EphemeralState | None = None,
        resolve: Callable[[dict[str, Any]], Credentials | None] | None = None,
        describe: Callable[[Credentials], Awaitable[UserMeta | None]] | None = None,
    ) -> None:
        """Codes live ttl seconds; at most max_codes at once in each pool.

        state: where codes are shared with other servers (default: nowhere); resolve: the
        Credentials of a shared code's stored value (see credentials_value); describe: the
        UserMeta of new credentials whose meta is no JSON (the provider's, asked on this server),
        so their code is shared too.
        """
        self.ttl = ttl
        self.state = state if state is not None else EphemeralState()
        self._resolve = resolve
        self._describe = describe
        self.shares = AddressShares(
            max_codes, max_per_address, max_per_prefix, known=known, trusted=trusted, displace_own=True
        )
        self._codes: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._stored: set[str] = set()  # shared state: the codes issued here that are rows there too
        self._displaced: list[str] = []  # stored codes displaced by the last issue

    @property
    def max_codes(self) -> int:
        """Codes each pool (strangers, privileged) holds at most."""
        return self.shares.strangers.capacity

    @max_codes.setter
    def max_codes(self, value: int) -> None:
        self.shares.configure(capacity=value)

    def __len__(self) -> int:
        """How many codes are waiting (expired ones included until the next issue)."""
        return len(self._codes)

    def issue(self, client_id: str, credentials: Credentials, purpose: str, *, ip_address: str | None = None) -> str:
        """A new code for credentials, redeemable once by client_id for purpose; ip_address: who gets it."""
        if purpose not in PURPOSES:
            raise ValueError(f"unknown authorization code purpose {purpose!r}")
        if not isinstance(credentials, Credentials):
            raise TypeError("an authorization code carries Credentials")
        self._purge()
        code = secrets.token_hex(16)
        key = (client_id, code)
        for old in self.shares.admit(key, ip_address):
            self._codes.pop(old, None)  # type: ignore[call-overload]
            if self._stored:
                self._displaced.append(old[1])  # type: ignore[index]
        self._codes[key] = _Entry(time.monotonic(), purpose, credentials)
        return code

    async def async_issue(
        self, client_id: str, credentials: Credentials, purpose: str, *, ip_address: str | None = None
    ) -> str:
        """issue, and with a shared state the code's row (StorageError when it cannot be stored)."""
        code = self.issue(client_id, credentials, purpose, ip_address=ip_address)
        if self.state.shared:
            displaced = [old for old in self._displaced if old in self._stored]
            self._stored.difference_update(displaced)
            self._displaced = []
            await self.state.async_drop_codes(displaced)
            stored = credentials_value(credentials)
            if stored is None and credentials.is_new and self._describe is not None:
                # What the login learnt for a new user (an LDAP or OIDC identity object) is no JSON:
                # the provider says here what the user will be (name, group), and that travels.
                user_meta = await self._describe(credentials)
                if user_meta is not None:
                    stored = credentials_value(credentials, user_meta)
            if stored is None:
                return code  # redeemable on this server only
            value = {"purpose": purpose, "credentials": stored}
            try:
                await self.state.async_put_code(code, client_id, value, self.ttl)
            except BaseException:
                self._codes.pop((client_id, code), None)
                self.shares.release((client_id, code))
                raise
            self._stored.add(code)
        return code

    async def async_redeem(self, client_id: object, code: object, purpose: str) -> Credentials | None:
        """redeem; with a shared state the code's row is taken (one atomic delete), wherever it was issued."""
        if not self.state.shared:
            return self.redeem(client_id, code, purpose)
        if not isinstance(client_id, str) or not isinstance(code, str):
            return None
        if code not in self._stored and (client_id, code) in self._codes:
            return self.redeem(client_id, code, purpose)  # a code kept on this server only
        self._stored.discard(code)
        local = self._codes.pop((client_id, code), None)
        self.shares.release((client_id, code))
        value = await self.state.async_take_code(code, client_id)
        if value is None or value.get("purpose") != purpose:
            return None
        if local is not None:
            return local.credentials
        stored = value.get("credentials")
        if not isinstance(stored, dict) or self._resolve is None:
            return None
        return self._resolve(stored)

    def redeem(self, client_id: object, code: object, purpose: str) -> Credentials | None:
        """The credentials of a live code issued to client_id for purpose, once; else None."""
        if not isinstance(client_id, str) or not isinstance(code, str):
            return None
        entry = self._codes.pop((client_id, code), None)
        self.shares.release((client_id, code))
        if entry is None or time.monotonic() - entry.created > self.ttl or entry.purpose != purpose:
            return None
        return entry.credentials

    def _purge(self) -> None:
        """Forget expired codes (they are in creation order)."""
        now = time.monotonic()
        while self._codes:
            entry = next(iter(self._codes.values()))
            if now - entry.created <= self.ttl:
                break
            key = self._codes.popitem(last=False)[0]
            self.shares.release(key)
            self._stored.discard(key[1])


def credentials_value(credentials: Credentials, user_meta: UserMeta | None = None) -> dict[str, Any] | None:
    """What a shared code keeps of its credentials (JSON; the provider's login data, never a password).

    None when they cannot be written as JSON (new credentials whose meta is an object, unless
    user_meta, what the provider said the new user will be, takes its place). The meta of stored
    credentials is left out: it only serves making a new user, and the object that made one may
    still carry it (trusted_header's Identity, LDAP's entry) until the server restarts.
    """
    meta = credentials.meta if credentials.is_new and user_meta is None else None
    try:
        json.dumps([credentials.data, meta], allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None
    value = {
        "id": credentials.id,
        "auth_provider_type": credentials.auth_provider_type,
        "auth_provider_id": credentials.auth_provider_id,
        "data": credentials.data,
        "is_new": credentials.is_new,
        "meta": meta,
    }
    if user_meta is not None and credentials.is_new:
        value["user_meta"] = {
            "name": user_meta.name,
            "is_active": user_meta.is_active,
            "group": user_meta.group,
            "local_only": user_meta.local_only,
        }
    return value


def user_meta_from_value(value: Any) -> UserMeta | None:
    """The UserMeta credentials_value stored, or None when value is not one (a forged or damaged row)."""
    if not isinstance(value, dict):
        return None
    name, active, group, local = (value.get(k) for k in ("name", "is_active", "group", "local_only"))
    if not (
        (name is None or isinstance(name, str))
        and isinstance(active, bool)
        and (group is None or isinstance(group, str))
        and isinstance(local, bool)
    ):
        return None
    return UserMeta(name=name, is_active=active, group=group, local_only=local)


__all__ = [
    "AUTHORIZE",
    "CODE_TTL",
    "LINK_USER",
    "MAX_CODES",
    "MAX_CODES_PER_ADDRESS",
    "MAX_CODES_PER_PREFIX",
    "PURPOSES",
    "AuthorizationCodes",
    "credentials_value",
]
