"""opp-auth storage copy: an Open Peer Power 2021 directory into PostgreSQL and back, checked; refusals."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import secrets
import shutil
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from opp_auth.cli import main
from opp_auth.config import load_config
from opp_auth.plugins import make_plugin_manager
from opp_auth.server import build_auth
from opp_auth.storage import ConfigDirLock

PASSWORD = "correct horse battery staple"
OWNER_ID = "0b6f1d3c2a8e4f5b9c7d6e5f4a3b2c1d"
CLOUD_ID = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"
CREDENTIAL_ID = "5a4b3c2d1e0f4a9b8c7d6e5f4a3b2c1d"


def envelope(key: str, version: int, data: Any) -> str:
    """A .storage file as Open Peer Power writes it."""
    return json.dumps({"version": version, "key": key, "data": data}, indent=4)


def write_opp_2021_dir(config_dir: Path, storage: str = "") -> dict[str, Any]:
    """configuration.yaml and .storage/{auth, auth_provider.openpeerpower, auth_module.totp, onboarding, core.config}."""
    (config_dir / "configuration.yaml").write_text(f"openpeerpower:\n  name: Home\n{storage}", encoding="utf-8")
    folder = config_dir / ".storage"
    folder.mkdir(exist_ok=True)
    token = {
        "id": "2d3e4f5a6b7c4d8e9f0a1b2c3d4e5f6a", "user_id": OWNER_ID, "client_id": "https://example.com/app",
        "client_name": None, "client_icon": None, "token_type": "normal",
        "created_at": "2021-06-01T10:00:00.123456+00:00", "access_token_expiration": 1800.0,
        "token": secrets.token_hex(64), "jwt_key": secrets.token_hex(64),
        "last_used_at": "2021-07-01T08:30:00.000000+00:00", "last_used_ip": "192.168.1.10",
        "credential_id": CREDENTIAL_ID, "version": "2021.7.3",
    }  # fmt: skip
    auth = {
        "users": [
            {"id": OWNER_ID, "group_ids": ["system-admin"], "is_owner": True, "is_active": True,
             "name": "Paulus \u00e9\U0001f642", "system_generated": False},
            {"id": CLOUD_ID, "group_ids": [], "is_owner": False, "is_active": True,
             "name": "Open Peer Power Cloud", "system_generated": True},
        ],
        "groups": [
            {"id": "system-admin", "name": "Administrators"},
            {"id": "system-users", "name": "Users"},
            {"id": "system-read-only", "name": "Read Only"},
        ],
        "credentials": [
            {"id": CREDENTIAL_ID, "user_id": OWNER_ID, "auth_provider_type": "openpeerpower",
             "auth_provider_id": None, "data": {"username": "paulus"}},
        ],
        "refresh_tokens": [token],
    }  # fmt: skip
    (folder / "auth").write_text(envelope("auth", 1, auth), encoding="utf-8")
    hashed = base64.b64encode(bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4))).decode()
    logins = {"users": [{"username": "paulus", "password": hashed}]}
    (folder / "auth_provider.openpeerpower").write_text(
        envelope("auth_provider.openpeerpower", 1, logins), encoding="utf-8"
    )
    (folder / "auth_module.totp").write_text(envelope("auth_module.totp", 1, {"users": {}}), encoding="utf-8")
    (folder / "onboarding").write_text(envelope("onboarding", 4, {"done": ["user", "core_config"]}), encoding="utf-8")
    # Open Peer Power's own files are not opp-auth's: not copied.
    (folder / "core.config").write_text(envelope("core.config", 1, {"latitude": 1}), encoding="utf-8")
    return {"auth": auth, "token": token}


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """main(argv) with PASSWORD on standard input; (exit code, stdout + stderr)."""
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


async def test_copy_to_postgresql_and_back(
    tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The 2021 directory goes in (checked with a login), is served from the database, comes back the same."""
    source = tmp_path / "source"
    source.mkdir()
    written = write_opp_2021_dir(source)
    code, out = await asyncio.to_thread(
        run_cli, monkeypatch, capsys, "-c", str(source), "storage", "copy", "--to", database,
        "--check-login", "paulus", "--password-stdin",
    )  # fmt: skip
    assert code == 0, out
    assert "Copied 2 users, 3 groups, 1 credentials, 1 refresh tokens and 3 documents" in out
    assert "'paulus' logs in" in out and "a stored session" in out

    # Served from the database: the password and the stored session work.
    served = tmp_path / "served"
    served.mkdir()
    write_opp_2021_dir(served, f"  storage:\n    type: postgresql\n    url: {database}\n")
    shutil.rmtree(served / ".storage")
    # Every server on the database needs the secret the copy was checked with.
    shutil.copy(source / ".opp-auth-secret", served / ".opp-auth-secret")
    pm = make_plugin_manager()
    config = load_config(served, pm)
    auth = build_auth(config, pm)
    await auth.async_setup()
    try:
        provider = auth.registry.local_provider()
        assert provider is not None
        await provider.async_validate_login("paulus", PASSWORD)  # type: ignore[attr-defined]
        token = auth.store.get_refresh_token_by_token(written["token"]["token"])
        assert token is not None and token.user.name == "Paulus \u00e9\U0001f642"
        access = await auth.access_tokens.async_create_access_token(token)
        assert auth.access_tokens.validate_access_token(access) is not None
    finally:
        await auth.async_shutdown()

    # And back into an empty directory: the same entries.
    back = tmp_path / "back"
    back.mkdir()
    (back / "configuration.yaml").write_text("openpeerpower:\n  name: Home\n", encoding="utf-8")
    code, out = await asyncio.to_thread(
        run_cli, monkeypatch, capsys, "-c", str(back), "storage", "copy", "--from", database
    )
    assert code == 0, out
    data = json.loads((back / ".storage" / "auth").read_text(encoding="utf-8"))["data"]
    for name in ("users", "groups", "credentials"):
        assert data[name] == written["auth"][name]
    assert [t["id"] for t in data["refresh_tokens"]] == [written["token"]["id"]]
    assert not (back / ".storage" / "core.config").exists()
    logins = json.loads((back / ".storage" / "auth_provider.openpeerpower").read_text(encoding="utf-8"))
    assert logins["data"]["users"][0]["username"] == "paulus"


