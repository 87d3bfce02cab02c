"""AuthManager: builds the parts of one server (users, sessions, the login engine, events) and starts and stops them."""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from . import __version__
from .access_tokens import AccessTokens
from .audit import audit_config as validated_audit_config
from .audit import build_audit_log
from .backend import JSON_TYPE, DocumentStore, JsonBackend, StorageBackend
from .codes import AuthorizationCodes
from .context import PluginContext
from .errors import AuthManagerError
from .events import Events
from .executor import Executor, prefer_loop_latency
from .history import LoginHistory
from .login_flow import MAX_FLOWS, LoginFlowManager
from .mfa import MfaModule, MfaSetupFlowManager
from .models import GROUP_ID_ADMIN, KeyRing
from .plugins import OppAuthPluginManager
from .providers import AuthProvider
from .refresh_tokens import PURGE_INTERVAL, REFRESH_TOKEN_EXPIRY, RefreshTokens
from .registry import Registry
from .secret import SECRET_BYTES, SECRET_FILE, load_server_secret
from .sessions import AccessPolicy
from .shares import KnownAddresses, network_checker
from .stats import GAUGE_LOGIN_FLOWS, GAUGE_MFA_SETUP_FLOWS, RuntimeStats
from .store import AuthStore, RemoteChanges
from .user_settings import STORAGE_KEY as USER_SETTINGS_KEY
from .user_settings import STORAGE_VERSION as USER_SETTINGS_VERSION
from .user_settings import UserSettings
from .users import Users

_LOGGER = logging.getLogger(__name__)


