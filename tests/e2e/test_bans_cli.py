"""`opp-auth bans` and `opp-auth lockouts` as real programs, with and without a running server."""

from __future__ import annotations

import asyncio
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

OPP_AUTH = shutil.which("opp-auth", path=str(Path(sys.executable).parent)) or shutil.which("opp-auth")
BANS = "203.0.113.1:\n  banned_at: '2021-03-04T05:06:07+00:00'\nnot-an-ip:\n203.0.113.2:\n  banned_at: '2022-01-01T00:00:00+00:00'\n"


def opp_auth(config_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run opp-auth -c config_dir ARGS."""
    assert OPP_AUTH is not None, "the opp-auth program is not installed"
    return subprocess.run(
        [OPP_AUTH, "-c", str(config_dir), *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30
    )


@pytest.fixture
def banned(config_dir: Path) -> Path:
    """A configuration directory whose hand-edited ip_bans.yaml bans two addresses and has one bad entry."""
    (config_dir / "ip_bans.yaml").write_text(BANS)
    return config_dir


@pytest.fixture
def server(banned: Path, tmp_path: Path) -> Iterator[str]:
    """`opp-auth serve` on the directory; yields its URL."""
    assert OPP_AUTH is not None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [OPP_AUTH, "-c", str(banned), "serve", "--host", "127.0.0.1", "--port", str(port)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_bans_list_prints_each_ban_and_the_total(banned: Path) -> None:
    result = opp_auth(banned, "bans", "list")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "203.0.113.1  banned at 2021-03-04T05:06:07+00:00\n"
        "203.0.113.2  banned at 2022-01-01T00:00:00+00:00\n"
        "\nTotal bans: 2\n"
    )
    assert "Failed to load IP ban not-an-ip" in result.stderr


def test_bans_list_without_a_file_shows_none(config_dir: Path) -> None:
    result = opp_auth(config_dir, "bans", "list")
    assert (result.returncode, result.stdout) == (0, "Total bans: 0\n")


def test_bans_remove_rewrites_the_file(banned: Path) -> None:
    result = opp_auth(banned, "bans", "remove", "203.0.113.1")
    assert (result.returncode, result.stdout) == (0, "Ban of 203.0.113.1 removed\n")
    assert set(yaml.safe_load((banned / "ip_bans.yaml").read_text())) == {"203.0.113.2"}


def test_bans_remove_of_an_address_not_banned_fails(banned: Path) -> None:
    result = opp_auth(banned, "bans", "remove", "198.51.100.1")
    assert (result.returncode, result.stdout) == (1, "198.51.100.1 is not banned\n")
    assert (banned / "ip_bans.yaml").read_text() == BANS


def test_bans_remove_of_a_non_address_is_an_error(banned: Path) -> None:
    result = opp_auth(banned, "bans", "remove", "example.com")
    assert result.returncode == 1
    assert result.stderr == "Error: example.com is not an IP address\n"


def test_lockouts_without_a_server_say_why_there_are_none(config_dir: Path) -> None:
    for command in ("list", "clear"):
        result = opp_auth(config_dir, "lockouts", command)
        assert result.returncode == 0
        assert result.stdout == (
            f"No server is running on {config_dir}, so nobody is locked out: login lockouts live in a running "
            "server's memory and end when it stops. Run this while the server runs to see them.\n"
        )


async def test_server_starts_and_serves_despite_a_bad_entry(server: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{server}/auth/providers") as resp:
        # Not onboarded yet: the answer of a server that is up and did not ban 127.0.0.1.
        assert (resp.status, (await resp.json())["code"]) == (400, "onboarding_required")


def test_bans_remove_while_the_server_runs_points_to_the_websocket_api(server: str, banned: Path) -> None:
    result = opp_auth(banned, "bans", "remove", "203.0.113.1")
    assert result.returncode == 1
    assert "A server is running" in result.stderr
    assert "config/auth/bans/remove" in result.stderr
    assert (banned / "ip_bans.yaml").read_text() == BANS


def test_bans_list_works_while_the_server_runs(server: str, banned: Path) -> None:
    result = opp_auth(banned, "bans", "list")
    assert result.returncode == 0
    assert result.stdout.endswith("Total bans: 2\n")


def test_lockouts_list_asks_the_running_server(server: str, banned: Path) -> None:
    """The server's in-memory lockouts, through its control socket (owner-only, in .storage)."""
    result = opp_auth(banned, "lockouts", "list")
    assert (result.returncode, result.stdout) == (0, "Total lockouts: 0\n"), result.stderr
    sock = banned / ".storage" / ".opp-auth.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600


async def test_lockouts_list_shows_a_locked_account(server: str, banned: Path) -> None:
    """Failed logins past the free ones lock the (address, account) pair; the CLI sees the lock while it lasts."""
    client_id = f"{server}/"
    async with aiohttp.ClientSession() as session:
        failures = 0
        while failures < 7:
            async with session.post(f"{server}/auth/login_flow", json={
                "client_id": client_id, "handler": ["openpeerpower", None], "redirect_uri": client_id,
            }) as resp:
                flow = await resp.json()
            async with session.post(f"{server}/auth/login_flow/{flow['flow_id']}", json={
                "client_id": client_id, "username": "Mallory", "password": "guess"}) as resp:
                if resp.status == 429:
                    await asyncio.sleep(float(resp.headers["Retry-After"]))
                    continue
                assert (await resp.json())["errors"] == {"base": "invalid_auth"}
                failures += 1
    result = await asyncio.to_thread(opp_auth, banned, "lockouts", "list")
    assert result.returncode == 0, result.stderr
    assert "address 127.0.0.1 user mallory (address_and_user): 7 failures, locked for" in result.stdout
    assert result.stdout.endswith("Total lockouts: 1\n")


def test_lockouts_clear_while_the_server_runs_points_to_the_websocket_api(server: str, banned: Path) -> None:
    result = opp_auth(banned, "lockouts", "clear")
    assert result.returncode == 1
    assert "config/auth/lockouts/clear" in result.stderr


def test_control_socket_replaces_a_stale_one_and_goes_away_at_stop(banned: Path, tmp_path: Path) -> None:
    """A file left where the socket goes (a crash) is replaced; a stopped server removes its socket."""
    sock = banned / ".storage" / ".opp-auth.sock"
    sock.parent.mkdir(exist_ok=True)
    sock.write_text("left by a crash")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert OPP_AUTH is not None
    proc = subprocess.Popen(
        [OPP_AUTH, "-c", str(banned), "serve", "--host", "127.0.0.1", "--port", str(port)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while not (sock.exists() and stat.S_ISSOCK(sock.stat().st_mode)):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert opp_auth(banned, "lockouts", "list").stdout == "Total lockouts: 0\n"
    finally:
        proc.terminate()
        proc.wait(10)
    assert not sock.exists()
