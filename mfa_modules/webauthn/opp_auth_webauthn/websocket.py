"""Websocket commands: enrol, list, rename and remove passkeys; an administrator's list and remove.

Adding a passkey needs a recent proof by this session (refresh token): it
logged in less than 5 minutes ago (not through a provider that checks every
request, such as trusted networks: that proves a place), or it re-authenticated with
``auth/webauthn/reauth`` (the password, a code of another enrolled module, or
an enrolled passkey) less than 5 minutes ago. The proof is kept in memory by
the module, per refresh token id; a restart forgets it (fail closed).

Commands (``mfa_module_id`` is optional: the first webauthn module):

- ``auth/webauthn/passkeys`` -> ``{mfa_module_id, passwordless, proof_left, passkeys: [{id, name,
  created_at, last_used_at, model, backed_up}]}``
- ``auth/webauthn/reauth_options`` -> ``{publicKey}`` (request options for a passkey re-authentication)
- ``auth/webauthn/reauth`` with one of ``password``, ``code`` (+ ``code_module_id``), ``credential``
  -> ``{proof_left}``; errors ``invalid_auth`` / ``invalid_code`` / ``too_many_attempts``
- ``auth/webauthn/register_options`` -> ``{publicKey}``; error ``reauth_required`` without a recent proof
- ``auth/webauthn/register`` with ``name`` and ``credential`` (the browser's JSON) -> the new passkey
- ``auth/webauthn/rename`` with ``passkey_id`` and ``name``; ``auth/webauthn/remove`` with ``passkey_id``
- ``auth/webauthn/admin/passkeys`` and ``auth/webauthn/admin/remove`` (administrators) with ``user_id``
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import voluptuous as vol

from opp_auth import websocket

from . import CeremonyError, WebauthnAuthModule  # defined before the package imports this module

MODULE_ID = vol.Optional("mfa_module_id")
TEXT = vol.All(str, vol.Length(max=4096))


def _module(conn: websocket.ActiveConnection, msg: dict[str, Any]) -> WebauthnAuthModule:
    """The webauthn module named by mfa_module_id, else the first configured."""
    wanted = msg.get("mfa_module_id")
    for module in conn.context.auth_mfa_modules:
        if isinstance(module, WebauthnAuthModule) and wanted in (None, module.id):
            return module
    raise websocket.CommandError(
        "no_module",
        "No passkey (webauthn) module is configured"
        if wanted is None
        else f"MFA module {wanted} is not a passkey module",
    )


def _ceremony(err: Exception) -> websocket.CommandError:
    """A CeremonyError or a name error as a command error."""
    if isinstance(err, CeremonyError):
        return websocket.CommandError(err.code, err.message)
    return websocket.CommandError("invalid_format", str(err))


async def _refresh_token(conn: websocket.ActiveConnection) -> Any:
    """The caller's refresh token."""
    token = await conn.context.async_get_refresh_token(conn.refresh_token_id)
    if token is None:
        raise websocket.CommandError("unauthorized", "The session has ended")
    return token


async def _throttle(conn: websocket.ActiveConnection) -> None:
    """Refuse while the caller's address and account are throttled (on every server sharing the storage)."""
    wait = await conn.context.async_login_retry_after(conn.remote, conn.user.name)
    if wait > 0:
        raise websocket.CommandError(
            "too_many_attempts", f"Too many login attempts, try again in {math.ceil(wait)} seconds"
        )


@websocket.require_user(allow_system_user=False)
@websocket.command({vol.Required("type"): "auth/webauthn/passkeys", MODULE_ID: str})
async def passkeys_command(conn: websocket.ActiveConnection, msg: dict[str, Any]) -> None:
    """The caller's passkeys, and how long this session may still add one without re-authenticating."""
    module = _module(conn, msg)
    conn.send_result(
        msg["id"],
        {
            "mfa_module_id": module.id,
            "passwordless": module.passwordless,
            "proof_left": int(module.proof_left(await _refresh_token(conn))),
            "passkeys": module.passkeys(conn.user.id),
        },
    )


