"""End-to-end tests of the opp-auth command (SPEC 9, 8.1, 10), run as a real program."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest

from opp_auth.models import User
from opp_auth.store import AuthStore
from opp_auth.testing import LoginFlowDriver

OPP_AUTH = shutil.which("opp-auth", path=str(Path(sys.executable).parent)) or shutil.which("opp-auth")
LOCAL_STORE = "auth_provider.openpeerpower"
PASSWORD = "first-password"


def opp_auth(config_dir: Path, *args: str, stdin: str = "", timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run opp-auth -c config_dir ARGS with stdin piped (never a terminal, so nothing prompts)."""
    assert OPP_AUTH is not None, "the opp-auth program is not installed"
    return subprocess.run(
        [OPP_AUTH, "-c", str(config_dir), *args], input=stdin, capture_output=True, text=True, timeout=timeout
    )


def write_logins(config_dir: Path, users: list[tuple[str, str]]) -> None:
    """Store local logins in Open Peer Power's file format, hashed at cost 4 to keep tests fast."""
    entries = [
        {"username": name, "password": base64.b64encode(bcrypt.hashpw(pw.encode(), bcrypt.gensalt(4))).decode()}
        for name, pw in users
    ]
    storage = config_dir / ".storage"
    storage.mkdir(exist_ok=True)
    envelope = {"version": 1, "key": LOCAL_STORE, "data": {"users": entries}}
    (storage / LOCAL_STORE).write_text(json.dumps(envelope, indent=4))


def read_store(config_dir: Path, key: str) -> Any:
    """The data of a .storage file."""
    return json.loads((config_dir / ".storage" / key).read_text())["data"]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running `opp-auth serve`."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not stop in time."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(config_dir: Path, log_dir: Path) -> Server:
    """Start `opp-auth -c DIR serve` on a free port and wait until it accepts connections."""
    assert OPP_AUTH is not None
    port = free_port()
    log = log_dir / f"serve-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [OPP_AUTH, "-c", str(config_dir), "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            pytest.fail(f"opp-auth serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                pytest.fail(f"opp-auth serve did not listen within 15 s:\n{log.read_text()}")
            time.sleep(0.05)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[Path], Server]]:
    """A function starting servers, all stopped at teardown."""
    servers: list[Server] = []

    def start(config_dir: Path) -> Server:
        server = start_server(config_dir, tmp_path)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def paulus(config_dir: Path) -> Path:
    """A configuration directory with one local login: paulus / first-password."""
    write_logins(config_dir, [("paulus", PASSWORD)])
    return config_dir


async def get(url: str, **kwargs: Any) -> tuple[int, str, str]:
    """GET: (status, content type, body)."""
    async with aiohttp.ClientSession() as session, session.get(url, **kwargs) as resp:
        return resp.status, resp.content_type, await resp.text()


# ---- auth commands ---------------------------------------------------------------------------


def test_add_prints_auth_created_and_list_shows_usernames_and_total(config_dir: Path) -> None:
    first = opp_auth(config_dir, "auth", "add", "Paulus", "--password-stdin", stdin=PASSWORD + "\n")
    second = opp_auth(config_dir, "auth", "add", "anne", "--password-stdin", stdin="other-password\n")
    assert (first.returncode, first.stdout) == (0, "Auth created\n")
    assert (second.returncode, second.stdout) == (0, "Auth created\n")
    listed = opp_auth(config_dir, "auth", "list")
    assert listed.returncode == 0
    assert listed.stdout == "paulus\nanne\n\nTotal users: 2\n"


def test_added_password_is_stored_hashed_and_validates(config_dir: Path) -> None:
    added = opp_auth(config_dir, "auth", "add", "paulus", "--password-stdin", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    [entry] = read_store(config_dir, LOCAL_STORE)["users"]
    assert PASSWORD not in json.dumps(entry)
    assert bcrypt.checkpw(PASSWORD.encode(), base64.b64decode(entry["password"]))


def test_add_existing_username_is_refused(paulus: Path) -> None:
    result = opp_auth(paulus, "auth", "add", " PAULUS", "--password-stdin", stdin="other-password\n")
    assert result.returncode == 1
    assert result.stdout == "Username already exists!\n"
    assert len(read_store(paulus, LOCAL_STORE)["users"]) == 1


def test_add_refuses_a_username_the_login_form_would_refuse(config_dir: Path) -> None:
    result = opp_auth(config_dir, "auth", "add", "pau\u202elus", "--password-stdin", stdin=PASSWORD + "\n")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "control, format or line separator" in result.stdout + result.stderr
    assert not (config_dir / ".storage" / LOCAL_STORE).exists() or not read_store(config_dir, LOCAL_STORE)["users"]


def test_validate_right_password_is_valid(paulus: Path) -> None:
    result = opp_auth(paulus, "auth", "validate", "Paulus", "--password-stdin", stdin=PASSWORD + "\n")
    assert (result.returncode, result.stdout) == (0, "Auth valid\n")


def test_validate_wrong_password_is_invalid(paulus: Path) -> None:
    result = opp_auth(paulus, "auth", "validate", "paulus", "--password-stdin", stdin="wrong-password\n")
    assert (result.returncode, result.stdout) == (1, "Auth invalid\n")


def test_change_password_replaces_the_password(paulus: Path) -> None:
    changed = opp_auth(paulus, "auth", "change-password", "paulus", "--password-stdin", stdin="second-password\n")
    assert (changed.returncode, changed.stdout) == (0, "Password changed\n")
    [entry] = read_store(paulus, LOCAL_STORE)["users"]
    stored = base64.b64decode(entry["password"])
    assert bcrypt.checkpw(b"second-password", stored)
    assert not bcrypt.checkpw(PASSWORD.encode(), stored)


def test_change_password_of_unknown_user_saves_nothing(paulus: Path) -> None:
    before = (paulus / ".storage" / LOCAL_STORE).read_bytes()
    result = opp_auth(paulus, "auth", "change-password", "nobody", "--password-stdin", stdin="second-password\n")
    assert (result.returncode, result.stdout) == (1, "User not found\n")
    assert (paulus / ".storage" / LOCAL_STORE).read_bytes() == before


def test_delete_removes_the_login(paulus: Path) -> None:
    deleted = opp_auth(paulus, "auth", "delete", "Paulus")
    assert (deleted.returncode, deleted.stdout) == (0, "Auth deleted\n")
    assert read_store(paulus, LOCAL_STORE)["users"] == []
    assert opp_auth(paulus, "auth", "list").stdout == "\nTotal users: 0\n"


def test_password_is_not_accepted_on_the_command_line(config_dir: Path) -> None:
    result = opp_auth(config_dir, "auth", "add", "paulus", PASSWORD)
    assert result.returncode != 0
    assert "unrecognized arguments" in result.stderr
    assert not (config_dir / ".storage" / LOCAL_STORE).exists()


async def test_owner_added_by_cli_logs_in_through_server(config_dir: Path, serve: Callable[[Path], Server]) -> None:
    added = opp_auth(config_dir, "auth", "add", "boss", "--owner", "--name", "The Boss", "--password-stdin",
                     stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    auth_data = read_store(config_dir, "auth")
    [user] = [u for u in auth_data["users"] if not u["system_generated"]]
    assert user["is_owner"] is True
    assert user["name"] == "The Boss"
    assert user["group_ids"] == ["system-admin"]
    [cred] = auth_data["credentials"]
    assert cred["user_id"] == user["id"]
    assert cred["auth_provider_type"] == "openpeerpower"
    assert cred["data"] == {"username": "boss"}

    server = serve(config_dir)
    async with aiohttp.ClientSession() as session:
        tokens = await LoginFlowDriver(session, server.url).tokens(
            ["openpeerpower", None], [{"username": "boss", "password": PASSWORD}]
        )
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        async with session.get(f"{server.url}/api/", headers=headers) as resp:
            assert resp.status == 200
    server.stop()  # flushes the server's delayed saves
    saved = read_store(config_dir, "auth")
    # The server's first login must reuse the CLI's user rather than create another.
    assert [u["id"] for u in saved["users"] if not u["system_generated"]] == [user["id"]]
    assert [t["user_id"] for t in saved["refresh_tokens"]] == [user["id"]]


# ---- one process per directory ------------------------------------------------------------------


REFUSED_WHILE_SERVING: list[tuple[tuple[str, ...], str]] = [
    (("auth", "add", "anne", "--password-stdin"), "other-password\n"),
    (("auth", "validate", "paulus", "--password-stdin"), PASSWORD + "\n"),
    (("auth", "change-password", "paulus", "--password-stdin"), "second-password\n"),
    (("auth", "delete", "paulus"), ""),
    (("reset", "--yes"), ""),
]


def test_commands_refuse_while_server_runs(paulus: Path, serve: Callable[[Path], Server]) -> None:
    serve(paulus)
    before = {p.name: p.read_bytes() for p in (paulus / ".storage").iterdir() if p.is_file()}
    assert OPP_AUTH is not None
    # Started together: they are independent and each spends most of its time importing.
    procs = [
        (args, subprocess.Popen(
            [OPP_AUTH, "-c", str(paulus), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ), stdin)
        for args, stdin in REFUSED_WHILE_SERVING
    ]
    for args, proc, stdin in procs:
        out, err = proc.communicate(stdin, timeout=30)
        assert proc.returncode == 1, (args, out, err)
        assert f"{paulus} is in use" in err, args
    after = {p.name: p.read_bytes() for p in (paulus / ".storage").iterdir() if p.is_file()}
    assert after == before


def test_auth_list_works_while_server_runs(paulus: Path, serve: Callable[[Path], Server]) -> None:
    """Listing only reads the logins file (replaced atomically by writers), so a running server is no reason to refuse."""
    serve(paulus)
    result = opp_auth(paulus, "auth", "list")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["paulus", "", "Total users: 1"]


def test_auth_commands_use_home_assistants_logins_file(config_dir: Path) -> None:
    """In a Home Assistant directory the local provider is type homeassistant, its file auth_provider.homeassistant."""
    (config_dir / "configuration.yaml").write_text("homeassistant:\n  name: Home\n", encoding="utf-8")
    result = opp_auth(config_dir, "auth", "add", "anne", "--password-stdin", stdin="anne's password\n")
    assert result.returncode == 0, result.stderr
    saved = json.loads((config_dir / ".storage" / "auth_provider.homeassistant").read_text(encoding="utf-8"))
    assert [u["username"] for u in saved["data"]["users"]] == ["anne"]
    assert not (config_dir / ".storage" / "auth_provider.openpeerpower").exists()
    auth = json.loads((config_dir / ".storage" / "auth").read_text(encoding="utf-8"))
    assert [c["auth_provider_type"] for c in auth["data"]["credentials"]] == ["homeassistant"]
    assert opp_auth(config_dir, "auth", "list").stdout.splitlines()[0] == "anne"
    assert opp_auth(config_dir, "auth", "validate", "anne", stdin="anne's password\n").stdout.strip() == "Auth valid"


def test_second_server_on_same_directory_refuses(config_dir: Path, serve: Callable[[Path], Server]) -> None:
    serve(config_dir)
    result = opp_auth(config_dir, "serve", "--host", "127.0.0.1", "--port", str(free_port()), timeout=15)
    assert result.returncode == 1
    assert str(config_dir) in result.stderr
    assert "in use" in result.stderr


# ---- reset ----------------------------------------------------------------------------------------


async def test_reset_moves_auth_files_to_backup_and_reopens_onboarding(
    config_dir: Path, serve: Callable[[Path], Server]
) -> None:
    added = opp_auth(config_dir, "auth", "add", "boss", "--owner", "--password-stdin", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    server = serve(config_dir)
    status, _, body = await get(f"{server.url}/auth/providers")
    assert status == 200, body
    server.stop()
    storage = config_dir / ".storage"
    moved = {"auth", LOCAL_STORE, "onboarding"}
    assert moved <= {p.name for p in storage.iterdir()}
    contents = {name: (storage / name).read_bytes() for name in moved}

    reset = opp_auth(config_dir, "reset", "--yes")
    assert reset.returncode == 0, reset.stderr
    assert not moved & {p.name for p in storage.iterdir()}
    [backup] = list(storage.glob("backup-*"))
    assert {name: (backup / name).read_bytes() for name in moved} == contents

    server = serve(config_dir)
    status, _, body = await get(f"{server.url}/auth/providers")
    assert status == 400
    assert json.loads(body)["code"] == "onboarding_required"


async def test_reset_after_a_crash_moves_the_journal_with_the_file(config_dir: Path) -> None:
    added = opp_auth(config_dir, "auth", "add", "boss", "--owner", "--password-stdin", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    # A server that died without shutting down leaves its latest changes in the journal.
    store = AuthStore(str(config_dir))
    await store.async_load()
    store.add_user(User(name="made before the crash", is_active=True))
    await store.async_save()
    storage = config_dir / ".storage"
    journal = (storage / ".auth.journal").read_bytes()

    reset = opp_auth(config_dir, "reset", "--yes")
    assert reset.returncode == 0, reset.stderr
    assert not (storage / ".auth.journal").exists()
    [backup] = list(storage.glob("backup-*"))
    assert (backup / ".auth.journal").read_bytes() == journal
    fresh = AuthStore(str(config_dir))
    await fresh.async_load()
    assert fresh.users() == []


def test_reset_without_yes_and_without_terminal_changes_nothing(paulus: Path) -> None:
    result = opp_auth(paulus, "reset")
    assert result.returncode == 1
    assert "--yes" in result.stderr
    assert not list((paulus / ".storage").glob("backup-*"))
    assert (paulus / ".storage" / LOCAL_STORE).exists()


# ---- check-config and plugins -----------------------------------------------------------------------


def write_config(config_dir: Path, text: str) -> None:
    """Write configuration.yaml."""
    (config_dir / "configuration.yaml").write_text(text, encoding="utf-8")


def test_check_config_unknown_key_names_file_line_and_key(config_dir: Path) -> None:
    write_config(config_dir, "openpeerpower:\n  auth_providers:\n    - type: openpeerpower\n  bogus_key: 1\n")
    result = opp_auth(config_dir, "check-config")
    assert result.returncode == 1
    assert "configuration.yaml" in result.stderr
    assert "line 4" in result.stderr
    assert "bogus_key" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_check_config_yaml_syntax_error_names_file_and_line(config_dir: Path) -> None:
    write_config(config_dir, "openpeerpower:\n  auth_providers:\n    - type: openpeerpower\n   bad: [\n")
    result = opp_auth(config_dir, "check-config")
    assert result.returncode == 1
    assert "configuration.yaml" in result.stderr
    assert "line 4" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_check_config_unknown_provider_type_names_installed_types(config_dir: Path) -> None:
    write_config(config_dir, "openpeerpower:\n  auth_providers:\n    - type: no_such_provider\n")
    result = opp_auth(config_dir, "check-config")
    assert result.returncode == 1
    assert "no_such_provider" in result.stderr
    assert "Installed types" in result.stderr
    assert "openpeerpower" in result.stderr.split("Installed types", 1)[1]
    assert "Traceback" not in result.stderr + result.stdout


def test_check_config_valid_file_lists_providers(config_dir: Path) -> None:
    write_config(config_dir, "openpeerpower:\n  auth_providers:\n    - type: openpeerpower\n")
    result = opp_auth(config_dir, "check-config")
    assert result.returncode == 0, result.stderr
    assert "Configuration valid" in result.stdout
    assert "provider openpeerpower" in result.stdout


def test_plugins_lists_local_provider_with_version_and_type(config_dir: Path) -> None:
    result = opp_auth(config_dir, "plugins")
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if "opp-auth-local" in line]
    assert f"opp-auth-local {version('opp-auth-local')}" in line
    assert "provider openpeerpower" in line


# ---- serve ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Server]]:
    """One server started on a directory without configuration.yaml, shared by read-only checks."""
    base = tmp_path_factory.mktemp("fresh")
    config_dir = base / "config"
    server = start_server(config_dir, base)
    try:
        yield config_dir, server
    finally:
        server.stop()


def test_serve_creates_default_configuration(fresh_server: tuple[Path, Server]) -> None:
    config_dir, _ = fresh_server
    text = (config_dir / "configuration.yaml").read_text()
    assert "openpeerpower:" in text
    assert "http:" in text


async def test_serve_answers_root_with_the_page(fresh_server: tuple[Path, Server]) -> None:
    _, server = fresh_server
    status, content_type, body = await get(f"{server.url}/")
    assert status == 200
    assert content_type == "text/html"
    assert "<html" in body


async def test_serve_answers_api_without_token_with_401(fresh_server: tuple[Path, Server]) -> None:
    _, server = fresh_server
    status, _, _ = await get(f"{server.url}/api/")
    assert status == 401


def test_server_stops_cleanly_on_sigterm(config_dir: Path, serve: Callable[[Path], Server]) -> None:
    server = serve(config_dir)
    server.proc.terminate()
    assert server.proc.wait(10) == 0
    # The directory lock is released: the auth commands work again.
    assert opp_auth(config_dir, "auth", "list").returncode == 0
