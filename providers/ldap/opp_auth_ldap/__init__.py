"""The LDAP provider (type ``ldap``): logins checked against a directory server.

Users are found by a search with a service account (or anonymously) and then
bound as, or bound directly through a DN template. Groups of the directory
decide who may log in and which group a new user gets. Every blocking ldap3
call runs in the executor, a bounded number at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from typing import Any

import voluptuous as vol
from ldap3.core.exceptions import LDAPException
from ldap3.operation.search import parse_filter
from ldap3.utils.dn import parse_dn

from opp_auth import (
    AuthProvider,
    Credentials,
    GroupMapping,
    InvalidAuthError,
    LoginFlow,
    ProviderUnavailableError,
    RefreshToken,
    UserMeta,
    UsernamePasswordLoginFlow,
    hookimpl,
)

from .directory import SCOPES, Directory, DirectoryUnavailable, Identity, is_loopback, parse_url

_LOGGER = logging.getLogger(__name__)

DEFAULT_USER_FILTER = "(uid={username})"
DEFAULT_GROUP_FILTER = "(|(member={dn})(uniqueMember={dn})(memberUid={username}))"
# Longer input is nobody's username or password; refused without asking the directory.
MAX_USERNAME = 256
MAX_PASSWORD = 1024
MAX_RECHECK_CACHE = 4096


def _urls(value: Any) -> list[str]:
    """One URL or a list of them, each ldap:// or ldaps:// with a host."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise vol.Invalid("at least one server URL is needed")
    urls = []
    for item in values:
        if not isinstance(item, str):
            raise vol.Invalid(f"{item!r} is not a URL")
        try:
            urls.append(parse_url(item).url)
        except ValueError as err:
            raise vol.Invalid(str(err)) from err
    return urls


def _dn(value: Any) -> str:
    """A syntactically valid DN."""
    text = str(value).strip()
    try:
        if not parse_dn(text, strip=True):
            raise vol.Invalid("empty DN")
    except (LDAPException, IndexError, ValueError) as err:
        raise vol.Invalid(f"{text!r} is not a valid DN") from err
    return text


def _dn_template(value: Any) -> str:
    """A DN with a {username} placeholder."""
    text = str(value).strip()
    if "{username}" not in text:
        raise vol.Invalid("user_dn_template must contain {username}")
    _dn(text.replace("{username}", "x"))
    return text


def _filter(*placeholders: str) -> Any:
    """A valid search filter using at least one of the placeholders."""

    def validate(value: Any) -> str:
        text = str(value).strip()
        if not any("{" + p + "}" in text for p in placeholders):
            raise vol.Invalid("the filter must contain " + " or ".join("{" + p + "}" for p in placeholders))
        sample = text
        for p in placeholders:
            sample = sample.replace("{" + p + "}", "x")
        try:
            parse_filter(sample, None, False, False, None, False)
        except (LDAPException, IndexError, ValueError) as err:
            raise vol.Invalid(f"{text!r} is not a valid LDAP filter: {err}") from err
        return text

    return validate


def _check_combinations(conf: dict[str, Any]) -> dict[str, Any]:
    """Keys that only make sense together, or never together."""
    if bool(conf.get("base_dn")) == bool(conf.get("user_dn_template")):
        raise vol.Invalid("set exactly one of base_dn (search, then bind) and user_dn_template (direct bind)")
    if conf.get("user_dn_template") and "user_filter" in conf:
        raise vol.Invalid("user_filter is used only with base_dn")
    if "bind_password" in conf and not conf.get("bind_dn"):
        raise vol.Invalid("bind_password needs bind_dn")
    if conf.get("bind_dn") and not conf.get("bind_password"):
        # A DN with an empty password is an unauthenticated bind: anonymous in disguise.
        raise vol.Invalid("bind_dn needs a non-empty bind_password (leave both out for anonymous searches)")
    if conf.get("group_base_dn") and conf.get("group_attribute"):
        raise vol.Invalid("set group_base_dn or group_attribute, not both")
    if "group_filter" in conf and not conf.get("group_base_dn"):
        raise vol.Invalid("group_filter is used only with group_base_dn")
    if GroupMapping(conf).in_use and not (conf.get("group_base_dn") or conf.get("group_attribute")):
        raise vol.Invalid("group lists need group_base_dn or group_attribute to find a user's groups")
    conf.setdefault("user_filter", DEFAULT_USER_FILTER)
    conf.setdefault("group_filter", DEFAULT_GROUP_FILTER)
    return conf


