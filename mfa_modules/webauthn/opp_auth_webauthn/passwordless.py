"""Passwordless login: "Log in with a passkey", offered by the webauthn module as a login provider.

The module's ``login_provider()`` adds this provider (type ``webauthn``) after
the configured ones unless ``passwordless: false``. Its one step shows request
options without allowed credentials (the browser offers the discoverable
passkeys it has for ``rp_id``, or fills them into the username field with
conditional mediation) and user verification required. The assertion names the
passkey; the module finds its user by credential id and user handle. A passkey
that verified its user (PIN, biometrics) is both factors, so the login needs no
further MFA step; without verification it is refused. The flow finishes with
the user's existing credentials (the first of a configured provider), so the
refresh token is checked by that provider as after a password login.

The flow is shared (``SHARED_STATE``): with several servers on one database the
assertion may reach another server than the one that showed the form. It rests
only at that form, before any user: its stored state is the core's, empty, and a
stored state naming a user, credentials or MFA progress is refused. The challenge
is the module's, kept for every server and taken once; the user always comes from
the verified assertion.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import voluptuous as vol

from opp_auth import AuthProvider, Credentials, FlowResult, LoginFlow, User

if TYPE_CHECKING:
    from . import WebauthnAuthModule

_LOGGER = logging.getLogger(__name__)

CREDENTIAL_SCHEMA = vol.Schema({vol.Required("credential"): str})


class PasskeyLoginProvider(AuthProvider):
    """The login page's "Log in with a passkey"."""

    TYPE = "webauthn"
    DEFAULT_TITLE = "Passkey"
    CONFIG_SCHEMA = AuthProvider.CONFIG_SCHEMA
    SUPPORT_MFA = False  # a verified passkey is both factors

    def __init__(self, module: WebauthnAuthModule) -> None:
        """A provider bound to its module (same id, same name)."""
        super().__init__(module.auth, {"type": self.TYPE, "id": module.config.get("id"), "name": module.name})
        self.module = module

    async def async_login_flow(self, context: dict[str, Any]) -> LoginFlow:
        """A passkey login."""
        return PasskeyLoginFlow(self)

    def credential_data(self, flow_result: dict[str, Any]) -> dict[str, Any]:
        """Never called: the flow finishes with existing credentials."""
        raise NotImplementedError

    async def async_user_meta_for_credentials(self, credentials: Credentials) -> Any:
        """Never called: a passkey logs in existing users only."""
        raise NotImplementedError


class PasskeyLoginFlow(LoginFlow["PasskeyLoginProvider"]):
    """One step: the browser's assertion for a discoverable credential."""

    SHARED_STATE = True

    def load_state(self, state: dict[str, Any], credentials: Credentials | None, user: User | None) -> None:
        """The flow at its one form, before any user (ValueError: a stored state claiming more is refused).

        It finishes in the step that verifies the assertion, so a stored flow never names a user,
        credentials or MFA progress: whose login it is comes from the next verified assertion only.
        """
        if (
            user is not None
            or credentials is not None
            or any(state.get(key) is not None for key in ("user_id", "credentials", "mfa_module", "mfa_passed"))
            or state.get("mfa_modules")
        ):
            raise ValueError("passkey flow: a stored flow is at its first step, with no user")
        super().load_state(state, None, None)

    def step_schema(self, step_id: str) -> vol.Schema | None:
        """The assertion form (the flow has no other step)."""
        if step_id == "init":
            return CREDENTIAL_SCHEMA
        raise KeyError(step_id)

    @property
    def _binding(self) -> str:
        """Challenges of this flow."""
        return f"passwordless:{self.flow_id}"

    async def async_step_init(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        """Show the request options; check the assertion."""
        module = self.provider.module
        if self.context.get("credential_only"):
            return self.async_abort(reason="not_supported")
        errors: dict[str, str] = {}
        if user_input is not None:
            credentials = await self._async_check(module, user_input.get("credential"))
            if credentials is not None:
                return await self.async_finish(credentials)
            errors["base"] = "invalid_auth"
        options = await module.async_request_options(self._binding, None, user_verification="required")
        return self.async_show_form(
            step_id="init",
            data_schema=CREDENTIAL_SCHEMA,
            description_placeholders={"challenge": {"webauthn": options, "passwordless": True}},
            errors=errors,
        )

    async def _async_check(self, module: WebauthnAuthModule, credential: Any) -> Credentials | None:
        """The credentials of the passkey's user, or None (logged)."""
        from . import CeremonyError

        try:
            assertion = await module.async_verify_assertion(self._binding, credential, user_id=None)
        except CeremonyError as err:
            _LOGGER.info("Passwordless login refused: %s", err.message)
            return None
        if not assertion.user_verified:
            _LOGGER.info(
                "Passwordless login refused: passkey %r did not verify its user", assertion.passkey.get("name")
            )
            return None
        user = self.provider.auth.get_user(assertion.user_id)
        if user is None or not user.is_active or user.system_generated:
            _LOGGER.info("Passwordless login refused: user %s is missing or inactive", assertion.user_id)
            return None
        for credentials in user.credentials:
            if self.provider.auth.get_auth_provider(credentials.auth_provider_type, credentials.auth_provider_id):
                self.user = user
                return credentials
        _LOGGER.info("Passwordless login refused: user %s has no credentials of a configured provider", user.id)
        return None
