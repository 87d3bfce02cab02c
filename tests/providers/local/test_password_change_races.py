"""A password change (bcrypt in a thread) racing a rename or a removal and re-add."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import opp_auth_local
import pytest

from .test_failed_saves import stored_logins
from .test_provider import PASSWORD, Factory, local, login, make_auth


@pytest.mark.parametrize("opp_auth_storage_type", ["json", "postgresql"])
@pytest.mark.parametrize("other", ["rename", "remove_readd"])
async def test_password_change_racing(
    opp_auth_factory: Factory,
    opp_auth_storage: dict[str, Any],
    config_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    other: str,
) -> None:
    auth = await make_auth(opp_auth_factory)
    provider = local(auth)
    await provider.async_add_auth("paulus", PASSWORD)
    user = await auth.users.async_get_or_create_user((await login(auth, "paulus", PASSWORD))["result"])
    [cred] = [c for c in user.credentials if c.auth_provider_type == "openpeerpower"]
    entered, go = threading.Event(), threading.Event()
    real = opp_auth_local.hash_password

    def slow_hash(password: str) -> str:
        if password == "raced-password":
            entered.set()
            go.wait(10)
        return real(password)

    monkeypatch.setattr(opp_auth_local, "hash_password", slow_hash)
    change = asyncio.ensure_future(provider.async_change_password("paulus", "raced-password"))
    await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
    if other == "rename":
        await provider.async_change_username(cred, "renamed")
    else:
        await provider.async_remove_auth("paulus")
        await provider.async_add_auth("paulus", "readded-password")
    go.set()
    try:
        await change
    except Exception:  # noqa: BLE001 - any outcome, as long as memory and storage agree
        pass
    memory = sorted((u["username"], u["password"]) for u in provider.data.users)
    if opp_auth_storage["type"] == "json":
        assert sorted((u["username"], u["password"]) for u in await stored_logins(config_dir)) == memory
    again = local(await make_auth(opp_auth_factory))
    assert sorted((u["username"], u["password"]) for u in again.data.users) == memory
