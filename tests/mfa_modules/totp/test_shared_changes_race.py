"""An enrolment being written while another server's change arrives (shared storage)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from opp_auth.testing import async_wait_until

from .test_totp import PROVIDERS


@pytest.fixture
def opp_auth_storage_type() -> str:
    return "postgresql"


async def test_an_enrolment_stays_when_another_servers_change_arrives_meanwhile(
    opp_auth_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Server A enrols a user; before A's write is done, server B enrols another. A applies B's change to
    the copy its store holds: the user's new secret must stay in A's memory (else A lets them in
    without the second factor until the next reload)."""
    a = await opp_auth_factory(providers=PROVIDERS, mfa_modules=[{"type": "totp"}])
    b = await opp_auth_factory(providers=PROVIDERS, mfa_modules=[{"type": "totp"}])
    await a.backend.connected.wait()
    await b.backend.connected.wait()
    totp_a, totp_b = a.registry.get_auth_mfa_module("totp"), b.registry.get_auth_mfa_module("totp")
    first = await a.users.async_create_user("First")
    await totp_b.async_setup_user("someone-else", {})
    await async_wait_until(lambda: "someone-else" in totp_a._users)
    real = a.backend.async_write
    release = asyncio.Event()
    entered = asyncio.Event()

    async def slow_write(ops: list[Any], records: list[dict[str, Any]]) -> int:
        if any(r.get("k") == "auth_module.totp" for r in records):
            entered.set()
            await release.wait()
        return await real(ops, records)

    monkeypatch.setattr(a.backend, "async_write", slow_write)
    enrolment = asyncio.ensure_future(totp_a.async_setup_user(first.id, {}))
    await entered.wait()
    await totp_b.async_setup_user("a-third", {})
    await async_wait_until(lambda: "a-third" in totp_a._users)
    release.set()
    await enrolment
    assert await totp_a.async_is_user_setup(first.id), "the enrolment was undone in server A's memory"
