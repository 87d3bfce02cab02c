"""Real `opp-auth serve` processes on one PostgreSQL database and one configuration directory.

Log in on A, use the token on B; revoke on B, refused on A within a second; the database
stopped and started under load (no 500, no acknowledged token lost); the listener
connection killed (caught up on reconnect); the staleness window, then fail closed.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest

from opp_auth.testing import CLIENT_ID, LoginFlowDriver, PostgresServer, async_seed_documents

OPP_AUTH = shutil.which("opp-auth", path=str(Path(sys.executable).parent)) or shutil.which("opp-auth")
LOCAL = ["openpeerpower", None]
USERNAME = "paulus"
PASSWORD = "several-servers"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """One `opp-auth serve` process."""

    def __init__(self, config_dir: Path, name: str) -> None:
        """Nothing runs yet."""
        self.config_dir = config_dir
        self.log = config_dir.parent / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start and wait until it listens."""
        assert OPP_AUTH is not None, "the opp-auth program is not installed"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [OPP_AUTH, "-c", str(self.config_dir), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"opp-auth serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"opp-auth serve did not listen within 30 s:\n{self.log.read_text()}")
                await asyncio.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
async def cluster(
    tmp_path: Path, postgresql_server: PostgresServer
) -> AsyncIterator[tuple[list[Server], aiohttp.ClientSession, str]]:
    """Two servers on one directory and one fresh database, with one local login; and an HTTP session."""
    database = postgresql_server.create_database()
    url = postgresql_server.url(database)
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "configuration.yaml").write_text(
        "openpeerpower:\n"
        "  auth_mfa_modules: []\n"
        "  storage:\n"
        "    type: postgresql\n"
        f"    url: {url}\n"
        "    staleness_seconds: 2\n"
        "    connect_timeout: 1\n"
        "http:\n"
        "  ip_ban_enabled: false\n"
        "  login_throttle:\n"
        "    enabled: false\n",
        encoding="utf-8",
    )
    hashed = base64.b64encode(bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4))).decode()
    storage = {"type": "postgresql", "url": url}
    await async_seed_documents(
        config_dir,
        storage,
        {
            "onboarding": (4, {"done": ["user", "core_config", "analytics", "integration"]}),
            "auth_provider.openpeerpower": (1, {"users": [{"username": USERNAME, "password": hashed}]}),
        },
    )
    servers = [Server(config_dir, "a"), Server(config_dir, "b")]
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20))
    try:
        await asyncio.gather(*(s.start() for s in servers))
        yield servers, session, database
    finally:
        await session.close()
        for server in servers:
            server.stop()
        if not postgresql_server.running:
            postgresql_server.start()
        postgresql_server.drop_database(database)


async def login(session: aiohttp.ClientSession, server: Server) -> dict[str, Any]:
    """Log in on server: access_token, refresh_token."""
    return await LoginFlowDriver(session, server.url).tokens(LOCAL, [{"username": USERNAME, "password": PASSWORD}])


async def api_status(session: aiohttp.ClientSession, server: Server, access_token: str) -> int:
    """GET /api/ with the bearer token."""
    async with session.get(f"{server.url}/api/", headers={"Authorization": f"Bearer {access_token}"}) as resp:
        return resp.status


