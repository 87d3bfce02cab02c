"""The audit log in PostgreSQL: records of logins over HTTP, one chain for several writers, verify and show.

Every test runs against a real PostgreSQL (tests/conftest.py: skipped with the reason when it is
missing, failed when OPP_AUTH_REQUIRE_INTEGRATION=1).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from opp_auth_postgresql.audit import PgAuditSink

from opp_auth import AuthEvent
from opp_auth.cli import main
from opp_auth.manager import AuthManager
from opp_auth.testing import CLIENT_ID, PostgresServer, find_secrets

EXAMPLE = {
    "type": "insecure_example",
    "users": [
        {"username": "alice", "password": "alice-secret-pw", "name": "Alice"},
        {"username": "bob", "password": "bob-secret-pw", "name": "Bob"},
    ],
}
HANDLER = ["insecure_example", None]


@pytest.fixture
def opp_auth_storage_type() -> str:
    """Every test here runs on PostgreSQL."""
    return "postgresql"


def write_config(config_dir: Path, url: str) -> None:
    """A configuration.yaml naming the database, for the opp-auth commands."""
    (config_dir / "configuration.yaml").write_text(
        f"openpeerpower:\n  storage:\n    type: postgresql\n    url: {url}\n",
        encoding="utf-8",
    )


def rows(url: str) -> list[tuple[int, dict[str, Any]]]:
    """(seq, record) of every row, in seq order."""
    with psycopg.connect(url) as conn:
        return [
            (int(seq), json.loads(text))
            for seq, text in conn.execute("SELECT seq, record FROM opp_auth_audit ORDER BY seq")
        ]


def run(config_dir: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """opp-auth -c config_dir ARGS in this process: exit code and output."""
    code = main(["-c", str(config_dir), *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def tamper(url: str, sql: str, *params: Any) -> None:
    """What someone who owns the database can do: switch the append-only trigger off and change rows."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE opp_auth_audit DISABLE TRIGGER opp_auth_audit_append_only")
        conn.execute(sql, params or None)
        conn.execute("ALTER TABLE opp_auth_audit ENABLE TRIGGER opp_auth_audit_append_only")


async def login(client: Any, username: str, password: str) -> tuple[int, Any]:
    """A login over HTTP: the last step's answer; tokens when it succeeded."""
    status, flow = await client.login.start(HANDLER)
    assert status == 200, flow
    status, step = await client.login.step(flow["flow_id"], username=username, password=password)
    if step.get("type") != "create_entry":
        return status, step
    return await client.login.token(grant_type="authorization_code", client_id=CLIENT_ID, code=step["result"])


@pytest.fixture
async def served(
    opp_auth_factory: Any, opp_auth_client: Any, opp_auth_storage: dict[str, Any], config_dir: Path
) -> tuple[AuthManager, Any, str]:
    """A server on PostgreSQL with the example provider, its HTTP client and the database URL."""
    write_config(config_dir, opp_auth_storage["url"])
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[], http={"ip_ban_enabled": False})
    return auth, await opp_auth_client(auth), opp_auth_storage["url"]


