"""AuthManager: the operations everything else (HTTP, websocket, CLI, plugins) calls."""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import ipaddress
import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from . import __version__
from . import events as ev
from .audit import build_audit_log
from .backend import JSON_TYPE, DocumentStore, JsonBackend, StorageBackend
from .codes import AuthorizationCodes
from .context import PluginContext
from .errors import AuthManagerError
from .events import Events
from .history import LoginHistory
from .login_flow import MAX_FLOWS, LoginFlowManager
from .mfa import MfaModule, MfaSetupFlowManager
from .models import (
    ACCESS_TOKEN_EXPIRATION,
    GROUP_ID_ADMIN,
    GROUP_ID_USER,
    TOKEN_TYPE_LONG_LIVED_ACCESS_TOKEN,
    TOKEN_TYPE_NORMAL,
    TOKEN_TYPE_SYSTEM,
    Credentials,
    KeyRing,
    RefreshToken,
    User,
    utcnow,
)
from .network import is_local_address
from .plugins import OppAuthPluginManager
from .providers import LOCAL_PROVIDER_TYPES, AuthProvider, InvalidAuthError, credential_lookup_key
from .sessions import AccessPolicy
from .shares import KnownAddresses, network_checker
from .stats import GAUGE_LOGIN_FLOWS, GAUGE_MFA_SETUP_FLOWS, OUTCOME_INVALID, OUTCOME_VALID, RuntimeStats
from .storage import StorageError
from .store import AuthStore, RemoteChanges
from .tokens import EXP_LEEWAY, TokenCache, check_claims, decode_jwt, encode_jwt, unverified_claims, verify_signature
from .user_settings import UserSettings

_LOGGER = logging.getLogger(__name__)
_T = TypeVar("_T")

REFRESH_TOKEN_EXPIRY = timedelta(days=90)
PURGE_INTERVAL = 3600.0
SECRET_FILE = ".opp-auth-secret"
SECRET_BYTES = 32


