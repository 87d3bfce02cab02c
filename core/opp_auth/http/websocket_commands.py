"""The core websocket commands: the profile's auth/* and the administrators' config/auth/*."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import timedelta
from json.encoder import encode_basestring_ascii
from math import isfinite
from typing import TYPE_CHECKING, Any

import voluptuous as vol
from aiohttp import web

from ..errors import AuthManagerError
from ..flow import FlowError, InvalidInput, TooManyFlows, UnknownFlow, UnknownHandler
from ..models import GROUP_ID_ADMIN, TOKEN_TYPE_LONG_LIVED_ACCESS_TOKEN, RefreshToken, User
from ..providers import LOCAL_PROVIDER_TYPES, InvalidAuthError
from ..stats import GAUGE_WEBSOCKET_CONNECTIONS
from . import ban_commands, history_commands
from .serialize import serialize_schema
from .websocket_api import (
    WS_COMMANDS_KEY,
    WS_CONNECTIONS_KEY,
    ActiveConnection,
    CommandError,
    CommandRegistry,
    ConnectionTracker,
    Unauthorized,
    require_admin,
    require_user,
    websocket_command,
    websocket_handler,
)

if TYPE_CHECKING:
    from ..manager import AuthManager


def user_info(user: User) -> dict[str, Any]:
    """A user as config/auth/list shows it."""
    username = None
    for cred in user.credentials:
        if cred.auth_provider_type in LOCAL_PROVIDER_TYPES:
            username = cred.data.get("username")
            break
    return {
        "id": user.id,
        "username": username,
        "name": user.name,
        "is_owner": user.is_owner,
        "is_active": user.is_active,
        "system_generated": user.system_generated,
        "local_only": user.local_only,
        "group_ids": user.group_ids,
        "credentials": [{"type": c.auth_provider_type} for c in user.credentials],
    }


@require_user()
@websocket_command({vol.Required("type"): "auth/current_user"})
async def current_user(conn: ActiveConnection, msg: dict[str, Any]) -> None:
    """The caller's identity, credentials and MFA modules."""
    user = conn.user
    enabled = await conn.auth.users.async_get_enabled_mfa(user)
    conn.send_result(
        msg["id"],
        {
            "id": user.id,
            "name": user.name,
            "is_owner": user.is_owner,
            "is_admin": user.is_admin,
            "credentials": [
                {"auth_provider_type": c.auth_provider_type, "auth_provider_id": c.auth_provider_id}
                for c in user.credentials
            ],
            "mfa_modules": [
                {"id": module.id, "name": module.name, "enabled": module.id in enabled}
                for module in conn.auth.registry.auth_mfa_modules
            ],
        },
    )


@require_user()
@websocket_command(
    {
        vol.Required("type"): "auth/long_lived_access_token",
        vol.Required("lifespan"): vol.All(int, vol.Range(min=1, max=36500)),
        vol.Required("client_name"): vol.All(str, vol.Length(min=1, max=100)),
        vol.Optional("client_icon"): vol.Any(str, None),
    }
)
async def long_lived_access_token(conn: ActiveConnection, msg: dict[str, Any]) -> None:
    """A long-lived access token; only the access token is ever shown."""
    auth = conn.auth
    session = conn.refresh_token
    try:
        refresh_token = await auth.refresh_tokens.async_create_refresh_token(
            conn.user,
            # Bound to the session's credentials, so a provider that confines its sessions (trusted
            # networks) confines this token too, and removing those credentials removes it.
            credential=session.credential if session is not None else None,
            client_name=msg["client_name"],
            client_icon=msg.get("client_icon"),
            token_type=TOKEN_TYPE_LONG_LIVED_ACCESS_TOKEN,
            access_token_expiration=timedelta(days=msg["lifespan"]),
        )
    except ValueError as err:
        raise CommandError("invalid_info", str(err)) from err
    refresh_token.token = None  # a long-lived token's refresh secret is never revealed
    try:
        access_token = await auth.access_tokens.async_create_access_token(refresh_token, conn.remote)
    except InvalidAuthError as err:
        await auth.refresh_tokens.async_remove_refresh_token(refresh_token)
        raise Unauthorized(str(err)) from err
    conn.send_result(msg["id"], access_token)


