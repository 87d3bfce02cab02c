"""Versioned JSON files in <config>/.storage: atomic, durable, coalesced saves.

The envelope is Open Peer Power's: ``{"version": N, "key": "<key>", "data": ...}``.
Writes go to a temporary file in the same folder, are fsynced, renamed over the
target and the folder is fsynced, so a crash leaves the old or the new file,
never half of one. Serialisation and disk I/O run in an executor; large record
lists (the auth store's users and tokens) are encoded one record at a time so
the event loop keeps getting the GIL while a big store is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from . import docpaths
from .journal import Journal, UnstorableValueError, digest_chunks, journal_path, records_after_base

_LOGGER = logging.getLogger(__name__)

STORAGE_DIR = ".storage"


class StorageError(Exception):
    """A .storage file cannot be read or written; str() says which and what to do."""


# What a client is told when a change cannot be saved (the log names the file and the cause).
STORAGE_UNAVAILABLE_MESSAGE = (
    "The server cannot save changes: its storage is full, read-only or unreachable. Try again later."
)


class RecordList:
    """Records rendered lazily, in the writer thread.

    ``items`` is a list, or a function returning one that the writer thread
    calls: ``lambda: list(a_dict.values())`` copies a dict in one C call that
    holds the GIL, so it is consistent, and costs the event loop nothing.
    """

    __slots__ = ("_items", "owned", "to_dict")

    def __init__(
        self, items: list[Any] | Callable[[], list[Any]], to_dict: Callable[[Any], Any], owned: bool = False
    ) -> None:
        """Keep the items (or how to take them) and the function that renders one.

        A list that is the RecordList's own (owned, or returned by the function) is
        emptied as it is encoded: each item is dropped once rendered, so 100,000
        references are let go of along the way rather than all at once at the end.
        """
        self._items = items
        self.to_dict = to_dict
        self.owned = owned

    @property
    def items(self) -> list[Any]:
        """The items (taken now when given as a function)."""
        if callable(self._items):
            self._items = self._items()
            self.owned = True
        return self._items


def _json_default(obj: Any) -> Any:
    """Serialise sets and objects that know how to render themselves."""
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "as_dict"):
        return obj.as_dict()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


_DUMPS = json.JSONEncoder(default=_json_default, ensure_ascii=False, separators=(", ", ": ")).encode


def _encode_value(value: Any, indent: int) -> Iterator[str]:
    """The JSON text of value in pieces; dicts indented, RecordLists one record per line."""
    pad = " " * indent
    if isinstance(value, RecordList):
        if not value.items:
            yield "[]"
            return
        yield "[\n"
        inner = pad + "    "
        to_dict = value.to_dict
        items = value.items
        last = len(items) - 1
        owned = value.owned
        for index, item in enumerate(items):
            if owned:
                items[index] = None
            yield inner + _DUMPS(to_dict(item)) + (",\n" if index != last else "\n")
        yield pad + "]"
    elif isinstance(value, dict) and any(isinstance(v, (RecordList, dict)) for v in value.values()):
        yield "{\n"
        items = list(value.items())
        for index, (key, item) in enumerate(items):
            yield f"{pad}    {json.dumps(str(key), ensure_ascii=False)}: "
            yield from _encode_value(item, indent + 4)
            yield ",\n" if index != len(items) - 1 else "\n"
        yield pad + "}"
    else:
        yield json.dumps(value, default=_json_default, ensure_ascii=False, indent=4).replace("\n", "\n" + pad)


CHUNK_CHARS = 16 * 1024


def encode_envelope_chunks(key: str, version: int, data: Any, minor_version: int | None = None) -> Iterator[bytes]:
    """The file's JSON text as ~16 KiB byte chunks (called in a worker thread).

    Small pieces matter: one large join or encode holds the GIL for tens of
    milliseconds with a big store, and the event loop would wait that long.
    """
    envelope: dict[str, Any] = {"version": version}
    if minor_version is not None:
        envelope["minor_version"] = minor_version
    envelope["key"] = key
    envelope["data"] = data
    pending: list[str] = []
    size = 0
    for piece in _encode_value(envelope, 0):
        pending.append(piece)
        size += len(piece)
        if size >= CHUNK_CHARS:
            yield "".join(pending).encode("utf-8")
            pending, size = [], 0
    pending.append("\n")
    yield "".join(pending).encode("utf-8")


def encode_envelope(key: str, version: int, data: Any, minor_version: int | None = None) -> bytes:
    """The file's full JSON text."""
    return b"".join(encode_envelope_chunks(key, version, data, minor_version))