_ATTRIBUTE = vol.All(str, vol.Match(r"^[A-Za-z][A-Za-z0-9-]*$|^[0-9]+(\.[0-9]+)+$", msg="not an attribute name"))

CONFIG_SCHEMA = vol.All(
    AuthProvider.CONFIG_SCHEMA.extend(
        {
            vol.Required("url"): _urls,
            vol.Optional("start_tls", default=False): bool,
            vol.Optional("ca_file"): vol.All(str, vol.Length(min=1)),
            vol.Optional("verify_ssl", default=True): bool,
            vol.Optional("timeout", default=5): vol.All(
                vol.Coerce(float), vol.Range(min=0, min_included=False, max=300)
            ),
            vol.Optional("bind_dn"): _dn,
            vol.Optional("bind_password"): str,
            vol.Optional("base_dn"): _dn,
            vol.Optional("user_filter"): _filter("username"),
            vol.Optional("search_scope", default="subtree"): vol.In(sorted(SCOPES)),
            vol.Optional("user_dn_template"): _dn_template,
            vol.Optional("username_attribute", default="uid"): _ATTRIBUTE,
            vol.Optional("name_attribute", default="cn"): _ATTRIBUTE,
            vol.Optional("group_base_dn"): _dn,
            vol.Optional("group_filter"): _filter("dn", "username"),
            vol.Optional("group_attribute"): _ATTRIBUTE,
            **GroupMapping.schema(_dn),
            vol.Optional("pool_size", default=4): vol.All(int, vol.Range(min=0, max=64)),
            vol.Optional("recheck_interval", default=60): vol.All(vol.Coerce(float), vol.Range(min=0, max=3600)),
        },
        extra=vol.PREVENT_EXTRA,
    ),
    _check_combinations,
)


# RFC 3454 table B.1: SASLprep (RFC 4013) maps these to nothing before a simple bind.
_MAPPED_TO_NOTHING = dict.fromkeys(
    [0x00AD, 0x034F, 0x1806, 0x180B, 0x180C, 0x180D, 0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF, *range(0xFE00, 0xFE10)]
)


def is_blank_password(password: str) -> bool:
    """Whether a password would reach the server as nothing (an unauthenticated bind on some servers)."""
    return not password.translate(_MAPPED_TO_NOTHING).strip()


def normalize_username(username: str) -> str:
    """How usernames compare: case-insensitively, as directories match uid."""
    return username.strip().casefold()


