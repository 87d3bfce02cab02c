"""Users: accounts, their groups and credentials, linking, and enrolment in MFA modules."""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

from . import events as ev
from .ephemeral import EphemeralState
from .errors import AuthManagerError
from .models import GROUP_ID_USER, Credentials, Group, User, UserMeta

if TYPE_CHECKING:
    from .events import Events
    from .registry import Registry
    from .store import AuthStore
    from .user_settings import UserSettings

_LOGGER = logging.getLogger(__name__)


class Users:
    """Every change to a user goes through here: stored durably, then told to plugins."""

    def __init__(
        self,
        store: AuthStore,
        registry: Registry,
        events: Events,
        user_settings: UserSettings,
        state: EphemeralState | None = None,
    ) -> None:
        """Users kept in store, their providers and modules in registry; changes fired through events.

        state: with several servers, new users are made one credential key at a time on all of them.
        """
        self.store = store
        self._registry = registry
        self._events = events
        self._user_settings = user_settings
        self._state = state if state is not None else EphemeralState()

    # ---- reading ----------------------------------------------------------------------------

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

    def _groups_for(self, group_ids: list[str] | None) -> list[Group]:
        """Resolve group ids or refuse."""
        groups = []
        for gid in group_ids or []:
            group = self.store.get_group(gid)
            if group is None:
                raise AuthManagerError("Invalid group specified.")
            groups.append(group)
        return groups

    # ---- creating -----------------------------------------------------------------------------

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
        await self._events.async_fire("opp_auth_user_created", user=user)
        self._events.user(ev.USER_CREATED, user, credentials)
        return user

    async def async_create_system_user(self, name: str, group_ids: list[str] | None = None) -> User:
        """Create an account for an integration: never an owner, tokens of type system only."""
        user = User(name=name, system_generated=True, is_active=True, groups=self._groups_for(group_ids))
        self.store.add_user(user)
        await self.store.async_save()
        await self._events.async_fire("opp_auth_user_created", user=user)
        self._events.user(ev.USER_CREATED, user)
        return user

    async def async_get_or_create_user(self, credentials: Credentials) -> User:
        """The user behind credentials; new credentials get a new user from the provider's meta."""
        if not credentials.is_new:
            user = self.store.user_for_credentials(credentials)
            if user is None:
                raise AuthManagerError("Unable to find the user.")
            return user
        provider = self._registry.provider_for(credentials)
        if provider is None:
            raise AuthManagerError("Credential with unknown provider encountered")
        # A code exchanged on another server than the login's carries what the provider said there.
        meta = (
            credentials.meta
            if isinstance(credentials.meta, UserMeta)
            else await provider.async_user_meta_for_credentials(credentials)
        )
        # One person's first logins may be exchanged on two servers at once: each makes the user while it
        # holds that credential key's lock on every server, after applying what was committed before.
        key = hashlib.sha256(
            repr((credentials.provider_key, provider.credential_key(credentials.data))).encode("utf-8", "surrogatepass")
        ).hexdigest()
        async with self._state.async_step_lock(f"new-user:{key}"):
            if self._state.shared:
                await self._state.async_barrier()
            return await self._async_make_user(credentials, meta)

    async def _async_make_user(self, credentials: Credentials, meta: UserMeta) -> User:
        """A new user for new credentials (their lock held)."""
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
        await self._events.async_fire("opp_auth_user_created", user=user)
        self._events.user(ev.USER_CREATED, user, credentials)
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
        self._events.user(ev.CREDENTIALS_ADDED, user, credentials)

    # ---- changing and removing ----------------------------------------------------------------

    async def async_remove_user(self, user: User) -> None:
        """Delete a user, their credentials (and provider logins) and tokens."""
        for cred in list(user.credentials):
            provider = self._registry.provider_for(cred)
            if provider is not None:
                await provider.async_will_remove_credentials(cred)
        tokens = self.store.remove_user(user)
        await self.store.async_save()
        for module in self._registry.mfa_modules.values():
            try:
                if await module.async_is_user_setup(user.id):
                    await module.async_depose_user(user.id)
            except Exception:
                _LOGGER.exception("MFA module %s failed to depose removed user %s", module.id, user.id)
        await self._user_settings.async_remove_user(user.id)
        for token in tokens:
            await self._events.async_fire("opp_auth_refresh_token_removed", refresh_token=token)
            self._events.token(token, created=False, cause="user_removed")
        await self._events.async_fire("opp_auth_user_removed", user=user)
        self._events.user(ev.USER_REMOVED, user)

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
        await self._events.async_fire("opp_auth_user_updated", user=user)
        self._events.user_changed(user, before)

    async def async_activate_user(self, user: User) -> None:
        """Let a user log in."""
        await self.async_update_user(user, is_active=True)

    async def async_deactivate_user(self, user: User) -> None:
        """Stop a user from logging in or using tokens."""
        await self.async_update_user(user, is_active=False)

    async def async_remove_credentials(self, credentials: Credentials) -> None:
        """Remove credentials, and the provider's data for them."""
        provider = self._registry.provider_for(credentials)
        if provider is not None:
            await provider.async_will_remove_credentials(credentials)
        self.store.remove_credentials(credentials)
        await self.store.async_save()
        self._events.credentials_removed(credentials)

    async def async_forget_credentials(self, credentials: Credentials) -> None:
        """Remove credentials whose provider already dropped its own data (the provider is not told)."""
        self.store.remove_credentials(credentials)
        await self.store.async_save()
        self._events.credentials_removed(credentials)

    async def async_update_credentials_data(self, credentials: Credentials, data: dict[str, Any]) -> None:
        """Replace the data of linked credentials (the provider renamed the login); sessions stay valid."""
        self.store.update_credentials_data(credentials, dict(data))
        await self.store.async_save()

    # ---- MFA enrolment ----------------------------------------------------------------------

    async def async_enable_user_mfa(self, user: User, mfa_module_id: str, data: Any) -> None:
        """Enrol a user in a module."""
        if user.system_generated:
            raise AuthManagerError("System generated users cannot enable multi-factor auth module.")
        module = self._registry.get_auth_mfa_module(mfa_module_id)
        if module is None:
            raise AuthManagerError(f"Unable find multi-factor auth module: {mfa_module_id}")
        await module.async_setup_user(user.id, data)
        self._events.emit(ev.MFA_ENROLLED, user_id=user.id, mfa_module=module.id)

    async def async_disable_user_mfa(self, user: User, mfa_module_id: str) -> None:
        """Remove a user's enrolment."""
        if user.system_generated:
            raise AuthManagerError("System generated users cannot disable multi-factor auth module.")
        module = self._registry.get_auth_mfa_module(mfa_module_id)
        if module is None:
            raise AuthManagerError(f"Unable find multi-factor auth module: {mfa_module_id}")
        await module.async_depose_user(user.id)
        self._events.emit(ev.MFA_REMOVED, user_id=user.id, mfa_module=module.id)

    async def async_get_enabled_mfa(self, user: User) -> dict[str, str]:
        """module id -> name of the modules the user is enrolled in, in configuration order."""
        modules: dict[str, str] = {}
        for module_id, module in self._registry.mfa_modules.items():
            if await module.async_is_user_setup(user.id):
                modules[module_id] = module.name
        return modules
