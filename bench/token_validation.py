"""Access-token validation cost with 1 and 100,000 users, against a 2021-style PyJWT baseline.

Target: auth.access_tokens.validate_access_token costs at most 2 µs per token when a
client reuses its token (the manager caches tokens that verified), with 1 user
and with 100,000 users (one refresh token each). The first-seen (cold) cost is
reported too, as is what Open Peer Power 2021 did: PyJWT decode without
verification, a linear search of every user's refresh tokens for the issuer,
then PyJWT decode with verification (SPEC 1.4, 2).
"""

from __future__ import annotations

import asyncio
import gc
import tempfile
import time
import timeit
from typing import Any

import jwt
from _common import (
    INSECURE_PROVIDER,
    Result,
    emit,
    make_auth,
    median,
    parse_args,
    populate,
)

from opp_auth.manager import AuthManager
from opp_auth.models import RefreshToken, User
from opp_auth.tokens import encode_jwt

BENCH = "token_validation"
TARGET_US = 2.0


def legacy_layout(users: list[User]) -> dict[str, dict[str, tuple[RefreshToken, str]]]:
    """The data as Open Peer Power 2021 held it: per user, a dict of its tokens with their stored keys."""
    return {user.id: {rt.id: (rt, rt.jwt_key) for rt in user.token_list} for user in users}


def validate_2021(users: dict[str, dict[str, tuple[RefreshToken, str]]], token: str) -> RefreshToken | None:
    """Open Peer Power 2021's AuthManager.async_validate_access_token, made synchronous."""
    try:
        unverif_claims = jwt.decode(token, algorithms=["HS256"], options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None
    found = None
    token_id = unverif_claims.get("iss")
    # AuthStore.async_get_refresh_token: every user's tokens, in turn.
    for user_tokens in users.values():
        found = user_tokens.get(token_id)
        if found is not None:
            break
    if found is None:
        refresh_token, jwt_key, issuer = None, "", ""
    else:
        refresh_token, jwt_key = found
        issuer = refresh_token.id
    try:
        jwt.decode(token, jwt_key, leeway=10, issuer=issuer, algorithms=["HS256"])
    except jwt.InvalidTokenError:
        return None
    if refresh_token is None or not refresh_token.user.is_active:
        return None
    return refresh_token


def per_call_us(func: Any, arg: Any, calls: int, repeats: int = 5) -> float:
    """Median over repeats of the mean time of one call, in µs."""
    timer = timeit.Timer(lambda: func(arg))
    gc.disable()
    try:
        runs = timer.repeat(repeat=repeats, number=calls)
    finally:
        gc.enable()
    return median(runs) / calls * 1e6


def fresh_tokens(tokens: list[RefreshToken], count: int) -> list[str]:
    """count distinct never-validated access tokens in the manager's format.

    Minted like async_create_access_token does, but with distinct iat values so a
    single refresh token can yield many different tokens within one second.
    """
    now = int(time.time())
    out = []
    for i in range(count):
        rt = tokens[i % len(tokens)]
        iat = now - i // len(tokens)
        out.append(encode_jwt({"iss": rt.id, "iat": iat, "exp": iat + 1800}, rt.jwt_key))
    return out


def cold_us(auth: AuthManager, access_tokens: list[str], expected: list[RefreshToken]) -> float:
    """Mean µs to validate tokens the manager has never seen (each once)."""
    auth.access_tokens.cache.clear()
    validate = auth.access_tokens.validate_access_token
    gc.disable()
    try:
        start = time.perf_counter()
        for token in access_tokens:
            validate(token)
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    # Outside the timed loop: every token really validated, to the right refresh token.
    auth.access_tokens.cache.clear()
    for token, rt in zip(access_tokens[:200], expected):
        assert auth.access_tokens.validate_access_token(token) is rt
    return elapsed / len(access_tokens) * 1e6


async def measure(users: int, cold_count: int, baseline_calls: int) -> list[Result]:
    """All measurements for one store size."""
    label = f"{users:,} user" + ("s" if users != 1 else "")
    with tempfile.TemporaryDirectory() as config_dir:
        auth = make_auth(config_dir, [INSECURE_PROVIDER])
        await auth.async_setup()
        try:
            refresh_tokens = populate(auth.store, users)
            # The token a client would hold: minted through the manager from the middle user's
            # refresh token (the 2021 baseline then scans half the users, its average case).
            middle = refresh_tokens[len(refresh_tokens) // 2]
            access_token = await auth.access_tokens.async_create_access_token(middle, "127.0.0.1")
            assert auth.access_tokens.validate_access_token(access_token) is middle
            legacy = legacy_layout(auth.store.users())
            assert validate_2021(legacy, access_token) is middle

            repeat = per_call_us(auth.access_tokens.validate_access_token, access_token, 200_000)
            cold_tokens = fresh_tokens(refresh_tokens, cold_count)
            cold = cold_us(auth, cold_tokens, [refresh_tokens[i % len(refresh_tokens)] for i in range(200)])
            baseline = per_call_us(lambda t: validate_2021(legacy, t), access_token, baseline_calls, repeats=3)
        finally:
            await auth.async_shutdown()
    return [
        Result(BENCH, f"repeat token, {label}", repeat, "µs", TARGET_US, note="same token reused (cache hit)"),
        Result(BENCH, f"first-seen token, {label}", cold, "µs", note=f"{cold_count:,} fresh tokens, each validated once"),
        Result(
            BENCH, f"2021-style PyJWT + linear scan, {label}", baseline, "µs",
            note=f"{baseline / repeat:,.0f}× the repeat case",
        ),
    ]


async def main() -> None:
    """Measure at --users (run_all.py runs each size several times)."""
    args = parse_args(__doc__.splitlines()[0])
    users = min(args.users, 1_000) if args.quick else args.users
    # The 2021 baseline scans every user per call: fewer calls for big stores. PyJWT's HMAC key
    # preparation (it checks the key is not PEM or DER) makes even one call about 1 ms: 500 at most.
    emit(await measure(users, 20_000, max(20, min(500, 2_000_000 // users))))


if __name__ == "__main__":
    asyncio.run(main())
