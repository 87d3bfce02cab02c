"""A change from another server arriving while this server's own login change is being written."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from opp_auth.testing import async_wait_until

from .test_provider import PASSWORD, Factory, local, make_auth


@pytest.fixture
def opp_auth_storage_type() -> str:
    return "postgresql"


async def test_a_removal_pending_while_another_servers_change_arrives_stays_removed(
    opp_auth_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Server A removes a login; before A's write reaches the database, server B changes another
    login's password. A applies B's change to the document it loaded (which still holds the removed
    login) and rebuilds its logins from it: the removed login is back in A's memory and logs in there."""
    a = await make_auth(opp_auth_factory)
    b = await make_auth(opp_auth_factory)
    await a.backend.connected.wait()
    await b.backend.connected.wait()
    # Logins made by B: A has only loaded (and followed) them, never saved the document itself.
    await local(b).async_add_auth("victim", PASSWORD)
    await local(b).async_add_auth("other", PASSWORD)
    provider = local(a)
    await async_wait_until(lambda: provider.data.get("other") is not None)
    backend = a.backend
    real = backend.async_write
    release = asyncio.Event()
    entered = asyncio.Event()

    async def slow_write(ops: list[Any], records: list[dict[str, Any]]) -> int:
        if any(str(r.get("k", "")).startswith("auth_provider") for r in records):
            entered.set()
            await release.wait()
        return await real(ops, records)

    monkeypatch.setattr(backend, "async_write", slow_write)
    removal = asyncio.ensure_future(provider.async_remove_auth("victim"))
    await entered.wait()
    assert provider.data.get("victim") is None
    await local(b).async_change_password("other", "another-pass")
    await async_wait_until(lambda: provider.data.get("other")["password"] == local(b).data.get("other")["password"])
    release.set()
    await removal
    assert provider.data.get("victim") is None, "the removed login is back in A's memory"
    assert [u["username"] for u in provider.data.users] == ["other"]
