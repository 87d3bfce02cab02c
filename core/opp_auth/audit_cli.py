"""``opp-auth audit show`` and ``opp-auth audit verify``: read the audit files (read-only; a running server is fine).

What a client typed (a username, a user agent) is shown escaped: a control,
format or separator character becomes ``\\u{...}`` and a long value is cut, so
a crafted username can neither fake a line of output, move the cursor, colour
the terminal, nor reverse the text around it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from .audit_files import Report, audit_dir, check_chain, read_records, verify
from .storage import STORAGE_DIR, read_envelope

UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
SHOWN_CHARS = 80
_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class UsageError(Exception):
    """A bad argument; str() says which and why."""


def safe_text(value: Any, limit: int = SHOWN_CHARS) -> str:
    """value as one printable line: unsafe characters escaped as \\u{hex}, backslashes doubled, cut at limit."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    out: list[str] = []
    for char in text[: limit * 2]:
        if char == "\\":
            out.append("\\\\")
        elif unicodedata.category(char) in UNSAFE_CATEGORIES or (char.isspace() and char != " "):
            out.append(f"\\u{{{ord(char):x}}}")
        else:
            out.append(char)
    shown = "".join(out)
    if len(shown) > limit or len(text) > limit * 2:
        shown = shown[: limit - 1] + "\u2026"
    return shown


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An ISO date or date-time (UTC when no offset), or a relative span ("30m", "2h", "7d")."""
    now = now or datetime.now(UTC)
    match = _RELATIVE.match(text)
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--since {text!r}: give a date (2026-12-01), a date and time (2026-12-01T18:30) or a span (30m, 2h, 7d)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _record_time(record: dict[str, Any]) -> datetime | None:
    """The record's time, or None when it has none that parses."""
    value = record.get("time")
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _user_ids_named(config_dir: Path, name: str) -> set[str]:
    """Ids of the users whose name or login name is name (case-insensitive), from the stored users."""
    wanted = name.casefold()
    ids: set[str] = set()
    envelope = read_envelope(config_dir / STORAGE_DIR / "auth") if (config_dir / STORAGE_DIR).is_dir() else None
    data = envelope.get("data") if isinstance(envelope, dict) else None
    if isinstance(data, dict):
        for user in data.get("users") or []:
            if isinstance(user, dict) and str(user.get("name", "")).casefold() == wanted:
                ids.add(str(user.get("id")))
        for cred in data.get("credentials") or []:
            if not isinstance(cred, dict):
                continue
            login = (cred.get("data") or {}).get("username") if isinstance(cred.get("data"), dict) else None
            if isinstance(login, str) and login.casefold() == wanted:
                ids.add(str(cred.get("user_id")))
    return ids


def format_record(record: dict[str, Any]) -> str:
    """One readable line for a record."""
    when = record.get("time") if isinstance(record.get("time"), str) else "?"
    parts = [safe_text(when, 32), safe_text(record.get("type", "?"), 40)]
    if record.get("reason"):
        parts.append(safe_text(record["reason"], 40))
    fields = (
        ("user", "user_id"),
        ("username", "username"),
        ("from", "remote_address"),
        ("via", "via"),
        ("provider", "provider"),
        ("mfa", "mfa_module"),
        ("client", "client_id"),
        ("name", "client_name"),
        ("token", "token_id"),
        ("by", "actor_id"),
    )
    for label, key in fields:
        value = record.get(key)
        if value is None:
            continue
        if key == "provider" and isinstance(value, list):
            value = value[0] if len(value) < 2 or value[1] is None else f"{value[0]}/{value[1]}"
        parts.append(f"{label}={_quoted(value)}")
    details = record.get("details")
    if isinstance(details, dict) and details:
        parts.append(" ".join(f"{safe_text(k, 24)}={_quoted(v)}" for k, v in details.items()))
    if record.get("user_agent"):
        parts.append(f"agent={_quoted(record['user_agent'])}")
    return "  ".join(parts)


def _quoted(value: Any) -> str:
    """A value for a line: plain when it is a simple token, else in double quotes (escaped)."""
    text = safe_text(value)
    if re.fullmatch(r"[\w.:/@\-\[\],\u2026]+", text):
        return text
    return '"' + text.replace('"', '\\"') + '"'


def _file_records(folder: Path) -> Iterator[dict[str, Any] | None]:
    """Every record of the files (None for a line that is none)."""
    for _path, _line, record, _raw in read_records(folder):
        yield record


