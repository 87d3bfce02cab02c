"""Websocket commands of the local provider: config/auth_provider/openpeerpower/*.

Home Assistant's clients send the same commands as
config/auth_provider/homeassistant/*; both names reach whichever local
provider is configured (type openpeerpower or homeassistant).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import voluptuous as vol

from opp_auth import Credentials, InvalidAuthError, User, is_safe_username, websocket

if TYPE_CHECKING:
    from . import LocalAuthProvider


TYPES = ("openpeerpower", "homeassistant")
PREFIX = "config/auth_provider/openpeerpower/"
HA_PREFIX = "config/auth_provider/homeassistant/"


def _provider(conn: websocket.ActiveConnection) -> LocalAuthProvider:
    """The configured local provider, or an error reply."""
    for provider_type in TYPES:
        from . import LocalAuthProvider  # the package imports this module

        provider = conn.context.get_auth_provider(provider_type, None)
        if isinstance(provider, LocalAuthProvider):
            return provider
    raise websocket.CommandError(
        "not_configured", "The local auth provider (openpeerpower or homeassistant) is not configured"
    )


def _local_credentials(user: User) -> Credentials | None:
    """The user's local login credentials."""
    return next((c for c in user.credentials if c.auth_provider_type in TYPES), None)


_COMMANDS: dict[Any, tuple[dict[Any, Any], bool]] = {}
_ADMIN = {"create", "delete", "admin_change_password", "admin_change_username"}


def _command(schema: dict[Any, Any]) -> Any:
    """websocket_command, remembering the schema (and whether admins only) for the Home Assistant alias."""

    def decorate(func: Any) -> Any:
        handler = websocket.command(schema)(func)
        _COMMANDS[handler] = (schema, func.__name__ in _ADMIN)
        return handler

    return decorate


async def _revoke_tokens(conn: websocket.ActiveConnection, user: User, keep: str | None) -> None:
    """After a password change, every other session must log in again (G10)."""
    for token in list(user.refresh_tokens.values()):
        if token.id != keep:
            await conn.context.async_remove_refresh_token(token)


@websocket.require_admin
@_command(
    {
        vol.Required("type"): "config/auth_provider/openpeerpower/create",
        vol.Required("user_id"): str,
        vol.Required("username"): vol.All(str, vol.Length(min=1, max=100)),
        vol.Required("password"): str,
    }
)
async def create(conn: websocket.ActiveConnection, msg: dict[str, Any]) -> None:
    """Give a user a username and password."""
    provider = _provider(conn)
    user = conn.context.get_user(msg["user_id"])
    if user is None:
        raise websocket.CommandError("not_found", "User not found")
    if user.system_generated:
        raise websocket.CommandError("system_generated", "Cannot add credentials to a system generated user.")
    if _local_credentials(user) is not None:
        raise websocket.CommandError("credentials_exist", "User already has a username")
    if not is_safe_username(msg["username"]):
        # The login form would refuse it: the user could never log in.
        raise websocket.CommandError(
            "invalid_username", "Username must not contain control, format or line separator characters"
        )
    if provider.data.get(msg["username"]) is not None:
        raise websocket.CommandError("username_exists", "Username already exists")
    try:
        await provider.async_add_auth(msg["username"], msg["password"])
    except ValueError as err:
        raise websocket.CommandError("invalid_password", str(err)) from err
    except Exception as err:
        raise websocket.CommandError("username_exists", str(err)) from err
    credentials = await provider.async_get_or_create_credentials({"username": msg["username"]})
    await conn.context.async_link_user(user, credentials)
    conn.send_result(msg["id"])


@websocket.require_admin
@_command({vol.Required("type"): "config/auth_provider/openpeerpower/delete", vol.Required("username"): str})
async def delete(conn: websocket.ActiveConnection, msg: dict[str, Any]) -> None:
    """Remove a username (and its credentials); never the owner's (G9)."""
    provider = _provider(conn)
    credentials = provider.async_find_credentials({"username": msg["username"]})
    if credentials is not None:
        owner = conn.context.user_for_credentials(credentials)
        if owner is not None and owner.is_owner:
            raise websocket.CommandError("cannot_delete_owner", "Unable to remove the owner's username")
        await conn.context.async_remove_credentials(credentials)
        conn.send_result(msg["id"])
        return
    if provider.data.get(msg["username"]) is None:
        raise websocket.CommandError("auth_not_found", "Given username was not found.")
    await provider.async_remove_auth(msg["username"])
    conn.send_result(msg["id"])


