"""Logins saved login by login (selector paths): failed saves, duplicate names, a crash then a clean stop."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from opp_auth_local import STORAGE_KEY

from opp_auth.storage import StorageError
from opp_auth.testing import async_seed_documents, async_stored_document

from .test_provider import PASSWORD, Factory, local, login, make_auth, read_logins


def _hash(password: bytes) -> str:
    return base64.b64encode(bcrypt.hashpw(password, bcrypt.gensalt(4))).decode()


async def stored_logins(config_dir: Path) -> list[dict[str, Any]]:
    """What a restart after a crash reads: the file with its journal replayed."""
    return list((await async_stored_document(config_dir, STORAGE_KEY) or {}).get("users", []))


def disk_full(monkeypatch: pytest.MonkeyPatch, provider: Any) -> Any:
    """Make the logins journal's writes fail; returns a function giving the space back."""
    journal = provider.data._store.journal
    real = journal._write_sync

    def full(data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal, "_write_sync", full)
    return lambda: monkeypatch.setattr(journal, "_write_sync", real)


async def test_an_add_that_failed_on_a_full_disk_is_not_stored_by_a_later_change(
    opp_auth_factory: Factory, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """async_add_auth takes the login out of memory when its save fails; the journal must not keep
    the queued record either, or the next change writes it and a restart finds a login that 'failed'."""
    auth = await make_auth(opp_auth_factory)
    provider = local(auth)
    await provider.async_add_auth("first", PASSWORD)
    give_back = disk_full(monkeypatch, provider)
    with pytest.raises(StorageError):
        await provider.async_add_auth("ghost", "ghost-password")
    assert provider.data.get("ghost") is None
    give_back()
    await provider.async_change_password("first", "another-pass")
    assert [u["username"] for u in provider.data.users] == ["first"]
    assert [u["username"] for u in await stored_logins(config_dir)] == ["first"]
    # The manager that restarts on these files (after a crash) lets the 'failed' login in.
    again = local(await make_auth(opp_auth_factory))
    assert again.data.get("ghost") is None


async def test_a_rename_that_failed_on_a_full_disk_is_not_stored_by_a_later_change(
    opp_auth_factory: Factory, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed rename is undone in memory (and the credentials keep the old name); a restart must not
    find the login under the new name, which no credentials use."""
    auth = await make_auth(opp_auth_factory)
    provider = local(auth)
    await provider.async_add_auth("paulus", PASSWORD)
    await provider.async_add_auth("other", PASSWORD)
    user = await auth.users.async_get_or_create_user((await login(auth, "paulus", PASSWORD))["result"])
    [credentials] = [c for c in user.credentials if c.auth_provider_type == "openpeerpower"]
    give_back = disk_full(monkeypatch, provider)
    with pytest.raises(StorageError):
        await provider.async_change_username(credentials, "renamed")
    assert provider.data.get("paulus") is not None and provider.data.get("renamed") is None
    give_back()
    await provider.async_change_password("other", "another-pass")
    assert sorted(u["username"] for u in await stored_logins(config_dir)) == ["other", "paulus"]


@pytest.mark.parametrize("opp_auth_storage_type", ["json", "postgresql"])
async def test_exact_duplicate_usernames_a_password_change_and_a_removal_survive_a_restart(
    opp_auth_factory: Factory, opp_auth_storage: dict[str, Any], config_dir: Path
) -> None:
    """Legacy data holding one username twice (hand-edited, or an old import): the provider's index
    finds the last entry, a selector ({"username": name}) the first. A password change must be
    written for the entry it changed, and a removal must not bring the other entry back."""
    users = [
        {"username": "dup", "password": _hash(b"first-pass")},
        {"username": "dup", "password": _hash(b"second-pass")},
    ]
    await async_seed_documents(config_dir, opp_auth_storage, {STORAGE_KEY: (1, {"users": users})})
    provider = local(await make_auth(opp_auth_factory))
    assert provider.data.is_legacy
    await provider.async_change_password("dup", "changed-pass")
    provider.data.validate_login("dup", "changed-pass")
    # A restart (after a crash for the JSON files; any restart for PostgreSQL, which never compacts).
    again = local(await make_auth(opp_auth_factory))
    again.data.validate_login("dup", "changed-pass")  # InvalidAuthError: the change was written for the other entry
    await again.async_remove_auth("dup")
    remaining = [u["password"] for u in again.data.users]
    third = local(await make_auth(opp_auth_factory))
    assert [u["password"] for u in third.data.users] == remaining


async def test_a_restart_after_a_crash_then_a_normal_stop_leaves_a_whole_file(
    opp_auth_factory: Factory, config_dir: Path
) -> None:
    """User guide: 'a server that stops normally leaves a complete file and no journal'. After a crash the
    next server replays the logins journal; if it then stops without a change of its own, the file Home
    Assistant reads must hold the changes (here: a new password, a removed login)."""
    auth = await make_auth(opp_auth_factory)
    provider = local(auth)
    await provider.async_add_auth("paulus", PASSWORD)
    await provider.async_add_auth("gone", PASSWORD)
    await provider.async_change_password("paulus", "new-password")
    await provider.async_remove_auth("gone")
    # The crash: the files as they are now (the journal is durable), kept over the first server's stop.
    storage = config_dir / ".storage"
    crashed = {p.name: p.read_bytes() for p in storage.iterdir() if p.is_file()}
    await auth.async_shutdown()
    for p in storage.iterdir():
        if p.is_file():
            p.unlink()
    for name, raw in crashed.items():
        (storage / name).write_bytes(raw)
    second = await make_auth(opp_auth_factory)
    local(second).data.validate_login("paulus", "new-password")
    await second.async_shutdown()
    assert not (storage / f".{STORAGE_KEY}.journal").exists()
    [entry] = read_logins(config_dir)["data"]["users"]
    assert entry["username"] == "paulus"
    assert bcrypt.checkpw(b"new-password", base64.b64decode(entry["password"]))