async def until(predicate: Any, timeout: float) -> float:
    """Seconds until the async predicate is true (fails after timeout)."""
    start = time.monotonic()
    while not await predicate():
        assert time.monotonic() - start < timeout, f"not within {timeout} s"
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def test_login_on_a_use_on_b_revoke_on_b_refused_on_a(
    cluster: tuple[list[Server], aiohttp.ClientSession, str],
) -> None:
    """The whole scale-out promise, over HTTP, between two processes."""
    (a, b), session, _ = cluster
    tokens = await login(session, a)
    access = tokens["access_token"]
    assert await api_status(session, a, access) == 200
    # B hears of the token through the feed (milliseconds); a client that races it gets 401 once.
    await until(lambda: _is(api_status(session, b, access), 200), timeout=1.0)
    # The refresh token works on B too, and the access token B mints works on A.
    async with session.post(
        f"{b.url}/auth/token",
        data={"grant_type": "refresh_token", "client_id": CLIENT_ID, "refresh_token": tokens["refresh_token"]},
    ) as resp:
        assert resp.status == 200
        from_b = (await resp.json())["access_token"]
    assert await api_status(session, a, from_b) == 200
    # Revoke on B: A refuses within a second.
    async with session.post(f"{b.url}/auth/revoke", data={"token": tokens["refresh_token"]}) as resp:
        assert resp.status == 200
    revoked = time.monotonic()
    delay = await until(lambda: _is(api_status(session, a, access), 401), timeout=1.0)
    assert delay < 1.0 and time.monotonic() - revoked < 1.0
    assert await api_status(session, a, from_b) == 401


async def _is(awaitable: Any, expected: Any) -> bool:
    """Whether the awaited value is expected."""
    return bool(await awaitable == expected)


async def test_database_stopped_and_started_under_load(
    cluster: tuple[list[Server], aiohttp.ClientSession, str], postgresql_server: PostgresServer
) -> None:
    """Logins and token checks on both servers while PostgreSQL stops and starts: never a 500, and every
    token a server acknowledged (200) works on both afterwards."""
    servers, session, _ = cluster
    acknowledged: list[str] = []
    statuses: dict[int, int] = {}
    stop = asyncio.Event()

    async def worker(index: int) -> None:
        server = servers[index % 2]
        while not stop.is_set():
            try:
                status, body = await LoginFlowDriver(session, server.url).start(LOCAL)
                statuses[status] = statuses.get(status, 0) + 1
                if status != 200:
                    await asyncio.sleep(0.05)
                    continue
                status, body = await LoginFlowDriver(session, server.url).step(
                    body["flow_id"], username=USERNAME, password=PASSWORD
                )
                statuses[status] = statuses.get(status, 0) + 1
                if status != 200 or body.get("type") != "create_entry":
                    await asyncio.sleep(0.05)
                    continue
                status, tokens = await LoginFlowDriver(session, server.url).token(
                    grant_type="authorization_code", client_id=CLIENT_ID, code=body["result"]
                )
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    acknowledged.append(tokens["access_token"])
                    statuses[await api_status(session, servers[(index + 1) % 2], tokens["access_token"])] = 0
            except (TimeoutError, aiohttp.ClientError):
                await asyncio.sleep(0.05)

    workers = [asyncio.ensure_future(worker(i)) for i in range(4)]
    await asyncio.sleep(1.5)
    await asyncio.to_thread(postgresql_server.stop)
    await asyncio.sleep(1.0)
    await asyncio.to_thread(postgresql_server.start)
    await asyncio.sleep(2.5)
    stop.set()
    await asyncio.gather(*workers)
    assert 500 not in statuses, statuses
    assert acknowledged, statuses
    for access in acknowledged:
        for server in servers:
            await until(lambda s=server, t=access: _is(api_status(session, s, t), 200), timeout=5.0)


async def test_listener_killed_catches_up(
    cluster: tuple[list[Server], aiohttp.ClientSession, str], postgresql_server: PostgresServer
) -> None:
    """Every connection of the database terminated while B revokes: A catches up and refuses."""
    (a, b), session, database = cluster
    tokens = await login(session, a)
    access = tokens["access_token"]
    await until(lambda: _is(api_status(session, b, access), 200), timeout=1.0)
    postgresql_server.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        database,
    )
    async with session.post(f"{b.url}/auth/revoke", data={"token": tokens["refresh_token"]}) as resp:
        assert resp.status == 200
    await until(lambda: _is(api_status(session, b, access), 401), timeout=3.0)
    await until(lambda: _is(api_status(session, a, access), 401), timeout=3.0)