def cmd_show(args: argparse.Namespace, config_dir: Path, out: TextIO | None = None, reader: Any = None) -> int:
    """Print the audit log, oldest first, filtered (reader: a database sink that reads, else the files)."""
    out = out or sys.stdout
    since = parse_since(args.since) if args.since else None
    folder = audit_dir(config_dir)

    def every_record() -> Iterator[dict[str, Any] | None]:
        if reader is not None:
            return (record for _place, _number, record in reader.read(since))
        return _file_records(folder)

    user_ids: set[str] = set()
    wanted = args.user.casefold() if args.user else None
    if args.user:
        named = reader.user_ids_named(args.user) if reader is not None else _user_ids_named(config_dir, args.user)
        user_ids = {args.user} | set(named)
        for record in every_record():
            if record and isinstance(record.get("username"), str) and record["username"].casefold() == wanted:
                if isinstance(record.get("user_id"), str):
                    user_ids.add(record["user_id"])
    shown = 0
    for record in every_record():
        if record is None:
            continue
        if args.failed and record.get("type") != "login_failed":
            continue
        if args.type and record.get("type") not in args.type:
            continue
        if since is not None:
            when = _record_time(record)
            if when is None or when < since:
                continue
        if args.user:
            name = record.get("username")
            if record.get("user_id") not in user_ids and not (isinstance(name, str) and name.casefold() == wanted):
                continue
        if args.json:
            out.write(json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n")
        else:
            out.write(format_record(record) + "\n")
        shown += 1
    if not args.json:
        out.write(f"\n{shown} records\n")
    return 0


def chain_report(folder: Path, reader: Any = None) -> Report:
    """The check of the chain in folder's files, or in reader (a database sink that reads)."""
    if reader is None:
        return verify(folder)
    where = str(reader.describe())
    return check_chain(
        reader.read(None), reader.recorded_head(), places=[where], head_place=f"{where}_head", torn_possible=False
    )


def cmd_verify(args: argparse.Namespace, config_dir: Path, out: TextIO | None = None, reader: Any = None) -> int:
    """Check the chain (reader: a database sink that reads, else the files); exit 1 when a record was changed
    or removed."""
    out = out or sys.stdout
    folder = audit_dir(config_dir)
    report = chain_report(folder, reader)
    where = str(reader.describe()) if reader is not None else str(folder)
    for problem in report.problems:
        label = "TAMPERED" if problem.fatal else "note"
        out.write(f"{label}: {safe_text(str(problem), 300)}\n")
    if reader is not None:
        if not report.records and not report.problems:
            out.write(f"No audit records in {safe_text(where, 300)}\n")
            return 0
        out.write(f"{report.records} records in {safe_text(where, 300)}; ")
    elif not report.files:
        out.write(f"No audit log in {folder}\n")
        return 0
    else:
        out.write(f"{report.records} records in {report.files} files; ")
    out.write(f"head: record {report.head_seq}, hash {report.head_hash}\n")
    if report.ok:
        out.write("The chain is intact.\n")
        return 0
    out.write("The audit log was changed: see the lines above (the first one names the first record).\n")
    return 1


def add_commands(sub: Any, config_dir_of: Any, reader_of: Any = None) -> None:
    """opp-auth audit show | verify (reader_of(args): the storage's audit reader, or None for the files)."""
    reader_of = reader_of or (lambda args: None)
    audit = sub.add_parser("audit", help="the audit log: who logged in, when and from where (read-only)")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    show = audit_sub.add_parser("show", help="print audit records, oldest first")
    show.add_argument("--user", help="a user's id, name or login name")
    show.add_argument("--since", help="a date (2026-12-01), date and time (UTC unless given), or a span: 30m, 2h, 7d")
    show.add_argument("--failed", action="store_true", help="only failed logins and refused requests")
    show.add_argument("--type", action="append", help="only records of this type (repeatable)")
    show.add_argument("--json", action="store_true", help="the records as JSON lines")
    show.set_defaults(func=lambda args: cmd_show(args, config_dir_of(args), reader=reader_of(args)))
    check = audit_sub.add_parser("verify", help="check the hash chain; name each record changed or removed")
    check.set_defaults(func=lambda args: cmd_verify(args, config_dir_of(args), reader=reader_of(args)))