class LdapAuthProvider(AuthProvider):
    """Logins checked against an LDAP directory."""

    TYPE = "ldap"
    DEFAULT_TITLE = "LDAP"
    CONFIG_SCHEMA = CONFIG_SCHEMA

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Set up the directory client; nothing connects before the first login."""
        super().__init__(*args, **kwargs)
        self.directory = Directory(self.config)
        # Bounds both the executor threads and the connections in use at once.
        self._slots = asyncio.Semaphore(max(1, self.config["pool_size"] or 4))
        self._recheck: OrderedDict[str, tuple[float, bool]] = OrderedDict()

    async def async_initialize(self) -> None:
        """Warn about configurations that weaken security, at every start."""
        urls = ", ".join(self.config["url"])
        if not self.config["verify_ssl"]:
            _LOGGER.warning(
                "verify_ssl is false for the LDAP server %s: its certificate is not checked, "
                "so anyone on the network path can read passwords",
                urls,
            )
        ca_file = self.config.get("ca_file")
        if ca_file and self.config["verify_ssl"] and not os.path.isfile(ca_file):
            _LOGGER.error("The LDAP ca_file %s does not exist: every LDAP login will fail until it does", ca_file)
        if not self.config["start_tls"]:
            for spec in self.directory.servers:
                if not spec.use_ssl and not is_loopback(spec.host):
                    _LOGGER.warning(
                        "Passwords travel in clear text to the LDAP server %s: use ldaps:// or start_tls", spec.url
                    )

    async def async_shutdown(self) -> None:
        """Close the pooled connections."""
        await self.auth.async_add_executor_job(self.directory.close)

    async def _run(self, func: Any, *args: Any) -> Any:
        """A blocking directory call in the executor, a bounded number at once."""
        async with self._slots:
            try:
                return await self.auth.async_add_executor_job(func, *args)
            except DirectoryUnavailable as err:
                _LOGGER.error("LDAP directory unavailable: %s", err)
                raise ProviderUnavailableError(str(err)) from err

    async def async_login_flow(self, context: dict[str, Any]) -> LoginFlow:
        """A username/password form."""
        return LdapLoginFlow(self)

    async def async_authenticate(self, username: str, password: str) -> Identity:
        """Check a login against the directory (InvalidAuthError, or ProviderUnavailableError when it is down)."""
        username = username.strip()
        # An empty password is an unauthenticated bind, which some servers accept: never ask.
        if not username or is_blank_password(password) or len(username) > MAX_USERNAME or len(password) > MAX_PASSWORD:
            raise InvalidAuthError
        identity: Identity = await self._run(self.directory.authenticate, username, password)
        self._remember(identity.username, True)
        return identity

    def _remember(self, username: str, ok: bool) -> None:
        """Cache a re-check answer for recheck_interval seconds."""
        key = normalize_username(username)
        self._recheck[key] = (time.monotonic() + self.config["recheck_interval"], ok)
        self._recheck.move_to_end(key)
        while len(self._recheck) > MAX_RECHECK_CACHE:
            self._recheck.popitem(last=False)

    async def async_validate_refresh_token(self, refresh_token: RefreshToken, remote_ip: str | None = None) -> None:
        """Only users still in the directory (and in a required group) get new access tokens."""
        credential = refresh_token.credential
        if credential is None:
            return
        username = str(credential.data.get("username", ""))
        if not username.strip():
            raise InvalidAuthError("Credentials without a username")
        cached = self._recheck.get(normalize_username(username))
        if cached is not None and cached[0] > time.monotonic():
            if not cached[1]:
                raise InvalidAuthError("User no longer allowed by the directory")
            return
        try:
            await self._run(self.directory.lookup, username)
        except InvalidAuthError:
            self._remember(username, False)
            raise
        except ProviderUnavailableError as err:
            # Not cached: the next refresh asks again.
            raise InvalidAuthError("The directory cannot confirm the user") from err
        self._remember(username, True)

    def credential_key(self, data: dict[str, Any]) -> str:
        """Credentials match case-insensitively, as the directory does."""
        return normalize_username(str(data.get("username", "")))

    def credential_data(self, flow_result: dict[str, Any]) -> dict[str, Any]:
        """Credentials carry the entry's own username (its username_attribute)."""
        return {"username": flow_result["username"]}

    async def async_user_meta_for_credentials(self, credentials: Credentials) -> UserMeta:
        """Name and group from the directory; without a mapped group, system-users (never admin by default)."""
        identity = credentials.meta if isinstance(credentials.meta, Identity) else None
        if identity is None:
            try:
                identity = await self._run(self.directory.lookup, credentials.data["username"])
            except (InvalidAuthError, ProviderUnavailableError):
                return UserMeta(name=credentials.data["username"], is_active=True)
        return UserMeta(name=identity.name or identity.username, is_active=True, group=identity.group)


class LdapLoginFlow(UsernamePasswordLoginFlow[LdapAuthProvider]):
    """Ask for username and password."""

    async def async_check_login(self, username: str, password: str) -> dict[str, Any]:
        """Check the login against the directory; the result carries the entry's own username."""
        provider = self.provider
        identity = await provider.async_authenticate(username, password)
        return {"username": identity.username, "identity": identity}


@hookimpl
def opp_auth_register_auth_providers(register: Any) -> None:
    """Ship the ldap provider."""
    register(LdapAuthProvider)