@_command(
    {
        vol.Required("type"): "config/auth_provider/openpeerpower/change_password",
        vol.Required("current_password"): str,
        vol.Required("new_password"): str,
    }
)
async def change_password(conn: websocket.ActiveConnection, msg: dict[str, Any]) -> None:
    """Change your own password; other sessions are signed out (G10)."""
    provider = _provider(conn)
    credentials = _local_credentials(conn.user)
    if credentials is None:
        raise websocket.CommandError("credentials_not_found", "Credentials not found")
    username = credentials.data["username"]
    wait = await conn.context.async_login_retry_after(conn.remote, username)
    if wait > 0:
        raise websocket.CommandError("too_many_attempts", conn.context.too_many_attempts_message(wait))
    try:
        await provider.async_validate_login(username, msg["current_password"])
    except InvalidAuthError:
        conn.context.note_login_failure(conn.remote, provider.key, username, "invalid_current_password")
        raise websocket.CommandError("invalid_current_password", "Invalid current password") from None
    try:
        await provider.async_change_password(username, msg["new_password"])
    except ValueError as err:
        raise websocket.CommandError("invalid_password", str(err)) from err
    await _revoke_tokens(conn, conn.user, keep=conn.refresh_token_id)
    conn.send_result(msg["id"])


@websocket.require_admin
@_command(
    {
        vol.Required("type"): "config/auth_provider/openpeerpower/admin_change_password",
        vol.Required("user_id"): str,
        vol.Required("password"): str,
    }
)
async def admin_change_password(conn: websocket.ActiveConnection, msg: dict[str, Any]) -> None:
    """The owner sets another user's password; that user's sessions end (G10)."""
    if not conn.user.is_owner:
        raise websocket.Unauthorized()
    provider = _provider(conn)
    user = conn.context.get_user(msg["user_id"])
    if user is None:
        raise websocket.CommandError("user_not_found", "User not found")
    credentials = _local_credentials(user)
    if credentials is None:
        raise websocket.CommandError("credentials_not_found", "Credentials not found")
    try:
        await provider.async_change_password(credentials.data["username"], msg["password"])
    except ValueError as err:
        raise websocket.CommandError("invalid_password", str(err)) from err
    await _revoke_tokens(conn, user, keep=conn.refresh_token_id if user.id == conn.user.id else None)
    conn.send_result(msg["id"])


@websocket.require_admin
@_command(
    {
        vol.Required("type"): "config/auth_provider/openpeerpower/admin_change_username",
        vol.Required("user_id"): str,
        vol.Required("username"): vol.All(str, vol.Length(min=1, max=100)),
    }
)
async def admin_change_username(conn: websocket.ActiveConnection, msg: dict[str, Any]) -> None:
    """An administrator renames a user's login (Home Assistant's frontend offers it); sessions stay valid."""
    from . import InvalidUser  # the package imports this module first

    provider = _provider(conn)
    user = conn.context.get_user(msg["user_id"])
    if user is None:
        raise websocket.CommandError("user_not_found", "User not found")
    credentials = _local_credentials(user)
    if credentials is None:
        raise websocket.CommandError("credentials_not_found", "Credentials not found")
    try:
        await provider.async_change_username(credentials, msg["username"])
    except ValueError as err:  # InvalidUsername: one the login form would refuse
        raise websocket.CommandError("invalid_username", str(err)) from err
    except InvalidUser as err:
        raise websocket.CommandError(
            "username_exists" if "exists" in str(err) else "invalid_username", str(err)
        ) from err
    conn.send_result(msg["id"])


def _ha_alias(handler: Any) -> Any:
    """The handler again under Home Assistant's command name, with the same guard."""
    schema, admin = _COMMANDS[handler]

    async def alias(conn: websocket.ActiveConnection, msg: dict[str, Any]) -> None:
        """Run the openpeerpower command."""
        await handler(conn, msg)

    ha_schema = {
        key: (HA_PREFIX + value.removeprefix(PREFIX) if str(key) == "type" else value) for key, value in schema.items()
    }
    alias = websocket.command(ha_schema)(alias)
    return websocket.require_admin(alias) if admin else alias


def register_commands(register: Any) -> None:
    """Register every command of this module, under both names."""
    for handler in (create, delete, change_password, admin_change_password, admin_change_username):
        register(handler)
        register(_ha_alias(handler))
