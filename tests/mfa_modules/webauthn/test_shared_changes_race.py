"""A passkey removal being written while another server's change arrives."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from opp_auth.testing import async_wait_until

from .test_webauthn import CONFIG, PROVIDERS, enrol, make_user


@pytest.fixture
def opp_auth_storage_type() -> str:
    return "postgresql"


async def test_a_removed_passkey_stays_removed_when_another_servers_change_arrives_meanwhile(
    opp_auth_factory: Any, authenticator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Server A removes a passkey; before A's write is done, server B enrols another user's passkey. A applies
    B's change to the copy its store holds (which still has the removed passkey) and takes that copy:
    the removed passkey is enrolled again in A's memory and logs in there."""
    a = await opp_auth_factory(providers=PROVIDERS, mfa_modules=[CONFIG])
    b = await opp_auth_factory(providers=PROVIDERS, mfa_modules=[CONFIG])
    await a.backend.connected.wait()
    await b.backend.connected.wait()
    module_a = a.registry.get_auth_mfa_module("webauthn")
    module_b = b.registry.get_auth_mfa_module("webauthn")
    user = await make_user(a)
    passkey = await enrol(module_a, authenticator, user.id)
    await async_wait_until(lambda: passkey["id"] in module_b._by_credential)
    # Any change of B's that A follows (A rebuilds its passkeys from its store's copy).
    other = await make_user(b, [{"username": "other", "password": "other-pass"}])
    await enrol(module_b, authenticator, other.id, "Other")
    await async_wait_until(lambda: other.id in module_a._users)
    real = a.backend.async_write
    release = asyncio.Event()
    entered = asyncio.Event()

    async def slow_write(ops: list[Any], records: list[dict[str, Any]]) -> int:
        if any(r.get("k") == "auth_module.webauthn" for r in records):
            entered.set()
            await release.wait()
        return await real(ops, records)

    monkeypatch.setattr(a.backend, "async_write", slow_write)
    removal = asyncio.ensure_future(module_a.async_remove(user.id, passkey["id"]))
    await entered.wait()
    assert passkey["id"] not in module_a._by_credential
    await enrol(module_b, authenticator, other.id, "Other 2")
    await async_wait_until(lambda: len(module_a._users[other.id]["passkeys"]) == 2)
    release.set()
    await removal
    assert passkey["id"] not in module_a._by_credential, "the removed passkey is back on server A"
