"""The audit log's files: JSON Lines under ``<config>/audit/``, hash-chained, rotated, kept for a number of days.

Each line is one record, a JSON object (ASCII only: every other character is
escaped, so no line can hold a control character or a line break):
``seq`` (1, 2, 3... across files and restarts), ``time`` (ISO 8601, UTC),
``type``, the event's fields, ``prev`` (the previous record's ``hash``; 64
zeros for the first record ever) and ``hash``: SHA-256 over the record's
canonical JSON without ``hash`` (sorted keys, no spaces, ASCII). The current
file is ``audit.jsonl``; once it is larger than ``max_file_mb`` it is renamed
``audit-<first seq, 12 digits>.jsonl`` (made read-only) and the chain goes on in
a new ``audit.jsonl``. A rotated file whose last record is older than
``keep_days``, or past the ``max_files`` newest, is deleted, and an
``audit_pruned`` record (its seqs and last hash) says so in the chain, so
verify can tell retention from removal. ``head.json`` holds the last seq and
hash written: it shows a cut at the end, and is what to copy elsewhere to make
the chain provable (docs/security.md).

:func:`verify` walks every file and names each record that was changed or
removed; :func:`read_records` feeds ``opp-auth audit show``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .events import _CANONICAL, AuthEvent
from .journal import fsync_dir

_LOGGER = logging.getLogger(__name__)

AUDIT_DIR = "audit"
CURRENT = "audit.jsonl"
HEAD = "head.json"
GENESIS = "0" * 64
ROTATED = re.compile(r"^audit-(\d{12})\.jsonl$")


class AuditLocked(OSError):
    """Another process writes this audit folder (several servers on one configuration directory)."""


def canonical(record: dict[str, Any]) -> str:
    """The text a record's hash is computed over (the record without its hash)."""
    return _CANONICAL(record)


_parse = AuthEvent.parse_chained


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical form of record without "hash"."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body).encode("ascii")).hexdigest()


