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
import hmac
import json
import re
import time
from collections import OrderedDict
from typing import Any

EXP_LEEWAY = 10
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()


def _b64encode(raw: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    """Decode canonical unpadded base64url (RFC 7515 section 2), else raise ValueError.

    Only one spelling of given bytes is accepted: no ``=`` padding, no ``+`` or
    ``/`` of standard base64, no whitespace, and the unused low bits of the
    last character zero (``...Q`` and ``...R`` would otherwise both decode to
    the same bytes). So a token has one string form, and the string a client
    presents is the one that was signed and cached.
    """
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not canonical unpadded base64url")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64encode(raw) != text:
        raise ValueError("not canonical base64url: unused bits set")
    return raw


def _sign(key: str, signing_input: str) -> bytes:
    """HMAC-SHA256 in one C call."""
    return hmac.digest(key.encode(), signing_input.encode(), "sha256")


def encode_jwt(claims: dict[str, Any], key: str) -> str:
    """Sign claims with HS256."""
    payload = _b64encode(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{_HEADER}.{payload}"
    return f"{signing_input}.{_b64encode(_sign(key, signing_input))}"


def unverified_claims(token: str) -> dict[str, Any] | None:
    """The claims of a well-formed HS256 JWT, unverified; None when malformed."""
    if not isinstance(token, str) or len(token) > 8192:
        return None
    parts = token.split(".")
    if len(parts) != 3:
        return None
    header, payload, _sig = parts
    try:
        if header != _HEADER:
            # Tokens from other JWT libraries may order or space the header differently.
            head = json.loads(_b64decode(header))
            if not isinstance(head, dict) or head.get("alg") != "HS256":
                return None
        claims = json.loads(_b64decode(payload))
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        return None
    return claims if isinstance(claims, dict) else None


def verify_signature(token: str, key: str) -> bool:
    """Whether the HS256 signature is right for key."""
    signing_input, _, sig = token.rpartition(".")
    try:
        given = _b64decode(sig)
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(_sign(key, signing_input), given)


def check_claims(claims: dict[str, Any], *, issuer: str | None = None, leeway: int = 0) -> bool:
    """Whether the issuer matches and the token has not expired."""
    if issuer is not None and claims.get("iss") != issuer:
        return False
    exp = claims.get("exp")
    return isinstance(exp, (int, float)) and not isinstance(exp, bool) and exp + leeway >= time.time()


def decode_jwt(token: str, key: str, *, issuer: str | None = None, leeway: int = 0) -> dict[str, Any] | None:
    """Claims of a token whose signature, issuer and expiry check out; else None."""
    claims = unverified_claims(token)
    if claims is None or not verify_signature(token, key) or not check_claims(claims, issuer=issuer, leeway=leeway):
        return None
    return claims


class TokenCache:
    """Bounded map of access token -> (refresh token id, expiry) for tokens that verified."""

    def __init__(self, size: int = 20000) -> None:
        """Hold at most size tokens (oldest evicted first)."""
        self.size = size
        # token -> (refresh token id, expiry): read directly on the bearer path (AccessTokens), where
        # an entry whose expiry has passed counts as absent.
        self.entries: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._entries = self.entries

    def forget(self, token: str) -> None:
        """Drop token's entry, if any."""
        self._entries.pop(token, None)

    def put(self, token: str, refresh_token_id: str, exp: float) -> None:
        """Remember a verified token."""
        entries = self._entries
        entries[token] = (refresh_token_id, float(exp))  # a float: compared with time.time() per request
        if len(entries) > self.size:
            entries.popitem(last=False)

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()