def _token_info(token: RefreshToken, current_id: str, expire_at: float | None) -> dict[str, Any]:
    """A refresh token as the profile lists it (never its secret)."""
    return {
        "id": token.id,
        "client_id": token.client_id,
        "client_name": token.client_name,
        "client_icon": token.client_icon,
        "type": token.token_type,
        "created_at": token.created_iso,
        "is_current": token.id == current_id,
        "last_used_at": token.last_used_at.isoformat() if token.last_used_at else None,
        "last_used_ip": token.last_used_ip,
        "expire_at": expire_at,
        # Home Assistant's profile shows which provider a session came from.
        "auth_provider_type": token.credential.auth_provider_type if token.credential else None,
    }


def _json_value(value: Any) -> str:
    """Any value as send_message encodes it."""
    return json.dumps(value, default=str)


def _json_number(value: Any) -> str:
    """expire_at as send_message encodes it (a finite float is its repr, the common case)."""
    if value.__class__ is float and isfinite(value):
        return repr(value)
    return "null" if value is None else json.dumps(value, default=str)


def token_list_json(tokens: Iterable[RefreshToken], current_id: str, expire_at: Callable[[RefreshToken], Any]) -> str:
    """The JSON text of [_token_info(...) for each token], built in one pass.

    A user may hold 10,000 tokens: building a dict per token and encoding the list took
    about 9 µs a token; this writes each object's text directly (about a third of that).
    Strings take the C encoder's path; anything else (a number in a field an old file
    holds) is encoded as send_message would.
    """
    enc = encode_basestring_ascii
    val = _json_value
    parts = []
    for token in tokens:
        client_id, client_name, client_icon = token.client_id, token.client_name, token.client_icon
        last_used_at, last_used_ip, cred = token.last_used_at, token.last_used_ip, token.credential
        token_id = token.id
        parts.append(
            f'{{"id":{enc(token_id) if token_id.__class__ is str else val(token_id)},'
            f'"client_id":{"null" if client_id is None else enc(client_id) if client_id.__class__ is str else val(client_id)},'
            f'"client_name":{"null" if client_name is None else enc(client_name) if client_name.__class__ is str else val(client_name)},'
            f'"client_icon":{"null" if client_icon is None else enc(client_icon) if client_icon.__class__ is str else val(client_icon)},'
            f'"type":{enc(token.token_type) if token.token_type.__class__ is str else val(token.token_type)},'
            f'"created_at":{enc(token.created_iso)},'
            f'"is_current":{"true" if token_id == current_id else "false"},'
            f'"last_used_at":{"null" if last_used_at is None else enc(last_used_at.isoformat())},'
            f'"last_used_ip":{"null" if last_used_ip is None else enc(last_used_ip) if last_used_ip.__class__ is str else val(last_used_ip)},'
            f'"expire_at":{_json_number(expire_at(token))},'
            f'"auth_provider_type":{"null" if cred is None else enc(cred.auth_provider_type) if cred.auth_provider_type.__class__ is str else val(cred.auth_provider_type)}}}'
        )
    return "[" + ",".join(parts) + "]"


@require_user()
@websocket_command({vol.Required("type"): "auth/refresh_tokens"})
async def refresh_tokens(conn: ActiveConnection, msg: dict[str, Any]) -> None:
    """The caller's refresh tokens (the text of [_token_info(...)], built directly: see token_list_json)."""
    conn.send_result_json(
        msg["id"], token_list_json(conn.user.token_list, conn.refresh_token_id, conn.auth.refresh_tokens.expire_at)
    )