@websocket.require_user(allow_system_user=False)
@websocket.command({vol.Required("type"): "auth/webauthn/reauth_options", MODULE_ID: str})
async def reauth_options_command(conn: websocket.ActiveConnection, msg: dict[str, Any]) -> None:
    """Request options to re-authenticate this session with one of the caller's passkeys."""
    module = _module(conn, msg)
    if not await module.async_is_user_setup(conn.user.id):
        raise websocket.CommandError("not_set_up", "You have no passkey yet")
    conn.send_result(msg["id"], {"publicKey": module.request_options(f"reauth:{conn.refresh_token_id}", conn.user.id)})


def _code_input(module: Any, code: str) -> dict[str, str]:
    """The module's login input for a typed code: its one field (code for totp and notify, pin, ...)."""
    keys = [str(getattr(key, "schema", key)) for key in getattr(module.input_schema, "schema", {})]
    return {keys[0] if len(keys) == 1 else "code": code}


async def _password_ok(conn: websocket.ActiveConnection, password: str) -> bool:
    """Whether password is right for one of the caller's username/password credentials."""
    for credentials in conn.user.credentials:
        provider = conn.context.get_auth_provider(credentials.auth_provider_type, credentials.auth_provider_id)
        check = getattr(provider, "async_validate_login", None)
        username = credentials.data.get("username") if isinstance(credentials.data, dict) else None
        if check is None or not isinstance(username, str):
            continue
        try:
            result = check(username, password)
            if inspect.isawaitable(result):
                await result
        except Exception:  # noqa: BLE001 - InvalidAuthError or a provider fault: not a proof either way
            continue
        return True
    return False


@websocket.require_user(allow_system_user=False)
@websocket.command(
    {
        vol.Required("type"): "auth/webauthn/reauth",
        MODULE_ID: str,
        vol.Exclusive("password", "proof"): TEXT,
        vol.Exclusive("code", "proof"): TEXT,
        vol.Exclusive("credential", "proof"): vol.All(str, vol.Length(max=65536)),
        vol.Optional("code_module_id"): str,
    }
)
async def reauth_command(conn: websocket.ActiveConnection, msg: dict[str, Any]) -> None:
    """Prove the password, a code of an enrolled module, or a passkey; this session may add passkeys for 5 minutes."""
    module = _module(conn, msg)
    await _throttle(conn)
    if "password" in msg:
        if not await _password_ok(conn, msg["password"]):
            conn.context.note_login_failure(conn.remote, None, conn.user.name, "invalid_auth")
            raise websocket.CommandError("invalid_auth", "Invalid password")
    elif "code" in msg:
        other = conn.context.get_auth_mfa_module(msg.get("code_module_id") or "totp")
        if other is None or other is module or not await other.async_is_user_setup(conn.user.id):
            raise websocket.CommandError("not_set_up", "That two-factor module is not set up for you")
        if await other.async_validate(conn.user.id, _code_input(other, msg["code"].strip())) is not True:
            conn.context.note_login_failure(conn.remote, None, conn.user.name, "invalid_code")
            raise websocket.CommandError("invalid_code", "Invalid code")
    elif "credential" in msg:
        try:
            await module.async_verify_assertion(
                f"reauth:{conn.refresh_token_id}", msg["credential"], user_id=conn.user.id
            )
        except CeremonyError as err:
            conn.context.note_login_failure(conn.remote, None, conn.user.name, "invalid_code")
            raise websocket.CommandError("invalid_code", err.message) from err
    else:
        raise websocket.CommandError("invalid_format", "Give password, code or credential")
    module.note_proof(conn.refresh_token_id)
    conn.send_result(msg["id"], {"proof_left": int(module.proof_left(await _refresh_token(conn)))})


async def _require_proof(conn: websocket.ActiveConnection, module: WebauthnAuthModule) -> None:
    """A recent login or re-authentication of this session, else reauth_required."""
    if module.proof_left(await _refresh_token(conn)) <= 0:
        raise websocket.CommandError(
            "reauth_required", "Confirm it is you (password or another factor) before adding a passkey"
        )


