"""The LoginFlow base: the provider's own step, then the MFA steps, then an authorization code."""

from __future__ import annotations

import inspect
import logging
import time
from typing import TYPE_CHECKING, Any

import voluptuous as vol

from .flow import RESULT_TYPE_CREATE_ENTRY, FlowHandler, FlowManager, FlowResult, TooManyFlows, UnknownHandler
from .mfa import MfaAbort
from .models import Credentials, User
from .providers import InvalidAuthError, ProviderUnavailableError

if TYPE_CHECKING:
    from .manager import AuthManager
    from .providers import AuthProvider

_LOGGER = logging.getLogger(__name__)

MFA_SESSION_EXPIRATION = 300.0
MAX_FLOWS_PER_ADDRESS = 30
USERNAME_PASSWORD_SCHEMA = vol.Schema({vol.Required("username"): str, vol.Required("password"): str})


class LoginFlow(FlowHandler):
    """A provider's login flow; implement async_step_init and call async_finish with the result.

    The MFA steps (``select_mfa_module`` and ``mfa``) are inherited: a provider
    writes only its first step.
    """

    def __init__(self, auth_provider: AuthProvider) -> None:
        """Start a login with this provider."""
        self._auth_provider = auth_provider
        self._auth_module_id: str | None = None
        self._auth_manager: AuthManager = auth_provider.auth
        self.available_mfa_modules: dict[str, str] = {}
        self.invalid_mfa_times = 0
        self.user: User | None = None
        self.credential: Credentials | None = None

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
        if user_input is None and hasattr(auth_module, "async_initialize_login_mfa_step"):
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
                return await self.async_finish(self.credential)
            errors["base"] = "invalid_code"
            self.invalid_mfa_times += 1
            if self.invalid_mfa_times >= auth_module.MAX_RETRY_TIME > 0:
                return self.async_abort(reason="too_many_retry")
            after_failure = getattr(auth_module, "async_after_failed_validation", None)
            if after_failure is not None:
                try:
                    await after_failure(self.user.id)
                except MfaAbort as err:
                    return self.async_abort(reason=err.reason)
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


class UsernamePasswordLoginFlow(LoginFlow):
    """A login flow whose one step is a username/password form.

    Return it (or a subclass) from ``async_login_flow``. By default the pair goes
    to the provider's ``async_validate_login(username, password)`` (coroutine or
    plain function) and the result is ``{"username": username}`` as typed.
    Override :meth:`async_check_login` to check differently or return another
    result (what ``credential_data`` receives; never the password); raising
    ``InvalidAuthError`` shows ``invalid_auth``, ``ProviderUnavailableError``
    shows ``cannot_connect``. Another form needs its own ``LoginFlow``.
    """

    async def async_step_init(self, user_input: dict[str, str] | None = None) -> FlowResult:
        """Show the username/password form; check what was submitted."""
        errors: dict[str, str] = {}
        if user_input is not None:
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
        checked = self._auth_provider.async_validate_login(username, password)  # type: ignore[attr-defined]
        if inspect.isawaitable(checked):
            await checked
        return {"username": username}


class LoginFlowManager(FlowManager):
    """Login flows keyed by provider (type, id); results become Credentials."""

    def __init__(
        self,
        auth: AuthManager,
        *,
        max_flows: int = 1000,
        ttl: float = 600.0,
        max_per_address: int = MAX_FLOWS_PER_ADDRESS,
    ) -> None:
        """Flows for the manager's providers; at most max_per_address in progress per context ip_address."""
        super().__init__(max_flows=max_flows, ttl=ttl)
        self.auth = auth
        self.max_per_address = max_per_address

    async def async_init(
        self, handler_key: Any, *, context: dict[str, Any] | None = None, data: Any = None
    ) -> FlowResult:
        """Start a login flow unless its address already has max_per_address in progress."""
        ip_address = (context or {}).get("ip_address")
        if ip_address is not None:
            in_progress = sum(1 for flow in self.async_progress() if flow.context.get("ip_address") == ip_address)
            if in_progress >= self.max_per_address:
                raise TooManyFlows(f"{in_progress} flows in progress from {ip_address}")
        return await super().async_init(handler_key, context=context, data=data)

    async def async_create_flow(self, handler_key: Any, *, context: dict[str, Any], data: Any) -> FlowHandler:
        """Ask the provider for a new login flow."""
        if not isinstance(handler_key, (tuple, list)) or len(handler_key) != 2:
            raise UnknownHandler(handler_key)
        provider = self.auth.get_auth_provider(handler_key[0], handler_key[1])
        if provider is None:
            raise UnknownHandler(handler_key)
        return await provider.async_login_flow(context)

    async def async_finish_flow(self, flow: FlowHandler, result: FlowResult) -> FlowResult:
        """Turn a provider result into Credentials, or continue with the MFA steps."""
        if result["type"] != RESULT_TYPE_CREATE_ENTRY:
            return result
        if isinstance(result["data"], Credentials):
            result["result"] = result["data"]
            return result
        assert isinstance(flow, LoginFlow)
        provider = flow._auth_provider
        credentials = await provider.async_get_or_create_credentials(result["data"])
        if flow.context.get("credential_only"):
            result["result"] = credentials
            return result
        if provider.support_mfa and not credentials.is_new:
            user = self.auth.store.user_for_credentials(credentials)
            if user is not None:
                modules = await self.auth.async_get_enabled_mfa(user)
                if modules:
                    flow.credential = credentials
                    flow.user = user
                    flow.available_mfa_modules = modules
                    return await flow.async_step_select_mfa_module()
        result["result"] = credentials
        return result
