"""Users, groups, credentials and refresh tokens: the auth domain model."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

TOKEN_TYPE_NORMAL = "normal"
TOKEN_TYPE_SYSTEM = "system"
TOKEN_TYPE_LONG_LIVED_ACCESS_TOKEN = "long_lived_access_token"

GROUP_ID_ADMIN = "system-admin"
GROUP_ID_USER = "system-users"
GROUP_ID_READ_ONLY = "system-read-only"

ACCESS_TOKEN_EXPIRATION = timedelta(minutes=30)


def new_id() -> str:
    """A fresh uuid4 hex identifier, as Open Peer Power makes them."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(timezone.utc)


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


@dataclass(slots=True, eq=False)
class Credentials:
    """A login identity at one auth provider, linked to at most one user."""

    auth_provider_type: str
    auth_provider_id: str | None
    data: dict[str, Any]
    id: str = field(default_factory=new_id)
    is_new: bool = True
    user_id: str | None = None

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
    groups: list[Group] = field(default_factory=list)
    credentials: list[Credentials] = field(default_factory=list)
    refresh_tokens: dict[str, RefreshToken] = field(default_factory=dict)

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


@dataclass(slots=True, eq=False)
class RefreshToken:
    """A long-lived secret a client trades for short-lived access tokens."""

    user: User
    client_id: str | None
    access_token_expiration: timedelta
    client_name: str | None = None
    client_icon: str | None = None
    token_type: str = TOKEN_TYPE_NORMAL
    id: str = field(default_factory=new_id)
    created_at: datetime = field(default_factory=utcnow)
    token: str = field(default_factory=lambda: secrets.token_hex(64))
    jwt_key: str = field(default_factory=lambda: secrets.token_hex(64))
    last_used_at: datetime | None = None
    last_used_ip: str | None = None
    credential: Credentials | None = None
    version: str | None = None
    expire_at: float | None = None

    def __repr__(self) -> str:
        """Never print the secrets."""
        return f"<RefreshToken {self.id} user={self.user.id} type={self.token_type}>"


@dataclass(slots=True)
class UserMeta:
    """What a provider knows about the person behind new credentials."""

    name: str | None
    is_active: bool = True
    group: str | None = None
    local_only: bool = False