@require_user()
@websocket_command(
    {
        vol.Required("type"): "auth/refresh_token_set_expiry",
        vol.Required("refresh_token_id"): str,
        vol.Required("enable_expiry"): bool,
    }
)
async def refresh_token_set_expiry(conn: ActiveConnection, msg: dict[str, Any]) -> None:
    """Switch idle expiry of one of the caller's tokens on or off."""
    token = conn.user.get_token(msg["refresh_token_id"])
    if token is None:
        raise CommandError("invalid_token_id", "Received invalid token")
    await conn.auth.refresh_tokens.async_set_expiry(token, msg["enable_expiry"])
    conn.send_result(msg["id"], {})


@require_user()
@websocket_command({vol.Required("type"): "auth/delete_refresh_token", vol.Required("refresh_token_id"): str})
async def delete_refresh_token(conn: ActiveConnection, msg: dict[str, Any]) -> None:
    """Delete one of the caller's refresh tokens (its sessions end)."""
    token = conn.user.get_token(msg["refresh_token_id"])
    if token is None:
        raise CommandError("invalid_token_id", "Received invalid token")
    await conn.auth.refresh_tokens.async_remove_refresh_token(token)
    conn.send_result(msg["id"], {})


@require_user()
@websocket_command(
    {
        vol.Required("type"): "auth/delete_all_refresh_tokens",
        vol.Optional("token_type"): vol.In(["normal", "long_lived_access_token"]),
        vol.Optional("delete_current_token", default=True): bool,
    }
)
async def delete_all_refresh_tokens(conn: ActiveConnection, msg: dict[str, Any]) -> None:
    """Delete the caller's refresh tokens (all, or of one type); the current one last."""
    auth = conn.auth
    current = None
    others = []
    for token in conn.user.token_list:
        if "token_type" in msg and token.token_type != msg["token_type"]:
            continue
        if token.id == conn.refresh_token_id:
            current = token
            continue
        others.append(token)
    # One durable write for all of them (10,000 tokens are not 10,000 fsyncs).
    await auth.refresh_tokens.async_remove_refresh_tokens(others)
    if current is not None and msg["delete_current_token"]:
        await auth.refresh_tokens.async_remove_refresh_token(current)
    conn.send_result(msg["id"], {})


@require_user()
@websocket_command(
    {
        vol.Required("type"): "auth/sign_path",
        vol.Required("path"): vol.All(str, vol.Match(r"^/")),
        vol.Optional("expires", default=30): vol.All(int, vol.Range(min=1, max=86400)),
    }
)
async def sign_path(conn: ActiveConnection, msg: dict[str, Any]) -> None:
    """A signed URL path the caller can hand to something without a token."""
    conn.send_result(
        msg["id"],
        {
            "path": conn.auth.access_tokens.sign_path(
                msg["path"], timedelta(seconds=msg["expires"]), conn.refresh_token_id
            )
        },
    )


def _setup_result_json(result: dict[str, Any]) -> dict[str, Any]:
    """An MFA setup flow result; create_entry keeps its data (minus secrets the module hid)."""
    data = dict(result)
    if data.get("type") == "form":
        data["data_schema"] = serialize_schema(result.get("data_schema"))
    data.pop("result", None)
    return data


@require_user(allow_system_user=False)
@websocket_command(
    {
        vol.Required("type"): "auth/setup_mfa",
        vol.Exclusive("mfa_module_id", "module_or_flow_id"): str,
        vol.Exclusive("flow_id", "module_or_flow_id"): str,
        vol.Optional("user_input"): dict,
    }
)
async def setup_mfa(conn: ActiveConnection, msg: dict[str, Any]) -> None:
    """Start or continue enrolment in an MFA module; the flow belongs to its starter (G15)."""
    flow_manager = conn.auth.mfa_setup_flow
    if "flow_id" in msg:
        try:
            flow = flow_manager.async_get(msg["flow_id"])
        except UnknownFlow:
            raise CommandError("invalid_flow_id", "Invalid flow specified") from None
        if flow.context.get("user_id") != conn.user.id:
            raise CommandError("invalid_flow_id", "Invalid flow specified")
        try:
            result = await flow_manager.async_configure(msg["flow_id"], msg.get("user_input"))
        except InvalidInput as err:
            raise CommandError("invalid_format", f"User input malformed: {err}") from err
        except FlowError as err:
            raise CommandError("invalid_flow_id", "Invalid flow specified") from err
        conn.send_result(msg["id"], _setup_result_json(result))
        return
    module_id = msg.get("mfa_module_id")
    if module_id is None:
        raise CommandError("invalid_format", "mfa_module_id or flow_id is required")
    try:
        result = await flow_manager.async_init(module_id, context={"user_id": conn.user.id})
    except UnknownHandler:
        raise CommandError("no_module", f"MFA module {module_id} is not found") from None
    except TooManyFlows:
        raise CommandError("too_many_flows", "Too many MFA set-ups in progress, try again later") from None
    conn.send_result(msg["id"], _setup_result_json(result))


