"""The legacy shared API password (type ``legacy_api_password``, SPEC 3.3 and 6.4).

Everyone who knows the password logs in as one shared user. Requests may also
carry the password instead of a bearer token (``X-OPP-Access``/``X-HA-Access``
header, ``api_password`` query parameter, or HTTP Basic with user
``openpeerpower``); each path such a request reaches is logged once with the
nudge "You need to use a bearer token ..." (INFO when this provider is
configured, WARNING when it is not).

The login flow is shared (``SHARED_STATE``): with several servers on one database
any server may take its next step. Its state is the core's (the MFA progress),
never the password.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import weakref
from typing import TYPE_CHECKING, Any

import voluptuous as vol
from aiohttp import BasicAuth, hdrs

from opp_auth import (
    AuthProvider,
    Credentials,
    FlowResult,
    InvalidAuthError,
    LoginFlow,
    PluginContext,
    User,
    UserMeta,
    client_ip,
    hookimpl,
)

if TYPE_CHECKING:
    from aiohttp import web

# The logger name Open Peer Power used, which the seed documentation quotes.
_NUDGE_LOGGER = logging.getLogger("openpeerpower.components.http.auth")
_LOGGER = logging.getLogger(__name__)

TYPE = "legacy_api_password"
USER_NAME = "Legacy API password user"
HEADERS = ("X-OPP-Access", "X-HA-Access")
QUERY_PARAMETER = "api_password"
BASIC_USER = "openpeerpower"
MAX_NUDGED_PATHS = 1024
PASSWORD_SCHEMA = vol.Schema({vol.Required("password"): str})

_UUID4_HEX = re.compile(r"^[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}$")


def _group_id(value: Any) -> str:
    """A system group id or a uuid4-hex group id."""
    if isinstance(value, str) and (
        value in (UserMeta.GROUP_ADMIN, UserMeta.GROUP_USER, UserMeta.GROUP_READ_ONLY) or _UUID4_HEX.match(value)
    ):
        return value
    raise vol.Invalid(
        f"'{value}' is not a group id ({UserMeta.GROUP_USER}, {UserMeta.GROUP_READ_ONLY}, {UserMeta.GROUP_ADMIN} or a uuid4 in hex)"
    )


CONFIG_SCHEMA = AuthProvider.CONFIG_SCHEMA.extend(
    {
        vol.Required("api_password"): vol.All(vol.Coerce(str), vol.Length(min=1)),
        vol.Optional("group", default=UserMeta.GROUP_USER): _group_id,
    },
    extra=vol.PREVENT_EXTRA,
)


def passwords_match(given: str, expected: str) -> bool:
    """Constant-time comparison of the UTF-8 bytes."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


class LegacyApiPasswordAuthProvider(AuthProvider):
    """One shared password, one shared user."""

    TYPE = TYPE
    DEFAULT_TITLE = "Legacy API Password"
    CONFIG_SCHEMA = CONFIG_SCHEMA

    def __init__(self, auth: PluginContext, config: dict[str, Any]) -> None:
        """Keep the configuration; the lock makes the first request-login create one user only."""
        super().__init__(auth, config)
        self._user_lock = asyncio.Lock()
        self._pending: Credentials | None = None

    @property
    def api_password(self) -> str:
        """The configured password."""
        return str(self.config["api_password"])

    def check_password(self, password: str) -> bool:
        """Whether password is the API password."""
        return passwords_match(password, self.api_password)

    async def async_login_flow(self, context: dict[str, Any]) -> LoginFlow:
        """A password form."""
        return LegacyLoginFlow(self)

    def credential_data(self, flow_result: dict[str, Any]) -> dict[str, Any]:
        """Every login shares the same (empty) credential data."""
        return {}

    async def async_get_or_create_credentials(self, flow_result: dict[str, Any]) -> Credentials:
        """The one credential of this provider (first existing, else new)."""
        existing = await self.async_credentials()
        if existing:
            return existing[0]
        # Logins finished before the shared user exists must get the same object:
        # whichever is redeemed (or used by a request) first links it, the others
        # then find it linked instead of creating a second shared user.
        if self._pending is None or not self._pending.is_new:
            self._pending = self.async_create_credentials({})
        return self._pending

    async def async_user_meta_for_credentials(self, credentials: Credentials) -> UserMeta:
        """The shared user, in the configured group (system-users unless configured, G19)."""
        return UserMeta(name=USER_NAME, is_active=True, group=self.config.get("group", UserMeta.GROUP_USER))

    async def async_request_user(self) -> User | None:
        """The shared user for a request that carried the password, created on first use."""
        async with self._user_lock:
            credentials = await self.async_get_or_create_credentials({})
            try:
                return await self.auth.async_get_or_create_user(credentials)
            except InvalidAuthError as err:
                _LOGGER.error("Cannot find or create the legacy API password user: %s", err)
                return None


