"""Passwordless login from trusted networks (type ``trusted_networks``, SPEC 3.4, G7 fixed).

A client whose address (after reverse-proxy handling) lies in one of the
configured networks picks one of the existing users and is logged in as that
user. The provider never creates users. Tokens it issued are re-checked at
every access-token mint, so they stop working from outside the networks.

The login flow is shared (``SHARED_STATE``): with several servers on one database
any server may take its next step. Nothing of the choice is stored: the client
address comes from the flow's context (the engine refuses a step from another
address), the users on offer are worked out again from the configuration at each
step, and a stored state naming a user that address may not pick is refused.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Any

import voluptuous as vol

from opp_auth import (
    AuthProvider,
    Credentials,
    FlowResult,
    InvalidAuthError,
    LoginFlow,
    RefreshToken,
    User,
    UserMeta,
    hookimpl,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SYSTEM_GROUP_IDS = (UserMeta.GROUP_ADMIN, UserMeta.GROUP_USER, UserMeta.GROUP_READ_ONLY)
_UUID4_HEX = re.compile(r"^[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}$")

UNKNOWN_IP = "Unknown remote ip can't be used for trusted network provider."
NOT_CONFIGURED = "trusted_networks is not configured"
NOT_TRUSTED = "Not in trusted_networks"
PROXY_ADDRESS = "A trusted proxy's own address is not a trusted client"


def _network(value: Any) -> IPNetwork:
    """An IPv4/IPv6 address or CIDR network."""
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return value
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError as err:
        raise vol.Invalid(f"'{value}' is not an IP address or network") from err


def _ensure_list(value: Any) -> list[Any]:
    """One value or a list of them."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _user_id(value: Any) -> str:
    """A user id: 32 hex digits of a uuid4."""
    if isinstance(value, str) and _UUID4_HEX.match(value.lower()):
        return value.lower()
    raise vol.Invalid(f"'{value}' is not a user id (a uuid4 in hex) or a {{group: <group id>}} entry")


def _group_id(value: Any) -> str:
    """A group id: a system group (system-admin, system-users, system-read-only) or a uuid4 hex."""
    if isinstance(value, str):
        if value in SYSTEM_GROUP_IDS:
            return value
        if _UUID4_HEX.match(value.lower()):
            return value.lower()
    raise vol.Invalid(f"'{value}' is not a group id (one of {', '.join(SYSTEM_GROUP_IDS)}, or a uuid4 in hex)")


def _trusted_entry(value: Any) -> str | dict[str, list[str]]:
    """A user id, or {"group": <group id or list of them>} (normalised to a list)."""
    if isinstance(value, dict):
        if set(value) != {"group"}:
            raise vol.Invalid("a trusted_users entry is a user id or {group: <group id>}")
        groups = _ensure_list(value["group"])
        if not groups:
            raise vol.Invalid("a group entry needs at least one group id")
        return {"group": [_group_id(g) for g in groups]}
    return _user_id(value)


