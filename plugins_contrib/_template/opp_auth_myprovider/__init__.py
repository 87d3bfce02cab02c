"""Template auth provider (type ``myprovider``): one account whose bcrypt hash is in configuration.yaml.

Copy plugins_contrib/_template, rename it (README.md lists the steps) and grow
this into your provider. It imports only opp_auth's public API, as every plugin must.
"""

from __future__ import annotations

import hmac
from typing import Any

import bcrypt
import voluptuous as vol

from opp_auth import (
    AuthProvider,
    Credentials,
    InvalidAuthError,
    LoginFlow,
    UserMeta,
    UsernamePasswordLoginFlow,
    hookimpl,
)

# bcrypt reads only the first 72 bytes of a password (and bcrypt>=5 refuses longer ones).
BCRYPT_MAX_BYTES = 72


def _bcrypt_hash(value: Any) -> str:
    """A bcrypt hash ($2b$..., $2y$... or $2a$...), checked when the configuration is loaded."""
    if not isinstance(value, str) or not value.startswith(("$2a$", "$2b$", "$2y$")) or len(value) != 60:
        raise vol.Invalid("must be a bcrypt hash, e.g. from: htpasswd -nB username")
    return value


# Each provider validates its own block: the base keys (type, name, id) plus its own, nothing else.
CONFIG_SCHEMA = AuthProvider.CONFIG_SCHEMA.extend(
    {
        vol.Required("username"): vol.All(str, vol.Length(min=1)),
        vol.Required("password_hash"): _bcrypt_hash,
    },
    extra=vol.PREVENT_EXTRA,
)


def check_login(username: str, password: str, expected_username: str, password_hash: str) -> bool:
    """Whether username and password are right (blocking: bcrypt; run it via auth.async_password_check)."""
    try:
        # The hash is checked whatever the username, so a wrong name takes as long as a wrong password.
        password_ok = bcrypt.checkpw(
            password.encode("utf-8")[:BCRYPT_MAX_BYTES], password_hash.replace("$2y$", "$2b$", 1).encode()
        )
        return hmac.compare_digest(username.encode("utf-8"), expected_username.encode("utf-8")) and password_ok
    except ValueError:  # unencodable input, or bcrypt refusing it: not a valid login
        return False


class MyAuthProvider(AuthProvider):
    """One account, configured with its username and a bcrypt hash of its password."""

    TYPE = "myprovider"
    DEFAULT_TITLE = "My provider"
    CONFIG_SCHEMA = CONFIG_SCHEMA

    async def async_login_flow(self, context: dict[str, Any]) -> LoginFlow:
        """A new login attempt; context has ip_address, client_id, redirect_uri and credential_only."""
        return MyLoginFlow(self)

    async def async_validate_login(self, username: str, password: str) -> None:
        """Raise InvalidAuthError unless the login is right; bcrypt runs off the event loop, bounded."""
        ok = await self.auth.async_password_check(
            check_login, username, password, self.config["username"], self.config["password_hash"]
        )
        if not ok:
            raise InvalidAuthError

    def credential_data(self, flow_result: dict[str, Any]) -> dict[str, Any]:
        """What identifies the person: the same data finds the same user at the next login."""
        return {"username": flow_result["username"]}

    async def async_user_meta_for_credentials(self, credentials: Credentials) -> UserMeta:
        """Name, active flag and group (None: the core's default, system-users) of a new user."""
        return UserMeta(name=credentials.data["username"], is_active=True, group=None)


class MyLoginFlow(UsernamePasswordLoginFlow):
    """The username/password step; the inherited steps then ask for MFA when the user enabled it.

    It calls MyAuthProvider.async_validate_login and finishes with {"username": ...}; override
    async_check_login to return something else, or subclass LoginFlow for a different form.
    """


@hookimpl
def opp_auth_register_auth_providers(register: Any) -> None:
    """Called once at start-up: register every provider class this distribution ships."""
    register(MyAuthProvider)
