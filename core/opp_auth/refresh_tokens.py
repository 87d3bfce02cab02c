"""Refresh tokens: a session's life, from creation through provider re-validation and idle expiry to revocation."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING

from .models import (
    ACCESS_TOKEN_EXPIRATION,
    TOKEN_TYPE_LONG_LIVED_ACCESS_TOKEN,
    TOKEN_TYPE_NORMAL,
    TOKEN_TYPE_SYSTEM,
    Credentials,
    RefreshToken,
    User,
)
from .providers import InvalidAuthError

if TYPE_CHECKING:
    from .events import Events
    from .registry import Registry
    from .sessions import AccessPolicy
    from .store import AuthStore

_LOGGER = logging.getLogger(__name__)

REFRESH_TOKEN_EXPIRY = timedelta(days=90)
PURGE_INTERVAL = 3600.0


class RefreshTokens:
    """Creates, finds, expires and revokes refresh tokens; plugins hear of each through events."""

    def __init__(
        self,
        store: AuthStore,
        registry: Registry,
        access: AccessPolicy,
        events: Events,
        *,
        version: str,
        expiry: timedelta | None = REFRESH_TOKEN_EXPIRY,
    ) -> None:
        """Tokens kept in store, re-validated by their provider in registry; expiry: idle expiry (None: never)."""
        self.store = store
        self._registry = registry
        self._access = access
        self._events = events
        self._version = version
        self.expiry = expiry

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
            version=self._version,
            keyring=self.store.keyring,
            expire_at=self.store.default_expire_at(token_type),
        )
        self.store.add_refresh_token(token)
        await self.store.async_save()
        await self._events.async_fire("opp_auth_refresh_token_created", refresh_token=token)
        self._events.token(token, created=True)
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
        period = self.expiry.total_seconds() if self.expiry else None
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
                await self._events.async_fire("opp_auth_refresh_token_removed", refresh_token=token)
                self._events.token(token, created=False, cause="expired")
        return len(expired)

    async def async_purge_loop(self, interval: float = PURGE_INTERVAL) -> None:
        """Purge expired tokens every interval seconds, until cancelled."""
        while True:
            await asyncio.sleep(interval)
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
        await self._events.async_fire("opp_auth_refresh_token_removed", refresh_token=refresh_token)
        self._events.token(refresh_token, created=False, cause="revoked")

    async def async_remove_refresh_tokens(self, refresh_tokens: list[RefreshToken]) -> None:
        """Revoke several refresh tokens with one durable write (a user's "log out everywhere").

        Returns once the revocation is durable; plugins are told about each token in the
        background (10,000 hook calls would otherwise hold the answer).
        """
        removed = self.store.remove_refresh_tokens(refresh_tokens)
        await self.store.async_save()
        if removed:
            self._events.spawn(self._async_fire_removed(removed))

    async def _async_fire_removed(self, tokens: list[RefreshToken]) -> None:
        """opp_auth_refresh_token_removed for each token, yielding to other work between them."""
        for index, token in enumerate(tokens):
            await self._events.async_fire("opp_auth_refresh_token_removed", refresh_token=token)
            self._events.token(token, created=False, cause="revoked")
            if index % 100 == 99:
                await asyncio.sleep(0)

    async def async_validate_refresh_token(self, refresh_token: RefreshToken, remote_ip: str | None = None) -> None:
        """Ask the issuing provider whether the token may still be used (raises InvalidAuthError)."""
        # The user's part of the access decision; the provider speaks for its own rule below
        # (its async check is at least as strict as its per-request one).
        refusal = self._access.refusal(refresh_token.user, remote_ip)
        if refusal is not None:
            raise InvalidAuthError(refusal[:1].upper() + refusal[1:])
        cred = refresh_token.credential
        if cred is None:
            return
        provider = self._registry.provider_for(cred)
        if provider is None:
            raise InvalidAuthError(f"Auth provider {cred.auth_provider_type}, {cred.auth_provider_id} not available")
        try:
            await provider.async_validate_refresh_token(refresh_token, remote_ip)
        except InvalidAuthError:
            raise
        except Exception as err:
            _LOGGER.exception("Provider %s failed to validate a refresh token", provider.key)
            raise InvalidAuthError("Unable to validate the refresh token") from err
