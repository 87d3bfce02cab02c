"""Log in as the user a trusted reverse proxy names in a header (type ``trusted_header``).

Forward-authentication proxies (Authelia, Authentik, oauth2-proxy, nginx with
``auth_basic`` or ``auth_request``) authenticate the person and pass the
username, display name and groups on in request headers. This provider's login
flow takes them from the request that starts the flow, and only when that
request's direct peer (the TCP connection, not ``X-Forwarded-For``) is one of
``http: trusted_proxies``. From any other peer, or with the username header
missing, empty or repeated, the flow offers nothing (``abort`` ``not_allowed``).

The username is normalised like the local provider's (stripped, casefolded)
and refused when it holds an unsafe character (``is_safe_username``). Groups
map to opp-auth's groups like the LDAP provider's (``admin_groups``,
``user_groups``, ``read_only_groups`` when the user is created; ``required_groups``
at every login). MFA still applies: a user with a module enrolled is asked for
it after the proxy's word.

The login flow is shared (``SHARED_STATE``): with several servers on one database
its MFA steps may reach any server. The proxy's word is read from the request that
starts the flow and is never stored; another server rebuilds the flow only for an
MFA step, from the user and this provider's credentials of that user.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from typing import Any

import voluptuous as vol

from opp_auth import (
    AuthProvider,
    Credentials,
    FlowResult,
    GroupMapping,
    LoginFlow,
    User,
    UserMeta,
    hookimpl,
    is_safe_username,
)

_LOGGER = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# A header field name is an RFC 9110 token.
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
MAX_USERNAME = 256
MAX_NAME = 256
MAX_GROUPS = 256
MAX_GROUP = 512

NOT_ALLOWED = "not_allowed"


def _header_name(value: Any) -> str:
    """A header field name (a token), compared case-insensitively."""
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise vol.Invalid(f"{value!r} is not a header name (letters, digits and -, e.g. Remote-User)")
    return value


CONFIG_SCHEMA = AuthProvider.CONFIG_SCHEMA.extend(
    {
        vol.Optional("username_header", default="Remote-User"): _header_name,
        vol.Optional("name_header", default="Remote-Name"): _header_name,
        vol.Optional("groups_header", default="Remote-Groups"): _header_name,
        vol.Optional("groups_separator", default=","): vol.All(str, vol.Length(min=1, max=8)),
        **GroupMapping.schema(),
        vol.Optional("create_users", default=True): bool,
    },
    extra=vol.PREVENT_EXTRA,
)


def parse_ip(value: Any) -> IPAddress | None:
    """An address, or None when unknown or unparsable (IPv4-mapped IPv6 becomes IPv4)."""
    if value is None:
        return None
    try:
        ip = ipaddress.ip_address(str(value).split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def normalize_username(username: str) -> str:
    """As the local provider compares usernames: stripped and casefolded."""
    return username.strip().casefold()


class Identity:
    """What the proxy said about the person (never stored; rides on new credentials as meta)."""

    def __init__(self, username: str, name: str | None, groups: set[str], group: str) -> None:
        """Keep the proxy's word."""
        self.username = username
        self.name = name
        self.groups = groups
        self.group = group


def _single(headers: Any, name: str) -> str | None:
    """The one value of a header; None when absent or repeated (a repeated header is never trusted)."""
    if headers is None:
        return None
    try:
        values = headers.getall(name, [])
    except AttributeError:  # a plain mapping (another transport): one value at most
        value = headers.get(name)
        values = [] if value is None else [value]
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    return values[0]