class AuthManager:
    """Users, tokens, providers and MFA modules of one application."""

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
        # Called with what another server's committed changes removed (the websocket tracker closes sessions).
        self.remote_listeners: list[Callable[[RemoteChanges], None]] = []
        self.pm = pm
        self.http_config = http_config or {}
        self.config_blocks = config_blocks or {}
        self.mfa_required = mfa_required
        self.store = AuthStore(self.config_dir, self.backend)
        self.context = PluginContext(self)
        self.events = Events(pm, self.context)
        self.audit = build_audit_log(pm, self.context, self.config_dir, audit_config, __version__)
        self._providers: OrderedDict[tuple[str, str | None], AuthProvider] = OrderedDict()
        for cls, conf in provider_configs:
            provider = cls(self.context, conf)
            self._providers[provider.key] = provider
        self._mfa_modules: OrderedDict[str, MfaModule] = OrderedDict()
        for mcls, conf in mfa_configs:
            module = mcls(self.context, conf)
            self._mfa_modules[module.id] = module
        # Providers an MFA module adds (a passkey login): key -> the module, whose factor their flow proves.
        self._offered_by: dict[tuple[str, str | None], str] = {}
        for module in self._mfa_modules.values():
            extra = module.login_provider()
            if extra is not None and extra.key in self._providers:
                _LOGGER.error(
                    "MFA module %s offers login provider %s, which is already configured", module.id, extra.key
                )
            elif extra is not None:
                self._providers[extra.key] = extra
                self._offered_by[extra.key] = module.id
        self.access = AccessPolicy(self._providers)
        # Addresses accounts logged in from, and trusted networks: their share of what anonymous
        # callers fill (login flows, authorization codes) cannot be taken by strangers (shares.py).
        self.known_addresses = KnownAddresses()
        trusted = network_checker(
            [
                net
                for p in self._providers.values()
                for net in (getattr(p, "trusted_networks", None) or ())
                if isinstance(net, (ipaddress.IPv4Network, ipaddress.IPv6Network))
            ]
            + list(self.http_config.get("ban_allowlist") or ())
        )
        self.login_flow = LoginFlowManager(self, max_flows=max_login_flows, known=self.known_addresses, trusted=trusted)
        self.mfa_setup_flow = MfaSetupFlowManager(self)
        # Token checks counted in the access decision path; gauges read when asked (stats.py).
        self.stats = RuntimeStats()
        self.stats.add_gauge(GAUGE_LOGIN_FLOWS, self.login_flow.count_in_progress)
        self.stats.add_gauge(GAUGE_MFA_SETUP_FLOWS, self.mfa_setup_flow.count_in_progress)
        self.user_settings = UserSettings(self)
        # Each user's recent sign-ins, failures and devices, from the event stream (history.py).
        self.login_history = LoginHistory(self)
        # One-time authorization codes; only the login engine (login_flow.py) issues them. Fair shares
        # by address like the login flows (shares.py).
        self.codes = AuthorizationCodes(known=self.known_addresses, trusted=trusted)
        self._token_cache = TokenCache()
        self._password_checks = asyncio.Semaphore(max_password_checks or max(2, os.cpu_count() or 2))
        self._sign_secret = secrets.token_hex(32)
        self._set_up = False
        self.refresh_token_expiry = refresh_token_expiry
        self._purge = purge_expired_tokens
        self._keyring: KeyRing | None = None
        self._purge_task: asyncio.Task[None] | None = None

    # ---- lifecycle --------------------------------------------------------------------

    async def async_setup(self) -> None:
        """Load the store and initialise every provider and module (once)."""
        if self._set_up:
            return
        self._set_up = True
        self.pm.check_pending()
        await self.backend.async_open()
        self.backend.subscribe(self._apply_remote)
        for provider in self._providers.values():
            await provider.async_initialize()
        self.store.key_for = self._credential_key
        secret = await self.async_add_executor_job(load_server_secret, self.config_dir)
        await self.backend.async_check_secret(hashlib.sha256(b"opp-auth secret fingerprint:" + secret).hexdigest())
        self._keyring = KeyRing(secret)
        self.store.keyring = self._keyring
        if self.audit is not None:
            await self.audit.async_start(self.events)
        self.store.idle_expiry = self.refresh_token_expiry.total_seconds() if self.refresh_token_expiry else None
        await self.store.async_load()
        self.store.reindex_credentials()
        self._remember_addresses_of_stored_tokens()
        await self.user_settings.async_load()
        await self.login_history.async_load()
        for module in self._mfa_modules.values():
            await module.async_initialize()
        if self._purge:
            await self.async_purge_expired_tokens()
            self._purge_task = asyncio.ensure_future(self._async_purge_loop())
        await self._async_fire("opp_auth_startup")

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
        await self._async_fire("opp_auth_shutdown")
        for provider in self._providers.values():
            await _quiet(provider.async_shutdown(), "provider shutdown")
        for module in self._mfa_modules.values():
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

    @property
    def version(self) -> str:
        """The server version string written into tokens."""
        return __version__

    # ---- executors ----------------------------------------------------------------------

    async def async_add_executor_job(self, func: Callable[..., _T], *args: Any) -> _T:
        """Run blocking work in the default executor."""
        return await asyncio.get_running_loop().run_in_executor(None, func, *args)

    async def async_password_check(self, func: Callable[..., _T], *args: Any) -> _T:
        """Run a CPU-heavy password check off the loop, a bounded number at once."""
        async with self._password_checks:
            return await asyncio.get_running_loop().run_in_executor(None, func, *args)

    # ---- providers and modules ------------------------------------------------------------

    @property
    def auth_providers(self) -> list[AuthProvider]:
        """Providers in configuration order."""
        return list(self._providers.values())

    def get_auth_provider(self, provider_type: str, provider_id: str | None) -> AuthProvider | None:
        """A provider by (type, id)."""
        if not isinstance(provider_type, str) or not (provider_id is None or isinstance(provider_id, str)):
            return None
        return self._providers.get((provider_type, provider_id))

    def local_provider(self) -> AuthProvider | None:
        """The local username/password provider: type openpeerpower, or homeassistant in a Home Assistant directory."""
        for provider_type in LOCAL_PROVIDER_TYPES:
            provider = self._providers.get((provider_type, None))
            if provider is not None:
                return provider
        return None

    def mfa_module_offering(self, provider: AuthProvider) -> str | None:
        """The id of the MFA module that added this login provider (its flow proves that factor), or None."""
        if self._providers.get(provider.key) is not provider:
            return None
        return self._offered_by.get(provider.key)

    def get_auth_providers(self, provider_type: str) -> list[AuthProvider]:
        """Every configured provider of a type."""
        return [p for p in self._providers.values() if p.type == provider_type]

    @property
    def auth_mfa_modules(self) -> list[MfaModule]:
        """MFA modules in configuration order."""
        return list(self._mfa_modules.values())

    def get_auth_mfa_module(self, module_id: str) -> MfaModule | None:
        """An MFA module by id."""
        return self._mfa_modules.get(module_id)

    def _credential_key(self, provider_type: str, provider_id: str | None, data: dict[str, Any]) -> str:
        """Index key of credential data as the issuing provider normalises it."""
        provider = self._providers.get((provider_type, provider_id))
        if provider is None:
            return credential_lookup_key(data)
        return provider.credential_key(data)

    def _provider_for(self, credentials: Credentials) -> AuthProvider | None:
        """The configured provider that issued credentials."""
        return self._providers.get(credentials.provider_key)

    # ---- users ------------------------------------------------------------------------------

    async def async_get_users(self) -> list[User]:
        """All users."""
        return self.store.users()

    async def async_get_user(self, user_id: str) -> User | None:
        """A user by id."""
        return self.store.get_user(user_id)

    def get_user(self, user_id: str) -> User | None:
        """A user by id (synchronous)."""
        return self.store.get_user(user_id)

    def owner(self) -> User | None:
        """The owner, if one exists."""
        return self.store.owner()

    def has_non_system_user(self) -> bool:
        """Whether any person (not an integration) has an account."""
        return self.store.has_non_system_user()

    def _groups_for(self, group_ids: list[str] | None) -> list[Any]:
        """Resolve group ids or refuse."""
        groups = []
        for gid in group_ids or []:
            group = self.store.get_group(gid)
            if group is None:
                raise AuthManagerError("Invalid group specified.")
            groups.append(group)
        return groups

    async def async_create_user(
        self,
        name: str | None,
        group_ids: list[str] | None = None,
        *,
        is_owner: bool = False,
        is_active: bool = True,
        credentials: Credentials | None = None,
        local_only: bool = False,
    ) -> User:
        """Create a person's account (owner only when the caller says so, e.g. onboarding).

        Credentials given here are linked in the same write, so a crash never
        leaves the account without its login.
        """
        user = User(
            name=name, is_owner=is_owner, is_active=is_active, local_only=local_only, groups=self._groups_for(group_ids)
        )
        if credentials is not None and self.store.find_credentials(credentials.provider_key, credentials.data) not in (
            None,
            credentials,
        ):
            raise AuthManagerError("Credential is already linked to another user")
        self.store.add_user(user)
        if credentials is not None:
            self.store.link_credentials(user, credentials)
        await self.store.async_save()
        await self._async_fire("opp_auth_user_created", user=user)
        self.events.user(ev.USER_CREATED, user, credentials)
        return user

    async def async_create_system_user(self, name: str, group_ids: list[str] | None = None) -> User:
        """Create an account for an integration: never an owner, tokens of type system only."""
        user = User(name=name, system_generated=True, is_active=True, groups=self._groups_for(group_ids))
        self.store.add_user(user)
        await self.store.async_save()
        await self._async_fire("opp_auth_user_created", user=user)
        self.events.user(ev.USER_CREATED, user)
        return user

    async def async_get_or_create_user(self, credentials: Credentials) -> User:
        """The user behind credentials; new credentials get a new user from the provider's meta."""
        if not credentials.is_new:
            user = self.store.user_for_credentials(credentials)
            if user is None:
                raise AuthManagerError("Unable to find the user.")
            return user
        provider = self._provider_for(credentials)
        if provider is None:
            raise AuthManagerError("Credential with unknown provider encountered")
        meta = await provider.async_user_meta_for_credentials(credentials)
        # Two codes of logins that both found no credentials hold two new Credentials for one person: once
        # one of them made the user, the other is refused (never a second user with the same credential key).
        existing = self.store.find_credentials(credentials.provider_key, credentials.data)
        if existing is not None and existing is not credentials:
            raise AuthManagerError("These credentials belong to a user created meanwhile; log in again")
        group_id = meta.group or GROUP_ID_USER
        user = User(
            name=meta.name, is_active=meta.is_active, local_only=meta.local_only, groups=self._groups_for([group_id])
        )
        self.store.add_user(user)
        self.store.link_credentials(user, credentials)
        await self.store.async_save()
        await self._async_fire("opp_auth_user_created", user=user)
        self.events.user(ev.USER_CREATED, user, credentials)
        return user

    async def async_link_user(self, user: User, credentials: Credentials) -> None:
        """Attach credentials to a user (refused when another user holds them)."""
        if not credentials.is_new:
            owner = self.store.user_for_credentials(credentials)
            if owner is not None and owner.id != user.id:
                raise AuthManagerError("Credential is already linked to another user")
            if owner is not None:
                return
        existing = self.store.find_credentials(credentials.provider_key, credentials.data)
        if existing is not None and existing is not credentials:
            raise AuthManagerError("Credential is already linked to another user")
        self.store.link_credentials(user, credentials)
        await self.store.async_save()
        self.events.user(ev.CREDENTIALS_ADDED, user, credentials)

    async def async_remove_user(self, user: User) -> None:
        """Delete a user, their credentials (and provider logins) and tokens."""
        for cred in list(user.credentials):
            provider = self._provider_for(cred)
            if provider is not None:
                await provider.async_will_remove_credentials(cred)
        tokens = self.store.remove_user(user)
        await self.store.async_save()
        for module in self._mfa_modules.values():
            try:
                if await module.async_is_user_setup(user.id):
                    await module.async_depose_user(user.id)
            except Exception:
                _LOGGER.exception("MFA module %s failed to depose removed user %s", module.id, user.id)
        await self.user_settings.async_remove_user(user.id)
        for token in tokens:
            await self._async_fire("opp_auth_refresh_token_removed", refresh_token=token)
            self.events.token(token, created=False, cause="user_removed")
        await self._async_fire("opp_auth_user_removed", user=user)
        self.events.user(ev.USER_REMOVED, user)

    async def async_update_user(
        self,
        user: User,
        name: str | None = None,
        is_active: bool | None = None,
        group_ids: list[str] | None = None,
        local_only: bool | None = None,
    ) -> None:
        """Rename, (de)activate, regroup a user or restrict them to the local network (None: unchanged)."""
        groups = self._groups_for(group_ids) if group_ids is not None else None
        if is_active is False and user.is_owner:
            raise AuthManagerError("Unable to deactivate the owner")
        before = ev.user_state(user)
        self.store.update_user(user, name=name, is_active=is_active, groups=groups, local_only=local_only)
        await self.store.async_save()
        await self._async_fire("opp_auth_user_updated", user=user)
        self.events.user_changed(user, before)

    async def async_activate_user(self, user: User) -> None:
        """Let a user log in."""
        await self.async_update_user(user, is_active=True)

    async def async_deactivate_user(self, user: User) -> None:
        """Stop a user from logging in or using tokens."""
        await self.async_update_user(user, is_active=False)

    async def async_remove_credentials(self, credentials: Credentials) -> None:
        """Remove credentials, and the provider's data for them."""
        provider = self._provider_for(credentials)
        if provider is not None:
            await provider.async_will_remove_credentials(credentials)
        self.store.remove_credentials(credentials)
        await self.store.async_save()
        self.events.credentials_removed(credentials)

    # ---- MFA --------------------------------------------------------------------------------

    async def async_enable_user_mfa(self, user: User, mfa_module_id: str, data: Any) -> None:
        """Enrol a user in a module."""
        if user.system_generated:
            raise AuthManagerError("System generated users cannot enable multi-factor auth module.")
        module = self.get_auth_mfa_module(mfa_module_id)
        if module is None:
            raise AuthManagerError(f"Unable find multi-factor auth module: {mfa_module_id}")
        await module.async_setup_user(user.id, data)
        self.events.emit(ev.MFA_ENROLLED, user_id=user.id, mfa_module=module.id)

    async def async_disable_user_mfa(self, user: User, mfa_module_id: str) -> None:
        """Remove a user's enrolment."""
        if user.system_generated:
            raise AuthManagerError("System generated users cannot disable multi-factor auth module.")
        module = self.get_auth_mfa_module(mfa_module_id)
        if module is None:
            raise AuthManagerError(f"Unable find multi-factor auth module: {mfa_module_id}")
        await module.async_depose_user(user.id)
        self.events.emit(ev.MFA_REMOVED, user_id=user.id, mfa_module=module.id)

    def mfa_required_from(self, ip_address: str | None) -> bool:
        """Whether the mfa_required policy asks enrolled users for a second factor at a login from ip_address.

        ``everywhere`` (the default) and an unknown address: yes; ``never``: no;
        ``outside_local_network``: only when the address is not loopback,
        private or link-local (after the http block's proxy handling).
        """
        if self.mfa_required == "never":
            return False
        if self.mfa_required == "outside_local_network":
            return not is_local_address(ip_address)
        return True

    async def async_get_enabled_mfa(self, user: User) -> dict[str, str]:
        """module id -> name of the modules the user is enrolled in, in configuration order."""
        modules: dict[str, str] = {}
        for module_id, module in self._mfa_modules.items():
            if await module.async_is_user_setup(user.id):
                modules[module_id] = module.name
        return modules

    # ---- refresh tokens ---------------------------------------------------------------------

    async def async_create_refresh_token(
        self,
        user: User,
        client_id: str | None = None,
        client_name: str | None = None,
        client_icon: str | None = None,
        token_type: str | None = None,
        access_token_expiration: timedelta = ACCESS_TOKEN_EXPIRATION,
        credential: Credentials | None = None,
    ) -> RefreshToken:
        """Create a refresh token, enforcing Open Peer Power's rules; durable on return."""
        if not user.is_active:
            raise ValueError("User is not active")
        if user.system_generated and client_id is not None:
            raise ValueError("System generated users cannot have refresh tokens connected to a client.")
        if token_type is None:
            token_type = TOKEN_TYPE_SYSTEM if user.system_generated else TOKEN_TYPE_NORMAL
        if user.system_generated != (token_type == TOKEN_TYPE_SYSTEM):
            raise ValueError("System generated users can only have system type refresh tokens")
        if token_type == TOKEN_TYPE_NORMAL and client_id is None:
            raise ValueError("Client is required to generate a refresh token.")
        if token_type == TOKEN_TYPE_LONG_LIVED_ACCESS_TOKEN:
            if not client_name:
                raise ValueError("Client_name is required for long-lived access token")
            for token in user.token_list:
                if token.client_name == client_name and token.token_type == TOKEN_TYPE_LONG_LIVED_ACCESS_TOKEN:
                    raise ValueError(f"{client_name} already exists")
        token = RefreshToken(
            user=user,
            client_id=client_id,
            client_name=client_name or None,
            client_icon=client_icon or None,
            token_type=token_type,
            access_token_expiration=access_token_expiration,
            credential=credential,
            version=self.version,
            keyring=self._keyring,
            expire_at=self.store.default_expire_at(token_type),
        )
        self.store.add_refresh_token(token)
        await self.store.async_save()
        await self._async_fire("opp_auth_refresh_token_created", refresh_token=token)
        self.events.token(token, created=True)
        return token

    async def async_get_refresh_token(self, token_id: str) -> RefreshToken | None:
        """A refresh token by id."""
        return self.store.get_refresh_token(token_id)

    async def async_get_refresh_token_by_token(self, token: str) -> RefreshToken | None:
        """A refresh token by its secret; one unused for too long is removed and not returned (G8)."""
        refresh_token = self.store.get_refresh_token_by_token(token)
        if refresh_token is not None and self.is_expired(refresh_token):
            await self.async_remove_refresh_token(refresh_token)
            return None
        return refresh_token

    def is_expired(self, refresh_token: RefreshToken, now: float | None = None) -> bool:
        """Whether the token went unused past its expiry."""
        expire_at = refresh_token.expire_at
        return expire_at is not None and (time.time() if now is None else now) > expire_at

    def expire_at(self, refresh_token: RefreshToken) -> float | None:
        """Epoch seconds at which the token expires unless used, or None."""
        return refresh_token.expire_at

    async def async_set_expiry(self, refresh_token: RefreshToken, enable: bool) -> None:
        """Switch idle expiry on or off for one token (Home Assistant's per-token switch)."""
        period = self.refresh_token_expiry.total_seconds() if self.refresh_token_expiry else None
        self.store.set_token_expiry(refresh_token, time.time() + period if enable and period else None)
        await self.store.async_save()

    async def async_purge_expired_tokens(self) -> int:
        """Remove every expired refresh token; returns how many."""
        now = time.time()
        expired = await self.store.async_expired_tokens(now)
        for token in expired:
            self.store.remove_refresh_token(token)
        if expired:
            await self.store.async_save()
            for token in expired:
                await self._async_fire("opp_auth_refresh_token_removed", refresh_token=token)
                self.events.token(token, created=False, cause="expired")
        return len(expired)

    async def _async_purge_loop(self) -> None:
        """Purge expired tokens now and then."""
        while True:
            await asyncio.sleep(PURGE_INTERVAL)
            try:
                await self.async_purge_expired_tokens()
            except Exception:
                _LOGGER.exception("Purging expired refresh tokens failed")

    async def async_remove_refresh_token(self, refresh_token: RefreshToken) -> None:
        """Revoke a refresh token and every access token it minted."""
        if self.store.get_refresh_token(refresh_token.id) is None:
            return
        self.store.remove_refresh_token(refresh_token)
        await self.store.async_save()
        await self._async_fire("opp_auth_refresh_token_removed", refresh_token=refresh_token)
        self.events.token(refresh_token, created=False, cause="revoked")

    async def async_remove_refresh_tokens(self, refresh_tokens: list[RefreshToken]) -> None:
        """Revoke several refresh tokens with one durable write (a user's "log out everywhere").

        Returns once the revocation is durable; plugins are told about each token in the
        background (10,000 hook calls would otherwise hold the answer).
        """
        removed = self.store.remove_refresh_tokens(refresh_tokens)
        await self.store.async_save()
        if removed:
            self._spawn(self._async_fire_removed(removed))

    async def _async_fire_removed(self, tokens: list[RefreshToken]) -> None:
        """opp_auth_refresh_token_removed for each token, yielding to other work between them."""
        for index, token in enumerate(tokens):
            await self._async_fire("opp_auth_refresh_token_removed", refresh_token=token)
            self.events.token(token, created=False, cause="revoked")
            if index % 100 == 99:
                await asyncio.sleep(0)

    async def async_validate_refresh_token(self, refresh_token: RefreshToken, remote_ip: str | None = None) -> None:
        """Ask the issuing provider whether the token may still be used (raises InvalidAuthError)."""
        # The user's part of the access decision; the provider speaks for its own rule below
        # (its async check is at least as strict as its per-request one).
        refusal = self.access.refusal(refresh_token.user, remote_ip)
        if refusal is not None:
            raise InvalidAuthError(refusal[:1].upper() + refusal[1:])
        cred = refresh_token.credential
        if cred is None:
            return
        provider = self._provider_for(cred)
        if provider is None:
            raise InvalidAuthError(f"Auth provider {cred.auth_provider_type}, {cred.auth_provider_id} not available")
        try:
            await provider.async_validate_refresh_token(refresh_token, remote_ip)
        except InvalidAuthError:
            raise
        except Exception as err:
            _LOGGER.exception("Provider %s failed to validate a refresh token", provider.key)
            raise InvalidAuthError("Unable to validate the refresh token") from err

    # ---- access tokens ----------------------------------------------------------------------

    async def async_create_access_token(self, refresh_token: RefreshToken, remote_ip: str | None = None) -> str:
        """Mint an access token after the provider re-validates the refresh token."""
        await self.async_validate_refresh_token(refresh_token, remote_ip)
        refresh_token.last_used_at = utcnow()
        refresh_token.last_used_ip = remote_ip
        self.known_addresses.add(refresh_token.user.id, remote_ip)
        if refresh_token.expire_at is not None:
            refresh_token.expire_at = self.store.default_expire_at(TOKEN_TYPE_NORMAL)
        self.store.schedule_usage_save(refresh_token)
        now = int(time.time())
        return encode_jwt(
            {
                "iss": refresh_token.id,
                "iat": now,
                "exp": now + int(refresh_token.access_token_expiration.total_seconds()),
            },
            refresh_token.jwt_key,
        )

    def validate_access_token(self, token: str, remote_ip: str | None = None) -> RefreshToken | None:
        """The refresh token behind a valid, unexpired access token that the access decision lets in; else None.

        The access decision (sessions.AccessPolicy) is the same for every way in:
        user active, local_only, refresh token expiry, the provider's per-request check (G6).
        """
        checks = self.stats.access_token_checks
        cached = self._token_cache.get(token)
        if cached is not None:
            refresh_token = self.store.get_refresh_token(cached)
        else:
            claims = unverified_claims(token)
            if claims is None:
                checks[OUTCOME_INVALID] += 1
                return None
            issuer = claims.get("iss")
            refresh_token = self.store.get_refresh_token(issuer) if isinstance(issuer, str) else None
            if refresh_token is None:
                checks[OUTCOME_INVALID] += 1
                return None
            if not verify_signature(token, refresh_token.jwt_key) or not check_claims(
                claims, issuer=refresh_token.id, leeway=EXP_LEEWAY
            ):
                checks[OUTCOME_INVALID] += 1
                return None
            self._token_cache.put(token, refresh_token.id, claims["exp"] + EXP_LEEWAY)
        if refresh_token is None:
            checks[OUTCOME_INVALID] += 1
            return None
        refusal = self.access.refusal(refresh_token.user, remote_ip, refresh_token)
        if refusal is not None:
            self.stats.refused(checks, refusal)
            return None
        checks[OUTCOME_VALID] += 1
        return refresh_token

    def session_refusal(self, refresh_token_id: str, remote_ip: str | None) -> str | None:
        """Why a session (a websocket, for each message) may no longer act; None: it may."""
        refresh_token = self.store.get_refresh_token(refresh_token_id)
        if refresh_token is None:
            return "refresh token revoked"
        return self.access.refusal(refresh_token.user, remote_ip, refresh_token)

    async def async_validate_access_token(self, token: str, remote_ip: str | None = None) -> RefreshToken | None:
        """Coroutine form of validate_access_token."""
        return self.validate_access_token(token, remote_ip)

    # ---- signed paths -----------------------------------------------------------------------

    def sign_path(self, path: str, expiration: timedelta, refresh_token_id: str) -> str:
        """A URL anyone may GET until it expires, on behalf of refresh_token_id; its query is signed too (G5)."""
        from urllib.parse import parse_qsl, unquote, urlsplit

        parts = urlsplit(path)
        params = sorted(parse_qsl(parts.query, keep_blank_values=True))
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": refresh_token_id,
            "path": unquote(parts.path),
            "params": params,
            "iat": now,
            "exp": now + int(expiration.total_seconds()),
        }
        separator = "&" if parts.query else "?"
        return f"{path}{separator}authSig={encode_jwt(claims, self._sign_secret)}"

    def validate_signed_path(
        self, path: str, signature: str, params: list[tuple[str, str]] | None, remote_ip: str | None
    ) -> RefreshToken | None:
        """The refresh token behind a valid signature for path and query that the access decision lets in; else None."""
        checks = self.stats.signed_path_checks
        claims = decode_jwt(signature, self._sign_secret)
        if claims is None or claims.get("path") != path:
            checks[OUTCOME_INVALID] += 1
            return None
        if params is not None and [list(p) for p in sorted(params)] != [list(p) for p in claims.get("params", [])]:
            checks[OUTCOME_INVALID] += 1
            return None
        issuer = claims.get("iss")
        refresh_token = self.store.get_refresh_token(issuer) if isinstance(issuer, str) else None
        if refresh_token is None:
            checks[OUTCOME_INVALID] += 1
            return None
        refusal = self.access.refusal(refresh_token.user, remote_ip, refresh_token)
        if refusal is not None:
            self.stats.refused(checks, refusal)
            return None
        checks[OUTCOME_VALID] += 1
        return refresh_token

    # ---- events (events.py) -------------------------------------------------------------------

    async def _async_fire(self, hookname: str, **kwargs: Any) -> None:
        """Fire an event hook and await it (events.Events)."""
        await self.events.async_fire(hookname, **kwargs)

    def note_login_failure(
        self,
        remote_ip: str | None,
        provider: tuple[str, str | None] | None,
        username: str | None,
        reason: str,
        **values: Any,
    ) -> asyncio.Future[Any] | None:
        """A login failed: the event, and the plugins told (fire and forget; the task, for a caller that must wait).

        values: plugins=False (a refusal that is no guess: no opp_auth_login_failed), or more event fields.
        """
        return self.events.login_failed(remote_ip, provider, username, reason, **values)

    def note_login_success(self, remote_ip: str | None, user: User | None, credential: Credentials | None) -> None:
        """Tell plugins a login succeeded (fire and forget); remote_ip is a known address of the account from now on."""
        account = user.id if user is not None else (credential.id if credential is not None else None)
        self.known_addresses.add(account, remote_ip)
        self.events.login_succeeded(remote_ip, user, credential)

    def login_retry_after(self, remote_ip: str | None, username: str | None) -> float:
        """Seconds before remote_ip may try to log in as username (0: now), as the throttling plugins say."""
        return self.events.login_retry_after(remote_ip, username)

    def _spawn(self, coro: Any) -> None:
        """Run a coroutine in the background (events.Events keeps the reference)."""
        self.events.spawn(coro)

    @property
    def _background(self) -> set[asyncio.Future[Any]]:
        """Background deliveries still running (tests wait on them)."""
        return self.events.background


def load_server_secret(config_dir: str) -> bytes:
    """The server secret, created on first start, kept apart from .storage (mode 0600)."""
    path = os.path.join(config_dir, SECRET_FILE)
    try:
        with open(path, "rb") as handle:
            secret = bytes.fromhex(handle.read().decode().strip())
        if len(secret) >= SECRET_BYTES:
            return secret
        raise ValueError("too short")
    except FileNotFoundError:
        pass
    except (ValueError, UnicodeDecodeError) as err:
        raise StorageError(f"{path} is not a valid opp-auth secret ({err}); restore it from a backup") from err
    secret = secrets.token_bytes(SECRET_BYTES)
    os.makedirs(config_dir, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret.hex())
        handle.flush()
        os.fsync(handle.fileno())
    return secret


async def _quiet(awaitable: Any, what: str) -> None:
    """Await, logging instead of raising."""
    try:
        await awaitable
    except Exception:
        _LOGGER.exception("Error during %s", what)


__all__ = ["GROUP_ID_ADMIN", "AuthManager", "AuthManagerError"]
