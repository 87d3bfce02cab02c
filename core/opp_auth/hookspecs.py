"""Every hook opp-auth calls. Each docstring is the reference documentation.

pluggy calls hooks synchronously. An implementation of a hook marked
"awaited" may return an awaitable and the core awaits it. Hooks are only ever
added, never renamed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from aiohttp import web

    from .manager import AuthManager
    from .models import Credentials, RefreshToken, User

PROJECT = "opp_auth"

hookspec = pluggy.HookspecMarker(PROJECT)

RAISE = object()
"""Failure kind of registration hooks: the plugin's exception fails start-up with a message naming it."""

FAIL_CLOSED_RETRY_AFTER = 30.0
"""Seconds a login waits when a throttling plugin failed to answer (fail closed)."""

HOOK_FAILURE: dict[str, Any] = {
    # Login decisions fail closed.
    "opp_auth_authenticate_request": False,
    "opp_auth_login_retry_after": FAIL_CLOSED_RETRY_AFTER,
    # Events and lifecycle: the failure is logged, the others still run.
    "opp_auth_startup": None,
    "opp_auth_shutdown": None,
    "opp_auth_login_failed": None,
    "opp_auth_login_succeeded": None,
    "opp_auth_user_created": None,
    "opp_auth_user_updated": None,
    "opp_auth_user_removed": None,
    "opp_auth_refresh_token_created": None,
    "opp_auth_refresh_token_removed": None,
}
"""What a failing implementation answers, by hook; a hook not listed (registrations, plugins' own
hooks) fails start-up with a message naming the plugin and its distribution."""


@hookspec(historic=True)
def opp_auth_add_hookspecs(pm: pluggy.PluginManager) -> None:
    """Add hook specifications of a plugin's own (the notify module adds its delivery platforms).

    :param pm: the plugin manager; call ``pm.add_hookspecs(module)``.

    Historic: plugins registered later still receive the call.
    """


@hookspec
def opp_auth_register_auth_providers(register: Any) -> None:
    """Register the auth provider classes this plugin ships.

    :param register: call ``register(ProviderClass)`` once per class. The class
        subclasses :class:`opp_auth.AuthProvider` and sets ``TYPE`` (the YAML
        ``type``) and ``CONFIG_SCHEMA``. Registering a type twice is an error
        naming both distributions.
    """


@hookspec
def opp_auth_register_mfa_modules(register: Any) -> None:
    """Register the multi-factor auth module classes this plugin ships.

    :param register: call ``register(ModuleClass)`` once per class; the class
        subclasses :class:`opp_auth.MfaModule` and sets ``TYPE``.
    """


@hookspec(firstresult=True)
def opp_auth_authenticate_request(request: web.Request, auth: AuthManager) -> Any:
    """Authenticate an HTTP request that carried no valid bearer token or signed path.

    :param request: the aiohttp request (``opp_auth.client_ip(request)`` is
        the client address after reverse-proxy handling).
    :param auth: the auth manager.
    :return: ``None`` when the request is not this plugin's to judge (the next
        implementation is asked), else an awaitable or value that resolves to a
        :class:`opp_auth.User` (authenticated), or ``False`` (refused).

    The first non-None result wins.
    """


@hookspec
def opp_auth_register_config(register: Any, pm: pluggy.PluginManager) -> None:
    """Own a top-level block of configuration.yaml.

    :param register: call ``register(block_name, schema)``; the block is
        validated with the voluptuous ``schema`` and its result is available as
        ``auth.config_blocks[block_name]``. A block that is absent is validated
        as ``None``.
    :param pm: the plugin manager (optional to accept), for a schema that asks
        the plugin's own hooks (the notify module's delivery platforms).
    """


@hookspec
def opp_auth_register_routes(app: web.Application, auth: AuthManager) -> None:
    """Add aiohttp routes to the application before it starts."""


@hookspec
def opp_auth_register_websocket_commands(register: Any) -> None:
    """Add websocket commands.

    :param register: call ``register(handler, schema)`` where ``schema`` is a
        voluptuous dict schema containing ``vol.Required("type"): "<command>"``.
    """


@hookspec
def opp_auth_register_commands(cli: Any) -> None:
    """Add sub-commands to the ``opp-auth`` command line.

    :param cli: an ``argparse`` sub-parsers object; set ``func`` with
        ``parser.set_defaults(func=...)`` taking ``(args)`` and returning an exit code.
    """


@hookspec
def opp_auth_startup(auth: AuthManager) -> Any:
    """Open resources (connection pools, mail clients) when the server starts. Awaited."""


@hookspec
def opp_auth_shutdown(auth: AuthManager) -> Any:
    """Close resources when the server stops. Awaited."""


@hookspec
def opp_auth_login_failed(
    auth: AuthManager, remote_ip: str | None, provider: tuple[str, str | None] | None, username: str | None, reason: str
) -> Any:
    """A login attempt or request failed authentication (ban, lockout, audit, metrics). Awaited.

    :param reason: ``invalid_auth``, ``invalid_code``, ``invalid_token`` or another error key.
    """


@hookspec
def opp_auth_login_succeeded(
    auth: AuthManager, remote_ip: str | None, user: User | None, credential: Credentials | None
) -> Any:
    """A login finished successfully. Awaited."""


@hookspec
def opp_auth_user_created(auth: AuthManager, user: User) -> Any:
    """A user was created. Awaited."""


@hookspec
def opp_auth_user_updated(auth: AuthManager, user: User) -> Any:
    """A user was renamed, (de)activated or regrouped. Awaited."""


@hookspec
def opp_auth_user_removed(auth: AuthManager, user: User) -> Any:
    """A user was removed. Awaited."""


@hookspec
def opp_auth_refresh_token_created(auth: AuthManager, refresh_token: RefreshToken) -> Any:
    """A refresh token was created. Awaited."""


@hookspec
def opp_auth_refresh_token_removed(auth: AuthManager, refresh_token: RefreshToken) -> Any:
    """A refresh token was removed (revoked, deleted, or its user removed). Awaited."""


@hookspec
def opp_auth_login_retry_after(auth: AuthManager, remote_ip: str | None, username: str | None) -> Any:
    """Seconds ``remote_ip`` must wait before it may try to log in as ``username`` (throttling).

    Called before each login step (password, MFA code, websocket auth,
    change-password); not awaited, so answer from memory. Return ``None`` or
    ``0`` to let the attempt through; the largest answer of all plugins wins.
    ``username`` is None when the attempt names no account (websocket auth).
    """
