"""The AuthProvider base class every provider plugin extends."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import voluptuous as vol

from .models import (
    GROUP_ID_ADMIN,
    GROUP_ID_READ_ONLY,
    GROUP_ID_USER,
    Credentials,
    RefreshToken,
    UserMeta,
    credential_lookup_key,
)

if TYPE_CHECKING:
    from .context import PluginContext
    from .login_flow import LoginFlow

_LOGGER = logging.getLogger(__name__)

# The local username/password provider's types: Open Peer Power's, and Home Assistant's name for it
# (its credentials in .storage/auth say homeassistant, its logins live in auth_provider.homeassistant).
LOCAL_PROVIDER_TYPES = ("openpeerpower", "homeassistant")

PROVIDER_CONFIG_SCHEMA = vol.Schema(
    {
        vol.Required("type"): str,
        vol.Optional("name"): vol.Any(str, None),
        vol.Optional("id"): vol.Any(str, None),
    },
    extra=vol.ALLOW_EXTRA,
)
"""Keys every provider accepts; a provider's CONFIG_SCHEMA extends it and forbids the rest."""


def _group_name(value: Any) -> str:
    """A group name at the identity source, without surrounding spaces."""
    if not isinstance(value, str) or not value.strip():
        raise vol.Invalid(f"{value!r} is not a group name")
    return value.strip()


class GroupMapping:
    """A provider's ``admin_groups``, ``user_groups``, ``read_only_groups`` and ``required_groups``.

    For a provider whose source (a directory, a proxy, an OpenID provider) says
    which groups a person is in. Extend the provider's schema with
    :meth:`schema`, build one from the validated configuration, then
    :meth:`allows` applies ``required_groups`` (when set, a login in none of
    them is refused) and :meth:`group_for` picks the opp-auth group: the most
    privileged match wins, no match gives ``system-users``::

        CONFIG_SCHEMA = AuthProvider.CONFIG_SCHEMA.extend({..., **GroupMapping.schema()}, extra=vol.PREVENT_EXTRA)
        mapping = GroupMapping(self.config)
        if not mapping.allows(groups): ...refuse...
        group = mapping.group_for(groups)

    ``normalize`` makes names comparable (the LDAP provider's DNs); it is
    applied to the configured names, and the caller applies it to the groups it
    passes.
    """

    KEYS: ClassVar[tuple[str, ...]] = ("admin_groups", "user_groups", "read_only_groups", "required_groups")

    @classmethod
    def schema(cls, item: Callable[[Any], str] = _group_name) -> dict[Any, Any]:
        """The four keys, for a provider's CONFIG_SCHEMA: each absent, one group or a list; item checks one."""

        def names(value: Any) -> list[str]:
            values = [] if value is None else value if isinstance(value, list) else [value]
            return [item(v) for v in values]

        return {vol.Optional(key, default=None): names for key in cls.KEYS}

    def __init__(self, config: Mapping[str, Any], normalize: Callable[[str], str] | None = None) -> None:
        """Read the four lists of a validated configuration."""
        norm = normalize or (lambda name: name)
        self.admin, self.user, self.read_only, self.required = (
            frozenset(norm(name) for name in config.get(key) or ()) for key in self.KEYS
        )

    @property
    def in_use(self) -> bool:
        """Whether any of the four lists is set (the provider must then find a person's groups)."""
        return bool(self.admin or self.user or self.read_only or self.required)

    def allows(self, groups: Iterable[str]) -> bool:
        """Whether required_groups lets someone in these groups log in (always, when it is not set)."""
        return not self.required or not self.required.isdisjoint(groups)

    def group_for(self, groups: Iterable[str]) -> str:
        """The opp-auth group of someone in these groups: admin, user, read-only; no match, system-users."""
        held = frozenset(groups)
        if held & self.admin:
            return GROUP_ID_ADMIN
        if held & self.user:
            return GROUP_ID_USER
        if held & self.read_only:
            return GROUP_ID_READ_ONLY
        return GROUP_ID_USER


class InvalidAuthError(Exception):
    """The credentials are not valid (the user sees invalid_auth)."""


class ProviderUnavailableError(Exception):
    """A provider cannot answer now (directory down, helper timed out)."""