class TrustedHeaderAuthProvider(AuthProvider):
    """Log in as the user a trusted reverse proxy names."""

    TYPE = "trusted_header"
    DEFAULT_TITLE = "Single sign-on (proxy)"
    CONFIG_SCHEMA = CONFIG_SCHEMA

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Read the group mapping."""
        super().__init__(*args, **kwargs)
        self.group_mapping = GroupMapping(self.config)

    def _trusted_proxies(self) -> list[IPNetwork]:
        """http: trusted_proxies (ip_network objects once validated)."""
        networks = []
        for value in self.auth.http_config.get("trusted_proxies") or []:
            try:
                networks.append(ipaddress.ip_network(value, strict=False))
            except (TypeError, ValueError):
                continue
        return networks

    async def async_initialize(self) -> None:
        """Say at start-up when nothing can ever log in."""
        if not self._trusted_proxies():
            _LOGGER.warning(
                "trusted_header provider: http: trusted_proxies is empty, so no request is trusted and nobody "
                "can log in with it; list the reverse proxy's address there"
            )

    def is_trusted_peer(self, peer: Any) -> bool:
        """Whether the direct peer of a connection is one of http: trusted_proxies."""
        ip = parse_ip(peer)
        return ip is not None and any(ip in network for network in self._trusted_proxies())

    def identity_from(self, peer: Any, headers: Any) -> Identity | str:
        """The person the proxy names, or why the request is refused (a sentence for the log)."""
        if not self.is_trusted_peer(peer):
            return f"direct peer {peer} is not in http: trusted_proxies"
        raw = _single(headers, self.config["username_header"])
        if raw is None:
            return f"header {self.config['username_header']} absent or repeated"
        # Checked before normalising: strip() would hide a line break or separator the proxy passed on.
        if not is_safe_username(raw):
            return f"header {self.config['username_header']} holds an unsafe character"
        username = normalize_username(raw)
        if not username:
            return f"header {self.config['username_header']} empty"
        if len(username) > MAX_USERNAME:
            return f"header {self.config['username_header']} holds no acceptable username"
        name = _single(headers, self.config["name_header"])
        if name is not None:
            name = name.strip()
            if not name or len(name) > MAX_NAME or not is_safe_username(name):
                name = None
        groups: set[str] = set()
        groups_raw = _single(headers, self.config["groups_header"])
        if groups_raw is not None:
            parts = [g.strip() for g in groups_raw.split(self.config["groups_separator"])]
            groups = {g for g in parts[:MAX_GROUPS] if g and len(g) <= MAX_GROUP}
        if not self.group_mapping.allows(groups):
            return f"user {username!r} is in none of the required_groups"
        return Identity(username, name, groups, self.group_mapping.group_for(groups))

    async def async_login_flow(self, context: dict[str, Any]) -> LoginFlow:
        """Read the proxy's word now: the engine keeps the headers only for the first step."""
        return TrustedHeaderLoginFlow(self, self.identity_from(context.get("peer_address"), context.get("headers")))

    def credential_key(self, data: dict[str, Any]) -> str:
        """Credentials match by the normalised username."""
        return normalize_username(str(data.get("username", "")))

    def credential_data(self, flow_result: dict[str, Any]) -> dict[str, Any]:
        """Credentials carry the normalised username."""
        return {"username": flow_result["username"]}

    async def async_user_meta_for_credentials(self, credentials: Credentials) -> UserMeta:
        """Name and group from the proxy's headers; without a mapped group, system-users."""
        identity = credentials.meta if isinstance(credentials.meta, Identity) else None
        if identity is None:
            return UserMeta(name=credentials.data["username"], is_active=True)
        return UserMeta(name=identity.name or identity.username, is_active=True, group=identity.group)


class TrustedHeaderLoginFlow(LoginFlow[TrustedHeaderAuthProvider]):
    """No form: the proxy's word finishes the step, or the flow offers nothing."""

    SHARED_STATE = True

    def __init__(self, auth_provider: TrustedHeaderAuthProvider, identity: Identity | str) -> None:
        """Remember what the starting request said."""
        super().__init__(auth_provider)
        self._identity = identity

    def dump_state(self) -> dict[str, Any]:
        """The core's state only: the proxy's word served the first step and is not kept."""
        return super().dump_state()

    def load_state(self, state: dict[str, Any], credentials: Credentials | None, user: User | None) -> None:
        """An MFA step on another server: the user and their credentials of this provider (ValueError: refused).

        The flow never rests at its first step (it has no form), so a stored one is past the
        proxy's word: it names a user and this provider's credentials linked to that user.
        """
        provider = self.provider
        if user is None or credentials is None or credentials.provider_key != provider.key:
            raise ValueError("trusted_header flow: a stored flow is at an MFA step of this provider's user")
        linked = provider.auth.user_for_credentials(credentials)
        if linked is None or linked.id != user.id:
            raise ValueError("trusted_header flow: the credentials are not that user's")
        super().load_state(state, credentials, user)
        self._identity = "the proxy's word is read at the first step only"

    async def async_step_init(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        """Finish with the named user, or abort not_allowed."""
        identity = self._identity
        provider = self.provider
        if not isinstance(identity, Identity):
            _LOGGER.info("trusted_header login refused: %s", identity)
            return self.async_abort(reason=NOT_ALLOWED)
        if not provider.config["create_users"]:
            existing = provider.async_find_credentials({"username": identity.username})
            if existing is None or provider.auth.user_for_credentials(existing) is None:
                _LOGGER.info("trusted_header login refused: no user %r and create_users is false", identity.username)
                return self.async_abort(reason=NOT_ALLOWED)
        return await self.async_finish({"username": identity.username, "identity": identity})


@hookimpl
def opp_auth_register_auth_providers(register: Any) -> None:
    """Ship the trusted_header provider."""
    register(TrustedHeaderAuthProvider)
