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
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pyotp
import pytest
import yaml

from opp_auth.plugins import make_plugin_manager
from opp_auth.testing import CLIENT_ID, LoginFlowDriver, PostgresServer

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


HTTP_QUIET = "http:\n  ip_ban_enabled: false\n  login_throttle:\n    enabled: false\n"


async def start_cluster(
    tmp_path: Path,
    postgresql_server: PostgresServer,
    *,
    http: str = HTTP_QUIET,
    mfa: str = "  auth_mfa_modules: []\n",
    auth: dict[str, Any] | None = None,
    documents: dict[str, tuple[int, Any]] | None = None,
) -> tuple[list[Server], str, Path]:
    """Two started servers on one directory and one fresh database, with one local login."""
    database = postgresql_server.create_database()
    url = postgresql_server.url(database)
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "configuration.yaml").write_text(
        "openpeerpower:\n"
        f"{mfa}"
        "  storage:\n"
        "    type: postgresql\n"
        f"    url: {url}\n"
        "    staleness_seconds: 2\n"
        "    connect_timeout: 1\n"
        f"{http}",
        encoding="utf-8",
    )
    hashed = base64.b64encode(bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4))).decode()
    cls = make_plugin_manager().store_classes["postgresql"]
    backend = cls(cls.CONFIG_SCHEMA({"type": "postgresql", "url": url}), str(config_dir))
    await backend.async_open()
    try:
        await backend.async_import(
            {
                "auth": auth,
                "documents": {
                    "onboarding": (4, {"done": ["user", "core_config", "analytics", "integration"]}),
                    "auth_provider.openpeerpower": (1, {"users": [{"username": USERNAME, "password": hashed}]}),
                    **(documents or {}),
                },
            }
        )
    finally:
        await backend.async_close()
    servers = [Server(config_dir, "a"), Server(config_dir, "b")]
    await asyncio.gather(*(s.start() for s in servers))
    return servers, database, config_dir


@pytest.fixture
async def cluster_factory(
    tmp_path: Path, postgresql_server: PostgresServer
) -> AsyncIterator[Callable[..., Awaitable[tuple[list[Server], aiohttp.ClientSession, str]]]]:
    """start_cluster as a fixture: stopped and dropped afterwards; with an HTTP session."""
    made: list[tuple[list[Server], str]] = []
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20))

    async def factory(**kwargs: Any) -> tuple[list[Server], aiohttp.ClientSession, str]:
        servers, database, _config_dir = await start_cluster(tmp_path, postgresql_server, **kwargs)
        made.append((servers, database))
        return servers, session, database

    try:
        yield factory
    finally:
        await session.close()
        for servers, database in made:
            for server in servers:
                server.stop()
            if not postgresql_server.running:
                postgresql_server.start()
            postgresql_server.drop_database(database)


@pytest.fixture
async def cluster(
    cluster_factory: Callable[..., Awaitable[tuple[list[Server], aiohttp.ClientSession, str]]],
) -> tuple[list[Server], aiohttp.ClientSession, str]:
    """Two servers on one directory and one fresh database, with one local login; and an HTTP session."""
    return await cluster_factory()


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
        # Flows and codes live in the database too: the login stops at its first write.
        status, body = await LoginFlowDriver(session, a.url).start(LOCAL)
        if status == 200:
            status, body = await LoginFlowDriver(session, a.url).step(
                body["flow_id"], username=USERNAME, password=PASSWORD
            )
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


# ---- ephemeral state shared by the servers: flows, codes, throttle, bans --------------------------

ATTACKER = "203.0.113.7"
PROXIED = "  use_x_forwarded_for: true\n  trusted_proxies:\n    - 127.0.0.1\n"
TOTP_SECRET = pyotp.random_base32()
USER_ID = "0" * 31 + "1"