class AuthProvider:
    """A source of login identities.

    Subclass it, set ``TYPE`` (the ``type:`` of configuration.yaml) and
    ``CONFIG_SCHEMA`` (``AuthProvider.CONFIG_SCHEMA.extend({...}, extra=vol.PREVENT_EXTRA)``:
    the base schema, ``type``, ``name`` and ``id``, is the base class's),
    implement :meth:`async_login_flow` returning a :class:`opp_auth.LoginFlow`
    whose ``async_step_init`` asks for and checks the credentials (for a
    username/password form, a :class:`opp_auth.UsernamePasswordLoginFlow`), and
    :meth:`async_user_meta_for_credentials`. Register it from the
    ``opp_auth_register_auth_providers`` hook.
    """

    TYPE: ClassVar[str]
    DEFAULT_TITLE: ClassVar[str] = "Unnamed auth provider"
    CONFIG_SCHEMA: ClassVar[vol.Schema] = PROVIDER_CONFIG_SCHEMA
    SUPPORT_MFA: ClassVar[bool] = True
    CHECKS_EVERY_REQUEST: ClassVar[bool] = False
    """Set to have validate_access asked on every request made with this provider's tokens."""

    def __init__(self, auth: PluginContext, config: dict[str, Any]) -> None:
        """Keep the plugin context (``self.auth``) and this provider's validated configuration."""
        self.auth = auth
        self.config = config

    @property
    def id(self) -> str | None:
        """The configured id (None unless two providers of one type are configured)."""
        return self.config.get("id")

    @property
    def type(self) -> str:
        """The provider type."""
        return self.TYPE

    @property
    def key(self) -> tuple[str, str | None]:
        """(type, id): how credentials and login flows name this provider."""
        return (self.TYPE, self.id)

    @property
    def name(self) -> str:
        """Title shown on the login page."""
        return self.config.get("name") or self.DEFAULT_TITLE

    @property
    def support_mfa(self) -> bool:
        """Open Peer Power's flag, kept for compatibility; it no longer skips MFA.

        The one MFA decision (``login_flow.async_required_mfa``) asks a user
        who has MFA enrolled for it after every provider's step, trusted
        networks included.
        """
        return self.SUPPORT_MFA

    async def async_initialize(self) -> None:
        """Load data or open resources before the first login (called once at start-up)."""

    async def async_credentials(self) -> list[Credentials]:
        """Every stored credential issued by this provider."""
        return self.auth.credentials_for_provider(self.key)

    def async_create_credentials(self, data: dict[str, Any]) -> Credentials:
        """New, unsaved credentials of this provider."""
        return Credentials(auth_provider_type=self.TYPE, auth_provider_id=self.id, data=data, is_new=True)

    def async_find_credentials(self, data: dict[str, Any]) -> Credentials | None:
        """Stored credentials of this provider with exactly this data (O(1))."""
        return self.auth.find_credentials(self.key, data)

    def credential_key(self, data: dict[str, Any]) -> str:
        """Index key of credential data; override to match case-insensitively and the like."""
        return credential_lookup_key(data)

    async def async_login_flow(self, context: dict[str, Any]) -> LoginFlow[Any]:
        """The login flow for a new attempt; context has ip_address and credential_only."""
        raise NotImplementedError

    async def async_get_or_create_credentials(self, flow_result: dict[str, Any]) -> Credentials:
        """Credentials for a finished login step: existing ones, or new ones.

        New credentials carry the flow result's ``identity`` (what the login
        learned about the person: name, groups), if any, as ``meta`` until the
        user is made, for :meth:`async_user_meta_for_credentials`. It is never
        stored.
        """
        data = self.credential_data(flow_result)
        credentials = self.async_find_credentials(data)
        if credentials is not None:
            return credentials
        credentials = self.async_create_credentials(data)
        credentials.meta = flow_result.get("identity")
        return credentials

    def credential_data(self, flow_result: dict[str, Any]) -> dict[str, Any]:
        """The credential data that identifies the person behind a flow result."""
        raise NotImplementedError

    async def async_user_meta_for_credentials(self, credentials: Credentials) -> UserMeta:
        """Name, active flag and group for a user created from new credentials."""
        raise NotImplementedError

    async def async_validate_login(self, username: str, password: str) -> None:
        """Check a username/password pair (used by :class:`opp_auth.UsernamePasswordLoginFlow`).

        Raise :class:`InvalidAuthError` when it is wrong and
        :class:`ProviderUnavailableError` when it cannot be checked now. Only
        providers whose login flow is a ``UsernamePasswordLoginFlow`` (without
        its own ``async_check_login``) implement it.
        """
        raise NotImplementedError(f"{type(self).__name__} does not check usernames and passwords")

    async def async_validate_refresh_token(self, refresh_token: RefreshToken, remote_ip: str | None = None) -> None:
        """Raise InvalidAuthError to refuse minting an access token (e.g. address no longer trusted)."""

    def validate_access(self, refresh_token: RefreshToken, remote_ip: str | None) -> bool:
        """Whether a request from remote_ip may use an access token of this provider (fast, synchronous).

        Only asked when the class sets ``CHECKS_EVERY_REQUEST``; keep it cheap, it
        runs on every request and websocket connection made with such a token.
        """
        return True

    async def async_will_remove_credentials(self, credentials: Credentials) -> None:
        """Clean up provider data before credentials are removed."""

    async def async_shutdown(self) -> None:
        """Release resources at shutdown."""
