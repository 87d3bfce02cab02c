"""Append-only journals of changes beside .storage files: a durable write costs what changed.

A journaled store keeps two files in ``<config>/.storage``:

- ``<key>``: the base, in Open Peer Power's format (what Open Peer Power reads);
- ``.<key>.journal``: the changes made since the base was written, one record a line.

A change is acknowledged once its record is on disk (written at the journal's end and
``fdatasync``ed in an executor, several changes sharing one write). In the background,
when the journal has grown, the store is *compacted*: the whole data is written to the
base file atomically (as before the journal existed) and the journal is cut down to
the records the new base does not contain. At start the base is read and the journal
replayed over it.

Framing: one write is one line, ``<JSON array of records>\\t<crc32 of the JSON bytes, 8 hex
digits>\\n``, so the records of one write (a user and the login created with them, and
whatever else was waiting) are replayed all or not at all. JSON text never contains a
raw tab or line feed, so a line can always be told apart. Every record carries a sequence
number ``n`` (increasing within a journal file). A line that is cut short, or whose
checksum does not match, ends the journal: a crash can only tear the last write, and
nothing in that write was acknowledged.

Crash safety of compaction rests on a marker record, appended and made durable *before*
the new base replaces the old one::

    {"n": 17, "base": {"upto": 12, "size": 90412, "sha256": "..."}}

It says: "a base file of this size and SHA-256 contains every change up to record 12".
At load, when the base on disk is that file, records up to ``upto`` are skipped; when it
is not (the crash came before the rename), every record is replayed over the old base.
Records after ``upto`` are replayed in both cases. The base may contain some of them
already (it is rendered while changes keep coming): records set or delete a whole entry
by its id, so replaying one the base already holds changes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

_LOGGER = logging.getLogger(__name__)

JOURNAL_SUFFIX = ".journal"


class UnstorableValueError(ValueError):
    """A change holds a value that cannot be written (not JSON, lone surrogates, too deep)."""


def journal_path(base: Path) -> Path:
    """The journal of a .storage file: ``.<key>.journal`` beside it (hidden, like the lock file)."""
    return base.with_name(f".{base.name}{JOURNAL_SUFFIX}")


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=True)


def encode_record(record: dict[str, Any]) -> bytes:
    """One record's JSON bytes; raises UnstorableValueError when record cannot be stored."""
    try:
        return _ENCODER.encode(record).encode("utf-8")
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError) as err:
        raise UnstorableValueError(f"the change cannot be stored: {type(err).__name__}: {err}") from None


def frame(bodies: list[bytes]) -> bytes:
    """One journal line holding the records (their JSON bytes) of one write."""
    body = b"[" + b",".join(bodies) + b"]"
    return b"%s\t%08x\n" % (body, zlib.crc32(body))


def parse_journal(raw: bytes) -> tuple[list[dict[str, Any]], int]:
    """The records of a journal's whole lines and how many bytes those lines take.

    Parsing stops at the first line that is cut short, fails its checksum or does not
    hold records: that is where a crash tore the last write.
    """
    records: list[dict[str, Any]] = []
    valid = 0
    for valid, line_records in _lines(raw):  # noqa: B007 - valid is read after the loop
        records.extend(line_records)
    return records, valid


def _lines(raw: bytes) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """(end offset, records) of each whole line, up to the first bad one."""
    pos = 0
    size = len(raw)
    while pos < size:
        end = raw.find(b"\n", pos)
        if end < 0:
            return
        line = raw[pos:end]
        tab = line.rfind(b"\t")
        if tab < 0 or end - pos - tab != 9:
            return
        body = line[:tab]
        try:
            if int(line[tab + 1 :], 16) != zlib.crc32(body):
                return
            batch = json.loads(body)
        except ValueError:
            return
        if not isinstance(batch, list) or not all(isinstance(r, dict) and isinstance(r.get("n"), int) for r in batch):
            return
        pos = end + 1
        yield pos, batch


def records_after_base(records: list[dict[str, Any]], base_raw: bytes | None) -> list[dict[str, Any]]:
    """The change records that the base file (its raw bytes) does not contain, in order."""
    upto = 0
    if base_raw is not None:
        digest: str | None = None
        for record in reversed(records):
            marker = record.get("base")
            if not isinstance(marker, dict) or marker.get("size") != len(base_raw):
                continue
            if digest is None:
                digest = hashlib.sha256(base_raw).hexdigest()
            if marker.get("sha256") == digest and isinstance(marker.get("upto"), int):
                upto = marker["upto"]
                break
    return [r for r in records if "base" not in r and r["n"] > upto]


