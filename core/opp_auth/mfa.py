"""The MfaModule and SetupFlow base classes every MFA plugin extends."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

import voluptuous as vol

from .events import MFA_ENROLLED
from .flow import RESULT_TYPE_CREATE_ENTRY, FlowHandler, FlowManager, FlowResult, TooManyFlows, UnknownHandler
from .shares import FairPool, Full

if TYPE_CHECKING:
    from .context import PluginContext
    from .events import Events
    from .providers import AuthProvider
    from .registry import Registry

_LOGGER = logging.getLogger(__name__)

MAX_SETUP_FLOWS = 1000
MAX_SETUP_FLOWS_PER_USER = 10

MFA_CONFIG_SCHEMA = vol.Schema(
    {
        vol.Required("type"): str,
        vol.Optional("name"): vol.Any(str, None),
        vol.Optional("id"): vol.Any(str, None),
    },
    extra=vol.ALLOW_EXTRA,
)
"""Keys every MFA module accepts; a module's CONFIG_SCHEMA extends it and forbids the rest."""


class MfaAbort(Exception):
    """Raised by a module's login hooks to end the login with abort ``reason`` (e.g. "user_not_setup")."""

    def __init__(self, reason: str) -> None:
        """Keep the abort reason the client is shown."""
        super().__init__(reason)
        self.reason = reason


class MfaModule:
    """A second factor asked after the provider's login step.

    Subclass it, set ``TYPE`` and ``CONFIG_SCHEMA``
    (``MfaModule.CONFIG_SCHEMA.extend({...}, extra=vol.PREVENT_EXTRA)``), implement
    :attr:`input_schema`, :meth:`async_setup_flow`, :meth:`async_setup_user`,
    :meth:`async_depose_user`, :meth:`async_is_user_setup` and
    :meth:`async_validate`. Optionally override
    :meth:`async_initialize_login_mfa_step` (called when the code form is
    first shown, e.g. to send a code) and :meth:`async_after_failed_validation`
    (called after each wrong code that does not end the flow); either may raise
    :class:`MfaAbort` to end the login with that reason. Register it from the
    ``opp_auth_register_mfa_modules`` hook.
    """

    TYPE: ClassVar[str]
    DEFAULT_TITLE: ClassVar[str] = "Unnamed auth module"
    MAX_RETRY_TIME: ClassVar[int] = 3
    CONFIG_SCHEMA: ClassVar[vol.Schema] = MFA_CONFIG_SCHEMA

    def __init__(self, auth: PluginContext, config: dict[str, Any]) -> None:
        """Keep the plugin context (``self.auth``) and the validated configuration."""
        self.auth = auth
        self.config = config

    @property
    def id(self) -> str:
        """Module id: the configured id, else the type."""
        return self.config.get("id") or self.TYPE

    @property
    def type(self) -> str:
        """Module type."""
        return self.TYPE

    @property
    def name(self) -> str:
        """Title shown to users."""
        return self.config.get("name") or self.DEFAULT_TITLE

    @property
    def input_schema(self) -> vol.Schema:
        """Schema of the login form's code step."""
        raise NotImplementedError

    async def async_initialize(self) -> None:
        """Load data before first use (called once at start-up)."""

    async def async_setup_flow(self, user_id: str) -> SetupFlow:
        """A flow that enrols the user."""
        raise NotImplementedError

    async def async_setup_user(self, user_id: str, setup_data: Any) -> Any:
        """Enrol a user with the given data."""
        raise NotImplementedError

    async def async_depose_user(self, user_id: str) -> None:
        """Remove a user's enrolment."""
        raise NotImplementedError

    async def async_is_user_setup(self, user_id: str) -> bool:
        """Whether the user is enrolled."""
        raise NotImplementedError

    async def async_validate(self, user_id: str, user_input: dict[str, Any]) -> bool:
        """Whether the submitted code is right."""
        raise NotImplementedError

    async def async_initialize_login_mfa_step(self, user_id: str) -> None:
        """Called when a login first shows this module's code form (e.g. to send a code); optional.

        Raise :class:`MfaAbort` to end the login with its reason.
        """

    async def async_after_failed_validation(self, user_id: str) -> None:
        """Called after each wrong code that does not end the login (e.g. to send a new one); optional.

        Raise :class:`MfaAbort` to end the login with its reason.
        """

    async def async_login_challenge(self, user_id: str, flow_id: str) -> dict[str, Any] | None:
        """Data the client needs to answer this login's ``mfa`` form, or None (the default: a typed code).

        Called each time the form is shown for a login flow; the result is sent
        as ``description_placeholders["challenge"]``. A module that signs a
        challenge (WebAuthn) issues a fresh one here, bound to ``flow_id``, and
        checks it in :meth:`async_validate_in_flow`.
        """
        return None

    async def async_validate_in_flow(self, user_id: str, user_input: dict[str, Any], flow_id: str) -> bool:
        """Validate the ``mfa`` form of login flow ``flow_id``; by default :meth:`async_validate`."""
        return await self.async_validate(user_id, user_input)

    def login_provider(self) -> AuthProvider | None:
        """A provider this module adds to the login page (after the configured ones), or None (the default).

        For a factor that can log in by itself (a passkey with user
        verification): its login flow finishes with the existing
        :class:`~opp_auth.Credentials` of the user it identified. Called once,
        when the manager is built.
        """
        return None

    async def async_shutdown(self) -> None:
        """Release resources at shutdown."""