def write_atomic(path: Path, content: bytes | Iterable[bytes], private: bool = True) -> None:
    """Write content (bytes or byte chunks) to path through a fsynced temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            for chunk in [content] if isinstance(content, bytes) else content:
                tmp.write(chunk)
            tmp.flush()
            os.fsync(tmp.fileno())
        if not private:
            os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def read_envelope(path: Path) -> dict[str, Any] | None:
    """Read and check a storage file; None when it does not exist."""
    raw = _read_raw(path)
    return None if raw is None else parse_envelope(path, raw)


def _read_raw(path: Path) -> bytes | None:
    """A file's bytes; None when it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise StorageError(f"Cannot read {path}: {err.strerror}. Check its permissions.") from err


def parse_envelope(path: Path, raw: bytes) -> dict[str, Any]:
    """Parse and check the bytes of a storage file."""
    try:
        envelope = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        # RecursionError: arrays or objects nested deeper than Python's JSON parser goes (about 1,000
        # levels; opp-auth never writes them, its edge validation bounds nesting far below).
        reason = "values nested too deeply to read" if isinstance(err, RecursionError) else str(err)
        raise StorageError(
            f"{path} cannot be parsed ({reason}). opp-auth will not overwrite it: "
            "restore it from a backup, fix it, or move it away to start afresh."
        ) from err
    if not isinstance(envelope, dict) or "data" not in envelope or not isinstance(envelope.get("version"), int):
        raise StorageError(
            f"{path} is not an opp-auth storage file (expected an object with 'version' and "
            "'data'). opp-auth will not overwrite it: restore it from a backup or move it away."
        )
    return envelope