def _trusted_users(value: Any) -> dict[IPNetwork, list[str | dict[str, list[str]]]]:
    """network -> one entry or a list of them, in configuration order; a network may appear once."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise vol.Invalid("expected a mapping of network: user ids or {group: <group id>} entries")
    result: dict[IPNetwork, list[str | dict[str, list[str]]]] = {}
    for key, entries in value.items():
        try:
            network = _network(key)
        except vol.Invalid as err:
            raise vol.Invalid(err.msg, path=[key]) from None
        if network in result:
            raise vol.Invalid(f"network {network} is listed twice", path=[key])
        checked = []
        for index, entry in enumerate(_ensure_list(entries)):
            try:
                checked.append(_trusted_entry(entry))
            except vol.Invalid as err:
                raise vol.Invalid(err.msg, path=[key, index]) from None
        result[network] = checked
    return result


CONFIG_SCHEMA = AuthProvider.CONFIG_SCHEMA.extend(
    {
        vol.Required("trusted_networks"): vol.All(_ensure_list, [_network]),
        vol.Optional("trusted_users", default=dict): _trusted_users,
        vol.Optional("allow_bypass_login", default=False): bool,
    },
    extra=vol.PREVENT_EXTRA,
)


def parse_ip(value: Any) -> IPAddress | None:
    """A client address, or None when unknown or unparsable (IPv4-mapped IPv6 becomes IPv4)."""
    if value is None:
        return None
    try:
        ip = ipaddress.ip_address(str(value))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class UserSelect(vol.In):
    """Serialises as a select of [user_id, name] but accepts any string.

    The step checks the choice against the current candidates and answers
    invalid_auth, so a stale or forged choice is a failed login (counted like
    one) rather than a 400 "User input malformed".
    """

    def __call__(self, value: Any) -> str:
        """Any string; the step decides whether it is a candidate."""
        if not isinstance(value, str):
            raise vol.Invalid("expected a user id")
        return value


class TrustedNetworksAuthProvider(AuthProvider):
    """Log in without a password from trusted networks."""

    TYPE = "trusted_networks"
    CHECKS_EVERY_REQUEST = True
    DEFAULT_TITLE = "Trusted Networks"
    CONFIG_SCHEMA = CONFIG_SCHEMA
    SUPPORT_MFA = False

    @property
    def trusted_networks(self) -> list[IPNetwork]:
        """The configured networks."""
        return list(self.config.get("trusted_networks") or [])

    @property
    def trusted_users(self) -> dict[IPNetwork, list[Any]]:
        """network -> allowed user ids and {"group": [...]} entries."""
        return dict(self.config.get("trusted_users") or {})

    @functools.cached_property
    def trusted_proxies(self) -> list[IPNetwork]:
        """http: trusted_proxies; a proxy's own address is never a trusted client."""
        return [_network(p) for p in self.auth.http_config.get("trusted_proxies") or []]

    def refusal(self, ip: IPAddress | None) -> str | None:
        """Why a client address may not use this provider, or None when it may."""
        if ip is None:
            return UNKNOWN_IP
        networks = self.trusted_networks
        if not networks:
            return NOT_CONFIGURED
        if not any(ip in net for net in networks):
            return NOT_TRUSTED
        # A request that reaches us from a proxy without a usable X-Forwarded-For
        # carries the proxy's address: every client behind it would look trusted.
        if any(ip in net for net in self.trusted_proxies):
            return PROXY_ADDRESS
        return None

    def available_users(self, ip: IPAddress) -> dict[str, str | None]:
        """user id -> name of the users a client at ip may log in as, in store order."""
        users = [u for u in self.auth.users() if not u.system_generated and u.is_active]
        for network, entries in self.trusted_users.items():
            if ip not in network:
                continue
            user_ids = {e for e in entries if isinstance(e, str)}
            group_ids = {g for e in entries if isinstance(e, dict) for g in e["group"]}
            users = [u for u in users if u.id in user_ids or group_ids.intersection(u.group_ids)]
            break
        return {u.id: u.name for u in users}

    async def async_login_flow(self, context: dict[str, Any]) -> LoginFlow:
        """A user picker for the client address in the context."""
        return TrustedNetworksLoginFlow(self, parse_ip(context.get("ip_address")))

    def credential_data(self, flow_result: dict[str, Any]) -> dict[str, Any]:
        """Credentials name the chosen user."""
        return {"user_id": flow_result["user"]}

    async def async_get_or_create_credentials(self, flow_result: dict[str, Any]) -> Credentials:
        """This provider's credentials of an existing active person, linked to them at once."""
        user_id = flow_result.get("user")
        user = self.auth.get_user(user_id) if isinstance(user_id, str) else None
        if user is None or user.system_generated or not user.is_active:
            raise InvalidAuthError("invalid user")
        data = self.credential_data({"user": user.id})
        existing = self.async_find_credentials(data)
        if existing is not None:
            return existing
        credentials = self.async_create_credentials(data)
        await self.auth.async_link_user(user, credentials)
        return credentials

    async def async_user_meta_for_credentials(self, credentials: Credentials) -> UserMeta:
        """Never called: credentials are linked to an existing user when created."""
        raise InvalidAuthError("trusted_networks does not create users")

    def validate_access(self, refresh_token: RefreshToken, remote_ip: str | None) -> bool:
        """Access tokens work only from inside the trusted networks, on every request (G6)."""
        return self.refusal(parse_ip(remote_ip)) is None

    async def async_validate_refresh_token(self, refresh_token: RefreshToken, remote_ip: str | None = None) -> None:
        """Mint access tokens only for clients inside the trusted networks."""
        reason = self.refusal(parse_ip(remote_ip))
        if reason is not None:
            raise InvalidAuthError(reason)


class TrustedNetworksLoginFlow(LoginFlow[TrustedNetworksAuthProvider]):
    """Pick a user (or be logged in straight away when bypass is on and there is one)."""

    SHARED_STATE = True

    def __init__(self, auth_provider: TrustedNetworksAuthProvider, ip: IPAddress | None) -> None:
        """Remember the client address the flow was started from."""
        super().__init__(auth_provider)
        self._ip = ip

    def dump_state(self) -> dict[str, Any]:
        """The core's state and the address (a check only: on load it comes from the flow's context)."""
        return {**super().dump_state(), "ip": str(self._ip) if self._ip is not None else None}

    def load_state(self, state: dict[str, Any], credentials: Credentials | None, user: User | None) -> None:
        """Restore the MFA progress after checking it against what this address may do now (ValueError: refused).

        The address is the one of the flow's context (async_login_flow), never the stored one; the
        user must be one that address may pick now, with this provider's credentials of that user.
        """
        provider = self.provider
        if self._ip is None or state.get("ip") != str(self._ip) or provider.refusal(self._ip) is not None:
            raise ValueError("trusted_networks flow: the address is not the flow's, or no longer trusted")
        if user is not None or credentials is not None:
            if (
                user is None
                or credentials is None
                or user.id not in provider.available_users(self._ip)
                or credentials.provider_key != provider.key
                or credentials.data.get("user_id") != user.id
            ):
                raise ValueError("trusted_networks flow: a user this address may not log in as")
        super().load_state(state, credentials, user)

    def step_schema(self, step_id: str) -> vol.Schema | None:
        """The user picker, its choices worked out again; or an MFA step's form."""
        if step_id == "init":
            if self._ip is None:
                raise KeyError(step_id)
            return vol.Schema({vol.Required("user"): UserSelect(self.provider.available_users(self._ip))})
        return super().step_schema(step_id)

    async def async_step_init(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        """Refuse untrusted addresses; show or check the user choice."""
        provider = self.provider
        if self._ip is None or provider.refusal(self._ip) is not None:
            return self.async_abort(reason="not_allowed")
        candidates = provider.available_users(self._ip)
        errors: dict[str, str] | None = None
        if user_input is not None:
            if user_input.get("user") in candidates:
                return await self.async_finish({"user": user_input["user"]})
            errors = {"base": "invalid_auth"}
        elif provider.config.get("allow_bypass_login") and len(candidates) == 1:
            return await self.async_finish({"user": next(iter(candidates))})
        return self.async_show_form(
            step_id="init",
            data_schema=vol.Schema({vol.Required("user"): UserSelect(candidates)}),
            errors=errors,
        )


@hookimpl
def opp_auth_register_auth_providers(register: Any) -> None:
    """Ship the trusted_networks provider."""
    register(TrustedNetworksAuthProvider)
