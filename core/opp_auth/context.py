"""PluginContext: the narrow object a plugin is handed instead of the AuthManager.

A provider and an MFA module find it as ``self.auth``; a websocket command as
``conn.context``; every hook that takes ``auth`` receives it. It is the whole of
what a plugin may ask of the running server:

- files and configuration: :attr:`config_dir`, :attr:`http_config`,
  :attr:`config_blocks`, :attr:`version`, :meth:`storage` (a versioned JSON file
  of the plugin's own under ``.storage``), :attr:`hook` (to call hooks a plugin
  declared itself);
- work off the event loop: :meth:`async_add_executor_job`,
  :meth:`async_password_check` (bounded, for bcrypt and the like);
- users and credentials: :meth:`get_user`, :meth:`users`, :meth:`owner`,
  :meth:`user_for_credentials`, :meth:`credentials_for_provider`,
  :meth:`find_credentials`, :meth:`async_get_or_create_user`,
  :meth:`async_link_user`, :meth:`async_update_user`, :meth:`async_remove_credentials`,
  :meth:`async_forget_credentials`, :meth:`async_update_credentials_data`;
- sessions: :meth:`async_get_refresh_token`, :meth:`async_remove_refresh_token`;
- the other plugins' objects: :meth:`get_auth_provider`,
  :meth:`get_auth_providers`, :meth:`get_auth_mfa_module`,
  :attr:`auth_mfa_modules`;
- login attempts: :meth:`login_retry_after`, :meth:`async_login_retry_after`, :meth:`too_many_attempts_message`,
  :meth:`note_login_failure`;
- short-lived secrets every server must see (several servers on one storage):
  :attr:`shared_state`, :meth:`async_put_shared`, :meth:`async_get_shared`,
  :meth:`async_take_shared` (one namespace for every plugin: prefix your keys
  with your type and id), and :meth:`derive_key` (a key from the server secret,
  to keep a MAC of such a value rather than the value);
- events: :meth:`note_event` (an :class:`~opp_auth.AuthEvent` of the one stream),
  :meth:`subscribe_events` (receive them in line, to count or buffer);
- monitoring: :meth:`runtime_stats` (token checks by outcome, open websocket
  connections, flows in progress), :meth:`observe_requests` (each answered HTTP
  request's route, status and server time, in line).

Everything else of the core is internal and may change between releases.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import AuthManagerError
from .providers import InvalidAuthError
from .throttle import too_many_attempts_message

if TYPE_CHECKING:
    from aiohttp import web

    from .backend import DocumentStore
    from .events import AuthEvent
    from .manager import AuthManager
    from .mfa import MfaModule
    from .models import Credentials, RefreshToken, User
    from .providers import AuthProvider

_T = TypeVar("_T")


class PluginContext:
    """What the server offers a plugin (see the module docstring for the list)."""

    def __init__(self, manager: AuthManager) -> None:
        """Bind to one server's manager (the core builds this; plugins only receive it)."""
        self.__manager = manager

    # ---- files and configuration ---------------------------------------------------------

    @property
    def config_dir(self) -> str:
        """The configuration directory."""
        return self.__manager.config_dir

    @property
    def http_config(self) -> Mapping[str, Any]:
        """The validated ``http:`` block (read-only)."""
        return MappingProxyType(self.__manager.http_config)

    @property
    def config_blocks(self) -> Mapping[str, Any]:
        """Validated top-level blocks plugins registered through ``opp_auth_register_config`` (read-only)."""
        return MappingProxyType(self.__manager.config_blocks)

    @property
    def version(self) -> str:
        """The server version."""
        return self.__manager.version

    @property
    def hook(self) -> Any:
        """pluggy's hook relay, to call hooks a plugin added itself (``opp_auth_add_hookspecs``)."""
        return self.__manager.pm.hook

    def storage(
        self,
        key: str,
        version: int,
        *,
        private: bool = True,
        migrate: Callable[[int, Any], Any] | None = None,
        journal: bool = False,
    ) -> DocumentStore:
        """The plugin's own document ``key``: a versioned JSON file ``.storage/<key>`` (atomic, durable
        writes), or its equivalent in the configured storage backend (``opp_auth.backend``).

        journal=True: ``async_save_changes`` writes only the changed entries (module journal). With a
        shared backend (PostgreSQL), ``listen(callback)`` hears of changes other servers made.
        """
        return self.__manager.storage(key, version, private=private, migrate=migrate, journal=journal)

    # ---- work off the event loop ---------------------------------------------------------

    async def async_add_executor_job(self, func: Callable[..., _T], *args: Any) -> _T:
        """Run blocking work (files, sockets, subprocess waits) in the executor."""
        return await self.__manager.executor.async_add_executor_job(func, *args)

    async def async_password_check(self, func: Callable[..., _T], *args: Any) -> _T:
        """Run a CPU-heavy password check in the executor, a bounded number at once."""
        return await self.__manager.executor.async_password_check(func, *args)

    # ---- users and credentials -----------------------------------------------------------

    def get_user(self, user_id: str) -> User | None:
        """A user by id."""
        return self.__manager.users.get_user(user_id)

    def users(self) -> list[User]:
        """Every user, in creation order."""
        return self.__manager.store.users()

    def owner(self) -> User | None:
        """The owner, if one exists."""
        return self.__manager.users.owner()

    def user_for_credentials(self, credentials: Credentials) -> User | None:
        """The user stored credentials are linked to."""
        return self.__manager.store.user_for_credentials(credentials)

    def credentials_for_provider(self, provider_key: tuple[str, str | None]) -> list[Credentials]:
        """Every stored credential of the provider (type, id)."""
        return self.__manager.store.credentials_for_provider(provider_key)

    def find_credentials(self, provider_key: tuple[str, str | None], data: dict[str, Any]) -> Credentials | None:
        """Stored credentials of the provider with exactly this data (as the provider keys it)."""
        return self.__manager.store.find_credentials(provider_key, data)

    async def async_get_or_create_user(self, credentials: Credentials) -> User:
        """The user behind credentials; new credentials get a new user from the provider's meta.

        Raises :class:`~opp_auth.InvalidAuthError` when that cannot be (e.g. the credentials' user is gone).
        """
        try:
            return await self.__manager.users.async_get_or_create_user(credentials)
        except AuthManagerError as err:
            raise InvalidAuthError(str(err)) from err

    async def async_link_user(self, user: User, credentials: Credentials) -> None:
        """Attach credentials to a user; :class:`~opp_auth.InvalidAuthError` when another user holds them."""
        try:
            await self.__manager.users.async_link_user(user, credentials)
        except AuthManagerError as err:
            raise InvalidAuthError(str(err)) from err

    async def async_remove_credentials(self, credentials: Credentials) -> None:
        """Remove credentials; their provider is told first (``async_will_remove_credentials``)."""
        await self.__manager.users.async_remove_credentials(credentials)

    async def async_forget_credentials(self, credentials: Credentials) -> None:
        """Remove credentials whose provider already dropped its own data (the provider is not told)."""
        await self.__manager.users.async_forget_credentials(credentials)

    async def async_update_credentials_data(self, credentials: Credentials, data: dict[str, Any]) -> None:
        """Replace the data of linked credentials (the provider renamed the login); sessions stay valid."""
        await self.__manager.users.async_update_credentials_data(credentials, data)

    async def async_update_user(
        self, user: User, *, name: str | None = None, group_ids: list[str] | None = None
    ) -> None:
        """Rename or regroup a user, as a provider syncing what its identity provider says at each login."""
        await self.__manager.users.async_update_user(user, name=name, group_ids=group_ids)

    # ---- sessions ----------------------------------------------------------------------------

    async def async_get_refresh_token(self, token_id: str) -> RefreshToken | None:
        """A refresh token by id."""
        return await self.__manager.refresh_tokens.async_get_refresh_token(token_id)

    async def async_remove_refresh_token(self, refresh_token: RefreshToken) -> None:
        """Revoke a refresh token and every access token it minted (open websockets close)."""
        await self.__manager.refresh_tokens.async_remove_refresh_token(refresh_token)

    # ---- providers and modules ---------------------------------------------------------------

    def get_auth_provider(self, provider_type: str, provider_id: str | None) -> AuthProvider | None:
        """A configured provider by (type, id)."""
        return self.__manager.registry.get_auth_provider(provider_type, provider_id)

    def get_auth_providers(self, provider_type: str) -> list[AuthProvider]:
        """Every configured provider of a type."""
        return self.__manager.registry.get_auth_providers(provider_type)

    def get_auth_mfa_module(self, module_id: str) -> MfaModule | None:
        """A configured MFA module by id."""
        return self.__manager.registry.get_auth_mfa_module(module_id)

    @property
    def auth_mfa_modules(self) -> list[MfaModule]:
        """Configured MFA modules in configuration order."""
        return self.__manager.registry.auth_mfa_modules

    # ---- login attempts ------------------------------------------------------------------------

    def login_retry_after(self, remote_ip: str | None, username: str | None) -> float:
        """Seconds remote_ip must wait before trying username again (0: now), as the throttles say."""
        return self.__manager.events.login_retry_after(remote_ip, username)

    async def async_login_retry_after(self, remote_ip: str | None, username: str | None) -> float:
        """login_retry_after, once every failure other servers counted before now is counted here too.

        With a shared storage, a password check outside the login flow (a websocket command that
        asks for the current password) waits for that, as a login step does; StorageError when
        the storage cannot say (the caller refuses: fail closed).
        """
        state = self.__manager.ephemeral
        if state.shared:
            await state.async_barrier()
        return self.__manager.events.login_retry_after(remote_ip, username)

    @staticmethod
    def too_many_attempts_message(wait: float) -> str:
        """The message shown to a throttled client ("Too many login attempts, try again in N seconds")."""
        return too_many_attempts_message(wait)

    def note_login_failure(
        self, remote_ip: str | None, provider: tuple[str, str | None] | None, username: str | None, reason: str
    ) -> None:
        """Report a failed attempt (wrong password or code): throttles, bans and audit hear of it."""
        self.__manager.events.login_failed(remote_ip, provider, username, reason)

    def note_event(self, event_type: str, **values: Any) -> None:
        """Emit an authentication event of event_type where the thing happened (``password_changed``...).

        values: fields of :class:`opp_auth.AuthEvent` (``user_id``, ``username``,
        ``provider``, ``mfa_module``, ``details``...); the address, user agent,
        acting user and way in are filled in from the request or command being
        served. Never pass a password, code or token. Costs nothing when nobody
        listens; a failing consumer is logged, never raised here.
        """
        self.__manager.events.emit(event_type, **values)

    def subscribe_events(self, callback: Callable[[AuthEvent], Any]) -> Callable[[], None]:
        """Call ``callback(event)`` in line for every event from now on; returns the function that unsubscribes.

        For consumers that only count or buffer (a metrics plugin): the callback
        must not block or await; an exception in it is logged and the action that
        produced the event goes on. Unlike implementing ``opp_auth_event``, a
        subscription can start and stop with a feature, so nothing is built for
        nobody. Work that takes time belongs in the ``opp_auth_event`` hook.
        """
        return self.__manager.events.subscribe(callback)

    def observe_requests(self, callback: Callable[[web.Request, int, float], None]) -> Callable[[], None]:
        """Call ``callback(request, status, seconds)`` in line after each HTTP request a route answered;
        returns the function that stops it.

        status: the response's status as the handler (or the pipeline's refusal of an unmatched path:
        404, 405) set it; a file response settles 304, 206 or 416 later, as it is sent, and is
        observed with the status it had before. seconds: the server's time in the route's handling
        (any middleware and the handler, the Expect answer), measured only while an observer is
        registered. A request is observed by the observers registered when its route's handling
        began. A handler that fails with an exception other than aiohttp's HTTP ones (the client
        gets a 500) and a request the client gave up are not observed.
        Requests the pipeline refused before the route (filtered paths, bans, CORS preflights) and
        websocket connections (status 101) are not observed; a redirect raised by the handler is,
        with its status. For counting (a latency histogram): the callback must not block or await;
        an exception in it is logged and the answer goes out unchanged.
        """
        if inspect.iscoroutinefunction(callback):
            raise TypeError("observe_requests takes a plain function: a coroutine function would never run")
        stats = self.__manager.stats
        stats.request_observers = (*stats.request_observers, callback)

        def stop() -> None:
            """Stop observing (again: nothing); a request already being answered still reaches it."""
            observers = stats.request_observers
            for index, observer in enumerate(observers):
                if observer is callback:
                    stats.request_observers = observers[:index] + observers[index + 1 :]
                    return

        return stop

    def derive_key(self, purpose: str) -> bytes:
        """A 32-byte key for purpose, derived from the server secret (``.opp-auth-secret``): the same on
        every server of one storage (they must share the secret), never stored. Name the purpose after
        your type and use (``notify.<module id>.pending``). For MACs of values a reader of the storage
        must not be able to use, such as a login code kept with :meth:`async_put_shared`.
        RuntimeError before the server has read its secret (during a provider's async_initialize).
        """
        keyring = self.__manager.store.keyring
        if keyring is None:
            raise RuntimeError("the server secret is not read yet")
        return keyring.plugin_key(purpose)

    # ---- short-lived values every server sees ---------------------------------------------------

    @property
    def shared_state(self) -> bool:
        """Whether several servers share the storage, so a value one keeps in memory is not seen by the others.

        False (the JSON store, one process): :meth:`async_put_shared` and friends do nothing; keep
        such a value in your own memory. True (PostgreSQL): keep it with them instead.
        """
        return self.__manager.ephemeral.shared

    async def async_put_shared(self, key: str, value: dict[str, Any], ttl: float) -> None:
        """Store value (JSON; a secret only while needed) under key for ttl seconds, replacing any.

        key: prefix it with your type and id (``notify.<module id>.``); the store keys it by a
        digest. Expiry is decided by the storage's clock. StorageError when the storage is away.
        """
        await self.__manager.ephemeral.async_put_value(key, value, ttl)

    async def async_get_shared(self, key: str) -> tuple[dict[str, Any], float] | None:
        """The live value under key and the seconds it has left, or None."""
        return await self.__manager.ephemeral.async_get_value(key)

    async def async_take_shared(self, key: str, expected: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Remove the live value under key and return it: of several servers taking it at once, one gets it.

        expected: only if it is still this value (as async_get_shared returned it); None otherwise.
        """
        return await self.__manager.ephemeral.async_take_value(key, expected)

    # ---- monitoring -----------------------------------------------------------------------------

    def runtime_stats(self) -> dict[str, Any]:
        """The server's runtime figures now, for a monitoring plugin (every key and label from a closed set).

        ``token_checks``: ``{(kind, outcome): count}`` since start, kind ``access_token`` (bearer
        header, websocket auth) or ``signed_path``, outcome ``valid``, ``invalid``, ``user_inactive``,
        ``local_only``, ``session_expired`` or ``provider_refused``. ``gauges``: ``{name: value}`` for
        ``websocket_connections``, ``login_flows_in_progress`` and ``mfa_setup_flows_in_progress``.
        """
        return self.__manager.stats.snapshot()
