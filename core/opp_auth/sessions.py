"""Sessions: the one access decision every way in asks (bearer, websocket, signed paths, plugin authenticators).

Whatever carried the credential -- an ``Authorization: Bearer`` header, the
websocket auth message, each later websocket message, an ``authSig`` signed
path, or a user a plugin's ``opp_auth_authenticate_request`` vouched for --
access is granted only when :meth:`AccessPolicy.refusal` answers ``None``:

1. the user is active;
2. a ``local_only`` user comes from a local address (``network.is_local_address``);
3. when the request rides on a refresh token: it has not expired (idle expiry),
   and when its provider checks every request (``CHECKS_EVERY_REQUEST``, e.g.
   trusted networks) the provider accepts the client address.

Signature and access-token expiry are checked before, by whoever decoded the
credential; this module decides whether a valid credential may be used from
here and now.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .network import is_local_address

if TYPE_CHECKING:
    from .models import RefreshToken, User
    from .providers import AuthProvider

REFUSED_INACTIVE = "user is not active"
REFUSED_LOCAL_ONLY = "user may only connect from the local network"
REFUSED_EXPIRED = "refresh token expired"
REFUSED_PROVIDER = "the auth provider refused this address"
REFUSED_NO_PROVIDER = "the auth provider of this session is not configured"


class AccessPolicy:
    """The access rules of one server: asked on every request, so it stays cheap."""

    def __init__(self, providers: Mapping[tuple[str, str | None], AuthProvider]) -> None:
        """Rules over the configured providers (a live mapping: (type, id) -> provider)."""
        self._providers = providers
        self._per_request_types = frozenset(p.type for p in providers.values() if p.CHECKS_EVERY_REQUEST)

    def refusal(
        self, user: User, remote_ip: str | None, refresh_token: RefreshToken | None = None, now: float | None = None
    ) -> str | None:
        """Why user (with refresh_token, if the request rides on one) may not get in from remote_ip; None: allowed."""
        if not user.is_active:
            return REFUSED_INACTIVE
        if user.local_only and not is_local_address(remote_ip):
            return REFUSED_LOCAL_ONLY
        if refresh_token is None:
            return None
        expire_at = refresh_token.expire_at
        if expire_at is not None and (time.time() if now is None else now) > expire_at:
            return REFUSED_EXPIRED
        cred = refresh_token.credential
        if cred is not None and cred.auth_provider_type in self._per_request_types:
            provider = self._providers.get(cred.provider_key)
            if provider is None:
                return REFUSED_NO_PROVIDER
            if provider.CHECKS_EVERY_REQUEST and not provider.validate_access(refresh_token, remote_ip):
                return REFUSED_PROVIDER
        return None

    def allows(self, user: User, remote_ip: str | None, refresh_token: RefreshToken | None = None) -> bool:
        """Whether refusal() has nothing to say."""
        return self.refusal(user, remote_ip, refresh_token) is None