class Store:
    """One versioned JSON file under <config>/.storage."""

    def __init__(
        self,
        config_dir: str | os.PathLike[str],
        key: str,
        version: int,
        *,
        private: bool = True,
        migrate: Callable[[int, Any], Any] | None = None,
        journal: bool = False,
        decode: Callable[[bytes], dict[str, Any] | None] | None = None,
    ) -> None:
        """Name the file; nothing is read until async_load.

        With journal=True changes are appended to ``.<key>.journal`` (journal_append, then
        async_commit) and the file itself is rewritten only by compactions (module journal).
        decode(raw): the owner's faster parse of the file's bytes for async_load_journaled, an
        envelope whose data the owner reads, or None to parse the file as JSON (async_load
        always does).
        """
        self.key = key
        self.version = version
        self.path = Path(config_dir) / STORAGE_DIR / key
        self._private = private
        self._migrate = migrate
        self._write_lock = asyncio.Lock()
        self._load_task: asyncio.Future[Any] | None = None
        self._delay_handle: asyncio.TimerHandle | None = None
        self._data_func: Callable[[], Any] | None = None
        self._pending: asyncio.Future[None] | None = None
        # The data function of a write that failed, until a later write succeeds.
        self._unsaved: Callable[[], Any] | None = None
        self._broken = False
        self.journal = Journal(journal_path(self.path), private) if journal else None
        self._decode = decode
        # What a compaction writes (the store's whole data), set by the journal's owner.
        self.snapshot_func: Callable[[], Any] | None = None
        self.base_size = 0
        # Read at load: the file did not exist (its first write is a whole file, see async_save_changes).
        self._base_missing = False
        self._compaction: asyncio.Future[None] | None = None
        self._compact_after = 0.0
        self._listeners: list[Callable[[Any], None]] = []

    def listen(self, callback: Callable[[Any], None]) -> None:
        """callback(data) when another server changed this document: never for a file (one server owns it).

        The store seam's shared backends (opp_auth.backend) call it; plugins register here either way.
        """
        self._listeners.append(callback)

    async def async_load(self) -> Any | None:
        """Load the data once (concurrent callers share the read); None when there is no file."""
        if self._load_task is None:
            task = self._load_task = asyncio.ensure_future(self._async_load())
            # Once read, forget the task: it holds the whole parsed file for as long as it is referenced.
            task.add_done_callback(self._forget_load)
        return await asyncio.shield(self._load_task)

    def _forget_load(self, task: asyncio.Future[Any]) -> None:
        """Drop the finished load task (a later load reads the file again)."""
        if self._load_task is task:
            self._load_task = None

    async def _async_load(self) -> Any | None:
        """Read, check and migrate the file in an executor (and replay its journal, if any)."""
        if self.journal is not None:
            data, records = await self._load_journaled(None)
            data = apply_path_records(data, records, self.path)
            if self.snapshot_func is None and (self.journal.size or self.journal.torn_bytes):
                # A journal left by a crash: a normal stop writes the whole file (async_flush) even when
                # this server changes nothing, so readers of the file alone (Home Assistant) see it.
                self.snapshot_func = lambda: data
            return data
        loop = asyncio.get_running_loop()
        try:
            envelope = await loop.run_in_executor(None, read_envelope, self.path)
        except StorageError:
            self._broken = True
            self._load_task = None
            raise
        if envelope is None:
            return None
        return self._data_of(envelope)

    async def async_load_journaled(self) -> tuple[Any | None, list[dict[str, Any]]]:
        """The file's data (as decode gives it, if it can) and the journal's change records it lacks, in order."""
        return await self._load_journaled(self._decode)

    async def _load_journaled(
        self, decode: Callable[[bytes], dict[str, Any] | None] | None
    ) -> tuple[Any | None, list[dict[str, Any]]]:
        """async_load_journaled, with this parse of the file's bytes first (None: JSON)."""
        assert self.journal is not None, "not a journaled store"
        loop = asyncio.get_running_loop()
        try:
            envelope, records = await loop.run_in_executor(None, self._read_journaled, decode)
        except StorageError:
            self._broken = True
            raise
        if envelope is None:
            return None, records
        return self._data_of(envelope), records

    def _data_of(self, envelope: dict[str, Any]) -> Any:
        """The envelope's data in this release's version: as it is, or migrated from an older one; else refused."""
        version = envelope["version"]
        if version == self.version:
            return envelope["data"]
        if version < self.version and self._migrate is not None:
            return self._migrate(version, envelope["data"])
        self._broken = True  # never overwritten
        if version > self.version:
            raise StorageError(
                f"{self.path} has version {version}, this opp-auth reads version "
                f"{self.version}. It was written by a newer release: upgrade opp-auth."
            )
        raise StorageError(
            f"{self.path} has version {version}, which no release wrote (this opp-auth reads version "
            f"{self.version} and migrates none older). opp-auth will not overwrite it: restore it from a "
            "backup, fix its version, or move it away to start afresh."
        )

    def _read_journaled(
        self, decode: Callable[[bytes], dict[str, Any] | None] | None
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """Worker thread: read the base and the journal; keep the records the base lacks."""
        assert self.journal is not None
        raw = _read_raw(self.path)
        envelope = None
        if raw is not None:
            envelope = decode(raw) if decode is not None else None
            if envelope is None or envelope["version"] != self.version:
                envelope = parse_envelope(self.path, raw)
        self.base_size = 0 if raw is None else len(raw)
        self._base_missing = raw is None
        try:
            records = self.journal.load()
        except OSError as err:
            raise StorageError(
                f"Cannot read {self.journal.path}: {err.strerror or err}. Check its permissions."
            ) from err
        return envelope, records_after_base(records, raw)

    def journal_append(self, record: dict[str, Any]) -> int:
        """Queue a change record (call before changing memory); StorageError when it cannot be stored."""
        assert self.journal is not None, "not a journaled store"
        if self._broken:
            raise StorageError(f"Not writing {self.path}: it could not be read at start-up.")
        try:
            return self.journal.append(record)
        except UnstorableValueError as err:
            _LOGGER.error("Refusing a change to %s: %s", self.path, err)
            raise StorageError(f"Cannot serialise a change to {self.path}: {err}") from err

    async def async_commit(self) -> None:
        """Return once every queued change record is durable; compacts in the background when due."""
        assert self.journal is not None, "not a journaled store"
        if self._broken:
            raise StorageError(f"Not writing {self.path}: it could not be read at start-up.")
        try:
            await self.journal.async_commit()
        except OSError as err:
            _LOGGER.error("Cannot write %s: %s", self.journal.path, err.strerror or err)
            raise StorageError(
                f"Cannot write {self.journal.path}: {err.strerror or err}. Check free space and permissions."
            ) from err
        if self.journal.size > self.compact_threshold:
            self.schedule_compaction()

    @property
    def compact_threshold(self) -> int:
        """Journal bytes that call for a compaction: a share of the base, within bounds."""
        return max(COMPACT_MIN_BYTES, min(self.base_size // 2, COMPACT_MAX_BYTES))

    def schedule_compaction(self) -> None:
        """Compact in the background unless one runs or a failed one waits to be retried."""
        if self._compaction is not None or self.snapshot_func is None or time.monotonic() < self._compact_after:
            return
        task = self._compaction = asyncio.ensure_future(self.async_compact())
        task.add_done_callback(self._compaction_done)

    def _compaction_done(self, task: asyncio.Future[None]) -> None:
        """Forget the finished compaction; after a failure wait before the next try."""
        self._compaction = None
        if not task.cancelled() and task.exception() is not None:
            self._compact_after = time.monotonic() + COMPACT_RETRY_DELAY
            _LOGGER.error("Compacting %s failed (retried later): %s", self.path, task.exception())

    async def async_compact(self, data_func: Callable[[], Any] | None = None) -> None:
        """Write the whole data to the file and cut the journal down to the changes it lacks.

        Order (module journal): marker record durable, then the new file renamed into
        place, then the journal rewritten. A crash between any two steps leaves files
        that load to the same data.
        """
        assert self.journal is not None, "not a journaled store"
        func = data_func or self.snapshot_func
        assert func is not None, "nothing to compact"
        journal = self.journal
        async with self._write_lock:
            if self._broken:
                raise StorageError(f"Not writing {self.path}: it could not be read at start-up.")
            loop = asyncio.get_running_loop()
            upto = journal.last_seq
            snapshot = _snapshot(func())
            try:
                if _has_records(snapshot):
                    # The records' lists (300,000 references at 100,000 users) would be walked by every
                    # collection while they live, 30 ms a time with the loop waiting: the automatic
                    # collector pauses until they are encoded and dropped (module storage, paused_gc).
                    with paused_gc():
                        chunks = await _async_encode_chunks(self.key, self.version, snapshot)
                        del snapshot
                else:
                    chunks = await loop.run_in_executor(
                        None, lambda: list(encode_envelope_chunks(self.key, self.version, snapshot))
                    )
            except (TypeError, ValueError) as err:
                _LOGGER.error("Cannot serialise the data of %s: %s", self.path, err)
                raise StorageError(f"Cannot serialise the data of {self.path}: {err}") from err
            size, sha256 = await loop.run_in_executor(None, digest_chunks, chunks)
            self.journal_append({"base": {"upto": upto, "size": size, "sha256": sha256}})
            try:
                await journal.async_commit()
                await loop.run_in_executor(None, write_atomic, self.path, chunks, self._private)
                self.base_size = size
                self._base_missing = False
                del chunks
                await journal.async_drop_through(upto)
            except OSError as err:
                _LOGGER.error("Cannot write %s: %s", self.path, err.strerror or err)
                raise StorageError(
                    f"Cannot write {self.path}: {err.strerror or err}. Check free space and permissions."
                ) from err

    async def async_save_changes(self, data: Any, paths: Iterable[tuple[str, ...]]) -> None:
        """Make the entries of data at paths durable (each path a chain of dict keys; a missing entry
        is recorded as deleted). A journaled store appends one record per path, a plain one writes
        the whole data. The store keeps data as what its compactions write: pass the live object
        and journal every change of it, here or with async_save.
        """
        if self.journal is None:
            await self.async_save(data)
            return
        records = []
        for path in paths:
            try:
                steps = docpaths.check_path(path)
            except ValueError as err:
                raise StorageError(f"Cannot save a change to {self.path}: {err}") from None
            node = docpaths.value_at(data, steps)
            records.append(
                {"t": "del", "p": steps} if node is docpaths.MISSING else {"t": "set", "p": steps, "v": node}
            )
        self.snapshot_func = lambda: data
        for record in records:
            self.journal_append(record)
        await self.async_commit()
        if self._base_missing:
            # The document's first change: its whole file now (it is small), so whatever reads the
            # files alone (storage copy, Home Assistant) finds the document in its format and version.
            # The change is durable in the journal already; a failed write here only waits for the
            # next compaction.
            try:
                await self.async_compact()
            except StorageError as err:
                _LOGGER.warning("First write of %s left to the next compaction: %s", self.path, err)

    async def async_save(self, data: Any) -> None:
        """Write data now; returns when it is durable on disk."""
        if self.journal is not None:
            self.snapshot_func = lambda: data
        await self.async_save_func(lambda: data)

    async def async_save_func(self, data_func: Callable[[], Any]) -> None:
        """Write what data_func returns; concurrent callers share one write that includes their change."""
        if self.journal is not None:
            # The whole data of a journaled store is written by a compaction (the journal stays consistent).
            self._cancel_delay()
            self._data_func = None
            await self.async_commit()
            await self.async_compact(data_func)
            return
        self._cancel_delay()
        self._data_func = data_func
        if self._pending is not None:
            await asyncio.shield(self._pending)
            return
        waiter = self._pending = asyncio.get_running_loop().create_future()
        waiter.add_done_callback(_consume_exception)
        try:
            async with self._write_lock:
                # Changes made from here on need a write of their own.
                self._pending = None
                func, self._data_func = self._data_func, None
                if func is not None:
                    try:
                        await self._async_write(func())
                    except BaseException:
                        self._unsaved = func
                        raise
                    self._unsaved = None
        except BaseException as err:
            if not waiter.done():
                waiter.set_exception(err if isinstance(err, Exception) else StorageError(str(err)))
            raise
        if not waiter.done():
            waiter.set_result(None)

    async def async_wait_saved(self) -> None:
        """Return once every change a save was asked for is on disk, retrying one whose write failed."""
        if self.journal is not None:
            await self.async_commit()
            return
        if self._pending is not None:
            await asyncio.shield(self._pending)
            return
        async with self._write_lock:
            pass
        if self._unsaved is not None:
            await self.async_save_func(self._unsaved)

    def async_delay_save(self, data_func: Callable[[], Any], delay: float = 1.0) -> None:
        """Save later, coalescing: the latest data_func is evaluated only when the timer fires."""
        self._data_func = data_func
        if self._delay_handle is not None:
            return
        loop = asyncio.get_running_loop()
        self._delay_handle = loop.call_later(delay, self._fire_delayed)

    def _fire_delayed(self) -> None:
        """Timer callback: start the write."""
        self._delay_handle = None
        func = self._data_func
        if func is None:
            return
        task = asyncio.ensure_future(self.async_save_func(func))
        task.add_done_callback(_log_failure)

    def _cancel_delay(self) -> None:
        """Drop the pending timer (a write is about to include its data)."""
        if self._delay_handle is not None:
            self._delay_handle.cancel()
            self._delay_handle = None

    @property
    def has_pending_save(self) -> bool:
        """Whether data waits for a delayed write."""
        return self._data_func is not None

    async def async_flush(self) -> None:
        """Write any delayed save now (at shutdown); a journaled store leaves a whole file and no journal."""
        if self.journal is not None:
            self._cancel_delay()
            if self._compaction is not None:
                await asyncio.gather(self._compaction, return_exceptions=True)
            await self.async_commit()
            # A journal holding only the torn bytes of a crashed write, or nothing at all (a crash
            # right after its creation), has no size but is still a file: the compaction removes it too.
            journal = self.journal
            if (journal.size or journal.torn_bytes or journal.empty_on_disk) and self.snapshot_func is not None:
                await self.async_compact()
            return
        if self._data_func is not None:
            await self.async_save_func(self._data_func)
        async with self._write_lock:
            pass

    async def _async_write(self, data: Any) -> None:
        """Encode and write in an executor, refusing to replace a file we could not read."""
        if self._broken:
            raise StorageError(f"Not writing {self.path}: it could not be read at start-up.")
        snapshot = _snapshot(data)
        loop = asyncio.get_running_loop()
        try:
            if _has_records(snapshot):
                # Big stores: encode on the loop in short slices, so the loop never waits
                # for a thread holding the GIL; the thread only writes bytes.
                chunks = await _async_encode_chunks(self.key, self.version, snapshot)
                await loop.run_in_executor(None, write_atomic, self.path, chunks, self._private)
            else:
                await loop.run_in_executor(None, self._write_sync, snapshot)
        except OSError as err:
            _LOGGER.error("Cannot write %s: %s", self.path, err.strerror or err)
            raise StorageError(
                f"Cannot write {self.path}: {err.strerror or err}. Check free space and permissions."
            ) from err
        except (TypeError, ValueError) as err:
            # A bug in a caller (data that is not JSON): the file on disk is left as it was.
            _LOGGER.error("Cannot serialise the data of %s: %s", self.path, err)
            raise StorageError(f"Cannot serialise the data of {self.path}: {err}") from err

    def _write_sync(self, data: Any) -> None:
        """Worker thread: encode then write atomically."""
        write_atomic(self.path, encode_envelope_chunks(self.key, self.version, data), self._private)

    async def async_remove(self) -> None:
        """Delete the file."""
        self._cancel_delay()
        self._data_func = None
        async with self._write_lock:
            await asyncio.get_running_loop().run_in_executor(None, _unlink_quiet, self.path)
            if self.journal is not None:
                await asyncio.get_running_loop().run_in_executor(None, _unlink_quiet, self.journal.path)


def apply_path_records(data: Any, records: list[dict[str, Any]], path: Path) -> Any:
    """Replay the set/del records of a journaled plugin store over its file's data (opp_auth.docpaths)."""
    for record in records:
        try:
            data = docpaths.apply_record(data, record)
        except ValueError as err:
            _LOGGER.error("Ignoring journal record %s of %s: %s", record.get("n"), path, err)
    return data


def _snapshot(data: Any) -> Any:
    """Copy containers on the loop so the writer thread never sees them change mid-iteration."""
    if isinstance(data, RecordList):
        # Items given as a function are taken in the writer thread; a list is copied here.
        return data if callable(data._items) else RecordList(list(data._items), data.to_dict, owned=True)
    if isinstance(data, dict):
        return {key: _snapshot(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_snapshot(value) for value in data]
    return data


_gc_pauses = 0
_gc_was_enabled = False


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Automatic garbage collection off for a while (nestable; restored as it was by the outermost).

    For the seconds a compaction of a large store holds lists of every record: a
    collection walks every container it tracks, and lists of 100,000 users, credentials
    and tokens make each pass take tens of milliseconds on the event loop. Garbage
    without cycles is still freed at once; cycles wait for the collector's return.
    """
    global _gc_pauses, _gc_was_enabled
    if _gc_pauses == 0:
        _gc_was_enabled = gc.isenabled()
        gc.disable()
    _gc_pauses += 1
    try:
        yield
    finally:
        _gc_pauses -= 1
        if _gc_pauses == 0 and _gc_was_enabled:
            gc.enable()


ENCODE_SLICE = 0.001
# Compaction bounds: a journal is compacted once it outgrows half the file, but never
# below the minimum (small stores) nor beyond the maximum (it is replayed at start).
# OPP_AUTH_COMPACT_MIN_BYTES lowers the minimum (the crash tests compact every few writes).
COMPACT_MIN_BYTES = int(os.environ.get("OPP_AUTH_COMPACT_MIN_BYTES", 256 * 1024))
COMPACT_MAX_BYTES = 16 * 1024 * 1024
COMPACT_RETRY_DELAY = 60.0


def _has_records(data: Any) -> bool:
    """Whether data holds RecordLists (a store big enough to encode in slices)."""
    return isinstance(data, dict) and any(isinstance(v, RecordList) or _has_records(v) for v in data.values())


async def _async_encode_chunks(key: str, version: int, data: Any) -> list[bytes]:
    """encode_envelope_chunks, giving the event loop back every ENCODE_SLICE seconds."""
    chunks: list[bytes] = []
    pieces = encode_envelope_chunks(key, version, data)
    while True:
        deadline = time.monotonic() + ENCODE_SLICE
        for chunk in pieces:
            chunks.append(chunk)
            if time.monotonic() >= deadline:
                break
        else:
            return chunks
        await asyncio.sleep(0)


def _unlink_quiet(path: Path) -> None:
    """Remove a file that may not exist."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _consume_exception(fut: asyncio.Future[None]) -> None:
    """Mark a shared write's exception retrieved (each caller got it raised)."""
    if not fut.cancelled():
        fut.exception()


def _log_failure(task: asyncio.Future[None]) -> None:
    """A delayed save has no caller to tell: log its failure."""
    if not task.cancelled() and task.exception() is not None:
        _LOGGER.error("Delayed save failed: %s", task.exception())


class ConfigDirLock:
    """An exclusive lock on a configuration directory, held while a server runs."""

    def __init__(self, config_dir: str | os.PathLike[str]) -> None:
        """Name the lock file; nothing is locked yet."""
        self.path = Path(config_dir) / STORAGE_DIR / ".opp-auth.lock"
        self._fd: int | None = None

    def acquire(self, purpose: str) -> None:
        """Take the lock or raise StorageError naming the process that holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            raise StorageError(
                f"Cannot open {self.path}: {err.strerror or err}. {self.path.parent} must be writable."
            ) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise StorageError(
                f"{self.path.parent.parent} is in use by {holder}. Stop that server first "
                "(two processes must not write the same .storage files)."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"opp-auth {purpose} (pid {os.getpid()})".encode())
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ConfigDirLock:
        """Context-manager form (the CLI's editing commands)."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Release on the way out."""
        self.release()


def iter_store_keys(config_dir: str | os.PathLike[str]) -> Iterable[str]:
    """Names of the files in .storage (for reset and diagnostics)."""
    folder = Path(config_dir) / STORAGE_DIR
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def remove_stale_temporaries(config_dir: str | os.PathLike[str]) -> list[str]:
    """Delete the temporary files that a crash left before their rename; call only under ConfigDirLock."""
    folder = Path(config_dir) / STORAGE_DIR
    removed: list[str] = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        # write_atomic's names: ".<key>.<random>.tmp"; only the lock holder writes, so none is in use.
        if path.name.startswith(".") and path.name.endswith(".tmp") and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed
