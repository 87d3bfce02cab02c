"""opp_auth.storage: versioned JSON files, atomic writes, coalesced saves, the config-dir lock."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from opp_auth import storage
from opp_auth.storage import ConfigDirLock, RecordList, StorageError, Store


def read_json(path: Path) -> Any:
    """The parsed JSON of a file."""
    return json.loads(path.read_text(encoding="utf-8"))


def storage_listing(config_dir: Path) -> list[str]:
    """Every name in .storage (temporary files included)."""
    return sorted(os.listdir(config_dir / ".storage"))


def write_envelope(config_dir: Path, key: str, version: int, data: Any) -> Path:
    """Write a storage file by hand."""
    path = config_dir / ".storage" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": version, "key": key, "data": data}), encoding="utf-8")
    return path


async def test_save_writes_the_envelope(config_dir: Path) -> None:
    """The file holds version, key and data."""
    store = Store(config_dir, "thing", 3)
    await store.async_save({"a": [1, 2], "b": "ü"})
    assert read_json(config_dir / ".storage" / "thing") == {
        "version": 3,
        "key": "thing",
        "data": {"a": [1, 2], "b": "ü"},
    }


async def test_load_returns_what_was_saved(config_dir: Path) -> None:
    """A new Store on the same file reads the saved data back."""
    await Store(config_dir, "thing", 1).async_save({"users": [{"id": "x", "n": None}]})
    assert await Store(config_dir, "thing", 1).async_load() == {"users": [{"id": "x", "n": None}]}


async def test_load_of_a_missing_file_is_none(config_dir: Path) -> None:
    """No file means no data (callers install defaults)."""
    assert await Store(config_dir, "absent", 1).async_load() is None


async def test_files_are_private_by_default(config_dir: Path) -> None:
    """Auth secrets are readable by the owner only."""
    store = Store(config_dir, "secret", 1)
    await store.async_save({})
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600


async def test_non_private_files_are_world_readable(config_dir: Path) -> None:
    """private=False gives 0644."""
    store = Store(config_dir, "http", 1, private=False)
    await store.async_save({})
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o644


async def test_successful_write_leaves_no_temporary_file(config_dir: Path) -> None:
    """Only the target is left in .storage."""
    store = Store(config_dir, "thing", 1)
    await store.async_save({"v": 1})
    await store.async_save({"v": 2})
    assert storage_listing(config_dir) == ["thing"]


async def test_unserialisable_data_leaves_the_old_file_intact(
    config_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Serialisation fails before the file is touched, is logged, and is a StorageError."""
    store = Store(config_dir, "thing", 1)
    await store.async_save({"v": 1})
    before = store.path.read_bytes()
    with pytest.raises(StorageError, match="Cannot serialise"):
        await store.async_save({"v": object()})
    assert any("Cannot serialise" in r.getMessage() for r in caplog.records)
    assert store.path.read_bytes() == before
    assert storage_listing(config_dir) == ["thing"]


