"""Access tokens (HS256 JWTs signed with the refresh token's key) and signed paths.

Tokens are made and checked with hmac/base64 directly instead of PyJWT: the
format is fixed (header ``{"alg":"HS256","typ":"JWT"}``, claims iss/iat/exp) and
validation sits on every request's path. A small cache remembers tokens that
already verified, so a client reusing its token costs a dict lookup; the
refresh token and user are still checked on every call, so revocation and
deactivation take effect at once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections import OrderedDict
from typing import Any

EXP_LEEWAY = 10
_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()


def _b64encode(raw: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    """Decode unpadded base64url (raises ValueError)."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_jwt(claims: dict[str, Any], key: str) -> str:
    """Sign claims with HS256."""
    payload = _b64encode(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{_HEADER}.{payload}"
    sig = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64encode(sig)}"


def unverified_claims(token: str) -> dict[str, Any] | None:
    """The claims of a well-formed HS256 JWT, unverified; None when malformed."""
    if not isinstance(token, str) or token.count(".") != 2 or len(token) > 8192:
        return None
    header, payload, _sig = token.split(".")
    try:
        head = json.loads(_b64decode(header))
        claims = json.loads(_b64decode(payload))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    if not isinstance(head, dict) or head.get("alg") != "HS256" or not isinstance(claims, dict):
        return None
    return claims


def verify_signature(token: str, key: str) -> bool:
    """Whether the HS256 signature is right for key."""
    signing_input, _, sig = token.rpartition(".")
    try:
        given = _b64decode(sig)
    except (ValueError, binascii.Error):
        return False
    expected = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return hmac.compare_digest(expected, given)


def decode_jwt(token: str, key: str, *, issuer: str | None = None, leeway: int = 0) -> dict[str, Any] | None:
    """Claims of a token whose signature, issuer and expiry check out; else None."""
    claims = unverified_claims(token)
    if claims is None or not verify_signature(token, key):
        return None
    if issuer is not None and claims.get("iss") != issuer:
        return None
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool) or exp + leeway < time.time():
        return None
    return claims


class TokenCache:
    """Bounded map of access token -> (refresh token id, expiry) for tokens that verified."""

    def __init__(self, size: int = 20000) -> None:
        """Hold at most size tokens (oldest evicted first)."""
        self.size = size
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def get(self, token: str) -> str | None:
        """The refresh token id of a cached, unexpired token."""
        entry = self._entries.get(token)
        if entry is None:
            return None
        if entry[1] < time.time():
            self._entries.pop(token, None)
            return None
        return entry[0]

    def put(self, token: str, refresh_token_id: str, exp: float) -> None:
        """Remember a verified token."""
        entries = self._entries
        entries[token] = (refresh_token_id, exp)
        if len(entries) > self.size:
            entries.popitem(last=False)

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()
