"""Example auth provider and MFA module with their secrets in configuration.yaml (tests and docs only).

Written only against opp_auth's public API, as any third-party plugin is.
"""

from __future__ import annotations

import hmac
from typing import Any

import voluptuous as vol

from opp_auth import (
    AuthProvider,
    Credentials,
    InvalidAuthError,
    LoginFlow,
    MfaModule,
    SetupFlow,
    UserMeta,
    UsernamePasswordLoginFlow,
    hookimpl,
)

USER_SCHEMA = vol.Schema({vol.Required("username"): str, vol.Required("password"): str, vol.Optional("name"): str})


class ExampleAuthProvider(AuthProvider):
    """Users and passwords listed in the configuration."""

    TYPE = "insecure_example"
    CONFIG_SCHEMA = AuthProvider.CONFIG_SCHEMA.extend({vol.Required("users"): [USER_SCHEMA]}, extra=vol.PREVENT_EXTRA)

    async def async_login_flow(self, context: dict[str, Any]) -> LoginFlow:
        """A username/password form."""
        return ExampleLoginFlow(self)

    def async_validate_login(self, username: str, password: str) -> None:
        """Raise InvalidAuthError unless username and password match a configured user."""
        found = None
        for user in self.config["users"]:
            # Compare with every user in constant time so timing does not reveal usernames.
            if hmac.compare_digest(username.encode(), user["username"].encode()):
                found = user
        if found is None:
            hmac.compare_digest(password.encode(), password.encode())
            raise InvalidAuthError
        if not hmac.compare_digest(found["password"].encode(), password.encode()):
            raise InvalidAuthError

    def credential_data(self, flow_result: dict[str, Any]) -> dict[str, Any]:
        """Credentials are keyed by username."""
        return {"username": flow_result["username"]}

    async def async_user_meta_for_credentials(self, credentials: Credentials) -> UserMeta:
        """The configured name."""
        for user in self.config["users"]:
            if user["username"] == credentials.data["username"]:
                return UserMeta(name=user.get("name"), is_active=True)
        return UserMeta(name=None, is_active=True)


class ExampleLoginFlow(UsernamePasswordLoginFlow):
    """Username and password."""


class ExampleMfaModule(MfaModule):
    """A PIN per user, listed in the configuration and kept in memory."""

    TYPE = "insecure_example"
    DEFAULT_TITLE = "Insecure Personal Identify Number"
    CONFIG_SCHEMA = MfaModule.CONFIG_SCHEMA.extend(
        {vol.Required("data"): [vol.Schema({vol.Required("user_id"): str, vol.Required("pin"): str})]},
        extra=vol.PREVENT_EXTRA,
    )

    def __init__(self, auth: Any, config: dict[str, Any]) -> None:
        """Copy the configured PINs."""
        super().__init__(auth, config)
        self._data = [dict(entry) for entry in config["data"]]

    @property
    def input_schema(self) -> vol.Schema:
        """One field: pin."""
        return vol.Schema({vol.Required("pin"): str})

    async def async_setup_flow(self, user_id: str) -> SetupFlow:
        """The generic one-form setup."""
        return SetupFlow(self, self.input_schema, user_id)

    async def async_setup_user(self, user_id: str, setup_data: Any) -> Any:
        """Set (or replace) the user's PIN."""
        pin = setup_data["pin"]
        for entry in self._data:
            if entry["user_id"] == user_id:
                entry["pin"] = pin
                return pin
        self._data.append({"user_id": user_id, "pin": pin})
        return pin

    async def async_depose_user(self, user_id: str) -> None:
        """Forget the user's PIN."""
        self._data = [entry for entry in self._data if entry["user_id"] != user_id]

    async def async_is_user_setup(self, user_id: str) -> bool:
        """Whether the user has a PIN."""
        return any(entry["user_id"] == user_id for entry in self._data)

    async def async_validate(self, user_id: str, user_input: dict[str, Any]) -> bool:
        """Exact PIN match."""
        pin = user_input.get("pin")
        for entry in self._data:
            if entry["user_id"] == user_id and isinstance(pin, str):
                return hmac.compare_digest(entry["pin"].encode(), pin.encode())
        return False


@hookimpl
def opp_auth_register_auth_providers(register: Any) -> None:
    """Ship the example provider."""
    register(ExampleAuthProvider)


@hookimpl
def opp_auth_register_mfa_modules(register: Any) -> None:
    """Ship the example MFA module."""
    register(ExampleMfaModule)