def seeded_user() -> dict[str, Any]:
    """The auth store of one active user with local credentials for USERNAME."""
    return {
        "users": [
            {
                "id": USER_ID,
                "group_ids": ["system-admin"],
                "is_owner": True,
                "is_active": True,
                "name": "Paulus",
                "system_generated": False,
                "local_only": False,
            }
        ],
        "groups": [],
        "credentials": [
            {
                "id": "c" * 32,
                "user_id": USER_ID,
                "auth_provider_type": "openpeerpower",
                "auth_provider_id": None,
                "created_at": "2026-01-01T00:00:00+00:00",
                "data": {"username": USERNAME},
            }
        ],
        "refresh_tokens": [],
    }


def from_address(address: str) -> aiohttp.ClientSession:
    """A session whose requests come, as the trusted proxy says, from address."""
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20), headers={"X-Forwarded-For": address})


async def test_flow_started_on_a_finished_on_b_with_an_mfa_step(
    cluster_factory: Callable[..., Awaitable[tuple[list[Server], aiohttp.ClientSession, str]]],
) -> None:
    """Each step on another server: the password on B, a wrong TOTP code on A, the right one on B, the code on A."""
    (a, b), session, _ = await cluster_factory(
        mfa="  auth_mfa_modules:\n    - type: totp\n",
        auth=seeded_user(),
        documents={"auth_module.totp": (1, {"users": {USER_ID: TOTP_SECRET}})},
    )
    on_a, on_b = LoginFlowDriver(session, a.url), LoginFlowDriver(session, b.url)
    status, form = await on_a.start(LOCAL)
    assert (status, form["step_id"]) == (200, "init"), form
    flow_id = form["flow_id"]
    status, form = await on_b.step(flow_id, username=USERNAME, password=PASSWORD)
    assert (status, form["type"], form["step_id"]) == (200, "form", "mfa"), form
    assert form["flow_id"] == flow_id
    status, form = await on_a.step(flow_id, code="000000" if pyotp.TOTP(TOTP_SECRET).now() != "000000" else "111111")
    assert (status, form["step_id"], form["errors"]) == (200, "mfa", {"base": "invalid_code"}), form
    # The form's schema was rebuilt on the other server: a missing field is refused there too.
    status, body = await on_b.step(flow_id)
    assert status == 400, body
    status, done = await on_b.step(flow_id, code=pyotp.TOTP(TOTP_SECRET).now())
    assert (status, done["type"]) == (200, "create_entry"), done
    # The finished flow is gone on both servers.
    for driver in (on_a, on_b):
        status, body = await driver.step(flow_id, code=pyotp.TOTP(TOTP_SECRET).now())
        assert status == 404, body
    status, tokens = await on_a.token(grant_type="authorization_code", client_id=CLIENT_ID, code=done["result"])
    assert status == 200, tokens
    assert await api_status(session, b, tokens["access_token"]) in (200, 401)  # B may still be applying the token
    await until(lambda: _is(api_status(session, b, tokens["access_token"]), 200), timeout=1.0)


async def test_wrong_mfa_codes_spread_over_a_and_b_end_the_flow_as_on_one_server(
    cluster_factory: Callable[..., Awaitable[tuple[list[Server], aiohttp.ClientSession, str]]],
) -> None:
    """TOTP allows 5 wrong codes per flow: counted in the flow's shared state, whichever server checks."""
    (a, b), session, _ = await cluster_factory(
        mfa="  auth_mfa_modules:\n    - type: totp\n",
        auth=seeded_user(),
        documents={"auth_module.totp": (1, {"users": {USER_ID: TOTP_SECRET}})},
    )
    drivers = [LoginFlowDriver(session, a.url), LoginFlowDriver(session, b.url)]
    status, form = await drivers[0].start(LOCAL)
    flow_id = form["flow_id"]
    status, form = await drivers[1].step(flow_id, username=USERNAME, password=PASSWORD)
    assert form["step_id"] == "mfa", form
    wrong = "000000" if pyotp.TOTP(TOTP_SECRET).now() != "000000" else "111111"
    results = [await drivers[i % 2].step(flow_id, code=wrong) for i in range(5)]
    assert [body.get("errors") for _, body in results[:4]] == [{"base": "invalid_code"}] * 4, results
    assert results[4][1] == {**results[4][1], "type": "abort", "reason": "too_many_retry"}, results
    status, body = await drivers[1].step(flow_id, code=pyotp.TOTP(TOTP_SECRET).now())
    assert status == 404, body


