"""JWTs have one spelling: canonical base64url without padding in header, payload and signature (issue 11 item 8)."""

from __future__ import annotations

import base64
import string
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from opp_auth.manager import AuthManager
from opp_auth.testing import CLIENT_ID
from opp_auth.tokens import decode_jwt, encode_jwt

KEY = "k" * 64
ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"


def token_where(predicate: Callable[[list[str]], bool]) -> str:
    """A fresh valid token whose [header, payload, signature] satisfies predicate."""
    for n in range(10000):
        token = encode_jwt({"iss": "x", "exp": time.time() + 600, "n": n, "s": "?>~" * (n % 5)}, KEY)
        if predicate(token.split(".")):
            return token
    raise AssertionError("no such token")


def lenient(text: str) -> bytes:
    """What a forgiving decoder makes of text (the same bytes as the canonical form, for these tests)."""
    return base64.b64decode(text.replace("-", "+").replace("_", "/") + "===", validate=False)


def with_part(token: str, index: int, part: str) -> str:
    """token with one of its three parts replaced."""
    parts = token.split(".")
    parts[index] = part
    return ".".join(parts)


def flip_unused_bits(part: str) -> str:
    """part with its last character changed in bits that carry no data (same decoded bytes)."""
    assert len(part) % 4 in (2, 3)
    last = ALPHABET.index(part[-1])
    return part[:-1] + ALPHABET[last + 1]


def test_the_canonical_token_verifies() -> None:
    token = encode_jwt({"iss": "x", "exp": time.time() + 600}, KEY)
    assert decode_jwt(token, KEY) is not None


@pytest.mark.parametrize("index", [0, 1, 2])
@pytest.mark.parametrize("padding", ["=", "==", "==="])
def test_padding_on_any_part_is_refused(index: int, padding: str) -> None:
    token = encode_jwt({"iss": "x", "exp": time.time() + 600}, KEY)
    part = token.split(".")[index]
    assert lenient(part + padding) == lenient(part)
    assert decode_jwt(with_part(token, index, part + padding), KEY) is None


@pytest.mark.parametrize("index", [1, 2])
def test_standard_base64_alphabet_is_refused(index: int) -> None:
    token = token_where(lambda parts: "-" in parts[index] or "_" in parts[index])
    part = token.split(".")[index]
    standard = part.replace("-", "+").replace("_", "/")
    assert base64.b64decode(standard + "=" * (-len(standard) % 4)) == lenient(part)
    assert decode_jwt(with_part(token, index, standard), KEY) is None


@pytest.mark.parametrize("index", [1, 2])
def test_non_canonical_trailing_bits_are_refused(index: int) -> None:
    token = token_where(lambda parts: len(parts[index]) % 4 in (2, 3))
    part = token.split(".")[index]
    other = flip_unused_bits(part)
    assert other != part and lenient(other) == lenient(part)
    assert decode_jwt(with_part(token, index, other), KEY) is None


@pytest.mark.parametrize("junk", [" ", "\n", "\t", "!", "é", "\x00", "a", "aaaaa"])
def test_junk_inside_or_after_a_part_is_refused(junk: str) -> None:
    token = encode_jwt({"iss": "x", "exp": time.time() + 600}, KEY)
    for index in range(3):
        part = token.split(".")[index]
        assert decode_jwt(with_part(token, index, part + junk), KEY) is None
        assert decode_jwt(with_part(token, index, part[:4] + junk + part[4:]), KEY) is None


async def bearer(auth: AuthManager) -> str:
    """A real access token of a real refresh token."""
    user = await auth.users.async_create_user("Owner")
    refresh = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    return await auth.access_tokens.async_create_access_token(refresh)


async def test_access_tokens_of_the_manager_have_one_spelling(opp_auth_factory: Any) -> None:
    auth = await opp_auth_factory(mfa_modules=[])
    token = await bearer(auth)
    header, payload, sig = token.split(".")
    assert auth.access_tokens.validate_access_token(token) is not None  # cached from here on: the variants must still fail
    variants = [
        token + "==",
        f"{header}.{payload}.{sig}=",
        f"{header}=.{payload}.{sig}",
        f"{header}.{payload}==.{sig}",
        f"{header}.{payload}.{flip_unused_bits(sig)}",
        f"{header}.{payload}.{sig.replace('-', '+').replace('_', '/')}" if set(sig) & set("-_") else token + " ",
    ]
    for variant in variants:
        assert auth.access_tokens.validate_access_token(variant) is None, variant


async def test_signed_paths_have_one_spelling(opp_auth_factory: Any) -> None:
    auth = await opp_auth_factory(mfa_modules=[])
    user = await auth.users.async_create_user("Owner")
    refresh = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    path = auth.access_tokens.sign_path("/api/states", timedelta(seconds=30), refresh_token_id=refresh.id)
    signature = path.split("authSig=", 1)[1]
    assert auth.access_tokens.validate_signed_path("/api/states", signature, [], "127.0.0.1") is not None
    assert auth.access_tokens.validate_signed_path("/api/states", signature + "==", [], "127.0.0.1") is None
    assert auth.access_tokens.validate_signed_path("/api/states", flip_unused_bits(signature), [], "127.0.0.1") is None


async def test_a_bearer_header_is_checked_as_its_token_is(opp_auth_factory: Any) -> None:
    """validate_bearer (the pipeline's way in) answers as validate_access_token does for the header's token.

    It caches under the header's whole value, apart from validate_access_token's cache: a header's
    value is never taken for a token, a value without the scheme is no token, and a cached header
    still passes the store's lookup and the access decision on every request.
    """
    auth = await opp_auth_factory(mfa_modules=[])
    tokens = auth.access_tokens
    checks = auth.stats.access_token_checks
    token = await bearer(auth)
    refresh = tokens.validate_access_token(token)
    assert refresh is not None
    header = f"Bearer {token}"
    for _ in range(2):  # verified, then from the cache
        assert tokens.validate_bearer(header, "127.0.0.1") is refresh
    assert header in tokens.bearer_cache.entries and header not in tokens.cache.entries
    assert tokens.validate_access_token(header) is None, "a header's value is not a token"
    before = dict(checks)
    for other in (token, f"bearer {token}", f"Basic {token}", ""):
        assert tokens.validate_bearer(other, "127.0.0.1") is None, other
    assert checks == before, "a header of another scheme is no check"
    for variant in (f"Bearer  {token}", f"Bearer {token} ", f"Bearer {token}==", "Bearer ", "Bearer x.y.z"):
        assert tokens.validate_bearer(variant, "127.0.0.1") is None, variant
        assert variant not in tokens.bearer_cache.entries
    assert checks["invalid"] == before["invalid"] + 5

    # A cached header whose entry has expired is verified again (and then cached afresh).
    refresh_id, _expiry = tokens.bearer_cache.entries[header]
    tokens.bearer_cache.entries[header] = (refresh_id, time.time() - 1)
    assert tokens.validate_bearer(header, "127.0.0.1") is refresh
    assert tokens.bearer_cache.entries[header][1] > time.time()

    # The access decision runs on every request, cached or not.
    await auth.users.async_update_user(refresh.user, is_active=False)
    assert tokens.validate_bearer(header, "127.0.0.1") is None
    await auth.users.async_update_user(refresh.user, is_active=True)
    assert tokens.validate_bearer(header, "127.0.0.1") is refresh
    await auth.refresh_tokens.async_remove_refresh_token(refresh)
    assert tokens.validate_bearer(header, "127.0.0.1") is None, "revoked: the cache alone lets nobody in"
