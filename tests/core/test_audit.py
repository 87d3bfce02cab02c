"""The audit log's files: the hash chain across restarts and rotations, and verify naming each change or removal."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from opp_auth import AuthEvent
from opp_auth.audit import AuditLog
from opp_auth.audit_files import CURRENT, GENESIS, AuditFiles, log_files, record_hash, verify
from opp_auth.cli import main

EXAMPLE = {"type": "insecure_example", "users": [{"username": "ann", "password": "pw", "name": "Ann"}]}


def event(n: int, **values: Any) -> AuthEvent:
    """A login_succeeded event for user u<n>."""
    return AuthEvent(type="login_succeeded", time=time.time(), user_id=f"u{n}", username=f"user{n}", **values)


def write(config_dir: Path, count: int, *, max_bytes: int | None = None, start: int = 0, **conf: Any) -> AuditFiles:
    """Open the files, append count events one batch of 10 at a time, close."""
    files = AuditFiles(config_dir, **conf)
    if max_bytes is not None:
        files.max_bytes = max_bytes
    files.open("test")
    for first in range(start, start + count, 10):
        files.append([event(n) for n in range(first, min(first + 10, start + count))], [])
    files.close()
    return files


def lines(path: Path) -> list[str]:
    """The lines of a file."""
    return path.read_text(encoding="ascii").splitlines(keepends=True)


def records(folder: Path) -> list[dict[str, Any]]:
    """Every record of every file, in order."""
    return [json.loads(line) for path in log_files(folder) for line in lines(path)]


def stored(config_dir: Path, storage: dict[str, Any]) -> list[dict[str, Any]]:
    """Every record a server wrote: the files, or with storage type postgresql the database's table."""
    if storage["type"] == "json":
        return records(config_dir / "audit")
    from opp_auth_postgresql.audit import PgAuditSink

    return [record for _place, _seq, record in PgAuditSink(storage["url"]).read() if record is not None]


def rewrite(path: Path, new_lines: list[str]) -> None:
    """Replace a (maybe read-only) file's lines, as an attacker with write access would."""
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    path.write_text("".join(new_lines), encoding="ascii")


