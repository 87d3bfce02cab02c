"""opp-auth storage copy moves the audit log with the data: the same records, the same hashes, verified.

The audit files of a JSON directory (rotated into several files) go into the database's table and
come back into a new directory's files; the chain stays one chain, `audit verify` passes on each
side and a writer goes on from its head. Refused before anything is written: a target that already
holds a chain, a source chain that fails verification (unless --without-audit).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import psycopg
import pytest
from opp_auth_postgresql.audit import PgAuditSink
from opp_auth_postgresql.schema import async_migrate

from opp_auth import AuthEvent
from opp_auth.audit_files import AuditFiles, audit_dir, log_files
from opp_auth.cli import main

HOSTILE = "évil\t\n\\N\x00\x1b[31m\u202e\ud800'); DROP TABLE opp_auth_audit; --"
OWNER = {
    "id": "0b6f1d3c2a8e4f5b9c7d6e5f4a3b2c1d", "group_ids": ["system-admin"], "is_owner": True,
    "is_active": True, "name": "Paulus", "system_generated": False,
}  # fmt: skip


def json_dir(config_dir: Path, storage: str = "") -> None:
    """A configuration directory with one user in .storage/auth."""
    config_dir.mkdir(exist_ok=True)
    (config_dir / "configuration.yaml").write_text(f"openpeerpower:\n  name: Home\n{storage}", encoding="utf-8")
    folder = config_dir / ".storage"
    folder.mkdir()
    data = {"users": [OWNER], "groups": [], "credentials": [], "refresh_tokens": []}
    (folder / "auth").write_text(json.dumps({"version": 1, "key": "auth", "data": data}), encoding="utf-8")


def audit_files(config_dir: Path, batches: int = 6) -> None:
    """A chain of several files: rotated by size (made small), a hostile username in it."""
    sink = AuditFiles(config_dir)
    sink.max_bytes = 4000
    sink.open("test")
    for batch in range(batches):
        sink.append(
            [
                AuthEvent(
                    type="login_failed", reason="invalid_auth", time=time.time(), username=f"{HOSTILE}{batch}-{i}"
                )
                for i in range(5)
            ],
            [],
        )
    sink.close()


def file_texts(config_dir: Path) -> list[str]:
    """Every line of the audit files, in chain order."""
    return [
        line
        for path in log_files(audit_dir(config_dir))
        for line in path.read_text(encoding="ascii").splitlines()
        if line
    ]


def table_texts(url: str) -> list[str]:
    """Every record of the table, in seq order."""
    with psycopg.connect(url) as conn:
        return [str(row[0]) for row in conn.execute("SELECT record FROM opp_auth_audit ORDER BY seq")]


def head_row(url: str) -> tuple[int, str] | None:
    """The table's head row."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT seq, hash FROM opp_auth_audit_head").fetchone()
    return (int(row[0]), str(row[1])) if row is not None else None


def run(capsys: pytest.CaptureFixture[str], config_dir: Path, *argv: str) -> tuple[int, str]:
    """opp-auth -c config_dir ARGV in this process: exit code and output."""
    code = main(["-c", str(config_dir), *argv])
    out = capsys.readouterr()
    return code, out.out + out.err