@websocket.require_user(allow_system_user=False)
@websocket.command({vol.Required("type"): "auth/webauthn/register_options", MODULE_ID: str})
async def register_options_command(conn: websocket.ActiveConnection, msg: dict[str, Any]) -> None:
    """Creation options for a new passkey of the caller (after a recent proof)."""
    module = _module(conn, msg)
    await _require_proof(conn, module)
    name = conn.user.name or conn.user.id
    conn.send_result(
        msg["id"], {"publicKey": module.creation_options(f"register:{conn.refresh_token_id}", conn.user.id, name)}
    )


@websocket.require_user(allow_system_user=False)
@websocket.command(
    {
        vol.Required("type"): "auth/webauthn/register",
        MODULE_ID: str,
        vol.Required("name"): TEXT,
        vol.Required("credential"): vol.All(str, vol.Length(max=65536)),
    }
)
async def register_command(conn: websocket.ActiveConnection, msg: dict[str, Any]) -> None:
    """Verify the browser's new credential for this session's challenge and add it."""
    module = _module(conn, msg)
    await _require_proof(conn, module)
    try:
        passkey = await module.async_register(
            f"register:{conn.refresh_token_id}", conn.user.id, msg["credential"], msg["name"]
        )
    except (CeremonyError, ValueError) as err:
        raise _ceremony(err) from err
    conn.send_result(msg["id"], passkey)


@websocket.require_user(allow_system_user=False)
@websocket.command(
    {
        vol.Required("type"): "auth/webauthn/rename",
        MODULE_ID: str,
        vol.Required("passkey_id"): TEXT,
        vol.Required("name"): TEXT,
    }
)
async def rename_command(conn: websocket.ActiveConnection, msg: dict[str, Any]) -> None:
    """Rename one of the caller's passkeys."""
    module = _module(conn, msg)
    try:
        conn.send_result(msg["id"], await module.async_rename(conn.user.id, msg["passkey_id"], msg["name"]))
    except (CeremonyError, ValueError) as err:
        raise _ceremony(err) from err


@websocket.require_user(allow_system_user=False)
@websocket.command({vol.Required("type"): "auth/webauthn/remove", MODULE_ID: str, vol.Required("passkey_id"): TEXT})
async def remove_command(conn: websocket.ActiveConnection, msg: dict[str, Any]) -> None:
    """Remove one of the caller's passkeys."""
    module = _module(conn, msg)
    try:
        await module.async_remove(conn.user.id, msg["passkey_id"])
    except (CeremonyError, ValueError) as err:
        raise _ceremony(err) from err
    conn.send_result(msg["id"])


@websocket.require_admin
@websocket.command(
    {vol.Required("type"): "auth/webauthn/admin/passkeys", MODULE_ID: str, vol.Required("user_id"): TEXT}
)
async def admin_passkeys_command(conn: websocket.ActiveConnection, msg: dict[str, Any]) -> None:
    """A user's passkeys (administrators)."""
    module = _module(conn, msg)
    if conn.context.get_user(msg["user_id"]) is None:
        raise websocket.CommandError("not_found", "User not found")
    conn.send_result(msg["id"], {"mfa_module_id": module.id, "passkeys": module.passkeys(msg["user_id"])})


@websocket.require_admin
@websocket.command(
    {
        vol.Required("type"): "auth/webauthn/admin/remove",
        MODULE_ID: str,
        vol.Required("user_id"): TEXT,
        vol.Required("passkey_id"): TEXT,
    }
)
async def admin_remove_command(conn: websocket.ActiveConnection, msg: dict[str, Any]) -> None:
    """Remove a user's passkey (administrators), e.g. a lost phone."""
    module = _module(conn, msg)
    try:
        await module.async_remove(msg["user_id"], msg["passkey_id"])
    except (CeremonyError, ValueError) as err:
        raise _ceremony(err) from err
    conn.send_result(msg["id"])


def register_commands(register: Any) -> None:
    """Every command of this module."""
    for handler in (
        passkeys_command,
        reauth_options_command,
        reauth_command,
        register_options_command,
        register_command,
        rename_command,
        remove_command,
        admin_passkeys_command,
        admin_remove_command,
    ):
        register(handler)
