"""Access tokens and signed paths: minted from a refresh token, let in by the one access decision."""

from __future__ import annotations

import secrets
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .models import TOKEN_TYPE_NORMAL, RefreshToken, utcnow
from .stats import OUTCOME_INVALID, OUTCOME_VALID, RuntimeStats
from .tokens import EXP_LEEWAY, TokenCache, check_claims, decode_jwt, encode_jwt, unverified_claims, verify_signature

if TYPE_CHECKING:
    from .refresh_tokens import RefreshTokens
    from .sessions import AccessPolicy
    from .shares import KnownAddresses
    from .store import AuthStore


class AccessTokens:
    """Mints and checks the short-lived credentials a refresh token stands behind."""

    def __init__(
        self,
        store: AuthStore,
        refresh_tokens: RefreshTokens,
        access: AccessPolicy,
        known_addresses: KnownAddresses,
        stats: RuntimeStats,
    ) -> None:
        """Tokens found in store, re-validated through refresh_tokens, let in by access; checks counted in stats."""
        self.stats = stats
        self.store = store
        self._refresh_tokens = refresh_tokens
        self._access = access
        self._known_addresses = known_addresses
        self.cache = TokenCache()
        # Tokens the HTTP pipeline verified, by the Authorization header's whole value (validate_bearer).
        self.bearer_cache = TokenCache()
        self._bearer_cached = self.bearer_cache.entries
        self._checks = stats.access_token_checks
        self._get_refresh_token = store.refresh_token_lookup
        self._refusal = access.refusal
        self._sign_secret = secrets.token_hex(32)

    async def async_create_access_token(self, refresh_token: RefreshToken, remote_ip: str | None = None) -> str:
        """Mint an access token after the provider re-validates the refresh token."""
        await self._refresh_tokens.async_validate_refresh_token(refresh_token, remote_ip)
        refresh_token.last_used_at = utcnow()
        refresh_token.last_used_ip = remote_ip
        self._known_addresses.add(refresh_token.user.id, remote_ip)
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
        entry = self.cache.entries.get(token)
        if entry is not None and entry[1] >= time.time():
            refresh_token = self._get_refresh_token(entry[0])
        else:
            refresh_token = self._verify(token, token, self.cache)
        return self._admit(self._checks, refresh_token, remote_ip)

    def validate_bearer(self, authorization: str, remote_ip: str | None = None) -> RefreshToken | None:
        """validate_access_token for an Authorization header's whole value (``Bearer <token>``); None without the scheme.

        The HTTP pipeline's way in, on every authenticated request: a verified token is cached under
        the header's value, so a request repeating it costs one lookup (no scheme test, no copy of the
        token). The cache's dict, the store's lookup and the access decision are bound once in
        __init__, and nothing here calls a helper that only forwards.
        """
        checks = self._checks
        entry = self._bearer_cached.get(authorization)
        now = time.time()
        if entry is not None and entry[1] >= now:
            refresh_token = self._get_refresh_token(entry[0])
        elif authorization.startswith("Bearer "):
            refresh_token = self._verify(authorization[7:], authorization, self.bearer_cache)
        else:
            return None  # another scheme (a plugin's authenticator may know it): no token to check
        if refresh_token is None:
            checks[OUTCOME_INVALID] += 1
            return None
        refusal = self._refusal(refresh_token.user, remote_ip, refresh_token, now)
        if refusal is not None:
            self.stats.refused(checks, refusal)
            return None
        checks[OUTCOME_VALID] += 1
        return refresh_token

    def _verify(self, token: str, key: str, cache: TokenCache) -> RefreshToken | None:
        """The refresh token behind token after checking its signature and claims (then cached under key); else None."""
        cache.forget(key)  # expired, or never seen
        claims = unverified_claims(token)
        if claims is None:
            return None
        issuer = claims.get("iss")
        refresh_token = self._get_refresh_token(issuer) if isinstance(issuer, str) else None
        if refresh_token is None:
            return None
        if not verify_signature(token, refresh_token.jwt_key) or not check_claims(
            claims, issuer=refresh_token.id, leeway=EXP_LEEWAY
        ):
            return None
        cache.put(key, refresh_token.id, claims["exp"] + EXP_LEEWAY)
        return refresh_token

    def _admit(
        self, checks: dict[str, int], refresh_token: RefreshToken | None, remote_ip: str | None
    ) -> RefreshToken | None:
        """refresh_token if the access decision lets it in from remote_ip, counted in checks by outcome; else None."""
        if refresh_token is None:
            checks[OUTCOME_INVALID] += 1
            return None
        refusal = self._access.refusal(refresh_token.user, remote_ip, refresh_token)
        if refusal is not None:
            self.stats.refused(checks, refusal)
            return None
        checks[OUTCOME_VALID] += 1
        return refresh_token

    async def async_validate_access_token(self, token: str, remote_ip: str | None = None) -> RefreshToken | None:
        """Coroutine form of validate_access_token."""
        return self.validate_access_token(token, remote_ip)

    def session_refusal(self, refresh_token_id: str, remote_ip: str | None) -> str | None:
        """Why a session (a websocket, for each message) may no longer act; None: it may."""
        refresh_token = self.store.get_refresh_token(refresh_token_id)
        if refresh_token is None:
            return "refresh token revoked"
        return self._access.refusal(refresh_token.user, remote_ip, refresh_token)

    def sign_path(self, path: str, expiration: timedelta, refresh_token_id: str) -> str:
        """A URL anyone may GET until it expires, on behalf of refresh_token_id; its query is signed too (G5)."""
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
        return self._admit(checks, refresh_token, remote_ip)