class AuthManager:
    """The parts of one application, built together: a facade that builds, starts and stops them.

    Core code asks the part that does the job: :attr:`registry` (providers and MFA
    modules), :attr:`users`, :attr:`refresh_tokens`, :attr:`access_tokens`,
    :attr:`access` (the one access decision), :attr:`login_flow` (the login engine,
    with its authorization :attr:`codes`), :attr:`events`, :attr:`executor`.
    Plugins get :attr:`context` and nothing else.
    """

    def __init__(
        self,
        config_dir: str,
        pm: OppAuthPluginManager,
        *,
        provider_configs: list[tuple[type[AuthProvider], dict[str, Any]]] = (),  # type: ignore[assignment]
        mfa_configs: list[tuple[type[MfaModule], dict[str, Any]]] = (),  # type: ignore[assignment]
        http_config: dict[str, Any] | None = None,
        config_blocks: dict[str, Any] | None = None,
        max_login_flows: int = MAX_FLOWS,
        max_password_checks: int | None = None,
        refresh_token_expiry: timedelta | None = REFRESH_TOKEN_EXPIRY,
        purge_expired_tokens: bool = True,
        mfa_required: str = "everywhere",
        storage: StorageBackend | None = None,
        audit_config: dict[str, Any] | None = None,
    ) -> None:
        """Build providers and modules from validated configuration; call async_setup next.

        storage: where users, tokens and plugin documents persist (default: .storage files).
        """
        self.config_dir = str(config_dir)
        # Before the plugins, which ask for their documents.
        self.backend = storage if storage is not None else JsonBackend({"type": JSON_TYPE}, self.config_dir)
        # Flows in progress, codes, failure counters and bans: this process's memory, or shared (ephemeral.py).
        self.ephemeral = self.backend.ephemeral_state()
        # Called with what another server's committed changes removed (the websocket tracker closes sessions).
        self.remote_listeners: list[Callable[[RemoteChanges], None]] = []
        self.pm = pm
        self.http_config = http_config or {}
        self.config_blocks = config_blocks or {}
        self.executor = Executor(max_password_checks)
        self.context = PluginContext(self)
        self.events = Events(pm, self.context)
        self.audit = build_audit_log(pm, self.context, self.config_dir, audit_config, __version__, self.backend)
        self.registry = Registry(self.context, provider_configs, mfa_configs)
        self.store = AuthStore(
            self.config_dir,
            self.backend,
            key_for=self.registry.credential_key,
            idle_expiry=refresh_token_expiry.total_seconds() if refresh_token_expiry else None,
        )
        self.access = AccessPolicy(self.registry.providers)
        # Addresses accounts logged in from, and trusted networks: their share of what anonymous
        # callers fill (login flows, authorization codes) cannot be taken by strangers (shares.py).
        self.known_addresses = KnownAddresses()
        trusted = network_checker(self.registry.trusted_networks() + list(self.http_config.get("ban_allowlist") or ()))
        self.user_settings = UserSettings(self.storage(USER_SETTINGS_KEY, USER_SETTINGS_VERSION, private=True))
        self.users = Users(self.store, self.registry, self.events, self.user_settings, self.ephemeral)
        self.refresh_tokens = RefreshTokens(
            self.store, self.registry, self.access, self.events, version=__version__, expiry=refresh_token_expiry
        )
        # Token checks counted in the access decision path; gauges read when asked (stats.py).
        self.stats = RuntimeStats()
        self.access_tokens = AccessTokens(
            self.store, self.refresh_tokens, self.access, self.known_addresses, self.stats
        )
        self.login_flow = LoginFlowManager(
            self.registry,
            self.users,
            self.events,
            mfa_required=mfa_required,
            max_flows=max_login_flows,
            known=self.known_addresses,
            trusted=trusted,
            state=self.ephemeral,
        )
        self.mfa_setup_flow = MfaSetupFlowManager(self.registry, self.events)
        self.stats.add_gauge(GAUGE_LOGIN_FLOWS, self.login_flow.count_in_progress)
        self.stats.add_gauge(GAUGE_MFA_SETUP_FLOWS, self.mfa_setup_flow.count_in_progress)
        # Each user's recent sign-ins, failures and devices, from the event stream (history.py).
        self.login_history = LoginHistory(self, validated_audit_config(audit_config).get("history"))
        self._set_up = False
        self._purge = purge_expired_tokens
        self._purge_task: asyncio.Task[None] | None = None

    # ---- lifecycle --------------------------------------------------------------------

    async def async_setup(self) -> None:
        """Load the store and initialise every provider and module (once)."""
        if self._set_up:
            return
        self._set_up = True
        self.pm.check_pending()
        prefer_loop_latency()  # the store's and the audit log's threads run beside the loop from here on
        await self.backend.async_open()
        self.backend.subscribe(self._apply_remote)
        for provider in self.registry.providers.values():
            await provider.async_initialize()
        # The server secret is read off the loop, so the store gets its key ring here, before it loads.
        secret = await self.executor.async_add_executor_job(load_server_secret, self.config_dir)
        # Servers sharing one database must share the secret: the backend refuses another one.
        await self.backend.async_check_secret(hashlib.sha256(b"opp-auth secret fingerprint:" + secret).hexdigest())
        self.store.keyring = KeyRing(secret)
        if self.audit is not None:
            await self.audit.async_start(self.events)
        await self.store.async_load()
        self.store.reindex_credentials()
        self._remember_addresses_of_stored_tokens()
        await self.user_settings.async_load()
        await self.login_history.async_load()
        for module in self.registry.mfa_modules.values():
            await module.async_initialize()
        if self._purge:
            await self.refresh_tokens.async_purge_expired_tokens()
            self._purge_task = asyncio.ensure_future(self.refresh_tokens.async_purge_loop(PURGE_INTERVAL))
        await self.events.async_fire("opp_auth_startup")

    def _remember_addresses_of_stored_tokens(self) -> None:
        """Known addresses from the last_used_ip of the most recently used stored refresh tokens.

        Only as many tokens as KnownAddresses keeps accounts are read (a heap
        selection, not a sort), so a store of 100,000 users adds a few tens of
        milliseconds to the start, not a pass of parsing over every token.
        """
        used = [token for token in self.store.refresh_tokens() if token.last_used_ip]
        recent = heapq.nlargest(
            self.known_addresses.max_accounts,
            used,
            key=lambda token: token.last_used_at.timestamp() if token.last_used_at is not None else 0.0,
        )
        for token in reversed(recent):  # oldest first, so the most recent end up most recent
            self.known_addresses.add(token.user.id, token.last_used_ip)

    async def async_shutdown(self) -> None:
        """Flush pending saves and close plugin resources (once)."""
        if not self._set_up:
            return
        self._set_up = False
        if self._purge_task is not None:
            self._purge_task.cancel()
            self._purge_task = None
        await self.events.async_fire("opp_auth_shutdown")
        for provider in self.registry.providers.values():
            await _quiet(provider.async_shutdown(), "provider shutdown")
        for module in self.registry.mfa_modules.values():
            await _quiet(module.async_shutdown(), "MFA module shutdown")
        await self.events.async_drain()
        await self.login_history.async_flush()
        if self.audit is not None:
            await self.audit.async_stop()
        await self.store.async_flush()
        await self.backend.async_close()

    def _apply_remote(self, records: list[dict[str, Any]]) -> None:
        """Change records another server committed: into the cache, then tell who closes sessions."""
        changes = self.store.apply_remote(records)
        if not (changes.tokens or changes.removed_users or changes.updated_users):
            return
        for listener in self.remote_listeners:
            try:
                listener(changes)
            except Exception:
                _LOGGER.exception("A listener of remote changes failed")

    def storage(
        self,
        key: str,
        version: int,
        *,
        private: bool = True,
        migrate: Callable[[int, Any], Any] | None = None,
        journal: bool = False,
    ) -> DocumentStore:
        """A plugin's document: a versioned JSON file under .storage, or the storage backend's equivalent.

        journal=True: changes saved with Store.async_save_changes cost what changed (see storage.Store).
        """
        return self.backend.document(key, version, private=private, migrate=migrate, journal=journal)

    # ---- read-only views of the parts, under the names callers knew ----------------------

    @property
    def version(self) -> str:
        """The server version string written into tokens."""
        return __version__

    @property
    def codes(self) -> AuthorizationCodes:
        """The login engine's authorization codes."""
        return self.login_flow.codes

    @property
    def auth_providers(self) -> list[AuthProvider]:
        """Providers in configuration order."""
        return self.registry.auth_providers

    @property
    def auth_mfa_modules(self) -> list[MfaModule]:
        """MFA modules in configuration order."""
        return self.registry.auth_mfa_modules

    @property
    def _background(self) -> set[asyncio.Future[Any]]:
        """Background deliveries still running (tests wait on them)."""
        return self.events.background


async def _quiet(awaitable: Any, what: str) -> None:
    """Await, logging instead of raising."""
    try:
        await awaitable
    except Exception:
        _LOGGER.exception("Error during %s", what)


__all__ = [
    "GROUP_ID_ADMIN",
    "SECRET_BYTES",
    "SECRET_FILE",
    "AuthManager",
    "AuthManagerError",
    "load_server_secret",
]