def iso(epoch: float) -> str:
    """Epoch seconds as ISO 8601 UTC with microseconds and a Z."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def audit_dir(config_dir: str | Path) -> Path:
    """<config>/audit."""
    return Path(config_dir) / AUDIT_DIR


def log_files(folder: Path) -> list[Path]:
    """Rotated files in chain order (by first seq), then the current one (when present)."""
    rotated: list[tuple[int, Path]] = []
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    for name in names:
        match = ROTATED.match(name)
        if match:
            rotated.append((int(match.group(1)), folder / name))
    files = [path for _, path in sorted(rotated)]
    if CURRENT in names:
        files.append(folder / CURRENT)
    return files


def _tail(path: Path, max_back: int = 1 << 20) -> tuple[list[bytes], bool]:
    """The complete lines at the end of a file (up to max_back bytes), and whether it ends with a newline."""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        if size == 0:
            return [], True
        start = max(0, size - max_back)
        handle.seek(start)
        tail = handle.read()
    lines = tail.split(b"\n")
    lines.pop()  # after the last newline: b"" or a torn fragment
    if start > 0 and lines:
        lines.pop(0)  # maybe cut
    return lines, tail.endswith(b"\n")


def _last_record(path: Path) -> dict[str, Any] | None:
    """The last record of a file that parses, or None."""
    lines, _ = _tail(path)
    for line in reversed(lines):
        record = _parse(line) if line else None
        if record is not None:
            return record
    return None


class AuditFiles:
    """The default sink (audit.AuditSink): the chain in JSON Lines files; used from one thread."""

    def __init__(
        self, config_dir: str | Path, *, max_file_mb: int = 10, keep_days: int = 90, max_files: int = 100, **_: Any
    ) -> None:
        """Files under <config_dir>/audit (created on open, mode 0700; files 0600)."""
        self.folder = audit_dir(config_dir)
        self.max_bytes = max_file_mb * 1024 * 1024
        self.keep_seconds = keep_days * 86400.0
        self.max_files = max_files
        self.seq = 0
        self.head = GENESIS
        self._handle: Any = None
        self._size = 0
        self._lock_fd: int | None = None

    # ---- AuditSink ----------------------------------------------------------------------------

    def open(self, version: str) -> None:
        """Find the chain's head (the last whole record), then append audit_started."""
        self.folder.mkdir(mode=0o700, exist_ok=True)
        if self._lock_fd is None:
            fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise AuditLocked(
                    f"another process writes the audit log in {self.folder} (several servers on one "
                    "configuration directory): give each its own directory"
                ) from None
            self._lock_fd = fd
        notes: dict[str, Any] = {}
        self.seq, self.head, torn = self._find_head()
        if torn:
            notes["after_torn_line"] = True
            _LOGGER.warning("The audit log ended in a torn line (a crash during a write); it is kept as it is")
        recorded = self._read_head_file()
        if recorded is not None and recorded[0] > self.seq:
            notes["head_file_seq"] = recorded[0]
            _LOGGER.error(
                "The audit log ends at record %d but head.json says %d were written: records were removed "
                "from its end (run opp-auth audit verify)",
                self.seq,
                recorded[0],
            )
        path = self.folder / CURRENT
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._handle = os.fdopen(fd, "ab")
        self._size = self._handle.tell()
        if torn:
            self._handle.write(b"\n")  # the fragment stays a line of its own; the chain skips it
        self._prune(time.time())
        details = {"version": version, "pid": os.getpid(), "host": socket.gethostname(), **notes}
        self.append([], [("audit_started", details)])

    def append(self, events: list[AuthEvent], extra: list[tuple[str, dict[str, Any]]]) -> None:
        """Chain and append records for events and extra (type, details); fsynced on return; rotate when large."""
        if self._handle is None:
            raise OSError("the audit log is not open")
        chunks: list[str] = []
        for index, event in enumerate(events):
            data = event.as_dict()
            data["time"] = iso(event.time)
            chunks.append(self._chain(data))
            if index % 64 == 63:
                time.sleep(0)  # let the event loop's thread take the GIL between chunks
        now = time.time()
        for kind, details in extra:
            chunks.append(self._chain({"type": kind, "time": iso(now), "details": details}))
        if not chunks:
            return
        payload = "".join(chunks).encode("ascii")
        try:
            self._handle.write(payload)
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError:
            # Not written (or not whole): take the chain back to what the file holds and reopen.
            self._recover()
            raise
        self._size += len(payload)
        self._write_head_file()
        if self._size >= self.max_bytes:
            self._rotate()

    def close(self) -> None:
        """Append audit_stopped and close the file."""
        if self._handle is None:
            return
        try:
            self.append([], [("audit_stopped", {"pid": os.getpid()})])
        finally:
            self._handle.close()
            self._handle = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    # ---- storage copy (the chain moves as it is: the same texts, so the same hashes) -----------

    def describe(self) -> str:
        """Where the records are, for messages."""
        return str(self.folder)

    def read(self, since: Any = None) -> Iterator[tuple[str, int, dict[str, Any] | None]]:
        """(file, line, record or None) of every line, in chain order (since: ignored; for the commands)."""
        for path, number, record, _raw in read_records(self.folder):
            yield path.name, number, record

    def recorded_head(self) -> tuple[int, str] | None:
        """head.json's (seq, hash), or None."""
        return _read_head(self.folder)

    def holds_records(self) -> bool:
        """Whether the folder holds a log file or a head (a chain a copy must not be mixed into)."""
        return bool(log_files(self.folder)) or (self.folder / HEAD).exists()

    def chain_texts(self) -> Iterator[str]:
        """The text of every record, in chain order (lines that are no record, a torn one, are left out)."""
        for _path, _number, record, raw in read_records(self.folder):
            if record is not None:
                yield raw.rstrip(b"\n").decode("utf-8")

    def import_chain(self, texts: Iterable[str], head: tuple[int, str] | None) -> int:
        """Write records as they are (texts of a verified chain, in order) as the current file, then
        head.json: head when it is not behind the last record, else the last record's. The folder must
        hold no chain. The number of records written."""
        if self.holds_records():
            raise OSError(f"{self.folder} already holds an audit log; copy into a directory without one")
        self.folder.mkdir(mode=0o700, exist_ok=True)
        tmp = self.folder / f".{CURRENT}.copy"
        count = 0
        last: tuple[int, str] | None = None
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                for text in texts:
                    record = _parse(text)
                    sealed = AuthEvent.canonical_text(record) if record is not None else None
                    if record is None or sealed is None:
                        raise OSError(f"not an unchanged audit record: {text[:80]!r}")
                    # The writer's own form: ASCII on one line, whatever the source's spacing or escapes.
                    handle.write(sealed.encode("ascii") + b"\n")
                    last = (int(record["seq"]), str(record["hash"]))
                    count += 1
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.folder / CURRENT)
        finally:
            tmp.unlink(missing_ok=True)
        final = head if head is not None and (last is None or head[0] >= last[0]) else last
        if final is not None:
            self.seq, self.head = final
            self._write_head_file()
        fsync_dir(self.folder)
        return count

    # ---- the chain ----------------------------------------------------------------------------

    def _chain(self, data: dict[str, Any]) -> str:
        """One line for data: seq and prev added, hash computed, newline included."""
        self.seq += 1
        text, self.head = AuthEvent.chain(data, self.seq, self.head)
        return text + "\n"

    def _find_head(self) -> tuple[int, str, bool]:
        """(seq, hash) of the last whole record, and whether the current file ends in a torn line."""
        torn = False
        for path in reversed(log_files(self.folder)):
            if path.name == CURRENT:
                torn = not _tail(path)[1]
            record = _last_record(path)
            if record is not None:
                return int(record["seq"]), str(record["hash"]), torn
        return 0, GENESIS, torn

    def _recover(self) -> None:
        """After a failed write: reopen and take seq and head from what the file holds."""
        try:
            if self._handle is not None:
                self._handle.close()
        except OSError:
            pass
        self._handle = None
        try:
            self.seq, self.head, torn = self._find_head()
            fd = os.open(self.folder / CURRENT, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._handle = os.fdopen(fd, "ab")
            self._size = self._handle.tell()
            if torn:
                self._handle.write(b"\n")
        except OSError as err:
            _LOGGER.debug("Reopening the audit log failed: %s", err)

    # ---- head file, rotation, retention -------------------------------------------------------

    def _write_head_file(self) -> None:
        """head.json: the last seq and hash (replaced atomically; not fsynced, it is a hint)."""
        tmp = self.folder / f".{HEAD}.tmp"
        tmp.write_text(json.dumps({"seq": self.seq, "hash": self.head}), encoding="ascii")
        os.replace(tmp, self.folder / HEAD)

    def _read_head_file(self) -> tuple[int, str] | None:
        """(seq, hash) of head.json, or None."""
        try:
            data = json.loads((self.folder / HEAD).read_text(encoding="ascii"))
            return int(data["seq"]), str(data["hash"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _rotate(self) -> None:
        """Rename the current file after its first seq (read-only), start a new one, prune."""
        assert self._handle is not None
        self._handle.close()
        self._handle = None
        current = self.folder / CURRENT
        with current.open("rb") as handle:
            first: dict[str, Any] | None = None
            for line in handle:
                first = _parse(line)
                if first is not None:
                    break
        first_seq = int(first["seq"]) if first is not None else self.seq
        target = self.folder / f"audit-{first_seq:012d}.jsonl"
        os.replace(current, target)
        os.chmod(target, stat.S_IRUSR)
        fd = os.open(current, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        self._handle = os.fdopen(fd, "ab")
        self._size = 0
        fsync_dir(self.folder)
        _LOGGER.info("Audit log rotated to %s (head seq %d, hash %s)", target.name, self.seq, self.head)
        self._prune(time.time())

    def _prune(self, now: float) -> None:
        """Delete rotated files past keep_days or beyond max_files, each with an audit_pruned record."""
        rotated = [p for p in log_files(self.folder) if p.name != CURRENT]
        excess = max(0, len(rotated) + 1 - self.max_files)
        for index, path in enumerate(rotated):
            try:
                old = now - path.stat().st_mtime > self.keep_seconds
            except OSError:
                continue
            if not (old or index < excess):
                break  # files are in chain order: the newer ones stay too
            last = _last_record(path)
            match = ROTATED.match(path.name)
            details = {
                "file": path.name,
                "first_seq": int(match.group(1)) if match else None,
                "last_seq": last["seq"] if last else None,
                "last_hash": last["hash"] if last else None,
                "cause": "keep_days" if old else "max_files",
            }
            path.unlink()
            self.append([], [("audit_pruned", details)])


# ---- reading and verifying ----------------------------------------------------------------------


@dataclass
class Problem:
    """Something verify found: where, and what."""

    file: str
    line: int
    message: str
    fatal: bool = True

    def __str__(self) -> str:
        """file:line: message."""
        return f"{self.file}:{self.line}: {self.message}"


@dataclass
class Report:
    """What verify found: problems (fatal: tampering or loss), records checked, the head."""

    problems: list[Problem] = field(default_factory=list)
    records: int = 0
    files: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS

    @property
    def ok(self) -> bool:
        """No fatal problem."""
        return not any(p.fatal for p in self.problems)


def read_records(folder: Path) -> Iterator[tuple[Path, int, dict[str, Any] | None, bytes]]:
    """(file, line number, record or None when it does not parse, raw line) for every line of every file."""
    for path in log_files(folder):
        try:
            handle = path.open("rb")
        except OSError:
            continue
        with handle:
            for number, raw in enumerate(handle, 1):
                line = raw.rstrip(b"\n")
                if not line:
                    continue
                yield path, number, _parse(line), raw


def verify(folder: Path) -> Report:
    """Walk the chain of the files; each record changed, removed, reordered or torn becomes a Problem."""
    rows = ((path.name, number, record) for path, number, record, _raw in read_records(folder))
    return check_chain(rows, _read_head(folder), places=[path.name for path in log_files(folder)])


def check_chain(
    rows: Iterable[tuple[str, int, dict[str, Any] | None]],
    head: tuple[int, str] | None,
    *,
    places: list[str],
    head_place: str = HEAD,
    torn_possible: bool = True,
) -> Report:
    """Walk a chain wherever it is stored (files, a database table); each record changed, removed,
    reordered or torn becomes a Problem.

    rows: (place, number, record or None when the stored text is no record) in chain order;
    head: the last (seq, hash) the writer recorded (head.json, a head row); places: every file
    or table, in order; torn_possible: whether a crash can leave a torn last record (files).
    """
    report = Report()
    report.files = len(places)
    previous: dict[str, Any] | None = None
    where_previous = ("", 0)
    first: tuple[dict[str, Any], str, int] | None = None
    pruned: dict[int, str] = {}
    torn_at: tuple[str, int] | None = None
    last_file = None
    for name, number, record in rows:
        if record is None:
            torn_at = (name, number)
            continue
        report.records += 1
        if record.get("type") == "audit_pruned":
            details = record.get("details") or {}
            if isinstance(details.get("last_seq"), int) and isinstance(details.get("last_hash"), str):
                pruned[details["last_seq"]] = details["last_hash"]
        if torn_at is not None:
            # A torn line is a crash's mark only when the next record is the restart's.
            fatal = not torn_possible or record.get("type") != "audit_started"
            message = (
                "torn record (an incomplete write at a crash); the chain goes on around it"
                if not fatal
                else "this line is not an audit record (changed, or text inserted)"
            )
            report.problems.append(Problem(torn_at[0], torn_at[1], message, fatal))
            torn_at = None
        seq = record["seq"]
        if record_hash(record) != record["hash"]:
            report.problems.append(Problem(name, number, f"record {seq} was changed (its hash does not match)"))
        if previous is None:
            first = (record, name, number)
        elif record["prev"] != previous["hash"]:
            report.problems.append(_link_problem(previous, where_previous, record, name, number, last_file != name))
        elif seq != previous["seq"] + 1:
            report.problems.append(Problem(name, number, f"record {seq} follows record {previous['seq']}"))
        previous, where_previous, last_file = record, (name, number), name
    if torn_at is not None:
        at_end = torn_possible and bool(places) and torn_at[0] == places[-1]
        message = (
            "the last line is incomplete (a crash during a write, or a write in progress)"
            if at_end
            else "this line is not an audit record (changed, or text inserted)"
        )
        report.problems.append(Problem(torn_at[0], torn_at[1], message, fatal=not at_end))
    if first is not None:
        record, name, number = first
        if not (record["seq"] == 1 and record["prev"] == GENESIS) and pruned.get(record["seq"] - 1) != record["prev"]:
            report.problems.append(
                Problem(
                    name,
                    number,
                    f"records 1 to {record['seq'] - 1} are missing: an older file was removed "
                    "without an audit_pruned record (or this file's first record was changed)",
                )
            )
    if previous is not None:
        report.head_seq, report.head_hash = previous["seq"], previous["hash"]
    if head is not None and head[0] > report.head_seq:
        report.problems.append(
            Problem(
                places[-1] if places else CURRENT,
                0,
                f"records {report.head_seq + 1} to {head[0]} were removed from the end ({head_place} says {head[0]})",
            )
        )
    elif head is not None and head[0] == report.head_seq and head[1] != report.head_hash:
        report.problems.append(Problem(head_place, 0, f"record {head[0]} differs from the one {head_place} names"))
    return report


def _link_problem(
    previous: dict[str, Any], where: tuple[str, int], record: dict[str, Any], name: str, number: int, new_file: bool
) -> Problem:
    """Why record's prev does not match the record before it."""
    seq, before = record["seq"], previous["seq"]
    if seq > before + 1:
        span = f"record {before + 1}" if seq == before + 2 else f"records {before + 1} to {seq - 1}"
        if new_file:
            return Problem(name, number, f"{span} are missing: a rotated file was removed or cut (after {where[0]})")
        return Problem(name, number, f"{span} removed (between {where[0]}:{where[1]} and this line)")
    if seq == before + 1:
        return Problem(
            where[0],
            where[1],
            f"record {before} was changed (its hash was recomputed; record {seq} does not link to it)",
        )
    return Problem(name, number, f"record {seq} is out of order (after record {before})")


def _read_head(folder: Path) -> tuple[int, str] | None:
    """head.json's (seq, hash), or None."""
    try:
        data = json.loads((folder / HEAD).read_text(encoding="ascii"))
        return int(data["seq"]), str(data["hash"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
