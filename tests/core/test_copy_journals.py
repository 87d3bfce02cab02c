"""storage copy (JsonBackend export and import) beside the journals of journaled documents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import opp_auth.storage
from opp_auth.backend import JsonBackend
from opp_auth.storage import StorageError, Store

KEY = "auth_provider.openpeerpower"


async def test_export_does_not_drop_a_document_whose_first_whole_write_did_not_happen(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first change of a new journaled document is durable in its journal before its file is written
    (dffdb16 writes the file right after, and only logs a failure). A crash in between, or a failed first
    write, leaves a journal alone: storage copy's export must not silently leave the logins behind."""
    store = Store(config_dir, KEY, 1, journal=True)
    assert await store.async_load() is None

    def full(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(opp_auth.storage, "write_atomic", full)
    data = {"users": [{"username": "paulus", "password": "hash"}]}
    await store.async_save_changes(data, [("users", {"username": "paulus"})])  # acknowledged
    monkeypatch.undo()
    assert not (config_dir / ".storage" / KEY).exists()
    assert await Store(config_dir, KEY, 1, journal=True).async_load() == data  # a restart has it
    try:
        exported = await JsonBackend({"type": "json"}, str(config_dir)).async_export()
    except StorageError:
        return  # refusing (start the server once first) is fine too
    assert exported["documents"].get(KEY) == (1, data)


async def test_import_refuses_a_directory_holding_a_stale_journal(config_dir: Path) -> None:
    """A crash left .storage/.auth_provider.openpeerpower.journal; the admin moved the logins file away
    (as `storage copy` asks: 'move them away first'), the hidden journal stayed. Importing the copied
    logins must not let that journal be replayed over them (no marker matches the new file: every
    record is replayed, bringing back old logins and passwords)."""
    old = Store(config_dir, KEY, 1, journal=True)
    await old.async_load()
    users: list[dict[str, str]] = [{"username": "old", "password": "old-hash"}]
    doc = {"users": users}
    await old.async_save_changes(doc, [("users", {"username": "old"})])  # file written (first change)
    users[0]["password"] = "leaked-hash"
    await old.async_save_changes(doc, [("users", {"username": "old"})])  # a journal line; then the crash
    (config_dir / ".storage" / KEY).rename(config_dir / "moved-away")
    copied = {"users": [{"username": "new", "password": "new-hash"}]}
    backend = JsonBackend({"type": "json"}, str(config_dir))
    try:
        await backend.async_import({"auth": None, "documents": {KEY: (1, copied)}})
    except StorageError:
        return  # refused: fine
    assert await Store(config_dir, KEY, 1, journal=True).async_load() == copied