async def test_steps_of_one_flow_sent_to_a_and_b_at_once_run_one_after_the_other(
    cluster: tuple[list[Server], aiohttp.ClientSession, str],
) -> None:
    """The same finishing step on both servers at the same instant: one code, the other finds no flow."""
    (a, b), session, _ = cluster
    for _ in range(5):
        status, form = await LoginFlowDriver(session, a.url).start(LOCAL)
        flow_id = form["flow_id"]
        results = await asyncio.gather(
            *(
                LoginFlowDriver(session, server.url).step(flow_id, username=USERNAME, password=PASSWORD)
                for server in (a, b)
            )
        )
        kinds = sorted((status, body.get("type")) for status, body in results)
        assert kinds == [(200, "create_entry"), (404, None)], results


async def test_a_code_raced_on_a_and_b_is_exchanged_once(
    cluster: tuple[list[Server], aiohttp.ClientSession, str],
) -> None:
    """The same code sent to both servers at the same instant: exactly one 200, every time."""
    (a, b), session, _ = cluster
    for _ in range(10):
        code = await LoginFlowDriver(session, a.url).code(LOCAL, [{"username": USERNAME, "password": PASSWORD}])
        results = await asyncio.gather(
            *(
                LoginFlowDriver(session, server.url).token(
                    grant_type="authorization_code", client_id=CLIENT_ID, code=code
                )
                for server in (a, b)
            )
        )
        assert sorted(status for status, _ in results) == [200, 400], results
    # A code is bound to its client: another client id neither gets it nor uses it up.
    code = await LoginFlowDriver(session, a.url).code(LOCAL, [{"username": USERNAME, "password": PASSWORD}])
    status, _ = await LoginFlowDriver(session, b.url).token(
        grant_type="authorization_code", client_id="http://elsewhere.example/", code=code
    )
    assert status == 400
    status, _ = await LoginFlowDriver(session, b.url).token(
        grant_type="authorization_code", client_id=CLIENT_ID, code=code
    )
    assert status == 200


async def test_wrong_passwords_spread_over_a_and_b_are_throttled_as_on_one_server(
    cluster_factory: Callable[..., Awaitable[tuple[list[Server], aiohttp.ClientSession, str]]],
) -> None:
    """3 free failures per address and account: the 4th attempt is refused whichever server gets it."""
    (a, b), _session, _ = await cluster_factory(
        http="http:\n" + PROXIED + "  ip_ban_enabled: false\n  login_throttle:\n    attempts_per_address_and_user: 3\n"
    )
    async with from_address(ATTACKER) as attacker:
        drivers = [LoginFlowDriver(attacker, a.url), LoginFlowDriver(attacker, b.url)]
        for i in range(3):
            driver = drivers[i % 2]
            status, form = await driver.start(LOCAL)
            status, body = await driver.step(form["flow_id"], username=USERNAME, password="wrong")
            assert (status, body.get("errors")) == (200, {"base": "invalid_auth"}), (i, body)
        for driver in drivers:  # both refuse, without checking the password
            status, form = await driver.start(LOCAL)
            status, body = await driver.step(form["flow_id"], username=USERNAME, password=PASSWORD)
            assert status == 429, body


