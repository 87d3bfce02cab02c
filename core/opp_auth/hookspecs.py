"""Every hook opp-auth calls. Each docstring is the reference documentation.

Every hook is called through pluggy (``pm.hook.<name>(...)``): an
implementation may accept any subset of the arguments, and
``@hookimpl(wrapper=True)`` works on every hook but the historic one. pluggy
calls are synchronous; an implementation of a hook whose docstring says
"Awaited" may return an awaitable and the core awaits it. Each docstring says
how results combine (every implementation called, or the first non-None
result wins) and what one plugin's exception does (``HOOK_FAILURE``). Hooks
are only ever added, never renamed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from aiohttp import web

    from .backend import StorageBackend
    from .context import PluginContext
    from .events import AuthEvent
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
    "opp_auth_event": None,
    "opp_auth_new_device_login": None,
    "opp_auth_audit_sink": None,
}
"""What a failing implementation answers, by hook; a hook not listed (registrations, plugins' own
hooks) fails start-up with a message naming the plugin and its distribution."""


@hookspec(historic=True)
def opp_auth_add_hookspecs(pm: pluggy.PluginManager) -> None:
    """Add hook specifications of a plugin's own (the notify module adds its delivery platforms).

    :param pm: the plugin manager; call ``pm.add_hookspecs(module)``.

    Results: none (every implementation is called). Not awaited. Historic:
    plugins registered later still receive the call, so no wrappers. An
    exception stops start-up naming the plugin.
    """


@hookspec
def opp_auth_register_auth_providers(register: Any) -> None:
    """Register the auth provider classes this plugin ships.

    :param register: call ``register(ProviderClass)`` once per class. The class
        subclasses :class:`opp_auth.AuthProvider` and sets ``TYPE`` (the YAML
        ``type``) and ``CONFIG_SCHEMA``. Registering a type twice is an error
        naming both distributions.

    Results: none (every implementation is called). Not awaited. An exception
    stops start-up with a message naming the plugin and its distribution.
    """


@hookspec
def opp_auth_register_mfa_modules(register: Any) -> None:
    """Register the multi-factor auth module classes this plugin ships.

    :param register: call ``register(ModuleClass)`` once per class; the class
        subclasses :class:`opp_auth.MfaModule` and sets ``TYPE``.

    Results: none (every implementation is called). Not awaited. An exception
    stops start-up with a message naming the plugin and its distribution.
    """


@hookspec
def opp_auth_register_stores(register: Any) -> None:
    """Register the storage backend classes this plugin ships (the store seam, ``opp_auth.backend``).

    :param register: call ``register(BackendClass)`` once per class. The class
        subclasses :class:`opp_auth.StorageBackend` and sets ``TYPE`` (the
        ``openpeerpower: storage: type:`` of configuration.yaml) and
        ``CONFIG_SCHEMA`` (validates the whole ``storage:`` block, ``type``
        included). ``json`` is the core's own. Registering a type twice is an
        error naming both distributions.

    Results: none (every implementation is called). Not awaited. An exception
    stops start-up with a message naming the plugin and its distribution.
    """


@hookspec(firstresult=True)
def opp_auth_authenticate_request(request: web.Request, auth: PluginContext) -> Any:
    """Authenticate an HTTP request that carried no valid bearer token or signed path.

    :param request: the aiohttp request, routed (``request.match_info`` is
        its route; for a sub-application's route ``request.app`` is that
        sub-application: reach the server through ``auth``).
        ``opp_auth.client_ip(request)`` is the client address after
        reverse-proxy handling. Asked before aiohttp answers ``Expect:
        100-continue``, so do not read the body: a client waiting for the 100
        would never send it.
    :param auth: the :class:`opp_auth.PluginContext` of the server.
    :return: ``None`` when the request is not this plugin's to judge (the next
        implementation is asked), else a :class:`opp_auth.User`
        (authenticated), ``False`` (refused), or an awaitable resolving to one
        of those -- decide synchronously whether to answer, since a returned
        awaitable is an answer.

    Results: the first non-None result wins. Awaited. The user then passes the
    same access decision as every other way in (active, ``local_only``). An
    exception refuses the request (fail closed) and is logged naming the plugin.
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

    Results: none (every implementation is called). Not awaited. An exception
    stops start-up naming the plugin.
    """


@hookspec
def opp_auth_register_routes(app: web.Application, auth: PluginContext) -> None:
    """Add aiohttp routes to the application before it starts.

    :param app: the aiohttp application; add routes with ``app.router``. They
        run behind the core's pipeline (filter, bans, authentication, CORS);
        guard handlers with ``opp_auth.http_require_auth`` / ``http_require_admin``.
    :param auth: the :class:`opp_auth.PluginContext` of the server.

    Results: none (every implementation is called). Not awaited. An exception
    stops start-up naming the plugin.
    """


@hookspec
def opp_auth_register_websocket_commands(register: Any) -> None:
    """Add websocket commands.

    :param register: call ``register(handler)`` for a handler decorated with
        ``@opp_auth.websocket.command(schema)``, or ``register(handler, schema)``
        where ``schema`` is a voluptuous dict schema containing
        ``vol.Required("type"): "<command>"``; guard it with
        ``opp_auth.websocket.require_admin`` / ``websocket.require_user``.

    Results: none (every implementation is called). Not awaited. An exception
    stops start-up naming the plugin.
    """


@hookspec
def opp_auth_register_commands(cli: Any) -> None:
    """Add sub-commands to the ``opp-auth`` command line.

    :param cli: an ``argparse`` sub-parsers object; set ``func`` with
        ``parser.set_defaults(func=...)`` taking ``(args)`` and returning an exit code.

    Results: none (every implementation is called). Not awaited. An exception
    stops the program naming the plugin.
    """


@hookspec
def opp_auth_startup(auth: PluginContext) -> Any:
    """Open resources (connection pools, mail clients) when the server starts.

    :param auth: the :class:`opp_auth.PluginContext` of the server.

    Results: none (every implementation is called). Awaited. An exception is
    logged naming the plugin; the server still starts.
    """


@hookspec
def opp_auth_shutdown(auth: PluginContext) -> Any:
    """Close resources when the server stops.

    :param auth: the :class:`opp_auth.PluginContext` of the server.

    Results: none (every implementation is called). Awaited. An exception is
    logged naming the plugin; the others still run.
    """


@hookspec
def opp_auth_login_failed(
    auth: PluginContext,
    remote_ip: str | None,
    provider: tuple[str, str | None] | None,
    username: str | None,
    reason: str,
) -> Any:
    """A login attempt or request failed authentication (ban, lockout, audit, metrics).

    :param auth: the :class:`opp_auth.PluginContext` of the server.
    :param remote_ip: the client address after reverse-proxy handling, or None.
    :param provider: ``(type, id)`` of the provider the attempt was made with, or None.
    :param username: the name the attempt gave (as typed), or None.
    :param reason: ``invalid_auth``, ``invalid_code``, ``invalid_token`` or another error key.

    Results: none (every implementation is called). Awaited, in the background
    (the client's answer does not wait). An exception is logged naming the plugin.
    """


@hookspec
def opp_auth_login_succeeded(
    auth: PluginContext, remote_ip: str | None, user: User | None, credential: Credentials | None
) -> Any:
    """A login finished successfully (a code was issued, or a websocket passed its auth phase).

    :param auth: the :class:`opp_auth.PluginContext` of the server.
    :param remote_ip: the client address after reverse-proxy handling, or None.
    :param user: the user who logged in, or None when the credentials are not linked yet.
    :param credential: the credentials of the login, or None (websocket).

    Results: none (every implementation is called). Awaited, in the
    background. An exception is logged naming the plugin.
    """


@hookspec
def opp_auth_user_created(auth: PluginContext, user: User) -> Any:
    """A user was created.

    :param auth: the :class:`opp_auth.PluginContext` of the server.
    :param user: the new user (saved).

    Results: none (every implementation is called). Awaited before the
    operation returns. An exception is logged naming the plugin.
    """


@hookspec
def opp_auth_user_updated(auth: PluginContext, user: User) -> Any:
    """A user was renamed, (de)activated or regrouped.

    :param auth: the :class:`opp_auth.PluginContext` of the server.
    :param user: the user as saved after the change.

    Results: none (every implementation is called). Awaited before the
    operation returns. An exception is logged naming the plugin.
    """


@hookspec
def opp_auth_user_removed(auth: PluginContext, user: User) -> Any:
    """A user was removed (with their credentials and refresh tokens).

    :param auth: the :class:`opp_auth.PluginContext` of the server.
    :param user: the removed user (no longer in the store).

    Results: none (every implementation is called). Awaited before the
    operation returns. An exception is logged naming the plugin.
    """


@hookspec
def opp_auth_refresh_token_created(auth: PluginContext, refresh_token: RefreshToken) -> Any:
    """A refresh token was created.

    :param auth: the :class:`opp_auth.PluginContext` of the server.
    :param refresh_token: the new token (saved; ``refresh_token.user`` is its user).

    Results: none (every implementation is called). Awaited before the
    operation returns. An exception is logged naming the plugin.
    """


@hookspec
def opp_auth_refresh_token_removed(auth: PluginContext, refresh_token: RefreshToken) -> Any:
    """A refresh token was removed (revoked, deleted, expired, or its user removed).

    :param auth: the :class:`opp_auth.PluginContext` of the server.
    :param refresh_token: the removed token; access tokens it minted no longer work.

    Results: none (every implementation is called). Awaited before the
    operation returns. An exception is logged naming the plugin.
    """


@hookspec
def opp_auth_login_retry_after(auth: PluginContext, remote_ip: str | None, username: str | None) -> Any:
    """Seconds ``remote_ip`` must wait before it may try to log in as ``username`` (throttling).

    :param auth: the :class:`opp_auth.PluginContext` of the server.
    :param remote_ip: the client address after reverse-proxy handling, or None.
    :param username: the account the attempt names, or None when it names none
        (websocket auth).
    :return: seconds to wait; ``None`` or ``0`` lets the attempt through.

    Called before each login step (password, MFA code, websocket auth,
    change-password). Results: every implementation is asked and the largest
    answer wins. Not awaited, so answer from memory. An exception counts as
    "wait" (fail closed: ``FAIL_CLOSED_RETRY_AFTER`` seconds) and is logged
    naming the plugin.
    """


@hookspec
def opp_auth_event(auth: PluginContext, event: AuthEvent) -> Any:
    """Any authentication event: the one stream the audit log, metrics and login history read.

    :param auth: the :class:`opp_auth.PluginContext` of the server.
    :param event: an :class:`opp_auth.AuthEvent` (frozen). ``event.type`` is one
        of the documented types (``login_succeeded``, ``login_failed`` with its
        ``reason``, ``mfa_used``, ``refresh_token_created``, ``user_deactivated``,
        ``address_banned``... see docs/audit.md); a plugin ignores types it does
        not know, since new ones may be added. It never carries a password, a
        code, a token or another secret.

    Each event is emitted once, where the thing happens, whatever the way in
    (HTTP, websocket, CLI). Results: none (every implementation is called).
    Awaited, in the background (the action that produced the event does not
    wait, nor fail). An exception is logged naming the plugin. The specific
    hooks (``opp_auth_login_failed``, ``opp_auth_user_created``...) still fire.
    """


@hookspec
def opp_auth_new_device_login(auth: PluginContext, event: AuthEvent) -> Any:
    """A user signed in from a client id or a network never seen for them: the ``new_device_login`` event.

    :param auth: the :class:`opp_auth.PluginContext` of the server.
    :param event: the ``new_device_login`` :class:`opp_auth.AuthEvent`: ``user_id``,
        ``username``, ``provider``, ``client_id``, ``remote_address``, ``user_agent`` of
        the sign-in, and ``details`` ``new`` (``["client"]``, ``["network"]`` or both)
        and ``network`` (the address's IPv4 /24 or IPv6 /64). The user's first recorded
        sign-in is none (nothing to compare with).

    Fired by the login history right after the ``login_succeeded`` it is about; the same
    event also reaches ``opp_auth_event``. This hook exists so that a plugin that only
    alerts users (the notify module) need not receive every event.
    Results: none (every implementation is called). Awaited, in the background (the
    sign-in does not wait, nor fail). An exception is logged naming the plugin.
    """


@hookspec(firstresult=True)
def opp_auth_audit_sink(auth: PluginContext, config: dict[str, Any], storage: StorageBackend) -> Any:
    """Offer where the audit log goes instead of the files under ``<config>/audit`` (a database store's table).

    :param auth: the :class:`opp_auth.PluginContext` of the server (or of an ``opp-auth audit`` command).
    :param config: the validated ``audit:`` block (``keep_days``, ``max_files``...).
    :param storage: the configured :class:`opp_auth.StorageBackend`; a store plugin offers a
        sink when the backend is its own (the PostgreSQL store writes to the same database).
    :return: ``None`` (not mine), or a sink: an object with ``open(version)``
        (find the head of the chain, append an ``audit_started`` record),
        ``append(events, extra)`` (chain and append a record for each
        :class:`opp_auth.AuthEvent`, then one for each ``(type, details)`` of
        ``extra``; durable on return) and ``close()`` (append ``audit_stopped``).
        They are called from the audit log's own thread, one at a time, so
        they may block. Records carry the same fields and hash chain as the
        files (docs/audit.md), so ``opp-auth audit verify`` can check them.
        For ``opp-auth audit show`` and ``verify`` a sink may also offer reading
        (called without ``open``, from a command): ``describe()`` (where the
        records are, for messages), ``read(since)`` (``(place, number, record)``
        in chain order, ``record`` ``None`` when stored text is no record;
        ``since`` an aware datetime or ``None``), ``recorded_head()`` (the last
        ``(seq, hash)`` written, or ``None``) and ``user_ids_named(name)``
        (ids of the users with that name or login name). Without them the
        commands read the files.

    Called once at start-up. Results: the first non-None result wins. Not awaited.
    An exception is logged naming the plugin, and the files are used.
    """