async def test_logins_over_http_go_to_the_database_and_hold_no_secret(
    served: tuple[AuthManager, Any, str], config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A success and failures over HTTP are rows of one chain; no audit files; no password or token in a row."""
    auth, client, url = served
    status, tokens = await login(client, "alice", "alice-secret-pw")
    assert status == 200, tokens
    status, step = await login(client, "bob", "wrong-pw-for-bob")
    assert step["errors"] == {"base": "invalid_auth"}
    status, step = await login(client, "nobody", "nobody-pw")
    await auth.async_shutdown()
    found = rows(url)
    types = [record["type"] for _seq, record in found]
    assert types[0] == "audit_started" and types[-1] == "audit_stopped"
    assert "login_succeeded" in types and types.count("login_failed") == 2
    assert [seq for seq, _ in found] == list(range(1, len(found) + 1))
    assert all(record["seq"] == seq for seq, record in found)
    failed = [r for _s, r in found if r["type"] == "login_failed"]
    assert {r["username"] for r in failed} == {"bob", "nobody"} and all(r["via"] == "http" for r in failed)
    assert not (config_dir / "audit").exists()
    text = "\n".join(json.dumps(record) for _seq, record in found)
    secrets = ["alice-secret-pw", "wrong-pw-for-bob", "nobody-pw", tokens["access_token"], tokens["refresh_token"]]
    assert find_secrets(text, secrets) == []
    code, out = run(config_dir, capsys, "audit", "verify")
    assert code == 0, out
    assert f"{len(found)} records in opp_auth_audit; head: record {len(found)}" in out
    assert "The chain is intact." in out
    code, out = run(config_dir, capsys, "audit", "show", "--user", "Bob", "--failed")
    assert code == 0 and "login_failed" in out and "username=bob" in out and "nobody" not in out
    assert "1 records" in out
    code, out = run(config_dir, capsys, "audit", "show", "--since", "1h", "--json")
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [seq for seq, _ in found]
    code, out = run(config_dir, capsys, "audit", "show", "--since", "2099-01-01")
    assert code == 0 and "0 records" in out


async def test_the_table_refuses_changes_and_verify_names_each_one(
    served: tuple[AuthManager, Any, str], config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An UPDATE or DELETE is refused by the database; with the trigger off, verify names the first change."""
    auth, client, url = served
    for _ in range(3):
        await login(client, "alice", "alice-secret-pw")
    await auth.async_shutdown()
    count = len(rows(url))
    assert count >= 8
    with psycopg.connect(url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("UPDATE opp_auth_audit SET record = record WHERE seq = 2")
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("DELETE FROM opp_auth_audit WHERE seq = 2")
    # A changed field.
    tamper(url, 'UPDATE opp_auth_audit SET record = replace(record, \'"via":"http"\', \'"via":"cli"\') WHERE seq = 3')
    code, out = run(config_dir, capsys, "audit", "verify")
    assert code == 1
    assert out.splitlines()[0] == "TAMPERED: opp_auth_audit:3: record 3 was changed (its hash does not match)"
    # The same change with its hash recomputed: the next record no longer links to it.
    record = dict(rows(url)[2][1])
    from opp_auth.audit_files import canonical, record_hash

    record["hash"] = record_hash(record)
    assert canonical({k: v for k, v in record.items() if k != "hash"})
    tamper(url, "UPDATE opp_auth_audit SET record = %s WHERE seq = 3", json.dumps(record))
    code, out = run(config_dir, capsys, "audit", "verify")
    assert code == 1
    assert "opp_auth_audit:3: record 3 was changed (its hash was recomputed; record 4 does not link to it)" in out
    # A deleted row.
    tamper(url, "DELETE FROM opp_auth_audit WHERE seq = 5")
    code, out = run(config_dir, capsys, "audit", "verify")
    assert "opp_auth_audit:6: record 5 removed" in out
    # Rows cut from the end: the head row still says how many there were.
    tamper(url, "DELETE FROM opp_auth_audit WHERE seq > %s", count - 2)
    code, out = run(config_dir, capsys, "audit", "verify")
    assert f"records {count - 1} to {count} were removed from the end (opp_auth_audit_head says {count})" in out
    # A server started afterwards chains on from the head row: the gap stays visible.
    again = await served_again(auth)
    await again.async_shutdown()
    code, out = run(config_dir, capsys, "audit", "verify")
    assert code == 1 and f"records {count - 1} to {count}" in out


async def served_again(auth: AuthManager) -> AuthManager:
    """A new server on the same storage and configuration as auth."""
    backend = type(auth.backend)(auth.backend.config, auth.config_dir)
    again = AuthManager(auth.config_dir, auth.pm, storage=backend)
    await again.async_setup()
    return again


def test_a_database_without_records_verifies_empty(
    opp_auth_storage: dict[str, Any], config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No server ever started on the database: verify and show say so and succeed."""
    write_config(config_dir, opp_auth_storage["url"])
    code, out = run(config_dir, capsys, "audit", "verify")
    assert code == 0 and "No audit records in opp_auth_audit" in out
    code, out = run(config_dir, capsys, "audit", "show")
    assert code == 0 and "0 records" in out


def test_retention_prunes_old_rows_with_a_record_verify_accepts(
    opp_auth_storage: dict[str, Any], postgresql_server: PostgresServer, config_dir: Path, capsys: Any
) -> None:
    """Records older than keep_days go at the next start, with an audit_pruned record; the chain verifies."""
    url = opp_auth_storage["url"]
    write_config(config_dir, url)
    _migrate(url)
    old = time.time() - 3 * 86400
    sink = PgAuditSink(url, keep_days=2)
    sink.open("test")
    sink.append([AuthEvent(type="user_created", time=old + i, user_id=f"u{i}") for i in range(5)], [])
    sink.append([AuthEvent(type="user_created", time=time.time(), user_id="new")], [])
    sink.close()
    before = rows(url)
    sink = PgAuditSink(url, keep_days=2)
    sink.open("test")
    sink.close()
    after = rows(url)
    pruned = [r for _s, r in after if r["type"] == "audit_pruned"]
    assert len(pruned) == 1 and pruned[0]["details"]["last_seq"] == 6  # audit_started, then five old
    assert after[0][0] == 7 and before[-1][1] in [r for _s, r in after]
    code, out = run(config_dir, capsys, "audit", "verify")
    assert code == 0, out


def _migrate(url: str) -> None:
    """The schema, as a server makes it at start."""
    import asyncio

    from opp_auth_postgresql.schema import async_migrate

    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await async_migrate(conn)

    asyncio.run(go())


WRITER = textwrap.dedent(
    """
    import sys, time
    from opp_auth import AuthEvent
    from opp_auth_postgresql.audit import PgAuditSink

    url, name, batches = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sink = PgAuditSink(url)
    sink.open("writer " + name)
    for batch in range(batches):
        sink.append([AuthEvent(type="login_failed", reason="invalid_auth", time=time.time(),
                               username=f"{name}-{batch}-{i}") for i in range(50)], [])
    sink.close()
    """
)


def test_two_processes_append_to_one_chain_at_once(
    opp_auth_storage: dict[str, Any], config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two processes appending batches at the same time interleave in one chain that verifies."""
    url = opp_auth_storage["url"]
    write_config(config_dir, url)
    _migrate(url)
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, url, name, "40"], stderr=subprocess.PIPE) for name in ("a", "b")
    ]
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    found = rows(url)
    assert len(found) == 2 * (40 * 50 + 2)
    writers = [r["username"][0] for _s, r in found if r["type"] == "login_failed"]
    switches = sum(1 for x, y in zip(writers, writers[1:], strict=False) if x != y)
    assert switches >= 1  # the batches did interleave
    for (_s1, one), (_s2, two) in zip(found, found[1:], strict=False):
        assert two["prev"] == one["hash"] and two["seq"] == one["seq"] + 1
    code, out = run(config_dir, capsys, "audit", "verify")
    assert code == 0 and "The chain is intact." in out, out