async def test_simultaneous_wrong_passwords_on_a_and_b_are_checked_as_on_one_server(
    cluster_factory: Callable[..., Awaitable[tuple[list[Server], aiohttp.ClientSession, str]]],
) -> None:
    """Twice the free failures at one account, half to A and half to B at the same instant: as many checked as free.

    Each step holds the account's lock on every server, and counts the failures committed before
    it once it holds it: without that, a step on A and one on B each passed the throttle before
    the other's failure was counted.
    """
    free = 5
    (a, b), _session, _ = await cluster_factory(
        http="http:\n"
        + PROXIED
        + f"  ip_ban_enabled: false\n  login_throttle:\n    attempts_per_address_and_user: {free}\n"
        + "    max_lock_seconds: 60\n"
    )
    async with from_address(ATTACKER) as attacker:
        drivers = [LoginFlowDriver(attacker, server.url) for server in (a, b) for _ in range(free)]
        flows = []
        for driver in drivers:
            status, form = await driver.start(LOCAL)
            assert status == 200, form
            flows.append(form["flow_id"])
        results = await asyncio.gather(
            *(driver.step(flow, username=USERNAME, password="wrong") for driver, flow in zip(drivers, flows))
        )
    checked = [body for status, body in results if status == 200 and body.get("errors") == {"base": "invalid_auth"}]
    throttled = [body for status, body in results if status == 429]
    assert (len(checked), len(throttled)) == (free, free), results


async def test_a_ban_made_on_a_is_refused_on_b(
    cluster_factory: Callable[..., Awaitable[tuple[list[Server], aiohttp.ClientSession, str]]],
) -> None:
    """Failures counted on both servers add up to the threshold; the ban then holds on both."""
    (a, b), session, _ = await cluster_factory(
        http="http:\n"
        + PROXIED
        + "  ip_ban_enabled: true\n  login_attempts_threshold: 3\n  login_throttle:\n    enabled: false\n"
    )
    async with from_address(ATTACKER) as attacker:
        drivers = [LoginFlowDriver(attacker, a.url), LoginFlowDriver(attacker, b.url)]
        for i in (1, 0, 0):  # B, A, A: the third failure, on A, bans
            status, form = await drivers[i].start(LOCAL)
            assert status == 200, form
            status, body = await drivers[i].step(form["flow_id"], username=USERNAME, password="wrong")
            assert status == 200, body
        # A banned the address itself, before answering the third failure: refused at once.
        status, body = await drivers[0].start(LOCAL)
        assert status == 403, body

        async def refused_on_b() -> bool:
            status, _body = await drivers[1].start(LOCAL)
            return bool(status == 403)

        # B applies the ban from the change feed: within its delay (the ban was published before A answered).
        await until(refused_on_b, timeout=1.0)
    # Others are not banned.
    assert (await login(session, b))["access_token"]