def verify_cli(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """opp-auth audit verify: exit code and output."""
    code = main(["-c", str(config_dir), "audit", "verify"])
    return code, capsys.readouterr().out


def test_records_chain_from_genesis_across_restarts(config_dir: Path) -> None:
    """seq counts on across restarts, each prev is the previous hash, each hash covers its record."""
    write(config_dir, 5)
    write(config_dir, 5, start=5)
    found = records(config_dir / "audit")
    assert [r["seq"] for r in found] == list(range(1, len(found) + 1))
    assert found[0]["prev"] == GENESIS and found[0]["type"] == "audit_started"
    assert all(b["prev"] == a["hash"] for a, b in zip(found, found[1:], strict=False))
    assert all(record_hash(r) == r["hash"] for r in found)
    assert [r["type"] for r in found].count("audit_stopped") == 2
    report = verify(config_dir / "audit")
    assert report.ok and not report.problems and report.records == len(found)


def test_the_files_are_private(config_dir: Path) -> None:
    """The folder is 0700 and the file 0600: addresses and usernames are personal data."""
    write(config_dir, 1)
    assert stat.S_IMODE((config_dir / "audit").stat().st_mode) == 0o700
    assert stat.S_IMODE((config_dir / "audit" / CURRENT).stat().st_mode) == 0o600


def test_verify_names_an_edited_line(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Changing a username in line 4 is named: file, line, record."""
    write(config_dir, 8)
    path = config_dir / "audit" / CURRENT
    content = lines(path)
    content[3] = content[3].replace('"user2"', '"mallory"')
    rewrite(path, content)
    code, out = verify_cli(config_dir, capsys)
    assert code == 1
    assert "TAMPERED: audit.jsonl:4: record 4 was changed (its hash does not match)" in out


def test_verify_names_an_edit_whose_hash_was_recomputed(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An attacker who recomputes the edited record's hash is caught by the next record's link."""
    write(config_dir, 8)
    path = config_dir / "audit" / CURRENT
    content = lines(path)
    record = json.loads(content[3])
    record["username"] = "mallory"
    record["hash"] = record_hash(record)
    content[3] = json.dumps(record, separators=(",", ":")) + "\n"
    rewrite(path, content)
    code, out = verify_cli(config_dir, capsys)
    assert code == 1 and "audit.jsonl:4: record 4 was changed (its hash was recomputed" in out


def test_verify_names_a_deleted_line(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Removing line 5 is named as record 5 removed, between lines 4 and 5."""
    write(config_dir, 8)
    path = config_dir / "audit" / CURRENT
    content = lines(path)
    del content[4]
    rewrite(path, content)
    code, out = verify_cli(config_dir, capsys)
    assert code == 1 and "audit.jsonl:5: record 5 removed (between audit.jsonl:4 and this line)" in out


def test_verify_names_lines_cut_from_the_end(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The last records removed: head.json says how many were written."""
    write(config_dir, 8)
    path = config_dir / "audit" / CURRENT
    content = lines(path)
    total = len(content)
    rewrite(path, content[:-3])
    code, out = verify_cli(config_dir, capsys)
    assert code == 1 and f"records {total - 2} to {total} were removed from the end" in out


def rotated(config_dir: Path, count: int = 120) -> list[Path]:
    """Write enough to rotate several times (4 KiB files); the rotated files in order."""
    write(config_dir, count, max_bytes=4096)
    files = [p for p in log_files(config_dir / "audit") if p.name != CURRENT]
    assert len(files) >= 3
    return files


def test_rotation_keeps_one_chain_and_makes_old_files_read_only(config_dir: Path) -> None:
    """Rotated files are named by their first seq, read-only, and the chain runs through them."""
    files = rotated(config_dir)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o400 for p in files)
    assert int(files[0].name[6:18]) == 1
    assert verify(config_dir / "audit").ok


def test_verify_names_a_deleted_rotated_file(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A rotated file removed from the middle: the records it held are named missing."""
    files = rotated(config_dir)
    first = int(files[1].name[6:18])
    last = int(files[2].name[6:18]) - 1
    files[1].unlink()
    code, out = verify_cli(config_dir, capsys)
    assert code == 1
    assert f"{files[2].name}:1: records {first} to {last} are missing: a rotated file was removed or cut" in out


def test_verify_names_the_oldest_file_deleted(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The oldest file removed without an audit_pruned record is no retention: named."""
    files = rotated(config_dir)
    second = int(files[1].name[6:18])
    files[0].unlink()
    code, out = verify_cli(config_dir, capsys)
    assert code == 1 and f"records 1 to {second - 1} are missing: an older file was removed" in out


def test_verify_names_a_truncated_rotated_file(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The end of a rotated file cut off: the cut records are named."""
    files = rotated(config_dir)
    content = lines(files[1])
    rewrite(files[1], content[:-2])
    cut_first = json.loads(content[-2])["seq"]
    code, out = verify_cli(config_dir, capsys)
    assert code == 1 and f"records {cut_first} to {cut_first + 1} are missing" in out


def test_retention_prunes_old_files_with_a_record_verify_accepts(config_dir: Path) -> None:
    """Files past keep_days go, an audit_pruned record says so, and the chain still verifies."""
    files = rotated(config_dir)
    old = time.time() - 3 * 86400
    for path in files[:2]:
        os.utime(path, (old, old))
    write(config_dir, 1, keep_days=2, start=1000)
    remaining = log_files(config_dir / "audit")
    assert files[0] not in remaining and files[1] not in remaining and files[2] in remaining
    pruned = [r for r in records(config_dir / "audit") if r["type"] == "audit_pruned"]
    assert [p["details"]["file"] for p in pruned] == [files[0].name, files[1].name]
    assert {p["details"]["cause"] for p in pruned} == {"keep_days"}
    report = verify(config_dir / "audit")
    assert report.ok, [str(p) for p in report.problems]


def test_max_files_bounds_the_disk_used(config_dir: Path) -> None:
    """However fast records come, at most max_files files are kept."""
    write(config_dir, 400, max_bytes=4096, max_files=3)
    assert len(log_files(config_dir / "audit")) <= 3
    assert verify(config_dir / "audit").ok


def test_a_torn_last_line_is_reported_and_the_chain_goes_on(
    config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A crash mid-write leaves half a line: verify says so without failing; the next start goes on after it."""
    write(config_dir, 4)
    path = config_dir / "audit" / CURRENT
    with path.open("a", encoding="ascii") as handle:
        handle.write('{"seq":99,"type":"login_fai')
    code, out = verify_cli(config_dir, capsys)
    assert code == 0 and "note: audit.jsonl:7: the last line is incomplete" in out
    write(config_dir, 2, start=10)
    code, out = verify_cli(config_dir, capsys)
    assert code == 0 and "note: audit.jsonl:7: torn record (an incomplete write at a crash)" in out
    started = [r for r in records_skipping_torn(path) if r["type"] == "audit_started"]
    assert started[-1]["details"]["after_torn_line"] is True


def records_skipping_torn(path: Path) -> list[dict[str, Any]]:
    """Records of a file, skipping lines that do not parse."""
    found = []
    for line in lines(path):
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def test_a_line_of_garbage_inside_the_chain_is_tampering(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Text inserted between records (no restart after it) is not taken for a crash."""
    write(config_dir, 6)
    path = config_dir / "audit" / CURRENT
    content = lines(path)
    content.insert(3, "all is well\n")
    rewrite(path, content)
    code, out = verify_cli(config_dir, capsys)
    assert code == 1 and "audit.jsonl:4: this line is not an audit record" in out


class FlakySink:
    """The real files, whose append fails while `failing` is set (a disk error the test cannot cause as root)."""

    def __init__(self, config_dir: Path) -> None:
        self.files = AuditFiles(config_dir)
        self.failing = False

    def open(self, version: str) -> None:
        self.files.open(version)

    def append(self, events: list[AuthEvent], extra: list[Any]) -> None:
        if self.failing:
            raise OSError(28, "No space left on device")
        self.files.append(events, extra)

    def close(self) -> None:
        self.files.close()


async def test_a_failing_disk_fails_no_login_and_loses_nothing(
    opp_auth_factory: Any, opp_auth_client: Any, config_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While writes fail, logins still work and events wait; once the disk is back they are all written."""
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[], blocks={"audit": {"enabled": False}})
    sink = FlakySink(config_dir)
    audit = AuditLog(sink)
    await audit.async_start(auth.events)
    sink.failing = True
    client = await opp_auth_client(auth)
    tokens = await client.login.tokens(["insecure_example", None], [{"username": "ann", "password": "pw"}])
    assert "access_token" in tokens
    await audit.async_flush()
    assert audit.pending >= 3 and "Writing the audit log failed" in caplog.text
    sink.failing = False
    await audit.async_stop()
    types = [r["type"] for r in records(config_dir / "audit")]
    assert types[:1] == ["audit_started"] and types[-1] == "audit_stopped"
    assert {"login_succeeded", "user_created", "refresh_token_created"} <= set(types)
    assert verify(config_dir / "audit").ok


async def test_anonymous_failures_are_rate_limited_and_counted(
    opp_auth_factory: Any, config_dir: Path, opp_auth_storage: dict[str, Any]
) -> None:
    """A flood of failures naming no known user writes at most the burst, then one audit_suppressed count."""
    auth = await opp_auth_factory(
        providers=[EXAMPLE], mfa_modules=[], blocks={"audit": {"anonymous_failures_per_minute": 50}}
    )
    for n in range(2000):
        auth.events.login_failed("198.51.100.7", None, f"guess{n}", "invalid_auth")
    await auth.async_shutdown()
    found = stored(config_dir, opp_auth_storage)
    failures = [r for r in found if r["type"] == "login_failed"]
    suppressed = [r for r in found if r["type"] == "audit_suppressed"]
    assert 50 <= len(failures) <= 52
    assert sum(r["details"]["count"] for r in suppressed) == 2000 - len(failures)


async def test_a_401_is_not_recorded_unless_asked(
    opp_auth_factory: Any, opp_auth_client: Any, config_dir: Path, opp_auth_storage: dict[str, Any]
) -> None:
    """exclude_reasons (default: unauthorized) keeps expired-token noise out; [] records it."""
    for exclude, expected in ((None, 0), ([], 1)):
        blocks = {} if exclude is None else {"audit": {"exclude_reasons": exclude}}
        auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[], blocks=blocks)
        client = await opp_auth_client(auth)
        async with client.request("GET", "/api/", headers={"Authorization": "Bearer nope"}) as resp:
            assert resp.status == 401
        await auth.async_shutdown()
        found = [r for r in stored(config_dir, opp_auth_storage) if r.get("reason") == "unauthorized"]
        assert len(found) == expected  # the first round wrote none: a table need not be emptied
        if opp_auth_storage["type"] == "json":
            for path in log_files(config_dir / "audit"):
                path.unlink()
            (config_dir / "audit" / "head.json").unlink()


def test_a_bad_audit_block_names_file_line_and_key(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """audit: keep_days: 0 is refused at check-config with the line of the key."""
    (config_dir / "configuration.yaml").write_text("openpeerpower:\naudit:\n  enabled: true\n  keep_days: 0\n")
    code = main(["-c", str(config_dir), "check-config"])
    err = capsys.readouterr()
    assert code == 1
    assert "configuration.yaml" in err.err + err.out and "keep_days" in err.err + err.out
    assert "line 4, key audit -> keep_days" in err.err


@pytest.mark.storage_types("json")
async def test_a_second_server_on_the_directory_writes_no_second_chain(
    opp_auth_factory: Any, config_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two writers would interleave two chains: the second one keeps the audit log off and says so."""
    first = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[])
    second = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[])
    assert "The audit log is off in this process: another process writes the audit log" in caplog.text
    await second.users.async_create_user("Bob")
    await second.async_shutdown()
    await first.users.async_create_user("Ann")
    await first.async_shutdown()
    found = records(config_dir / "audit")
    assert [r["type"] for r in found] == ["audit_started", "user_created", "audit_stopped"]
    assert found[1]["details"]["name"] == "Ann"
    assert verify(config_dir / "audit").ok


@pytest.mark.storage_types("postgresql")
async def test_servers_on_one_database_write_one_chain_there_and_no_files(
    opp_auth_factory: Any, config_dir: Path, opp_auth_storage: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """On PostgreSQL two servers on one directory both audit, into the database's one chain; no file is written."""
    from opp_auth_postgresql.audit import PgAuditSink

    from opp_auth.audit_files import check_chain

    first = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[])
    second = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[])
    assert "The audit log is off" not in caplog.text
    await second.users.async_create_user("Bob")
    await first.users.async_create_user("Ann")
    await second.async_shutdown()
    await first.async_shutdown()
    found = stored(config_dir, opp_auth_storage)
    assert [r["type"] for r in found].count("audit_started") == 2
    assert sorted(r["details"]["name"] for r in found if r["type"] == "user_created") == ["Ann", "Bob"]
    assert not (config_dir / "audit").exists()
    sink = PgAuditSink(opp_auth_storage["url"])
    assert check_chain(sink.read(), sink.recorded_head(), places=["opp_auth_audit"], torn_possible=False).ok