async def test_the_audit_chain_goes_into_the_database_and_back_verified(
    tmp_path: Path, database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Files (three or more, rotated) into the table and back into files: the same texts, the same head;
    verify passes in the database and in the new directory, and writers on each side go on from the head."""
    source = tmp_path / "source"
    json_dir(source)
    audit_files(source)
    texts = file_texts(source)
    assert len(log_files(audit_dir(source))) >= 3 and len(texts) >= 30
    head = json.loads((audit_dir(source) / "head.json").read_text(encoding="ascii"))

    code, out = await asyncio.to_thread(run, capsys, source, "storage", "copy", "--to", database)
    assert code == 0, out
    assert f", {len(texts)} audit records (chain verified) from " in out
    assert table_texts(database) == texts
    assert head_row(database) == (head["seq"], head["hash"])

    served = tmp_path / "served"
    json_dir(served, f"  storage:\n    type: postgresql\n    url: {database}\n")
    code, out = await asyncio.to_thread(run, capsys, served, "audit", "verify")
    assert code == 0 and f"{len(texts)} records in opp_auth_audit" in out and "The chain is intact." in out
    sink = PgAuditSink(database)  # a server on the database goes on from the copied head
    await asyncio.to_thread(sink.open, "test")
    await asyncio.to_thread(sink.close)
    assert len(table_texts(database)) == len(texts) + 2
    code, out = await asyncio.to_thread(run, capsys, served, "audit", "verify")
    assert code == 0, out

    back = tmp_path / "back"
    back.mkdir()
    (back / "configuration.yaml").write_text("openpeerpower:\n  name: Home\n", encoding="utf-8")
    code, out = await asyncio.to_thread(run, capsys, back, "storage", "copy", "--from", database)
    assert code == 0, out
    assert f", {len(texts) + 2} audit records (chain verified) from " in out
    assert file_texts(back) == table_texts(database)
    assert (audit_dir(back) / "audit.jsonl").stat().st_mode & 0o777 == 0o600
    assert audit_dir(back).stat().st_mode & 0o777 == 0o700
    code, out = await asyncio.to_thread(run, capsys, back, "audit", "verify")
    assert code == 0 and "The chain is intact." in out, out
    files = AuditFiles(back)  # a server on the directory goes on from the copied head
    await asyncio.to_thread(files.open, "test")
    await asyncio.to_thread(files.close)
    records = [json.loads(line) for line in file_texts(back)]
    assert [r["seq"] for r in records] == list(range(1, len(texts) + 5))
    code, out = await asyncio.to_thread(run, capsys, back, "audit", "verify")
    assert code == 0, out


async def test_a_database_holding_a_chain_is_refused_before_anything_is_written(
    tmp_path: Path, database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two chains cannot be one: a database with audit records (and no data) refuses the copy; no user lands."""
    source = tmp_path / "source"
    json_dir(source)
    audit_files(source, batches=1)
    async with await psycopg.AsyncConnection.connect(database) as conn:
        await async_migrate(conn)  # the schema, as a server makes it at start
    sink = PgAuditSink(database)
    await asyncio.to_thread(sink.open, "elsewhere")
    await asyncio.to_thread(sink.close)
    before = table_texts(database)

    code, out = await asyncio.to_thread(run, capsys, source, "storage", "copy", "--to", database)
    assert code == 1 and "opp_auth_audit already holds an audit log" in out and "--without-audit" in out
    assert table_texts(database) == before
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM opp_auth_users").fetchone()[0] == 0


async def test_a_changed_source_chain_is_refused_unless_left_behind(
    tmp_path: Path, database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record changed in the files: the copy names it and writes nothing; --without-audit copies the data
    alone and leaves the files as they are."""
    source = tmp_path / "source"
    json_dir(source)
    audit_files(source, batches=1)
    current = audit_dir(source) / "audit.jsonl"
    lines = current.read_text(encoding="ascii").splitlines()
    record = json.loads(lines[2])
    record["username"] = "mallory"
    lines[2] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    current.write_text("\n".join(lines) + "\n", encoding="ascii")
    tampered = file_texts(source)

    code, out = await asyncio.to_thread(run, capsys, source, "storage", "copy", "--to", database)
    assert code == 1 and "fails verification" in out and f"record {record['seq']} was changed" in out, out
    with psycopg.connect(database) as conn:
        tables = conn.execute("SELECT to_regclass('opp_auth_users') IS NOT NULL").fetchone()[0]
        assert not tables or conn.execute("SELECT count(*) FROM opp_auth_users").fetchone()[0] == 0

    code, out = await asyncio.to_thread(run, capsys, source, "storage", "copy", "--to", database, "--without-audit")
    assert code == 0 and "audit records" not in out, out
    assert table_texts(database) == [] and head_row(database) is None
    assert file_texts(source) == tampered


async def test_a_directory_holding_a_chain_is_refused_for_copy_from(
    tmp_path: Path, database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--from into a directory whose audit folder holds files: refused, its files untouched."""
    source = tmp_path / "source"
    json_dir(source)
    audit_files(source, batches=1)
    code, out = await asyncio.to_thread(run, capsys, source, "storage", "copy", "--to", database)
    assert code == 0, out
    back = tmp_path / "back"
    back.mkdir()
    (back / "configuration.yaml").write_text("openpeerpower:\n  name: Home\n", encoding="utf-8")
    audit_files(back, batches=1)
    before = file_texts(back)
    code, out = await asyncio.to_thread(run, capsys, back, "storage", "copy", "--from", database)
    assert code == 1 and "already holds an audit log" in out, out
    assert file_texts(back) == before and not (back / ".storage" / "auth").exists()


async def test_records_in_another_form_are_copied_in_the_writers_own_form(
    tmp_path: Path, database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A line re-serialised by hand (spaces, raw UTF-8 instead of escapes) still verifies, so the copy takes it:
    the target holds the writer's own text (ASCII, one line; what the head row's trigger reads) both ways,
    rather than failing after the data was written."""
    source = tmp_path / "source"
    json_dir(source)
    sink = AuditFiles(source)
    sink.open("test")
    sink.append(
        [AuthEvent(type="login_failed", reason="invalid_auth", time=time.time(), username="J\u00e9r\u00f4me")], []
    )
    sink.close()
    current = audit_dir(source) / "audit.jsonl"
    lines = current.read_text(encoding="ascii").splitlines()
    canonical = list(lines)
    # The second record with spaces and raw UTF-8, the last (the head) with spaces.
    lines[1] = json.dumps(json.loads(lines[1]), ensure_ascii=False)
    lines[-1] = json.dumps(json.loads(lines[-1]))
    current.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    assert lines[1] != canonical[1] and not lines[1].isascii()
    code, out = await asyncio.to_thread(run, capsys, source, "audit", "verify")
    assert code == 0, out

    code, out = await asyncio.to_thread(run, capsys, source, "storage", "copy", "--to", database)
    assert code == 0, out
    assert table_texts(database) == canonical

    # And back from a row holding raw UTF-8 (its owner rewrote it, same meaning).
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("ALTER TABLE opp_auth_audit DISABLE TRIGGER opp_auth_audit_append_only")
        conn.execute("UPDATE opp_auth_audit SET record = %s WHERE seq = 2", (lines[1],))
        conn.execute("ALTER TABLE opp_auth_audit ENABLE TRIGGER opp_auth_audit_append_only")
    back = tmp_path / "back"
    back.mkdir()
    (back / "configuration.yaml").write_text("openpeerpower:\n  name: Home\n", encoding="utf-8")
    code, out = await asyncio.to_thread(run, capsys, back, "storage", "copy", "--from", database)
    assert code == 0, out
    assert file_texts(back) == canonical
    code, out = await asyncio.to_thread(run, capsys, back, "audit", "verify")
    assert code == 0, out