class SetupFlow(FlowHandler):
    """Default enrolment flow: one form with the module's setup schema, then setup_user."""

    def __init__(self, auth_module: MfaModule, setup_schema: vol.Schema, user_id: str) -> None:
        """Remember the module, the form and whose enrolment this is."""
        self._auth_module = auth_module
        self._setup_schema = setup_schema
        self._user_id = user_id

    @property
    def user_id(self) -> str:
        """The user this enrolment belongs to."""
        return self._user_id

    @property
    def setup_schema(self) -> vol.Schema:
        """The enrolment form's schema."""
        return self._setup_schema

    async def async_step_init(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        """Show the setup form; with input, enrol the user."""
        errors: dict[str, str] = {}
        if user_input:
            result = await self._auth_module.async_setup_user(self._user_id, user_input)
            return self.async_create_entry(title=self._auth_module.name, data={"result": result})
        return self.async_show_form(step_id="init", data_schema=self._setup_schema, errors=errors)


class MfaSetupFlowManager(FlowManager):
    """Enrolment flows keyed by module id; each belongs to the user who started it.

    Fair shares by user (:class:`opp_auth.shares.FairPool`): a user has at
    most ``MAX_SETUP_FLOWS_PER_USER`` in progress, and when all
    ``MAX_SETUP_FLOWS`` places are taken a user holding fewer than the largest
    holder takes the place of that user's oldest flow, so no user can keep
    another from enrolling.
    """

    def __init__(self, registry: Registry, events: Events) -> None:
        """Flows for registry's modules; a finished enrolment is told to events."""
        self.shares = FairPool(MAX_SETUP_FLOWS, MAX_SETUP_FLOWS_PER_USER, MAX_SETUP_FLOWS_PER_USER)
        super().__init__(max_flows=MAX_SETUP_FLOWS, ttl=600.0)
        self._registry = registry
        self._events = events

    def _admit(self, flow_id: str, context: dict[str, Any]) -> None:
        """A place in the user's share (raise TooManyFlows)."""
        user_id = context.get("user_id")
        try:
            displaced = self.shares.admit(flow_id, user_id, user_id)
        except Full as err:
            raise TooManyFlows(f"no place for an MFA set-up of {user_id}: {err}") from None
        for old in displaced:
            self._forget(str(old))

    def _holds_place(self, flow_id: str) -> bool:
        """Whether the flow was not displaced while it was built."""
        return flow_id in self.shares

    def _release(self, flow_id: str) -> None:
        """Give back the place of a flow that was never built."""
        self.shares.release(flow_id)

    def _forget(self, flow_id: str) -> FlowHandler | None:
        """Remove the flow and free its place."""
        self.shares.release(flow_id)
        return super()._forget(flow_id)

    async def async_finish_flow(self, flow: FlowHandler, result: FlowResult) -> FlowResult:
        """A finished enrolment is an mfa_enrolled event (every module's set-up flow ends here)."""
        if result["type"] == RESULT_TYPE_CREATE_ENTRY:
            self._events.emit(MFA_ENROLLED, user_id=flow.context.get("user_id"), mfa_module=str(flow.handler))
        return result

    async def async_create_flow(self, handler_key: Any, *, context: dict[str, Any], data: Any) -> FlowHandler:
        """The module's setup flow for context['user_id']."""
        module = self._registry.get_auth_mfa_module(handler_key) if isinstance(handler_key, str) else None
        if module is None:
            raise UnknownHandler(handler_key)
        return await module.async_setup_flow(context["user_id"])