async def test_bans_outlive_the_change_retention_and_a_lift_stays_lifted(
    cluster_factory: Callable[..., Awaitable[tuple[list[Server], aiohttp.ClientSession, str]]],
    postgresql_server: PostgresServer,
) -> None:
    """X banned on A, Y banned on B then lifted; every change pruned; C (a directory of its own) refuses X only.

    C's ip_bans.yaml still lists Y as it was before the lift (a file the lift never reached):
    the lift, replayed from the database, wins over it.
    """
    lifted = "198.51.100.9"
    (a, b), _session, database = await cluster_factory(
        http="http:\n"
        + PROXIED
        + "  ip_ban_enabled: true\n  login_attempts_threshold: 1\n  login_throttle:\n    enabled: false\n"
    )
    for address, server in ((ATTACKER, a), (lifted, b)):
        async with from_address(address) as client:
            driver = LoginFlowDriver(client, server.url)
            status, form = await driver.start(LOCAL)
            assert status == 200, form
            status, body = await driver.step(form["flow_id"], username=USERNAME, password="wrong")
            assert status == 200, body
            status, body = await driver.start(LOCAL)
            assert status == 403, body
    file_before_lift = (a.config_dir / "ip_bans.yaml").read_text(encoding="utf-8")
    assert lifted in file_before_lift and ATTACKER in file_before_lift
    removed = await asyncio.to_thread(opp_auth_command, a.config_dir, "bans", "remove", lifted)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    async with from_address(lifted) as client:
        for server in (a, b):  # the running servers apply the lift

            async def allowed(client: aiohttp.ClientSession = client, server: Server = server) -> bool:
                status, _ = await LoginFlowDriver(client, server.url).start(LOCAL)
                return status == 200

            await until(allowed, timeout=2.0)
    # The change feed's retention passes: the pruner deletes every change older than it.
    url = postgresql_server.url(database)
    cls = make_plugin_manager().store_classes["postgresql"]
    backend = cls(cls.CONFIG_SCHEMA({"type": "postgresql", "url": url}), str(a.config_dir))
    await backend.async_open()
    try:
        assert await backend.async_prune(older_than_hours=0) > 0
    finally:
        await backend.async_close()
    # C runs elsewhere: its own directory, whose ip_bans.yaml has Y as it was before the lift.
    elsewhere = a.config_dir.parent / "elsewhere"
    shutil.copytree(a.config_dir, elsewhere, ignore=shutil.ignore_patterns("ip_bans.yaml", "*.log"))
    entry = yaml.safe_load(file_before_lift)[lifted]
    assert "banned_at" in entry, file_before_lift
    (elsewhere / "ip_bans.yaml").write_text(yaml.safe_dump({lifted: entry}), encoding="utf-8")
    c = Server(elsewhere, "c")
    await c.start()
    try:
        async with from_address(ATTACKER) as attacker, from_address(lifted) as client:
            status, body = await LoginFlowDriver(attacker, c.url).start(LOCAL)
            assert status == 403, body
            status, body = await LoginFlowDriver(client, c.url).start(LOCAL)
            assert status == 200, body
    finally:
        c.stop()


async def test_lockouts_list_and_clear_cover_every_server(
    cluster_factory: Callable[..., Awaitable[tuple[list[Server], aiohttp.ClientSession, str]]],
) -> None:
    """`opp-auth lockouts list` shows what failures on A and B locked; `clear` unlocks it on both."""
    (a, b), _session, _ = await cluster_factory(
        http="http:\n" + PROXIED + "  ip_ban_enabled: false\n  login_throttle:\n    attempts_per_address_and_user: 1\n"
    )

    async def fail(driver: LoginFlowDriver, times: int) -> None:
        """times wrong passwords, each once the lock of the previous one is over (1, 2, 4 s...)."""
        status, form = await driver.start(LOCAL)
        assert status == 200, form
        for _ in range(times):
            while True:
                status, body = await driver.step(form["flow_id"], username=USERNAME, password="wrong")
                if status == 200:
                    assert body["errors"] == {"base": "invalid_auth"}, body
                    break
                assert status == 429, body
                await asyncio.sleep(0.2)

    async with from_address(ATTACKER) as attacker, from_address("198.51.100.4") as other:
        # Five failures lock a pair for 16 s: long enough to list it (the command starts in seconds).
        await asyncio.gather(fail(LoginFlowDriver(attacker, a.url), 5), fail(LoginFlowDriver(other, b.url), 5))
        listed = await asyncio.to_thread(opp_auth_command, a.config_dir, "lockouts", "list")
        assert listed.returncode == 0, listed.stderr
        assert f"address {ATTACKER} user {USERNAME} (address_and_user)" in listed.stdout, listed.stdout
        assert f"address 198.51.100.4 user {USERNAME} (address_and_user)" in listed.stdout, listed.stdout
        cleared = await asyncio.to_thread(opp_auth_command, a.config_dir, "lockouts", "clear")
        assert cleared.returncode == 0, cleared.stderr
        listed = await asyncio.to_thread(opp_auth_command, a.config_dir, "lockouts", "list")
        assert "Total lockouts: 0" in listed.stdout, listed.stdout
        for session, server in ((attacker, b), (other, a)):

            async def logs_in(session: aiohttp.ClientSession = session, server: Server = server) -> bool:
                driver = LoginFlowDriver(session, server.url)
                status, form = await driver.start(LOCAL)
                status, body = await driver.step(form["flow_id"], username=USERNAME, password=PASSWORD)
                return status == 200 and body.get("type") == "create_entry"

            await until(logs_in, timeout=2.0)