async def test_an_unreachable_database_fails_no_login_and_loses_nothing(
    served: tuple[AuthManager, Any, str], postgresql_server: PostgresServer
) -> None:
    """The audit connection cut: events wait in memory and are written on the next try."""
    auth, client, url = served
    await auth.audit.async_flush()  # type: ignore[union-attr]
    postgresql_server.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'opp-auth audit'"
    )
    auth.context.note_event("user_created", user_id="after-the-cut")
    await auth.audit.async_flush()  # type: ignore[union-attr]
    assert auth.audit.pending == 0  # type: ignore[union-attr]  # written on a fresh connection at once
    assert any(r.get("user_id") == "after-the-cut" for _s, r in rows(url))


def test_bans_remove_beside_servers_records_in_the_database(
    opp_auth_storage: dict[str, Any], config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """opp-auth bans remove (which may run beside servers on a shared storage) writes its record to the
    database's chain, not to audit files of the directory."""
    url = opp_auth_storage["url"]
    write_config(config_dir, url)
    _migrate(url)
    (config_dir / "ip_bans.yaml").write_text("203.0.113.1:\n  banned_at: '2021-03-04T05:06:07+00:00'\n")
    code, out = run(config_dir, capsys, "bans", "remove", "203.0.113.1")
    assert code == 0, out
    assert not (config_dir / "audit").exists()
    lifted = [r for _s, r in rows(url) if r["type"] == "address_unbanned"]
    assert len(lifted) == 1 and lifted[0]["via"] == "cli", rows(url)
    code, out = run(config_dir, capsys, "audit", "verify")
    assert code == 0, out


HOSTILE = "évil\t\n\\N\x00\x1b[31m\u202e\ud800'); DROP TABLE opp_auth_audit; --" + "x" * 5000


def test_hostile_text_is_kept_exactly_and_a_changed_head_row_is_found(
    opp_auth_storage: dict[str, Any], config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tabs, line breaks, backslashes (COPY's own escapes), NUL, a lone surrogate, SQL: one ASCII record each,
    its hash still matching; then a head row rewritten to another hash is named by verify."""
    url = opp_auth_storage["url"]
    write_config(config_dir, url)
    _migrate(url)
    sink = PgAuditSink(url)
    sink.open("test")
    sink.append([AuthEvent(type="login_failed", reason="invalid_auth", time=time.time(), username=HOSTILE)], [])
    sink.close()
    with psycopg.connect(url) as conn:
        texts = [row[0] for row in conn.execute("SELECT record FROM opp_auth_audit ORDER BY seq")]
    assert len(texts) == 3 and all(text.isascii() and "\n" not in text and "\t" not in text for text in texts)
    failed = json.loads(texts[1])
    assert failed["username"].startswith("évil\t\n\\N\x00\x1b[31m\u202e")
    code, out = run(config_dir, capsys, "audit", "verify")
    assert code == 0, out
    code, out = run(config_dir, capsys, "audit", "show", "--failed")
    assert code == 0 and "\x1b" not in out and "\u202e" not in out and "\\u{1b}" in out
    with psycopg.connect(url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.RaiseException, match="only moves forward"):
            conn.execute("UPDATE opp_auth_audit_head SET hash = %s", ("f" * 64,))
        # Its owner can switch the trigger off; verify still names the rewritten head.
        conn.execute("ALTER TABLE opp_auth_audit_head DISABLE TRIGGER opp_auth_audit_head_forward")
        conn.execute("UPDATE opp_auth_audit_head SET hash = %s", ("f" * 64,))
        conn.execute("ALTER TABLE opp_auth_audit_head ENABLE TRIGGER opp_auth_audit_head_forward")
    code, out = run(config_dir, capsys, "audit", "verify")
    assert code == 1 and "opp_auth_audit_head:0: record 3 differs from the one opp_auth_audit_head names" in out


def test_the_head_row_only_moves_forward_to_a_stored_record_and_no_audit_table_is_truncated(
    opp_auth_storage: dict[str, Any],
) -> None:
    """Without switching triggers off: the head row cannot go back, name a hash or seq the table lacks,
    be deleted, or be emptied with the table by TRUNCATE; the writers still move it."""
    url = opp_auth_storage["url"]
    _migrate(url)
    sink = PgAuditSink(url)
    sink.open("test")
    sink.append([AuthEvent(type="login_failed", reason="invalid_auth", time=time.time(), username="x")], [])
    sink.close()
    with psycopg.connect(url, autocommit=True) as conn:
        seq, head = conn.execute("SELECT seq, hash FROM opp_auth_audit_head").fetchone()
        assert seq == 3
        second = json.loads(conn.execute("SELECT record FROM opp_auth_audit WHERE seq = 2").fetchone()[0])
        refused = [
            ("UPDATE opp_auth_audit_head SET seq = 2, hash = %s", (second["hash"],), "only moves forward"),
            ("UPDATE opp_auth_audit_head SET seq = 4", None, "must name a record"),
            ("UPDATE opp_auth_audit_head SET hash = %s", ("0" * 64,), "only moves forward"),
            ("DELETE FROM opp_auth_audit_head", None, "cannot be deleted"),
            ("TRUNCATE opp_auth_audit_head", None, "TRUNCATE refused"),
            ("TRUNCATE opp_auth_audit", None, "TRUNCATE refused"),
            ("TRUNCATE opp_auth_audit, opp_auth_audit_head", None, "TRUNCATE refused"),
        ]
        for sql, params, message in refused:
            with pytest.raises(psycopg.errors.RaiseException, match=message):
                conn.execute(sql, params)
        assert conn.execute("SELECT seq, hash FROM opp_auth_audit_head").fetchone() == (seq, head)
        assert conn.execute("SELECT count(*) FROM opp_auth_audit").fetchone()[0] == 3
    sink = PgAuditSink(url)
    sink.open("test")  # the writer still moves it forward
    sink.close()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT seq FROM opp_auth_audit_head").fetchone()[0] == 5