async def test_copy_refuses_a_database_with_data(
    tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second copy into the same database is refused and changes nothing."""
    source = tmp_path / "source"
    source.mkdir()
    write_opp_2021_dir(source)
    assert (
        await asyncio.to_thread(run_cli, monkeypatch, capsys, "-c", str(source), "storage", "copy", "--to", database)
    )[0] == 0
    code, out = await asyncio.to_thread(
        run_cli, monkeypatch, capsys, "-c", str(source), "storage", "copy", "--to", database
    )
    assert code == 1 and "already holds opp-auth data" in out


async def test_copy_refuses_while_a_server_runs_on_the_directory(
    tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The directory lock held (a JSON server running): refused, nothing written to the database."""
    source = tmp_path / "source"
    source.mkdir()
    write_opp_2021_dir(source)
    lock = ConfigDirLock(source)
    lock.acquire("server")
    try:
        code, out = await asyncio.to_thread(
            run_cli, monkeypatch, capsys, "-c", str(source), "storage", "copy", "--to", database
        )
    finally:
        lock.release()
    assert code == 1 and "Stop the server" in out


async def test_copy_refuses_while_a_server_uses_the_database(
    tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server on the database (its listener's shared lock): --from is refused."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "configuration.yaml").write_text(
        f"openpeerpower:\n  storage:\n    type: postgresql\n    url: {database}\n", encoding="utf-8"
    )
    pm = make_plugin_manager()
    auth = build_auth(load_config(served, pm), pm)
    await auth.async_setup()
    try:
        await auth.users.async_create_user("Someone")
        await auth.backend.connected.wait()  # type: ignore[attr-defined]
        target = tmp_path / "target"
        target.mkdir()
        (target / "configuration.yaml").write_text("openpeerpower:\n", encoding="utf-8")
        code, out = await asyncio.to_thread(
            run_cli, monkeypatch, capsys, "-c", str(target), "storage", "copy", "--from", database
        )
    finally:
        await auth.async_shutdown()
    assert code == 1 and "A server is using" in out
    assert not (target / ".storage" / "auth").exists()


async def test_a_server_starting_while_a_copy_runs_is_refused_until_it_ends(tmp_path: Path, database: str) -> None:
    """The copy holds the servers' lock alone from its check to its end: a server (or a command) that starts on
    the database meanwhile is refused, naming the copy, and starts once the copy has closed."""
    from opp_auth_postgresql import PostgresBackend

    from opp_auth.storage import StorageError

    served = tmp_path / "served"
    served.mkdir()
    (served / "configuration.yaml").write_text(
        f"openpeerpower:\n  storage:\n    type: postgresql\n    url: {database}\n", encoding="utf-8"
    )
    copying = PostgresBackend(PostgresBackend.CONFIG_SCHEMA({"type": "postgresql", "url": database}), str(tmp_path))
    await copying.async_open()
    assert await copying.async_servers_running() is False  # none: the copy goes on, holding the lock
    pm = make_plugin_manager()
    try:
        auth = build_auth(load_config(served, pm), pm)
        with pytest.raises(StorageError, match="storage copy is using the database"):
            await auth.async_setup()
        await auth.async_shutdown()
        second = PostgresBackend(PostgresBackend.CONFIG_SCHEMA({"type": "postgresql", "url": database}), str(tmp_path))
        with pytest.raises(StorageError):  # a second copy is refused too
            await second.async_open()
    finally:
        await copying.async_close()
    auth = build_auth(load_config(served, pm), pm)
    await auth.async_setup()
    try:
        made = await auth.users.async_create_user("After the copy")
        assert auth.store.get_user(made.id) is not None
    finally:
        await auth.async_shutdown()