# ---- every first-party login flow is shared: trusted networks, trusted header, legacy password, notify ------

HOME = "192.168.0.5"
NOTIFY_CODES = "notify:\n  - name: codes\n    platform: file\n    filename: codes.txt\n"


def with_credentials(provider: str, data: dict[str, Any]) -> dict[str, Any]:
    """seeded_user() with credentials of provider for the same user too."""
    auth = seeded_user()
    auth["credentials"].append(
        {
            "id": "d" * 32,
            "user_id": USER_ID,
            "auth_provider_type": provider,
            "auth_provider_id": None,
            "created_at": "2026-01-01T00:00:00+00:00",
            "data": data,
        }
    )
    return auth


async def test_trusted_networks_flow_started_on_a_finished_on_b(
    cluster_factory: Callable[..., Awaitable[tuple[list[Server], aiohttp.ClientSession, str]]],
) -> None:
    """The user picker A showed is answered on B (from the same address only); A exchanges the code."""
    (a, b), _session, _ = await cluster_factory(
        mfa="  auth_providers:\n    - type: trusted_networks\n      trusted_networks: [192.168.0.0/24]\n"
        "  auth_mfa_modules: []\n",
        http="http:\n" + PROXIED + "  ip_ban_enabled: false\n",
        auth=seeded_user(),
    )
    handler = ["trusted_networks", None]
    async with from_address(HOME) as home, from_address("192.168.0.6") as neighbour:
        status, form = await LoginFlowDriver(home, a.url).start(handler)
        assert (status, form["step_id"]) == (200, "init"), form
        # Another trusted address cannot take the flow over on B.
        status, body = await LoginFlowDriver(neighbour, b.url).step(form["flow_id"], user=USER_ID)
        assert status == 400, body
        status, done = await LoginFlowDriver(home, b.url).step(form["flow_id"], user=USER_ID)
        assert (status, done["type"]) == (200, "create_entry"), done
        status, tokens = await LoginFlowDriver(home, a.url).token(
            grant_type="authorization_code", client_id=CLIENT_ID, code=done["result"]
        )
        assert status == 200, tokens


async def test_trusted_header_flow_mfa_step_on_b(
    cluster_factory: Callable[..., Awaitable[tuple[list[Server], aiohttp.ClientSession, str]]],
) -> None:
    """The proxy's word reaches A, which asks for the TOTP code; B checks it; A exchanges the code."""
    (a, b), _session, _ = await cluster_factory(
        mfa="  auth_providers:\n    - type: trusted_header\n  auth_mfa_modules:\n    - type: totp\n",
        http="http:\n" + PROXIED + "  ip_ban_enabled: false\n",
        auth=with_credentials("trusted_header", {"username": USERNAME}),
        documents={"auth_module.totp": (1, {"users": {USER_ID: TOTP_SECRET}})},
    )
    handler = ["trusted_header", None]
    async with (
        aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=20), headers={"X-Forwarded-For": HOME, "Remote-User": USERNAME}
        ) as proxied,
        from_address(HOME) as home,
    ):
        status, form = await LoginFlowDriver(proxied, a.url).start(handler)
        assert (status, form["type"], form["step_id"]) == (200, "form", "mfa"), form
        code = pyotp.TOTP(TOTP_SECRET).now()
        status, done = await LoginFlowDriver(home, b.url).step(form["flow_id"], code=code)
        assert (status, done["type"]) == (200, "create_entry"), done
        status, tokens = await LoginFlowDriver(home, a.url).token(
            grant_type="authorization_code", client_id=CLIENT_ID, code=done["result"]
        )
        assert status == 200, tokens