@require_user(allow_system_user=False)
@websocket_command({vol.Required("type"): "auth/depose_mfa", vol.Required("mfa_module_id"): str})
async def depose_mfa(conn: ActiveConnection, msg: dict[str, Any]) -> None:
    """Leave an MFA module."""
    module_id = msg["mfa_module_id"]
    try:
        await conn.auth.users.async_disable_user_mfa(conn.user, module_id)
    except Exception as err:
        raise CommandError("disable_failed", f"Cannot disable MFA Module {module_id}: {err}") from err
    conn.send_result(msg["id"], "done")


@websocket_command({vol.Required("type"): "frontend/get_user_data", vol.Optional("key"): str})
async def get_user_data(conn: ActiveConnection, msg: dict[str, Any]) -> None:
    """The caller's stored preferences (language, theme, ...)."""
    conn.send_result(msg["id"], {"value": conn.auth.user_settings.get(conn.user.id, msg.get("key"))})


@websocket_command(
    {
        vol.Required("type"): "frontend/set_user_data",
        vol.Required("key"): vol.All(str, vol.Length(min=1, max=64)),
        vol.Required("value"): object,
    }
)
async def set_user_data(conn: ActiveConnection, msg: dict[str, Any]) -> None:
    """Store one of the caller's preferences."""
    try:
        await conn.auth.user_settings.async_update(conn.user.id, {msg["key"]: msg["value"]})
    except ValueError as err:
        raise CommandError("invalid_format", str(err)) from err
    conn.send_result(msg["id"])


# ---- user administration (config/auth/*) --------------------------------------------------


@require_admin
@websocket_command({vol.Required("type"): "config/auth/list"})
async def config_auth_list(conn: ActiveConnection, msg: dict[str, Any]) -> None:
    """Every user."""
    conn.send_result(msg["id"], [user_info(u) for u in await conn.auth.users.async_get_users()])


@require_admin
@websocket_command(
    {
        vol.Required("type"): "config/auth/create",
        vol.Required("name"): vol.All(str, vol.Length(min=1, max=100)),
        vol.Optional("group_ids"): [str],
        vol.Optional("local_only"): bool,
    }
)
async def config_auth_create(conn: ActiveConnection, msg: dict[str, Any]) -> None:
    """Create a user (never an owner: G9)."""
    try:
        user = await conn.auth.users.async_create_user(
            msg["name"], msg.get("group_ids"), local_only=msg.get("local_only", False)
        )
    except AuthManagerError as err:
        raise CommandError("invalid_group", str(err)) from err
    conn.send_result(msg["id"], {"user": user_info(user)})