class Journal:
    """The journal file of one store: appends with group commit, rewrites after compaction.

    Single writer: appends and rewrites are serialised by one lock and run in an executor.
    """

    def __init__(self, path: Path, private: bool = True) -> None:
        """Name the file; nothing is read until load."""
        self.path = path
        self._mode = 0o600 if private else 0o644
        self._offset = 0  # bytes of whole records on disk
        self._needs_truncate = False  # bytes past _offset (a torn or failed write) to cut before appending
        self._seq = 0  # last sequence number handed out
        self._durable_seq = 0  # last sequence number on disk
        self._queue: list[tuple[int, bytes]] = []
        self._queued_bytes = 0
        self._lock = asyncio.Lock()
        self._writer: asyncio.Future[None] | None = None
        self.torn_bytes = 0
        # The file was there but empty at load (a crash between its creation and the first write).
        self.empty_on_disk = False

    # ---- reading (executor) -------------------------------------------------------------

    def load(self) -> list[dict[str, Any]]:
        """Every whole record on disk (blocking); remembers where the next one goes."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        records, valid = parse_journal(raw)
        self._offset = valid
        self.torn_bytes = len(raw) - valid
        self.empty_on_disk = not raw
        self._needs_truncate = valid < len(raw)
        if records:
            self._seq = self._durable_seq = max(self._seq, records[-1]["n"])
        if self.torn_bytes:
            _LOGGER.warning(
                "Ignoring the last %d bytes of %s: a write cut short by a crash (never acknowledged)",
                self.torn_bytes,
                self.path,
            )
        return records

    # ---- appending ------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Bytes on disk plus bytes waiting to be written."""
        return self._offset + self._queued_bytes

    @property
    def last_seq(self) -> int:
        """The sequence number of the latest record (queued or written)."""
        return self._seq

    @property
    def has_unwritten(self) -> bool:
        """Whether records wait to be written (a failed write keeps them)."""
        return bool(self._queue)

    def append(self, record: dict[str, Any]) -> int:
        """Encode and queue one record; raises UnstorableValueError (and queues nothing) when it cannot be."""
        seq = self._seq + 1
        body = encode_record({"n": seq, **record})
        self._seq = seq
        self._queue.append((seq, body))
        self._queued_bytes += len(body) + 1
        return seq

    async def async_commit(self) -> None:
        """Return once every record queued so far is on disk; raises OSError when it cannot be."""
        target = self._seq
        while self._durable_seq < target:
            if self._writer is None:
                writer = self._writer = asyncio.ensure_future(self._async_write_queued())
                writer.add_done_callback(_consume_exception)
            await asyncio.shield(self._writer)

    async def _async_write_queued(self) -> None:
        """Write what is queued now in one append and one fdatasync."""
        try:
            async with self._lock:
                batch = list(self._queue)
                if not batch:
                    return
                data = frame([body for _, body in batch])
                await asyncio.get_running_loop().run_in_executor(None, self._write_sync, data)
                del self._queue[: len(batch)]
                self._queued_bytes -= sum(len(body) + 1 for _, body in batch)
                self._durable_seq = batch[-1][0]
        finally:
            self._writer = None

    def _open(self) -> int:
        """The journal open for writing, created (and its folder entry made durable) if needed."""
        created = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, self._mode)
        if created:
            try:
                fsync_dir(self.path.parent)
            except OSError:
                os.close(fd)
                raise
        return fd

    def _write_sync(self, data: bytes) -> None:
        """Worker thread: write data at the end of the whole records and make it durable.

        The file is opened for each write and closed after it (an open costs microseconds
        next to the fdatasync), so the server never holds .storage busy between writes.
        """
        fd = self._open()
        try:
            if self._needs_truncate:
                os.ftruncate(fd, self._offset)
                self._needs_truncate = False
            view = memoryview(data)
            written = 0
            try:
                while written < len(data):
                    written += os.pwrite(fd, view[written:], self._offset + written)
                os.fdatasync(fd)
            except OSError:
                # Cut what reached the file (a full disk takes part of a write), or cut it before the next one.
                try:
                    os.ftruncate(fd, self._offset)
                except OSError:
                    self._needs_truncate = True
                raise
            self._offset += len(data)
        finally:
            os.close(fd)

    # ---- after a compaction -----------------------------------------------------------------

    async def async_drop_through(self, upto: int) -> None:
        """Rewrite the file without the records up to upto (a durable base holds them) and markers."""
        async with self._lock:
            await asyncio.get_running_loop().run_in_executor(None, self._drop_sync, upto)

    def _drop_sync(self, upto: int) -> None:
        """Worker thread: keep the later records, through a temporary file and a rename."""
        try:
            raw = self.path.read_bytes()[: self._offset]
        except FileNotFoundError:
            raw = b""
        kept = [
            frame([encode_record(r) for r in batch if "base" not in r and r["n"] > upto])
            for _, batch in _lines(raw)
            if any("base" not in r and r["n"] > upto for r in batch)
        ]
        if not kept:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            fsync_dir(self.path.parent)
            self._offset = 0
            self._needs_truncate = False
            self.empty_on_disk = False
            return
        content = b"".join(kept)
        fd, tmp_name = tempfile.mkstemp(dir=self.path.parent, prefix=f"{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as tmp:
                tmp.write(content)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.chmod(tmp_name, self._mode)
            os.replace(tmp_name, self.path)
        except BaseException:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass
            raise
        fsync_dir(self.path.parent)
        self._offset = len(content)
        self._needs_truncate = False


def digest_chunks(chunks: Iterable[bytes]) -> tuple[int, str]:
    """Size and SHA-256 of a file's content given as chunks (a worker thread: hashlib lets go of the GIL)."""
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def fsync_dir(folder: Path) -> None:
    """Make a file's creation, rename or removal durable."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _consume_exception(fut: asyncio.Future[None]) -> None:
    """A write's failure is raised to each waiter; mark it retrieved for the ones nobody awaits."""
    if not fut.cancelled():
        fut.exception()