async def test_legacy_api_password_flow_started_on_a_finished_on_b(
    cluster_factory: Callable[..., Awaitable[tuple[list[Server], aiohttp.ClientSession, str]]],
) -> None:
    """The password form A showed: a wrong password on B, the right one on B; A exchanges the code."""
    (a, b), session, _ = await cluster_factory(
        mfa="  auth_providers:\n    - type: legacy_api_password\n      api_password: several-servers-api\n"
        "  auth_mfa_modules: []\n",
    )
    handler = ["legacy_api_password", None]
    on_a, on_b = LoginFlowDriver(session, a.url), LoginFlowDriver(session, b.url)
    status, form = await on_a.start(handler)
    assert (status, form["step_id"]) == (200, "init"), form
    status, body = await on_b.step(form["flow_id"], password="wrong")
    assert (status, body["errors"]) == (200, {"base": "invalid_auth"}), body
    status, done = await on_b.step(form["flow_id"], password="several-servers-api")
    assert (status, done["type"]) == (200, "create_entry"), done
    status, tokens = await on_a.token(grant_type="authorization_code", client_id=CLIENT_ID, code=done["result"])
    assert status == 200, tokens


async def test_notify_code_sent_by_a_entered_on_b_used_once_expires(
    cluster_factory: Callable[..., Awaitable[tuple[list[Server], aiohttp.ClientSession, str]]],
    postgresql_server: PostgresServer,
) -> None:
    """The code A sent is accepted on B, then refused on A; an expired code is refused on B."""
    (a, b), session, database = await cluster_factory(
        mfa="  auth_mfa_modules:\n    - type: notify\n",
        http=HTTP_QUIET + NOTIFY_CODES,
        auth=seeded_user(),
        documents={"auth_module.notify": (1, {"users": {USER_ID: {"notify_service": "codes", "target": None}}})},
    )
    import re

    import psycopg

    codes = a.config_dir / "codes.txt"

    def last_code() -> str:
        found = re.findall(r"\b(\d{6})\b", codes.read_text())
        assert found, "no code was sent"
        return str(found[-1])

    on_a, on_b = LoginFlowDriver(session, a.url), LoginFlowDriver(session, b.url)
    # Flow X reaches its code step on A; flow Y too, and A's code for Y replaces X's.
    flows = []
    for _ in range(2):
        status, form = await on_a.start(LOCAL)
        status, form = await on_a.step(form["flow_id"], username=USERNAME, password=PASSWORD)
        assert (status, form["step_id"]) == (200, "mfa"), form
        flows.append(form["flow_id"])
    code = last_code()
    status, done = await on_b.step(flows[1], code=code)
    assert (status, done["type"]) == (200, "create_entry"), done
    status, tokens = await on_a.token(grant_type="authorization_code", client_id=CLIENT_ID, code=done["result"])
    assert status == 200, tokens
    # Used once: A refuses it for the other flow (and has nothing to resend: no code is pending).
    status, body = await on_a.step(flows[0], code=code)
    assert (status, body.get("errors")) == (200, {"base": "invalid_code"}), body
    # A fresh code sent by A, expired (by the database's clock): refused on B.
    status, form = await on_a.start(LOCAL)
    status, form = await on_a.step(form["flow_id"], username=USERNAME, password=PASSWORD)
    assert form["step_id"] == "mfa", form
    with psycopg.connect(postgresql_server.url(database), autocommit=True) as conn:
        conn.execute("UPDATE opp_auth_values SET expires_at = clock_timestamp() - interval '1 second'")
    status, body = await on_b.step(form["flow_id"], code=last_code())
    assert (status, body.get("errors")) == (200, {"base": "invalid_code"}), body