async def test_staleness_window_then_fail_closed(
    cluster: tuple[list[Server], aiohttp.ClientSession, str], postgresql_server: PostgresServer
) -> None:
    """Database stopped: tokens still work for about staleness_seconds (2), then 401; logins 503; back: 200."""
    (a, _b), session, _ = cluster
    tokens = await login(session, a)
    access = tokens["access_token"]
    await asyncio.to_thread(postgresql_server.stop)
    stopped = time.monotonic()
    try:
        assert await api_status(session, a, access) == 200  # within the window
        await until(lambda: _is(api_status(session, a, access), 401), timeout=8.0)
        assert time.monotonic() - stopped >= 1.0
        status, body = await LoginFlowDriver(session, a.url).start(LOCAL)
        assert status == 200
        status, body = await LoginFlowDriver(session, a.url).step(body["flow_id"], username=USERNAME, password=PASSWORD)
        if status == 200 and body.get("type") == "create_entry":
            status, body = await LoginFlowDriver(session, a.url).token(
                grant_type="authorization_code", client_id=CLIENT_ID, code=body["result"]
            )
        assert status == 503, (status, body)
        assert "cannot save" in str(body)
    finally:
        await asyncio.to_thread(postgresql_server.start)
    await until(lambda: _is(api_status(session, a, access), 200), timeout=10.0)
    assert (await login(session, a))["access_token"]


def opp_auth_command(config_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """opp-auth -c config_dir ARGS as a process of its own."""
    assert OPP_AUTH is not None, "the opp-auth program is not installed"
    return subprocess.run(
        [OPP_AUTH, "-c", str(config_dir), *args], capture_output=True, text=True, timeout=60, check=False
    )


async def test_both_servers_audit_into_the_database_and_no_file(
    cluster: tuple[list[Server], aiohttp.ClientSession, str],
) -> None:
    """Two servers on one directory: both audit, into one chain in the database; neither writes audit files,
    so their logins never interleave two chains in one file. verify passes while they write and after."""
    servers, session, _ = cluster
    config_dir = servers[0].config_dir

    async def wrong(server: Server) -> None:
        status, body = await LoginFlowDriver(session, server.url).start(LOCAL)
        await LoginFlowDriver(session, server.url).step(body["flow_id"], username=USERNAME, password="wrong-one")

    # The user is created once (a race of two first logins is refused): B knows it once A's token works there.
    access = (await login(session, servers[0]))["access_token"]
    await until(lambda: _is(api_status(session, servers[1], access), 200), timeout=3.0)
    await asyncio.gather(*(login(session, servers[i % 2]) for i in range(5)), *(wrong(s) for s in servers))
    during = await asyncio.to_thread(opp_auth_command, config_dir, "audit", "verify")
    assert during.returncode == 0 and "The chain is intact." in during.stdout, during.stdout + during.stderr
    for server in servers:
        server.stop()
    assert not (config_dir / "audit").exists()
    for server in servers:
        assert "The audit log is off" not in server.log.read_text()
    after = opp_auth_command(config_dir, "audit", "verify")
    assert after.returncode == 0 and "The chain is intact." in after.stdout, after.stdout + after.stderr
    shown = opp_auth_command(config_dir, "audit", "show", "--json")
    import json

    records = [json.loads(line) for line in shown.stdout.splitlines()]
    started = {r["details"]["pid"] for r in records if r["type"] == "audit_started"}
    assert started == {s.proc.pid for s in servers if s.proc is not None}
    assert sum(r["type"] == "login_succeeded" for r in records) == 6
    assert sum(r["type"] == "audit_stopped" for r in records) == 2
    failed = opp_auth_command(config_dir, "audit", "show", "--failed", "--user", USERNAME)
    assert failed.stdout.count("login_failed  invalid_auth") == 2, failed.stdout
    assert "wrong-one" not in shown.stdout and PASSWORD not in shown.stdout
