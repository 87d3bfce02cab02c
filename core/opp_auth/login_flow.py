"""The login engine: a provider's own step, then the one MFA decision and its steps, then an authorization code.

Every way in (the HTTP login flow, onboarding, any future transport) walks a
login the same way through :class:`LoginFlowManager`:

- :meth:`LoginFlowManager.async_start_login` and :meth:`~LoginFlowManager.async_login_step`
  check the client and the address, throttle (``events.login_retry_after``), run
  the step, report failures and successes to the plugins, and turn a finished
  login into a one-time authorization code (``codes.py``) for the flow's purpose
  (``authorize`` or ``link_user``). Transports only translate their wire format.
- :func:`async_required_mfa` is the one MFA decision: a user with any MFA module
  enrolled passes one of them before any code exists, whatever the provider
  (``SUPPORT_MFA`` does not skip it), the flow type (``link_user`` included) or
  the way the flow finished (a provider step, a trusted-network bypass, a
  plugin returning ``Credentials``). A login provider an MFA module adds (a
  passkey login) counts as that module passed. ``async_finish_flow`` applies it to every
  finished step; :meth:`LoginFlowManager.async_code_for_credentials` applies it
  to codes issued outside a flow (onboarding).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
import unicodedata
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import voluptuous as vol

from .codes import AUTHORIZE, LINK_USER, PURPOSES, AuthorizationCodes, user_meta_from_value
from .ephemeral import EphemeralState
from .events import LOGIN_SUCCEEDED
from .events import login_name as _login_name
from .flow import (
    RESULT_TYPE_ABORT,
    RESULT_TYPE_CREATE_ENTRY,
    FlowError,
    FlowHandler,
    FlowManager,
    FlowResult,
    TooManyFlows,
    UnknownFlow,
    UnknownHandler,
)
from .mfa import MfaAbort
from .models import Credentials, RefreshToken, User, UserMeta
from .network import is_local_address
from .providers import AuthProvider, InvalidAuthError, ProviderUnavailableError
from .shares import AddressShares, Full, KnownAddresses
from .throttle import account_key

if TYPE_CHECKING:
    from .context import PluginContext
    from .events import Events
    from .registry import Registry
    from .users import Users

_LOGGER = logging.getLogger(__name__)
_P = TypeVar("_P", bound=AuthProvider)

MFA_SESSION_EXPIRATION = 300.0
MAX_FLOWS = 1000
MAX_FLOWS_PER_ADDRESS = 30
MAX_FLOWS_PER_PREFIX = 100
USERNAME_PASSWORD_SCHEMA = vol.Schema({vol.Required("username"): str, vol.Required("password"): str})
# Never part of a username: control characters (Cc: NUL, CR, LF, NEL...), format characters
# (Cf: bidi overrides, zero-width characters, BOM), line and paragraph separators, surrogates.
# Such a name can break a line, a log entry or another program's output, or look like someone else.
UNSAFE_USERNAME_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def is_safe_username(username: str) -> bool:
    """Return False when username holds a character of UNSAFE_USERNAME_CATEGORIES."""
    return not any(unicodedata.category(char) in UNSAFE_USERNAME_CATEGORIES for char in username)


# The username of a flow's first step: the account its later (MFA) steps are throttled as.
THROTTLE_USERNAME = "throttle_username"
MFA_STEPS = frozenset({"select_mfa_module", "mfa"})
FAILURE_REASONS = frozenset({"invalid_auth", "invalid_code"})
# Step errors that are refusals all the same, though no guess the throttles and bans should count.
REFUSAL_REASONS = frozenset({"cannot_connect", "invalid_username"})
# Set on a finished step's result by async_finish_flow (the module passed, if any); _outcome takes it off.
MFA_MODULE_KEY = "_mfa_module"
# Shared flows: how long one step may hold a flow (a server that dies mid-step frees it then), and
# the attributes of a LoginFlow that dump_state covers (a flow with others stays on its server).
STEP_LEASE = 10.0
_FLOW_ATTRS = frozenset(
    {
        "_auth_provider",
        "_auth_module_id",
        "_auth_manager",
        "available_mfa_modules",
        "invalid_mfa_times",
        "user",
        "credential",
        "_mfa_passed",
        "flow_id",
        "handler",
        "context",
        "cur_step",
        "created",
        "deadline",
    }
)
_STEP_KEYS = ("type", "step_id", "errors", "description_placeholders", "last_step")
FLOWS_TOPIC = "login_flows"


class InvalidClient(FlowError):
    """The client id (or its redirect uri) is refused, or is not the one that started the flow."""


class AddressChanged(FlowError):
    """A step came from another address than the one that started the flow."""


class LoginThrottled(FlowError):
    """The address and account failed too often; retry_after seconds to wait."""

    def __init__(self, retry_after: float) -> None:
        """Keep the wait."""
        super().__init__(f"retry after {retry_after} s")
        self.retry_after = retry_after


class MfaRequired(FlowError):
    """A code was asked outside a login flow for a user who has MFA enrolled."""


def mfa_required_from(policy: str, ip_address: str | None) -> bool:
    """Whether the mfa_required policy asks enrolled users for a second factor at a login from ip_address.

    ``everywhere`` (the default) and an unknown address: yes; ``never``: no;
    ``outside_local_network``: only when the address is not loopback,
    private or link-local (after the http block's proxy handling).
    """
    if policy == "never":
        return False
    if policy == "outside_local_network":
        return not is_local_address(ip_address)
    return True


async def async_required_mfa(
    users: Users, policy: str, credentials: Credentials, ip_address: str | None = None
) -> tuple[User | None, dict[str, str]]:
    """THE MFA decision: the user behind credentials and the modules (id -> name) of which one must be passed.

    No user yet (new credentials) means no module. A module that fails to say
    whether the user is enrolled raises: the caller's flow aborts (fail closed).
    The ``mfa_required`` policy (:func:`mfa_required_from`) may waive the
    factor for a login from ``ip_address`` (None: unknown, never waived by
    ``outside_local_network``).
    """
    user = users.store.user_for_credentials(credentials)
    if user is None or not mfa_required_from(policy, ip_address):
        return user, {}
    return user, await users.async_get_enabled_mfa(user)


class LoginFlow(FlowHandler, Generic[_P]):
    """A provider's login flow; implement async_step_init and call async_finish with the result.

    The MFA steps (``select_mfa_module`` and ``mfa``) are inherited: a provider
    writes only its first step.
    """

    def __init__(self, auth_provider: _P) -> None:
        """Start a login with this provider."""
        self._auth_provider: _P = auth_provider
        self._auth_module_id: str | None = None
        self._auth_manager: PluginContext = auth_provider.auth
        self.available_mfa_modules: dict[str, str] = {}
        self.invalid_mfa_times = 0
        self.user: User | None = None
        self.credential: Credentials | None = None
        # (user id, module id) of the MFA module this flow passed; only async_step_mfa sets it.
        self._mfa_passed: tuple[str, str] | None = None

    SHARED_STATE: ClassVar[bool] = False
    """True when :meth:`dump_state` holds everything a step of this flow needs, so with a shared
    ephemeral state (several servers) its next step may run on another server. A flow that keeps
    other attributes of its own must extend dump_state, load_state and step_schema; otherwise it
    stays on the server that started it."""

    @property
    def provider(self) -> _P:
        """The provider this login is with; ``class MyFlow(LoginFlow[MyProvider])`` types it as yours."""
        return self._auth_provider

    def dump_state(self) -> dict[str, Any]:
        """The flow's own state as JSON: the MFA progress and whose login it is (never a password)."""
        from .codes import credentials_value

        return {
            "mfa_module": self._auth_module_id,
            "mfa_modules": dict(self.available_mfa_modules),
            "invalid_mfa_times": self.invalid_mfa_times,
            "user_id": self.user.id if self.user is not None else None,
            "credentials": credentials_value(self.credential) if self.credential is not None else None,
            "mfa_passed": list(self._mfa_passed) if self._mfa_passed is not None else None,
        }

    def load_state(self, state: dict[str, Any], credentials: Credentials | None, user: User | None) -> None:
        """Restore what dump_state gave (credentials and user: those it names, looked up again).

        ValueError for a state naming a passed MFA step: the step that passes it finishes the flow, so
        no stored flow has one (a forged row must not skip the second factor).
        """
        if state.get("mfa_passed") is not None:
            raise ValueError("a stored login flow never has passed its MFA step")
        module = state.get("mfa_module")
        self._auth_module_id = module if isinstance(module, str) else None
        modules = state.get("mfa_modules")
        self.available_mfa_modules = {str(k): str(v) for k, v in modules.items()} if isinstance(modules, dict) else {}
        times = state.get("invalid_mfa_times")
        self.invalid_mfa_times = times if isinstance(times, int) and not isinstance(times, bool) else 0
        self.user = user
        self.credential = credentials
        passed = state.get("mfa_passed")
        self._mfa_passed = (
            (passed[0], passed[1])
            if isinstance(passed, list) and len(passed) == 2 and all(isinstance(p, str) for p in passed)
            else None
        )

    def step_schema(self, step_id: str) -> vol.Schema | None:
        """The input schema of step_id's form, rebuilt on another server (KeyError: a step it cannot rebuild)."""
        if step_id == "select_mfa_module":
            return vol.Schema({vol.Required("multi_factor_auth_module"): vol.In(self.available_mfa_modules)})
        if step_id == "mfa":
            module = self._auth_manager.get_auth_mfa_module(self._auth_module_id or "")
            if module is None:
                raise KeyError(step_id)
            return module.input_schema
        raise KeyError(step_id)

    def mfa_passed(self, user: User, modules: dict[str, str]) -> bool:
        """Whether this flow passed one of the modules for this user."""
        return self._mfa_passed is not None and self._mfa_passed[0] == user.id and self._mfa_passed[1] in modules

    async def async_step_init(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        """The provider's own first step."""
        raise NotImplementedError

    async def async_step_select_mfa_module(self, user_input: dict[str, str] | None = None) -> FlowResult:
        """Let the user pick one of their MFA modules (skipped when there is only one)."""
        errors: dict[str, str] = {}
        if user_input is not None:
            auth_module = user_input.get("multi_factor_auth_module")
            if auth_module in self.available_mfa_modules:
                self._auth_module_id = auth_module
                return await self.async_step_mfa()
            errors["base"] = "invalid_auth_module"
        if len(self.available_mfa_modules) == 1:
            self._auth_module_id = next(iter(self.available_mfa_modules))
            return await self.async_step_mfa()
        return self.async_show_form(
            step_id="select_mfa_module",
            data_schema=vol.Schema({vol.Required("multi_factor_auth_module"): vol.In(self.available_mfa_modules)}),
            errors=errors,
        )

    async def async_step_mfa(self, user_input: dict[str, str] | None = None) -> FlowResult:
        """Ask for and check the code of the chosen MFA module."""
        assert self.user is not None and self._auth_module_id is not None
        errors: dict[str, str] = {}
        auth_module = self._auth_manager.get_auth_mfa_module(self._auth_module_id)
        if auth_module is None:
            return await self.async_step_select_mfa_module(user_input={})
        if user_input is None:
            try:
                await auth_module.async_initialize_login_mfa_step(self.user.id)
            except MfaAbort as err:
                return self.async_abort(reason=err.reason)
            except Exception:
                _LOGGER.exception("Error initializing MFA step")
                return self.async_abort(reason="unknown_error")
        if user_input is not None:
            if time.monotonic() > self.created + MFA_SESSION_EXPIRATION:
                return self.async_abort(reason="login_expired")
            valid = await auth_module.async_validate_in_flow(self.user.id, user_input, self.flow_id)
            if valid is True:
                self._mfa_passed = (self.user.id, auth_module.id)
                self._auth_manager.note_event("mfa_used", user_id=self.user.id, mfa_module=auth_module.id)
                return await self.async_finish(self.credential)
            errors["base"] = "invalid_code"
            self.invalid_mfa_times += 1
            if self.invalid_mfa_times >= auth_module.MAX_RETRY_TIME > 0:
                return self.async_abort(reason="too_many_retry")
            try:
                await auth_module.async_after_failed_validation(self.user.id)
            except MfaAbort as err:
                return self.async_abort(reason=err.reason)
            except Exception:
                _LOGGER.exception("MFA module %s failed after a wrong code; login refused", auth_module.id)
                return self.async_abort(reason="unknown_error")
        placeholders: dict[str, Any] = {"mfa_module_name": auth_module.name, "mfa_module_id": auth_module.id}
        challenge = await auth_module.async_login_challenge(self.user.id, self.flow_id)
        if challenge is not None:
            placeholders["challenge"] = challenge
        return self.async_show_form(
            step_id="mfa", data_schema=auth_module.input_schema, description_placeholders=placeholders, errors=errors
        )

    async def async_finish(self, flow_result: Any) -> FlowResult:
        """The provider step (or the MFA step) succeeded."""
        return self.async_create_entry(title=self._auth_provider.name, data=flow_result)


class UsernamePasswordLoginFlow(LoginFlow[_P]):
    """A login flow whose one step is a username/password form.

    Return it (or a subclass) from ``async_login_flow``. By default the pair goes
    to the provider's ``async_validate_login(username, password)`` (coroutine or
    plain function) and the result is ``{"username": username}`` as typed.
    Override :meth:`async_check_login` to check differently or return another
    result (what ``credential_data`` receives; never the password); raising
    ``InvalidAuthError`` shows ``invalid_auth``, ``ProviderUnavailableError``
    shows ``cannot_connect``. A username with an unsafe character (see
    :func:`is_safe_username`) shows ``invalid_username`` and is never checked.
    Another form needs its own ``LoginFlow``.
    """

    SHARED_STATE = True

    def step_schema(self, step_id: str) -> vol.Schema | None:
        """The username/password form, or an MFA step's."""
        if step_id == "init":
            return USERNAME_PASSWORD_SCHEMA
        return super().step_schema(step_id)

    async def async_step_init(self, user_input: dict[str, str] | None = None) -> FlowResult:
        """Show the username/password form; check what was submitted."""
        errors: dict[str, str] = {}
        if user_input is not None and not is_safe_username(user_input["username"]):
            errors["base"] = "invalid_username"
        elif user_input is not None:
            try:
                result = await self.async_check_login(user_input["username"], user_input["password"])
            except InvalidAuthError:
                errors["base"] = "invalid_auth"
            except ProviderUnavailableError:
                errors["base"] = "cannot_connect"
            else:
                return await self.async_finish(result)
        return self.async_show_form(step_id="init", data_schema=USERNAME_PASSWORD_SCHEMA, errors=errors)

    async def async_check_login(self, username: str, password: str) -> dict[str, Any]:
        """Check the pair with the provider's async_validate_login; return the flow result."""
        checked = self._auth_provider.async_validate_login(username, password)
        if inspect.isawaitable(checked):
            await checked
        return {"username": username}


class LoginFlowManager(FlowManager):
    """Login flows keyed by provider (type, id); results become Credentials.

    Flows in progress are fair shares (:class:`opp_auth.shares.AddressShares`
    on the context's ``ip_address``): at most ``max_flows`` for strangers plus
    ``max_flows`` for addresses that logged in before or sit in a trusted
    network, ``max_per_address`` per address and ``max_per_prefix`` per IPv4
    /24 or IPv6 /64. A refused start raises TooManyFlows (HTTP 429).
    """

    def __init__(
        self,
        registry: Registry,
        users: Users,
        events: Events,
        *,
        mfa_required: str = "everywhere",
        max_flows: int = MAX_FLOWS,
        ttl: float = 600.0,
        max_per_address: int = MAX_FLOWS_PER_ADDRESS,
        max_per_prefix: int = MAX_FLOWS_PER_PREFIX,
        known: KnownAddresses | None = None,
        trusted: Callable[[str], bool] | None = None,
        state: EphemeralState | None = None,
    ) -> None:
        """Flows for registry's providers, shared out by the address in each flow's context.

        state: with a shared ephemeral state (several servers), flows whose class says so
        (``LoginFlow.SHARED_STATE``) and codes live there, so each step may reach any server.

        The engine owns what a login decides: throttling and failure reports (events), the MFA
        decision (users' enrolments under the mfa_required policy) and the authorization codes
        (:attr:`codes`, fair shares by address like the flows).
        """
        self.shares = AddressShares(max_flows, max_per_address, max_per_prefix, known=known, trusted=trusted)
        super().__init__(max_flows=max_flows, ttl=ttl)
        self._registry = registry
        self._users = users
        self._events = events
        self._known = known if known is not None else KnownAddresses()
        self.mfa_required = mfa_required
        self.state = state if state is not None else EphemeralState()
        # Shared state: flows started here that live there hold their place here until they end
        # (anywhere: the server that ends one publishes it) or expire; flow id -> deadline.
        self._shared_places: dict[str, float] = {}
        self._displaced: list[str] = []
        self._borrowed: dict[str, Any] = {}  # shared flows rebuilt here for one step -> the server that started it
        self._server_id = uuid.uuid4().hex
        if self.state.shared:
            self.state.subscribe(FLOWS_TOPIC, self._apply_shared)
        self.codes = AuthorizationCodes(
            known=self._known,
            trusted=trusted,
            state=self.state,
            resolve=self._credentials_from,
            describe=self._async_user_meta,
        )
        # Steps of one account (or, without a username, one address) run one at a time, each after the
        # previous one's failure was counted: a burst of simultaneous guesses cannot pass the throttle together.
        self._attempts: dict[tuple[str, Any], list[Any]] = {}

    @property
    def max_flows(self) -> int:
        """Flows each pool (strangers, privileged) holds at most."""
        return self.shares.strangers.capacity

    @max_flows.setter
    def max_flows(self, value: int) -> None:
        self.shares.configure(capacity=value)

    @property
    def max_per_address(self) -> int:
        """Flows one address holds at most."""
        return self.shares.strangers.per_address

    @max_per_address.setter
    def max_per_address(self, value: int) -> None:
        self.shares.configure(per_address=value)

    @property
    def max_per_prefix(self) -> int:
        """Flows one IPv4 /24 or IPv6 /64 holds at most."""
        return self.shares.strangers.per_group

    @max_per_prefix.setter
    def max_per_prefix(self, value: int) -> None:
        self.shares.configure(per_prefix=value)

    def _admit(self, flow_id: str, context: dict[str, Any]) -> None:
        """A place in the address's share, maybe displacing the oldest flow of the largest prefix."""
        ip_address = context.get("ip_address")
        try:
            displaced = self.shares.admit(flow_id, ip_address)
        except Full as err:
            raise TooManyFlows(f"no place for a login flow from {ip_address}: {err}") from None
        for old in displaced:
            if self._forget(str(old)) is None and self.state.shared:
                self._displaced.append(str(old))  # a shared flow: its row goes too (_async_share_new)

    def _holds_place(self, flow_id: str) -> bool:
        """Whether the flow was not displaced while its handler was built."""
        return flow_id in self.shares

    def _release(self, flow_id: str) -> None:
        """Give back the place of a flow that was never built."""
        self.shares.release(flow_id)

    def _forget(self, flow_id: str) -> FlowHandler | None:
        """Remove the flow and free its place."""
        self.shares.release(flow_id)
        self._shared_places.pop(flow_id, None)
        return super()._forget(flow_id)

    def _purge_expired(self) -> None:
        """Drop expired flows, and the places of expired flows this server started in the shared state."""
        super()._purge_expired()
        now = time.monotonic()
        while self._shared_places:
            flow_id, deadline = next(iter(self._shared_places.items()))
            if deadline > now:
                break
            self._forget(flow_id)

    def count_in_progress(self) -> int:
        """Flows in progress here, and those this server started in the shared state."""
        return super().count_in_progress() + len(self._shared_places)

    async def async_create_flow(self, handler_key: Any, *, context: dict[str, Any], data: Any) -> FlowHandler:
        """Ask the provider for a new login flow."""
        if not isinstance(handler_key, (tuple, list)) or len(handler_key) != 2:
            raise UnknownHandler(handler_key)
        provider = self._registry.get_auth_provider(handler_key[0], handler_key[1])
        if provider is None:
            raise UnknownHandler(handler_key)
        return await provider.async_login_flow(context)

    async def async_finish_flow(self, flow: FlowHandler, result: FlowResult) -> FlowResult:
        """Turn a finished step into Credentials, unless the one MFA decision asks for a module first.

        Every create_entry of every login flow comes through here (from the
        provider's step, a trusted-network bypass, the MFA step or a plugin
        handing back Credentials itself); ``result["result"]`` is set only once
        the user has passed MFA or has none enrolled.
        """
        if result["type"] != RESULT_TYPE_CREATE_ENTRY:
            return result
        if not isinstance(flow, LoginFlow):
            _LOGGER.error("Login flow %s is not a LoginFlow; refused", type(flow).__name__)
            return flow.async_abort(reason="unknown_error")
        provider = flow._auth_provider
        data = result["data"]
        if isinstance(data, Credentials):
            credentials = data
        else:
            credentials = await provider.async_get_or_create_credentials(data)
        # A provider an MFA module adds (a passkey login) proves that module's factor and finishes with the
        # user's existing credentials of another provider; any other provider finishes with its own.
        offering_module = self._registry.mfa_module_offering(provider)
        if not isinstance(credentials, Credentials) or (
            credentials.provider_key != provider.key and offering_module is None
        ):
            _LOGGER.error("Provider %s finished a login with credentials not its own; refused", provider.key)
            return flow.async_abort(reason="unknown_error")
        user, modules = await self.async_required_mfa(credentials, flow.context.get("ip_address"))
        proven = offering_module is not None and offering_module in modules  # that factor was just proven
        if user is not None and modules and not proven and not flow.mfa_passed(user, modules):
            # A pass that no longer counts (its module removed meanwhile) is forgotten: a flow that goes on
            # holds none, so another server taking its next step may refuse a stored one.
            flow._mfa_passed = None
            flow.credential = credentials
            flow.user = user
            flow.available_mfa_modules = modules
            step = await flow.async_step_select_mfa_module()
            if step["type"] == RESULT_TYPE_CREATE_ENTRY:
                return await self.async_finish_flow(flow, step)  # decided again; never passed through
            return step
        result["result"] = credentials
        result[MFA_MODULE_KEY] = (
            offering_module if proven else (flow._mfa_passed[1] if flow._mfa_passed is not None else None)
        )
        return result

    async def async_required_mfa(
        self, credentials: Credentials, ip_address: str | None = None
    ) -> tuple[User | None, dict[str, str]]:
        """The one MFA decision (:func:`async_required_mfa`) under this server's mfa_required policy."""
        return await async_required_mfa(self._users, self.mfa_required, credentials, ip_address)

    # ---- the login walk every transport uses ------------------------------------------------

    def _failed(
        self,
        ip_address: str | None,
        reason: str,
        provider: tuple[str, str | None] | None = None,
        username: str | None = None,
        **values: Any,
    ) -> asyncio.Future[Any] | None:
        """Report a failed login: the login_failed event, and the plugins (throttling, bans) unless plugins=False."""
        return self._events.login_failed(ip_address, provider, username, reason, **values)

    async def async_start_login(
        self,
        handler_key: Any,
        *,
        ip_address: str | None,
        client_id: str,
        redirect_uri: str,
        purpose: str = AUTHORIZE,
        client_ok: bool,
        peer_address: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> FlowResult:
        """Start a login for client_id (client_ok: the transport's verdict on client id and redirect uri).

        peer_address (the direct peer of the connection, before any reverse-proxy
        handling) and headers (the starting request's headers, a read-only
        case-insensitive multi-mapping) go into the flow context as
        ``peer_address`` and ``headers`` for a provider that trusts what a
        reverse proxy says (trusted_header). ``headers`` is there for
        ``async_login_flow`` and the first run of ``async_step_init`` only: the
        engine drops it from the context once the first step has run, so a flow
        never keeps cookies or authorization headers for its lifetime.

        Raises InvalidClient, UnknownHandler, UnknownStep or TooManyFlows (each
        failure reported); returns the first step's result, a create_entry
        carrying the authorization code in ``result``.
        """
        if purpose not in PURPOSES:
            raise ValueError(f"unknown login purpose {purpose!r}")
        if not client_ok:
            self._failed(ip_address, "invalid_client")
            raise InvalidClient(client_id)
        started = time.monotonic()
        try:
            result = await self.async_init(
                handler_key,
                context={
                    "ip_address": ip_address,
                    "credential_only": purpose == LINK_USER,
                    "purpose": purpose,
                    "client_id": client_id,
                    "redirect_uri": redirect_uri,
                    "peer_address": peer_address,
                    "headers": headers,
                },
            )
        except UnknownHandler:
            self._failed(ip_address, "invalid_handler")
            raise
        flow = self._flows.get(result.get("flow_id"))  # type: ignore[arg-type]
        if flow is not None:
            flow.context.pop("headers", None)
            if self.state.shared:
                await self._async_share_new(flow)
        step_seconds = round(time.monotonic() - started, 6)
        return await self._async_outcome(
            result,
            ip_address=ip_address,
            client_id=client_id,
            purpose=purpose,
            username=None,
            step_seconds=step_seconds,
        )

    async def async_login_step(
        self, flow_id: str, user_input: dict[str, Any], *, ip_address: str | None, client_id: str, client_ok: bool
    ) -> FlowResult:
        """Submit one step of a login (client_ok: the transport's verdict on the client id).

        Raises InvalidClient, UnknownFlow, AddressChanged, LoginThrottled or
        InvalidInput (failures reported); returns the step's result, a
        create_entry carrying the authorization code in ``result``.
        """
        if not client_ok:
            self._failed(ip_address, "invalid_client")
            raise InvalidClient(client_id)
        if not self.state.shared:
            return await self._async_login_step(flow_id, user_input, ip_address=ip_address, client_id=client_id)
        # Every failure another server counted before now is counted here too.
        await self.state.async_barrier()
        if isinstance(flow_id, str) and flow_id in self._flows and flow_id not in self._borrowed:  # stays here
            return await self._async_login_step(flow_id, user_input, ip_address=ip_address, client_id=client_id)
        borrowed = await self._async_borrow(flow_id)
        try:
            return await self._async_login_step(flow_id, user_input, ip_address=ip_address, client_id=client_id)
        finally:
            if borrowed is not None:
                await self._async_give_back(flow_id, borrowed)

    async def _async_login_step(
        self, flow_id: str, user_input: dict[str, Any], *, ip_address: str | None, client_id: str
    ) -> FlowResult:
        """A step of a flow this server holds (see async_login_step)."""
        try:
            flow = self.async_get(flow_id)
        except UnknownFlow:
            self._failed(ip_address, "invalid_flow")
            raise
        if flow.context.get("client_id") != client_id:
            self._failed(ip_address, "invalid_client")
            raise InvalidClient(client_id)
        if flow.context.get("ip_address") != ip_address:
            self._failed(ip_address, "ip_changed")
            raise AddressChanged(flow_id)
        username = user_input.get("username")
        if (flow.cur_step or {}).get("step_id") in MFA_STEPS or not isinstance(username, str):
            username = flow.context.get(THROTTLE_USERNAME)
        else:
            flow.context[THROTTLE_USERNAME] = username
        account = account_key(username)
        kind, who = ("ip", ip_address) if account is None else ("user", account)
        # With several servers the account's lock is theirs too (held for this step, released after),
        # and the barrier runs once it is held: the failure of the step before, wherever it ran, was
        # committed before that step let go, so it is counted here before the throttle decides.
        async with self._one_attempt_at_a_time((kind, who)), self.state.async_step_lock(f"{kind}:{who}"):
            if self.state.shared:
                await self.state.async_barrier()
            wait = self._events.login_retry_after(ip_address, username)
            if wait > 0:
                handler = flow.handler
                self._failed(
                    ip_address,
                    "throttled",
                    tuple(handler) if isinstance(handler, (tuple, list)) else None,
                    username if isinstance(username, str) else None,
                    plugins=False,
                    client_id=client_id,
                    details={"retry_after": round(wait, 1)},
                )
                raise LoginThrottled(wait)
            started = time.monotonic()
            result = await self.async_configure(flow_id, user_input)
            # The server's time on the step (the provider's or module's check): metrics' login duration.
            step_seconds = round(time.monotonic() - started, 6)
            purpose = flow.context.get("purpose", AUTHORIZE)
            reports: list[asyncio.Future[Any]] = []
            # Past the provider step the flow knows whose second factor failed.
            known = getattr(flow, "user", None)
            outcome = await self._async_outcome(
                result,
                ip_address=ip_address,
                client_id=client_id,
                purpose=purpose,
                username=username,
                reports=reports,
                user_id=known.id if isinstance(known, User) else None,
                step_seconds=step_seconds,
                mfa_module=getattr(flow, "_auth_module_id", None),
            )
            if reports:  # the next attempt of this account is checked against this failure
                await asyncio.wait(reports, timeout=5)
        return outcome

    @contextlib.asynccontextmanager
    async def _one_attempt_at_a_time(self, key: tuple[str, Any]) -> Any:
        """Hold the lock of key (dropped when nobody holds or waits for it)."""
        entry = self._attempts.get(key)
        if entry is None:
            entry = self._attempts[key] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._attempts[key]

    async def _async_outcome(
        self,
        result: FlowResult,
        *,
        ip_address: str | None,
        client_id: str,
        purpose: str,
        username: Any,
        reports: list[asyncio.Future[Any]] | None = None,
        user_id: str | None = None,
        step_seconds: float | None = None,
        mfa_module: str | None = None,
    ) -> FlowResult:
        """Report a step's failure (user_id: whose, when the flow knows), or turn a finished login into a code."""
        if result["type"] != RESULT_TYPE_CREATE_ENTRY:
            base = (result.get("errors") or {}).get("base")
            if result["type"] == RESULT_TYPE_ABORT and result.get("reason") == "too_many_retry":
                base = "invalid_code"  # the last wrong code ends the flow; it is a failure all the same
            if base in FAILURE_REASONS or base in REFUSAL_REASONS:
                handler = result.get("handler")
                report = self._failed(
                    ip_address,
                    base,
                    tuple(handler) if isinstance(handler, (tuple, list)) else None,
                    username if isinstance(username, str) else None,
                    plugins=base in FAILURE_REASONS,
                    client_id=client_id,
                    user_id=user_id,
                    # A wrong code names the module it was for (mfa_failed).
                    mfa_module=mfa_module if base == "invalid_code" else None,
                    details={} if step_seconds is None else {"step_seconds": step_seconds},
                )
                if reports is not None and report is not None:
                    reports.append(report)
            return result
        credentials = result.pop("result", None)
        result.pop("data", None)
        mfa_passed = result.pop(MFA_MODULE_KEY, None)
        if not isinstance(credentials, Credentials):  # only async_finish_flow sets it; never trust anything else
            _LOGGER.error("A finished login carried no credentials; refused")
            return {
                "type": RESULT_TYPE_ABORT,
                "flow_id": result.get("flow_id"),
                "handler": result.get("handler"),
                "reason": "unknown_error",
                "description_placeholders": None,
            }
        # First the success (the address becomes known), so the code takes a place in the known share.
        user = self._users.store.user_for_credentials(credentials)
        # From now on remote_ip is a known address of the account (shares.py).
        self._known.add(user.id if user is not None else credentials.id, ip_address)
        self._events.login_succeeded(ip_address, user, credentials)
        self._events.emit(
            LOGIN_SUCCEEDED,
            user_id=user.id if user is not None else None,
            username=_login_name(credentials),
            provider=credentials.provider_key,
            remote_address=ip_address,
            mfa_module=mfa_passed,
            client_id=client_id,
            details={
                "purpose": purpose,
                **({} if user is not None else {"new_credentials": True}),
                **({} if step_seconds is None else {"step_seconds": step_seconds}),
            },
        )
        result["result"] = await self.codes.async_issue(client_id, credentials, purpose, ip_address=ip_address)
        return result

    async def async_code_for_credentials(
        self,
        client_id: str,
        credentials: Credentials,
        *,
        session: RefreshToken | None = None,
        ip_address: str | None = None,
    ) -> str:
        """An ``authorize`` code outside a login flow (onboarding), after the same MFA decision.

        session: the refresh token the caller authenticated with. A session of
        these very credentials has passed every factor already; without one,
        a user with MFA enrolled gets MfaRequired and must log in.
        """
        user, modules = await self.async_required_mfa(credentials)
        if user is not None and modules:
            same_session = (
                session is not None
                and session.credential is credentials
                and session.user.id == user.id
                and session.user.is_active
            )
            if not same_session:
                raise MfaRequired(user.id)
        return await self.codes.async_issue(client_id, credentials, AUTHORIZE, ip_address=ip_address)

    # ---- flows and codes shared with other servers (a shared ephemeral state) -------------------

    def _credentials_from(self, stored: dict[str, Any]) -> Credentials | None:
        """The Credentials a shared flow or code names: the stored ones, or new ones not stored yet."""
        cred_id = stored.get("id")
        if not isinstance(cred_id, str):
            return None
        existing = self._users.store.get_credentials(cred_id)
        if existing is not None:
            return existing
        ptype, pid, data = stored.get("auth_provider_type"), stored.get("auth_provider_id"), stored.get("data")
        if (
            stored.get("is_new") is not True
            or not isinstance(ptype, str)
            or not (pid is None or isinstance(pid, str))
            or not isinstance(data, dict)
            or self._registry.get_auth_provider(ptype, pid) is None
        ):
            return None  # removed meanwhile, or a provider this server lacks
        credentials = Credentials(auth_provider_type=ptype, auth_provider_id=pid, data=data, id=cred_id, is_new=True)
        if "user_meta" in stored:
            # What the provider said on the login's server the new user will be (its own meta is no JSON).
            credentials.meta = user_meta_from_value(stored["user_meta"])
            if credentials.meta is None:
                return None
        else:
            credentials.meta = stored.get("meta")
        return credentials

    async def _async_user_meta(self, credentials: Credentials) -> UserMeta | None:
        """What the provider of new credentials says the user will be (for a code another server may exchange)."""
        provider = self._registry.provider_for(credentials)
        if provider is None:
            return None
        try:
            return await provider.async_user_meta_for_credentials(credentials)
        except Exception:  # a plugin's failure: the code stays redeemable on this server only
            _LOGGER.exception("Provider %s could not describe a new user; the code stays on this server", provider.key)
            return None

    def _flow_state(self, flow: FlowHandler) -> dict[str, Any] | None:
        """A flow's whole state as JSON for another server; None when it must stay on this one."""
        if not isinstance(flow, LoginFlow) or not flow.SHARED_STATE or flow.cur_step is None:
            return None
        if set(vars(flow)) - _FLOW_ATTRS and type(flow).dump_state is LoginFlow.dump_state:
            return None  # attributes of its own that dump_state does not hold
        step = {key: flow.cur_step.get(key) for key in _STEP_KEYS}
        try:
            flow.step_schema(str(step["step_id"]))
            state = {
                "handler": list(flow.handler),
                "context": {k: v for k, v in flow.context.items() if k != "headers"},
                "step": step,
                "flow": flow.dump_state(),
            }
            json.dumps(state, allow_nan=False)
        except (KeyError, TypeError, ValueError, RecursionError):
            return None
        return state

    async def _async_share_new(self, flow: FlowHandler) -> None:
        """Move a new flow to the shared state; its place (fair shares) stays here until it ends."""
        displaced, self._displaced = self._displaced, []
        for old in displaced:
            await self.state.async_drop_flow(old)
        state = self._flow_state(flow)
        if state is None:
            return  # it stays on this server
        state["origin"] = self._server_id
        flow_id = flow.flow_id
        try:
            await self.state.async_put_flow(flow_id, state, self.ttl)
        except BaseException:
            self._forget(flow_id)
            raise
        del self._flows[flow_id]
        self._step_locks.pop(flow_id, None)
        self._shared_places[flow_id] = flow.deadline

    async def async_abort_login(self, flow_id: str) -> None:
        """Forget a flow, here or in the shared state (UnknownFlow if there is none)."""
        if not self.state.shared or (
            isinstance(flow_id, str) and flow_id in self._flows and flow_id not in self._borrowed
        ):
            self.async_abort(flow_id)
            return
        borrowed = await self._async_borrow(flow_id)
        if borrowed is None:
            raise UnknownFlow(flow_id)
        self._forget(flow_id)
        await self._async_give_back(flow_id, borrowed)

    def _apply_shared(self, event: dict[str, Any], age: float = 0.0) -> None:
        """Another server ended a flow: free its place if this server started it."""
        flow_id = event.get("flow")
        if event.get("op") == "ended" and event.get("origin") == self._server_id and isinstance(flow_id, str):
            if flow_id in self._shared_places:
                self._forget(flow_id)

    async def _async_borrow(self, flow_id: Any) -> LoginFlow[Any] | None:
        """Claim a shared flow for one step and rebuild it here; None when there is none (or it cannot be)."""
        if not isinstance(flow_id, str) or not 0 < len(flow_id) <= 64:
            return None
        claimed = await self.state.async_claim_flow(flow_id, STEP_LEASE)
        if claimed is None:
            return None
        state, age = claimed
        try:
            flow = await self._async_rebuild(flow_id, state, age)
        except Exception:
            _LOGGER.exception("A shared login flow could not be rebuilt; it ends")
            flow = None
        if flow is None:
            await self.state.async_drop_flow(flow_id)
            return None
        self._flows[flow_id] = flow  # for this step only (its place, if any, is _shared_places')
        self._borrowed[flow_id] = state.get("origin")
        return flow

    async def _async_rebuild(self, flow_id: str, state: dict[str, Any], age: float) -> LoginFlow[Any] | None:
        """A flow object from its shared state (the provider builds it, the state is put back)."""
        handler, context, step, own = state.get("handler"), state.get("context"), state.get("step"), state.get("flow")
        if not (
            isinstance(handler, list)
            and len(handler) == 2
            and isinstance(context, dict)
            and isinstance(step, dict)
            and isinstance(own, dict)
        ):
            return None
        provider = self._registry.get_auth_provider(handler[0], handler[1])
        if provider is None:
            return None
        flow = await provider.async_login_flow(dict(context))
        if not isinstance(flow, LoginFlow) or not flow.SHARED_STATE:
            return None
        stored = own.get("credentials")
        credentials = self._credentials_from(stored) if isinstance(stored, dict) else None
        user_id = own.get("user_id")
        user = self._users.store.get_user(user_id) if isinstance(user_id, str) else None
        if (isinstance(user_id, str) and user is None) or (isinstance(stored, dict) and credentials is None):
            return None  # removed meanwhile
        flow.load_state(own, credentials, user)
        flow.flow_id = flow_id
        flow.handler = handler
        flow.context = context
        flow.created = time.monotonic() - max(0.0, age)
        flow.deadline = flow.created + self.ttl
        cur: FlowResult = {key: step.get(key) for key in _STEP_KEYS}
        cur.update(flow_id=flow_id, handler=handler, data_schema=flow.step_schema(str(cur["step_id"])))
        flow.cur_step = cur
        return flow

    async def _async_give_back(self, flow_id: str, flow: LoginFlow[Any]) -> None:
        """After the step: store the flow's new state (the claim ends), or drop it when it ended."""
        still_open = self._flows.get(flow_id) is flow
        if still_open:
            del self._flows[flow_id]
        self._step_locks.pop(flow_id, None)
        origin = self._borrowed.pop(flow_id, None)
        state = self._flow_state(flow) if still_open else None
        if state is not None:
            state["origin"] = origin
            await self.state.async_save_flow(flow_id, state)
            return
        self._forget(flow_id)
        await self.state.async_drop_flow(flow_id)
        if origin != self._server_id and isinstance(origin, str):
            await self.state.async_publish(FLOWS_TOPIC, {"op": "ended", "flow": flow_id, "origin": origin})