@require_admin
@websocket_command(
    {
        vol.Required("type"): "config/auth/update",
        vol.Required("user_id"): str,
        vol.Optional("name"): vol.All(str, vol.Length(min=1, max=100)),
        vol.Optional("is_active"): bool,
        vol.Optional("group_ids"): [str],
        vol.Optional("local_only"): bool,
    }
)
async def config_auth_update(conn: ActiveConnection, msg: dict[str, Any]) -> None:
    """Rename, (de)activate or regroup a user; the owner cannot be demoted (G9)."""
    auth = conn.auth
    user = await auth.users.async_get_user(msg["user_id"])
    if user is None:
        raise CommandError("not_found", "User not found")
    if user.system_generated:
        raise CommandError("cannot_modify_system_generated", "Unable to update system generated users.")
    if user.is_owner and msg.get("is_active") is False:
        raise CommandError("cannot_deactivate_owner", "Unable to deactivate owner.")
    if user.is_owner and "group_ids" in msg and GROUP_ID_ADMIN not in msg["group_ids"]:
        raise CommandError("cannot_modify_owner", "Unable to remove the owner from the administrators.")
    if user.id == conn.user.id and msg.get("is_active") is False:
        raise CommandError("cannot_deactivate_self", "Unable to deactivate your own account.")
    try:
        await auth.users.async_update_user(
            user,
            name=msg.get("name"),
            is_active=msg.get("is_active"),
            group_ids=msg.get("group_ids"),
            local_only=msg.get("local_only"),
        )
    except AuthManagerError as err:
        raise CommandError("invalid_group", str(err)) from err
    conn.send_result(msg["id"], {"user": user_info(user)})


@require_admin
@websocket_command({vol.Required("type"): "config/auth/delete", vol.Required("user_id"): str})
async def config_auth_delete(conn: ActiveConnection, msg: dict[str, Any]) -> None:
    """Delete a user (not yourself, not the owner: G9)."""
    if msg["user_id"] == conn.user.id:
        raise CommandError("no_delete_self", "Unable to delete your own account")
    user = await conn.auth.users.async_get_user(msg["user_id"])
    if user is None:
        raise CommandError("not_found", "User not found")
    if user.is_owner:
        raise CommandError("cannot_delete_owner", "Unable to delete the owner")
    await conn.auth.users.async_remove_user(user)
    conn.send_result(msg["id"])


@websocket_command(
    {
        vol.Required("type"): "supported_features",
        vol.Required("features"): vol.Schema({str: vol.Any(int, float)}),
    }
)
async def supported_features(conn: ActiveConnection, msg: dict[str, Any]) -> None:
    """Home Assistant's clients announce what they understand (coalesce_messages); nothing here changes by it."""
    conn.send_result(msg["id"])


def register_core_commands(registry: CommandRegistry) -> None:
    """Register the core commands."""
    for handler in (
        supported_features,
        current_user,
        long_lived_access_token,
        refresh_tokens,
        delete_refresh_token,
        refresh_token_set_expiry,
        delete_all_refresh_tokens,
        sign_path,
        setup_mfa,
        depose_mfa,
        get_user_data,
        set_user_data,
        config_auth_list,
        config_auth_create,
        config_auth_update,
        config_auth_delete,
    ):
        registry.register(handler)
    ban_commands.register(registry)
    history_commands.register(registry)


def setup_websocket(app: web.Application, auth: AuthManager) -> CommandRegistry:
    """Register /api/websocket, the core commands and the plugins' commands."""
    registry = CommandRegistry()
    register_core_commands(registry)
    auth.pm.hook.opp_auth_register_websocket_commands(register=registry)
    tracker = ConnectionTracker()
    app[WS_COMMANDS_KEY] = registry
    app[WS_CONNECTIONS_KEY] = tracker
    auth.pm.register(tracker, name=f"opp_auth.websocket.{id(tracker)}")
    auth.stats.add_gauge(GAUGE_WEBSOCKET_CONNECTIONS, tracker.count_all)
    auth.remote_listeners.append(tracker.remote_changes)
    app.on_cleanup.append(lambda _app: _unregister(auth, tracker))
    app.router.add_get("/api/websocket", websocket_handler)
    return registry


async def _unregister(auth: AuthManager, tracker: ConnectionTracker) -> None:
    """Drop the tracker plugin at shutdown."""
    if auth.pm.is_registered(tracker):
        auth.pm.unregister(tracker)
    if tracker.remote_changes in auth.remote_listeners:
        auth.remote_listeners.remove(tracker.remote_changes)