class LegacyLoginFlow(LoginFlow[LegacyApiPasswordAuthProvider]):
    """Ask for the API password."""

    SHARED_STATE = True

    def load_state(self, state: dict[str, Any], credentials: Credentials | None, user: User | None) -> None:
        """The core's state, if it names this provider's credentials of that user (ValueError: refused)."""
        if user is not None or credentials is not None:
            linked = self.provider.auth.user_for_credentials(credentials) if credentials is not None else None
            if (
                user is None
                or credentials is None
                or credentials.provider_key != self.provider.key
                or linked is None
                or linked.id != user.id
            ):
                raise ValueError("legacy_api_password flow: not this provider's credentials of that user")
        super().load_state(state, credentials, user)

    def step_schema(self, step_id: str) -> vol.Schema | None:
        """The password form, or an MFA step's."""
        if step_id == "init":
            return PASSWORD_SCHEMA
        return super().step_schema(step_id)

    async def async_step_init(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        """Show the form; check the password."""
        errors: dict[str, str] = {}
        if user_input is not None:
            if self.provider.check_password(user_input["password"]):
                return await self.async_finish({})
            errors["base"] = "invalid_auth"
        return self.async_show_form(step_id="init", data_schema=PASSWORD_SCHEMA, errors=errors)


class _Nudger:
    """Log the bearer-token nudge once per path, for a bounded number of paths."""

    def __init__(self) -> None:
        """No path seen yet."""
        self._paths: set[str] = set()
        self._full = False

    def nudge(self, path: str, remote: str | None, configured: bool) -> None:
        """Log once for path: INFO when legacy passwords are supported, else WARNING."""
        if path in self._paths:
            return
        level = logging.INFO if configured else logging.WARNING
        if len(self._paths) >= MAX_NUDGED_PATHS:
            # Paths are chosen by clients: stop remembering rather than grow without bound.
            if not self._full:
                self._full = True
                _NUDGE_LOGGER.log(
                    level,
                    "Legacy API passwords were sent to more than %d paths; not logging further paths",
                    MAX_NUDGED_PATHS,
                )
            return
        self._paths.add(path)
        _NUDGE_LOGGER.log(level, "You need to use a bearer token to access %s from %s", path, remote)


# One nudger per server (its PluginContext), so each server logs each path once.
_NUDGERS: weakref.WeakKeyDictionary[PluginContext, _Nudger] = weakref.WeakKeyDictionary()


def supplied_passwords(request: web.Request) -> list[str]:
    """The legacy passwords a request carries (header, query, Basic with user openpeerpower)."""
    found = [request.headers[name] for name in HEADERS if name in request.headers]
    if QUERY_PARAMETER in request.query:
        found.extend(request.query.getall(QUERY_PARAMETER))
    authorization = request.headers.get(hdrs.AUTHORIZATION)
    if authorization is not None and authorization[:6].lower() == "basic ":
        try:
            basic = BasicAuth.decode(authorization, encoding="utf-8")
        except ValueError:
            basic = None
        if basic is not None and basic.login == BASIC_USER:
            found.append(basic.password)
    return found


async def _authenticate(providers: list[LegacyApiPasswordAuthProvider], passwords: list[str]) -> User | bool:
    """The shared user when every supplied password is right, else False."""
    for provider in providers:
        # Check every supplied value (no early exit), so timing reveals nothing.
        results = [provider.check_password(p) for p in passwords]
        if all(results):
            user = await provider.async_request_user()
            if user is None or not user.is_active:
                return False
            return user
    return False


@hookimpl
def opp_auth_authenticate_request(request: web.Request, auth: PluginContext) -> Any:
    """Accept the legacy password when this provider is configured; nudge towards bearer tokens."""
    passwords = supplied_passwords(request)
    if not passwords:
        return None
    providers = [p for p in auth.get_auth_providers(TYPE) if isinstance(p, LegacyApiPasswordAuthProvider)]
    nudger = _NUDGERS.get(auth)
    if nudger is None:
        nudger = _NUDGERS[auth] = _Nudger()
    nudger.nudge(request.path, client_ip(request), bool(providers))
    if not providers:
        return None
    return _authenticate(providers, passwords)


@hookimpl
def opp_auth_register_auth_providers(register: Any) -> None:
    """Ship the legacy_api_password provider."""
    register(LegacyApiPasswordAuthProvider)
