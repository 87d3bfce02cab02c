"""Odd usernames and change sequences: memory, a restart and the other server agree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from opp_auth_local import STORAGE_KEY

from opp_auth.testing import async_wait_until

from .test_failed_saves import stored_logins
from .test_provider import PASSWORD, Factory, local, login, make_auth

NAMES = ["a", "ab", 'a"', "a,", "a]", "a}", 'a"},', "a\\", "é", "e\u0301", "a b", "Ω", "a\\u0022", "[", "{}"]


def view(users: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(u["username"], u["password"]) for u in users]


@pytest.mark.parametrize("opp_auth_storage_type", ["json", "postgresql"])
async def test_odd_names_and_sequences(
    opp_auth_factory: Factory, opp_auth_storage: dict[str, Any], config_dir: Path
) -> None:
    auth = await make_auth(opp_auth_factory)
    provider = local(auth)
    other = None
    if opp_auth_storage["type"] == "postgresql":
        other_auth = await make_auth(opp_auth_factory)
        other = local(other_auth)
        await other_auth.backend.connected.wait()
        await auth.backend.connected.wait()
    for name in NAMES:
        await provider.async_add_auth(name, PASSWORD)
    await provider.async_change_password("a", "changed-a")
    await provider.async_remove_auth("ab")
    await provider.async_add_auth("ab", "readded-ab")
    user = await auth.users.async_get_or_create_user((await login(auth, 'a"', PASSWORD))["result"])
    [cred] = [c for c in user.credentials if c.auth_provider_type == "openpeerpower"]
    await provider.async_change_username(cred, "b")
    await provider.async_change_username(cred, 'a"')  # back
    await provider.async_change_username(cred, "a,x")
    await provider.async_remove_auth("a,")
    await provider.async_change_username(cred, "a,")  # to a name deleted earlier
    await provider.async_remove_auth("a\\")
    await provider.async_change_password("a}", "changed-a}")
    memory = view(provider.data.users)
    if other is not None:
        await async_wait_until(lambda: sorted(view(other.data.users)) == sorted(memory))
    else:
        assert sorted(view(await stored_logins(config_dir))) == sorted(memory)
    again = local(await make_auth(opp_auth_factory))
    assert sorted(view(again.data.users)) == sorted(memory)
    # The order differs after a rename (saved as delete + append): cosmetic, not asserted.


@pytest.mark.parametrize("opp_auth_storage_type", ["json", "postgresql"])
async def test_seeded_whole_document_then_swaps(
    opp_auth_factory: Factory, opp_auth_storage: dict[str, Any], config_dir: Path
) -> None:
    """Logins seeded as one whole document (a copied Open Peer Power file, a root row), then renames that
    swap names through a free one, removals and re-adds; a restart reads the same logins."""
    import base64

    import bcrypt

    from opp_auth.testing import async_seed_documents

    hashed = {n: base64.b64encode(bcrypt.hashpw(n.encode(), bcrypt.gensalt(4))).decode() for n in "xyz"}
    await async_seed_documents(
        config_dir,
        opp_auth_storage,
        {STORAGE_KEY: (1, {"users": [{"username": n, "password": hashed[n]} for n in "xyz"]})},
    )
    auth = await make_auth(opp_auth_factory)
    provider = local(auth)
    creds = {}
    for n in "xy":
        user = await auth.users.async_get_or_create_user((await login(auth, n, n))["result"])
        [creds[n]] = [c for c in user.credentials if c.auth_provider_type == "openpeerpower"]
    await provider.async_change_username(creds["x"], "w")
    await provider.async_change_username(creds["y"], "x")
    await provider.async_change_username(creds["x"], "y")  # the former x, now y
    await provider.async_change_username(creds["y"], "x")  # back again
    await provider.async_remove_auth("z")
    await provider.async_add_auth("z", "new-zzz-pass")
    await provider.async_remove_auth("z")
    memory = sorted(view(provider.data.users))
    # creds follow their login: x's login is now "y" then... computed from the credentials.
    assert sorted(u for u, _ in memory) == sorted(c.data["username"] for c in creds.values())
    assert sorted(p for _, p in memory) == sorted([hashed["x"], hashed["y"]])
    if opp_auth_storage["type"] == "json":
        assert sorted(view(await stored_logins(config_dir))) == memory
    again = local(await make_auth(opp_auth_factory))
    assert sorted(view(again.data.users)) == memory