async def test_failed_rename_leaves_old_file_and_no_temporary(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing os.replace (disk full, permissions) keeps the old file and removes the temp file."""
    store = Store(config_dir, "thing", 1)
    await store.async_save({"v": 1})
    before = store.path.read_bytes()

    def refuse(src: Any, dst: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.os, "replace", refuse)
    with pytest.raises(StorageError, match="No space left on device"):
        await store.async_save({"v": 2})
    monkeypatch.undo()
    assert store.path.read_bytes() == before
    assert storage_listing(config_dir) == ["thing"]


async def test_storage_folder_that_is_a_file_raises_storage_error(config_dir: Path) -> None:
    """An unwritable location is reported as a StorageError naming the file."""
    (config_dir / ".storage").write_text("not a folder")
    store = Store(config_dir, "thing", 1)
    with pytest.raises(StorageError, match="thing"):
        await store.async_save({"v": 1})


async def test_unparsable_file_raises_storage_error_naming_it(config_dir: Path) -> None:
    """A corrupt file is an error that says which file."""
    path = config_dir / ".storage" / "auth"
    path.parent.mkdir()
    path.write_text('{"version": 1, "data": {', encoding="utf-8")
    with pytest.raises(StorageError) as info:
        await Store(config_dir, "auth", 1).async_load()
    assert str(path) in str(info.value)


async def test_store_never_overwrites_a_file_it_could_not_parse(config_dir: Path) -> None:
    """After a failed load every write is refused and the file stays as it was."""
    path = config_dir / ".storage" / "auth"
    path.parent.mkdir()
    path.write_text("garbage", encoding="utf-8")
    store = Store(config_dir, "auth", 1)
    with pytest.raises(StorageError):
        await store.async_load()
    with pytest.raises(StorageError, match="Not writing"):
        await store.async_save({"users": []})
    store.async_delay_save(lambda: {"users": []}, 60)
    with pytest.raises(StorageError):
        await store.async_flush()
    assert path.read_text(encoding="utf-8") == "garbage"


async def test_file_without_envelope_is_refused(config_dir: Path) -> None:
    """Valid JSON that is not a storage envelope is not taken for data."""
    path = config_dir / ".storage" / "auth"
    path.parent.mkdir()
    path.write_text('{"users": []}', encoding="utf-8")
    with pytest.raises(StorageError, match="not an opp-auth storage file"):
        await Store(config_dir, "auth", 1).async_load()


async def test_newer_version_raises_storage_error(config_dir: Path) -> None:
    """Data written by a newer release is not read (even with a migrate hook)."""
    write_envelope(config_dir, "thing", 3, {})
    with pytest.raises(StorageError, match="version 3"):
        await Store(config_dir, "thing", 2, migrate=lambda version, data: data).async_load()


@pytest.mark.parametrize("version", [0, -1])
async def test_a_version_before_the_first_is_refused_for_what_it_is(config_dir: Path, version: int) -> None:
    """A file of a store that never migrates, older than its only version: not a "newer release", never overwritten."""
    path = write_envelope(config_dir, "auth", version, {"users": []})
    before = path.read_bytes()
    store = Store(config_dir, "auth", 1, journal=True)
    for load in (store.async_load, store.async_load_journaled):
        with pytest.raises(StorageError, match=f"has version {version}, which no release wrote") as err:
            await load()
        assert "newer" not in str(err.value)
    with pytest.raises(StorageError):
        await store.async_save({})
    assert path.read_bytes() == before


async def test_newer_version_is_never_overwritten(config_dir: Path) -> None:
    """A store that refused a newer file does not replace it."""
    path = write_envelope(config_dir, "thing", 3, {"new": True})
    before = path.read_bytes()
    store = Store(config_dir, "thing", 2)
    with pytest.raises(StorageError):
        await store.async_load()
    with pytest.raises(StorageError):
        await store.async_save({})
    assert path.read_bytes() == before


async def test_migrate_hook_upgrades_older_versions(config_dir: Path) -> None:
    """An older file is passed through migrate(old_version, old_data)."""
    write_envelope(config_dir, "onboarding", 1, {"done": ["user"]})
    calls: list[tuple[int, Any]] = []

    def migrate(version: int, data: Any) -> Any:
        calls.append((version, data))
        return {"done": [*data["done"], "integration"]}

    loaded = await Store(config_dir, "onboarding", 2, migrate=migrate).async_load()
    assert calls == [(1, {"done": ["user"]})]
    assert loaded == {"done": ["user", "integration"]}


async def test_older_version_without_migrate_hook_is_an_error(config_dir: Path) -> None:
    """No hook, no guessing."""
    write_envelope(config_dir, "thing", 1, {})
    with pytest.raises(StorageError):
        await Store(config_dir, "thing", 2).async_load()


async def test_concurrent_loads_read_the_file_once(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Callers loading at the same time share one read."""
    write_envelope(config_dir, "thing", 1, {"x": 1})
    reads = 0
    real = storage.read_envelope

    def counting(path: Path) -> Any:
        nonlocal reads
        reads += 1
        return real(path)

    monkeypatch.setattr(storage, "read_envelope", counting)
    store = Store(config_dir, "thing", 1)
    results = await asyncio.gather(*(store.async_load() for _ in range(5)))
    assert results == [{"x": 1}] * 5
    assert reads == 1


async def test_concurrent_saves_coalesce(config_dir: Path) -> None:
    """Many callers saving at once cause far fewer writes than callers."""
    store = Store(config_dir, "thing", 1)
    state: dict[str, bool] = {}
    writes = 0

    def data_func() -> dict[str, bool]:
        nonlocal writes
        writes += 1
        return dict(state)

    async def change(name: str) -> None:
        state[name] = True
        await store.async_save_func(data_func)

    await asyncio.gather(*(change(f"c{i}") for i in range(20)))
    assert 1 <= writes <= 2
    assert read_json(store.path)["data"] == {f"c{i}": True for i in range(20)}


async def test_each_saver_finds_its_change_on_disk_when_its_await_returns(config_dir: Path) -> None:
    """Coalescing never returns before the caller's own change is durable."""
    store = Store(config_dir, "thing", 1)
    state: dict[str, bool] = {}
    missing: list[str] = []

    async def change(name: str) -> None:
        state[name] = True
        await store.async_save_func(lambda: dict(state))
        if name not in read_json(store.path)["data"]:
            missing.append(name)

    await asyncio.gather(*(change(f"c{i}") for i in range(20)))
    assert missing == []


async def test_delay_save_coalesces_and_flush_writes_the_latest(config_dir: Path) -> None:
    """Only the last data function is evaluated, and only when the save happens."""
    store = Store(config_dir, "thing", 1)
    calls: list[str] = []

    def first() -> dict[str, int]:
        calls.append("first")
        return {"v": 1}

    def second() -> dict[str, int]:
        calls.append("second")
        return {"v": 2}

    store.async_delay_save(first, 60)
    store.async_delay_save(second, 60)
    assert store.has_pending_save
    assert not store.path.exists()
    await store.async_flush()
    assert calls == ["second"]
    assert read_json(store.path)["data"] == {"v": 2}
    assert not store.has_pending_save


async def test_delay_save_writes_when_the_timer_fires(config_dir: Path) -> None:
    """Without a flush the delayed save still happens after its delay."""
    store = Store(config_dir, "thing", 1)
    store.async_delay_save(lambda: {"v": 1}, 0.01)
    for _ in range(200):
        if store.path.exists():
            break
        await asyncio.sleep(0.01)
    assert read_json(store.path)["data"] == {"v": 1}


async def test_immediate_save_supersedes_a_pending_delayed_save(config_dir: Path) -> None:
    """A save now includes the change, so the delayed one is dropped."""
    store = Store(config_dir, "thing", 1)
    evaluated: list[str] = []
    store.async_delay_save(lambda: evaluated.append("delayed") or {"v": 1}, 60)
    await store.async_save({"v": 2})
    await store.async_flush()
    assert evaluated == []
    assert read_json(store.path)["data"] == {"v": 2}


class Record:
    """A record rendered by a to_dict function."""

    def __init__(self, ident: str, extra: Any) -> None:
        """Keep the fields."""
        self.ident = ident
        self.extra = extra


async def test_record_list_output_is_valid_json(config_dir: Path) -> None:
    """RecordList, nested dicts, empty lists and awkward strings read back equal."""
    records = [
        Record("a", {"nested": [1, 2.5, None, True], "quote": 'say "hi"\n\ttab'}),
        Record("b", "ünïcödé \u2028 \\ /"),
    ]
    data = {
        "users": RecordList(records, lambda r: {"id": r.ident, "extra": r.extra}),
        "empty": RecordList([], lambda r: r),
        "deeper": {"tokens": RecordList([Record("c", [])], lambda r: {"id": r.ident, "extra": r.extra}), "n": 0},
        "plain": {"k": [1, {"x": "y"}]},
        "set": {3, 1, 2},
    }
    store = Store(config_dir, "thing", 1)
    await store.async_save(data)
    assert read_json(store.path) == {
        "version": 1,
        "key": "thing",
        "data": {
            "users": [
                {"id": "a", "extra": {"nested": [1, 2.5, None, True], "quote": 'say "hi"\n\ttab'}},
                {"id": "b", "extra": "ünïcödé \u2028 \\ /"},
            ],
            "empty": [],
            "deeper": {"tokens": [{"id": "c", "extra": []}], "n": 0},
            "plain": {"k": [1, {"x": "y"}]},
            "set": [1, 2, 3],
        },
    }


async def test_record_list_is_snapshotted_at_save_time(config_dir: Path) -> None:
    """Items appended after the save call are not part of that write."""
    items = [Record("a", 1)]
    store = Store(config_dir, "thing", 1)
    task = asyncio.ensure_future(store.async_save({"r": RecordList(items, lambda r: r.ident)}))
    await asyncio.sleep(0)
    items.append(Record("b", 2))
    await task
    assert read_json(store.path)["data"] == {"r": ["a"]}


async def test_wait_saved_returns_only_once_a_write_in_flight_is_on_disk(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revocation answered while another request's write of it is still running must wait for that write."""
    store = Store(config_dir, "thing", 1)
    release = threading.Event()
    write = storage.write_atomic

    def slow_disk(path: Path, content: bytes, private: bool = True) -> None:
        release.wait(5)
        write(path, content, private)

    monkeypatch.setattr(storage, "write_atomic", slow_disk)
    saving = asyncio.ensure_future(store.async_save({"v": 1}))
    await asyncio.sleep(0.05)
    waiting = asyncio.ensure_future(store.async_wait_saved())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    release.set()
    await waiting
    assert read_json(store.path)["data"] == {"v": 1}
    await saving


async def test_wait_saved_retries_a_write_that_failed(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(config_dir, "thing", 1)

    def full_disk(path: Path, content: bytes, private: bool = True) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage, "write_atomic", full_disk)
    with pytest.raises(StorageError):
        await store.async_save({"v": 1})
    with pytest.raises(StorageError):
        await store.async_wait_saved()
    monkeypatch.undo()
    await store.async_wait_saved()
    assert read_json(store.path)["data"] == {"v": 1}


async def test_wait_saved_writes_nothing_when_nothing_is_unsaved(config_dir: Path) -> None:
    store = Store(config_dir, "thing", 1)
    await store.async_wait_saved()
    assert not store.path.exists()


async def test_remove_deletes_the_file(config_dir: Path) -> None:
    """async_remove deletes the file and a pending delayed save."""
    store = Store(config_dir, "thing", 1)
    await store.async_save({"v": 1})
    store.async_delay_save(lambda: {"v": 2}, 60)
    await store.async_remove()
    await store.async_flush()
    assert not store.path.exists()


def test_config_dir_lock_refuses_a_second_holder(config_dir: Path) -> None:
    """A second acquire (another open file) fails naming the holder."""
    first = ConfigDirLock(config_dir)
    first.acquire("serve")
    try:
        with pytest.raises(StorageError) as info:
            ConfigDirLock(config_dir).acquire("auth add")
        assert f"opp-auth serve (pid {os.getpid()})" in str(info.value)
        assert str(config_dir) in str(info.value)
    finally:
        first.release()


def test_config_dir_lock_can_be_taken_after_release(config_dir: Path) -> None:
    """Releasing lets the next process in."""
    with ConfigDirLock(config_dir) as lock:
        lock.acquire("serve")
    second = ConfigDirLock(config_dir)
    second.acquire("auth add")
    second.release()


async def test_record_list_given_as_a_list_is_left_unchanged_by_a_save(config_dir: Path) -> None:
    """The encoder drops the items of its own copy as it goes, never those of the caller's list."""
    items = [Record("a", 1), Record("b", 2)]
    store = Store(config_dir, "thing", 1)
    await store.async_save({"r": RecordList(items, lambda r: r.ident)})
    assert [r.ident for r in items] == ["a", "b"]
    assert read_json(store.path)["data"] == {"r": ["a", "b"]}


async def test_compaction_pauses_the_collector_and_restores_it(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a compaction encodes the records' lists no automatic collection walks them; after it, gc is as before."""
    import gc

    seen: list[bool] = []
    store = Store(config_dir, "thing", 1, journal=True)
    await store.async_load()

    def render(record: Record) -> Any:
        seen.append(gc.isenabled())
        return record.ident

    store.snapshot_func = lambda: {"r": RecordList(lambda: [Record("a", 1), Record("b", 2)], render)}
    store.journal_append({"t": "set", "p": ["x"], "v": 1})
    await store.async_commit()
    assert gc.isenabled()
    await store.async_compact()
    assert seen == [False, False]
    assert gc.isenabled()
    assert read_json(store.path)["data"] == {"r": ["a", "b"]}
    gc.disable()
    try:
        with storage.paused_gc(), storage.paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()  # disabled before: left disabled
    finally:
        gc.enable()
    with storage.paused_gc():
        with storage.paused_gc():
            pass
        assert not gc.isenabled()  # the outer pause still holds
    assert gc.isenabled()


async def test_a_journaled_documents_first_change_writes_its_whole_file(config_dir: Path) -> None:
    """The first change of a new journaled document writes its file (readers of files alone, such as
    storage copy and Home Assistant, find it); later changes are journal lines; a restart reads both."""
    store = Store(config_dir, "auth_module.example", 3, journal=True)
    assert await store.async_load() is None
    data: dict[str, Any] = {"users": {"a": 1}}
    await store.async_save_changes(data, [("users", "a")])
    path = config_dir / ".storage" / "auth_module.example"
    envelope = json.loads(path.read_text())
    assert envelope["version"] == 3 and envelope["key"] == "auth_module.example" and envelope["data"] == data
    data["users"]["b"] = 2
    await store.async_save_changes(data, [("users", "b")])
    assert json.loads(path.read_text())["data"] == {"users": {"a": 1}}  # the second change: a journal line
    assert await Store(config_dir, "auth_module.example", 3, journal=True).async_load() == {"users": {"a": 1, "b": 2}}


async def test_a_list_of_records_is_saved_record_by_record(config_dir: Path) -> None:
    """Selector paths through a journal: set replaces or appends, a missing record is deleted."""
    store = Store(config_dir, "auth_provider.example", 1, journal=True)
    await store.async_load()
    users: list[dict[str, str]] = [{"username": "a", "password": "1"}]
    doc = {"users": users}
    await store.async_save_changes(doc, [("users", {"username": "a"})])
    users.append({"username": "b", "password": "2"})
    users[0]["password"] = "one"
    await store.async_save_changes(doc, [("users", {"username": "b"}), ("users", {"username": "a"})])
    del users[1]
    await store.async_save_changes(doc, [("users", {"username": "b"})])
    again = await Store(config_dir, "auth_provider.example", 1, journal=True).async_load()
    assert again == {"users": [{"username": "a", "password": "one"}]}
    with pytest.raises(StorageError, match="not a document path step"):
        await store.async_save_changes(doc, [("users", ["a"])])  # type: ignore[list-item]
