"""The pending login code with several servers on one storage: sent by A, accepted by B, once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import opp_auth_notify
import pytest

from .test_notify import FILE_SERVICE, PROVIDERS, wrong


@pytest.fixture
def opp_auth_storage_type() -> str:
    return "postgresql"


async def servers(opp_auth_factory: Any, make_user: Any) -> tuple[Any, Any, Any]:
    """Servers A and B on one database (one configuration directory: one codes.txt); a user enrolled on A."""
    config = {"providers": PROVIDERS, "mfa_modules": [{"type": "notify"}], "blocks": {"notify": [FILE_SERVICE]}}
    a = await opp_auth_factory(**config)
    b = await opp_auth_factory(**config)
    user = await make_user(a)
    await a.users.async_enable_user_mfa(user, "notify", {"notify_service": "codes"})
    module_b = b.registry.get_auth_mfa_module("notify")
    start = time.monotonic()
    while not await module_b.async_is_user_setup(user.id):  # B hears of the enrolment through the feed
        assert time.monotonic() - start < 3, "B never saw the enrolment"
        await asyncio.sleep(0.01)
    return a.registry.get_auth_mfa_module("notify"), module_b, user


async def test_a_code_sent_by_a_is_accepted_by_b_once(opp_auth_factory: Any, make_user: Any, codes_file: Any) -> None:
    """A sends, B accepts; then neither accepts it again. Nothing stays in either server's memory."""
    on_a, on_b, user = await servers(opp_auth_factory, make_user)
    await on_a.async_initialize_login_mfa_step(user.id)
    code = codes_file()[-1]
    assert not on_a._pending
    assert await on_b.async_validate(user.id, {"code": wrong(code)}) is False
    assert await on_b.async_validate(user.id, {"code": code}) is True
    assert await on_a.async_validate(user.id, {"code": code}) is False
    assert await on_b.async_validate(user.id, {"code": code}) is False


async def test_the_same_code_on_b_and_c_at_once_is_accepted_once(
    opp_auth_factory: Any, make_user: Any, codes_file: Any
) -> None:
    """A replay raced on two servers that did not send it: exactly one of them accepts, every time."""
    on_a, on_b, user = await servers(opp_auth_factory, make_user)
    c = await opp_auth_factory(providers=PROVIDERS, mfa_modules=[{"type": "notify"}], blocks={"notify": [FILE_SERVICE]})
    on_c = c.registry.get_auth_mfa_module("notify")
    while not await on_c.async_is_user_setup(user.id):
        await asyncio.sleep(0.01)
    for _ in range(5):
        await on_a.async_initialize_login_mfa_step(user.id)
        code = {"code": codes_file()[-1]}
        results = await asyncio.gather(on_b.async_validate(user.id, code), on_c.async_validate(user.id, code))
        assert sorted(results) == [False, True]


async def test_a_resend_on_b_replaces_the_code_on_a_and_keeps_its_expiry(
    opp_auth_factory: Any, make_user: Any, codes_file: Any
) -> None:
    """The fresh code after a wrong one (sent by B) is the only one A accepts; it lives what the first had left."""
    on_a, on_b, user = await servers(opp_auth_factory, make_user)
    await on_a.async_initialize_login_mfa_step(user.id)
    await asyncio.sleep(0.5)
    await on_b.async_after_failed_validation(user.id)
    old, new = codes_file()
    left = await on_a.auth.async_get_shared(on_a._shared_key(user.id))
    assert left is not None and left[1] < opp_auth_notify.PENDING_TTL - 0.4
    # Neither the code nor the HOTP key: an HMAC under a key derived from the server secret.
    assert set(left[0]) == {"mac", "resends"} and left[0]["resends"] == 1
    assert new not in str(left[0]) and old not in str(left[0]) and len(left[0]["mac"]) == 64
    assert await on_a.async_validate(user.id, {"code": old}) is False
    assert await on_a.async_validate(user.id, {"code": new}) is True


async def test_resends_are_counted_across_servers(opp_auth_factory: Any, make_user: Any, codes_file: Any) -> None:
    """Three resends per login, wherever the wrong codes arrived."""
    on_a, on_b, user = await servers(opp_auth_factory, make_user)
    await on_a.async_initialize_login_mfa_step(user.id)
    for module in (on_b, on_a, on_b, on_a):
        await module.async_after_failed_validation(user.id)
    assert len(codes_file()) == 4
    assert await on_b.async_validate(user.id, {"code": codes_file()[-1]}) is True


async def test_the_per_minute_send_limit_counts_every_servers_sends(
    opp_auth_factory: Any, make_user: Any, codes_file: Any
) -> None:
    """Five codes a minute per user, wherever they were sent: a resend on A after five sends spread over
    A and B goes out nowhere (each server counting its own would have sent a sixth)."""
    on_a, on_b, user = await servers(opp_auth_factory, make_user)
    await on_a.async_initialize_login_mfa_step(user.id)
    for module in (on_b, on_a, on_b):
        await module.async_after_failed_validation(user.id)
    await on_b.async_initialize_login_mfa_step(user.id)  # a new login: the fifth code this minute
    assert len(codes_file()) == opp_auth_notify.SENDS_PER_MINUTE == 5
    await on_a.async_after_failed_validation(user.id)
    assert len(codes_file()) == 5
    assert await on_a.async_validate(user.id, {"code": codes_file()[-1]}) is True  # the last one still works


async def test_an_expired_code_is_refused_and_gone(
    opp_auth_factory: Any, make_user: Any, codes_file: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PENDING_TTL after the send (by the database's clock) no server accepts it, and the row is gone."""
    monkeypatch.setattr(opp_auth_notify, "PENDING_TTL", 0.3)
    on_a, on_b, user = await servers(opp_auth_factory, make_user)
    await on_a.async_initialize_login_mfa_step(user.id)
    await asyncio.sleep(0.4)
    assert await on_b.async_validate(user.id, {"code": codes_file()[-1]}) is False
    assert await on_a.async_validate(user.id, {"code": codes_file()[-1]}) is False
    assert await on_a.auth.async_get_shared(on_a._shared_key(user.id)) is None  # the sweep deletes the row


async def test_a_new_login_ends_the_previous_code_everywhere(
    opp_auth_factory: Any, make_user: Any, codes_file: Any
) -> None:
    """A second login of the user (on B) replaces the code A sent; so does removing the enrolment."""
    on_a, on_b, user = await servers(opp_auth_factory, make_user)
    await on_a.async_initialize_login_mfa_step(user.id)
    await on_b.async_initialize_login_mfa_step(user.id)
    first, second = codes_file()
    assert await on_a.async_validate(user.id, {"code": first}) is False
    await on_b.async_depose_user(user.id)
    assert await on_a.async_validate(user.id, {"code": second}) is False


async def test_derived_keys_are_the_same_on_every_server_and_differ_by_purpose(
    opp_auth_factory: Any, make_user: Any
) -> None:
    """Two servers on one storage (one secret) derive one key per purpose; another purpose, another key."""
    on_a, on_b, _user = await servers(opp_auth_factory, make_user)
    key = on_a.auth.derive_key("notify.notify.pending")
    assert len(key) == 32 and key == on_b.auth.derive_key("notify.notify.pending")
    assert key != on_a.auth.derive_key("notify.other.pending")