WEBAUTHN = "  auth_mfa_modules:\n    - type: webauthn\n      rp_id: opp.example.com\n"


def seeded_passkey() -> tuple[Any, dict[str, Any]]:
    """A software authenticator (not counting, as synced passkeys) and the webauthn document enrolling it for USER_ID."""
    import os

    import cbor2

    from tests.mfa_modules.webauthn.conftest import SoftAuthenticator, b64url

    authenticator = SoftAuthenticator(counting=False)
    handle = os.urandom(32)
    authenticator.create({"rp": {"id": "opp.example.com"}, "user": {"id": b64url(handle)}, "challenge": "AAAA"})
    credential = authenticator.credentials[-1]
    numbers = credential.private_key.public_key().public_numbers()
    cose = cbor2.dumps({1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")})
    passkey = {
        "id": b64url(credential.credential_id),
        "public_key": b64url(cose),
        "sign_count": 0,
        "name": "Phone",
        "created_at": "2026-01-01T00:00:00+00:00",
        "last_used_at": None,
        "aaguid": "",
        "transports": ["internal"],
        "backed_up": True,
        "discoverable": True,
    }
    return authenticator, {"users": {USER_ID: {"handle": b64url(handle), "passkeys": [passkey]}}}


async def test_passkey_login_and_webauthn_mfa_answered_on_the_other_server_once(
    cluster_factory: Callable[..., Awaitable[tuple[list[Server], aiohttp.ClientSession, str]]],
) -> None:
    """The passkey form A showed is answered on B, A exchanges the code; replayed on A it is refused. The
    webauthn MFA step after a password on A is answered on B. One assertion sent to A and B at once: one login."""
    authenticator, document = seeded_passkey()
    (a, b), session, _ = await cluster_factory(
        mfa=WEBAUTHN, auth=seeded_user(), documents={"auth_module.webauthn": (1, document)}
    )
    on_a, on_b = LoginFlowDriver(session, a.url), LoginFlowDriver(session, b.url)
    passkey = ["webauthn", None]

    def options(form: dict[str, Any]) -> dict[str, Any]:
        return dict(form["description_placeholders"]["challenge"]["webauthn"])

    status, form = await on_a.start(passkey)
    assert (status, form["step_id"]) == (200, "init"), form
    assertion = authenticator.get(options(form))
    status, done = await on_b.step(form["flow_id"], credential=assertion)
    assert (status, done.get("type")) == (200, "create_entry"), done
    status, tokens = await on_a.token(grant_type="authorization_code", client_id=CLIENT_ID, code=done["result"])
    assert status == 200, tokens
    status, body = await on_a.step(form["flow_id"], credential=assertion)
    assert status == 404, body
    status, other = await on_a.start(passkey)
    status, body = await on_a.step(other["flow_id"], credential=assertion)
    assert (status, body.get("errors")) == (200, {"base": "invalid_auth"}), body
    # The MFA step of a password login.
    status, form = await on_a.start(LOCAL)
    status, form = await on_a.step(form["flow_id"], username=USERNAME, password=PASSWORD)
    assert (status, form["step_id"]) == (200, "mfa"), form
    status, done = await on_b.step(form["flow_id"], credential=authenticator.get(options(form)))
    assert (status, done.get("type")) == (200, "create_entry"), done
    status, tokens = await on_a.token(grant_type="authorization_code", client_id=CLIENT_ID, code=done["result"])
    assert status == 200, tokens
    # One assertion raced on A and B.
    status, form = await on_a.start(passkey)
    assertion = authenticator.get(options(form))
    raced = await asyncio.gather(
        on_a.step(form["flow_id"], credential=assertion), on_b.step(form["flow_id"], credential=assertion)
    )
    finished = [body for status, body in raced if status == 200 and body.get("type") == "create_entry"]
    assert len(finished) == 1, raced
