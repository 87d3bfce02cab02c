"""The audit log of a real `opp-auth serve`: logins, failures, tokens and user changes over HTTP, the websocket and the CLI.

One run drives every way in, stops the server and reads what it wrote: each
event is there once, with its origin; no secret used in the run is anywhere in
the files; `audit verify` passes and `audit show` filters and escapes.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
import pytest

from opp_auth.audit_files import log_files
from opp_auth.testing import CLIENT_ID, LoginFlowDriver, find_secrets

OPP_AUTH = shutil.which("opp-auth", path=str(Path(sys.executable).parent)) or shutil.which("opp-auth")

OWNER_PASSWORD = "owner-pass-123"
BOB_PASSWORD = "bob-pass-4567"
BOB_NEW_PASSWORD = "bob-new-pass-890"
BOB_CLI_PASSWORD = "bob-cli-pass-246"
HANDLER = ["openpeerpower", None]
AGENT = "AuditTest/1.0 (e2e)"
HOSTILE = "evil\n2026-01-01T00:00:00Z  login_succeeded  user=owner\x1b[31m\u202eknab"
CONFIG = """\
openpeerpower:
  auth_providers:
    - type: openpeerpower
  auth_mfa_modules:
    - type: totp
http:
  login_attempts_threshold: 3
  login_throttle:
    attempts_per_address_and_user: 1
"""


def opp_auth(config_dir: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run opp-auth -c config_dir ARGS (stdin piped, so nothing prompts)."""
    assert OPP_AUTH is not None, "the opp-auth program is not installed"
    return subprocess.run(
        [OPP_AUTH, "-c", str(config_dir), *args], input=stdin, capture_output=True, text=True, timeout=60
    )


class Server:
    """A running `opp-auth serve` on a free port."""

    def __init__(self, config_dir: Path, log: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(OPP_AUTH), "-c", str(config_dir), "serve", "--host", "127.0.0.1", "--port", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"opp-auth serve exited: {log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"opp-auth serve did not listen: {log.read_text()}")
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM and wait (a clean stop writes the audit log's last batch)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


def session_from(address: str) -> aiohttp.ClientSession:
    """A client whose connections come from address (a loopback address of its own)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)), headers={"User-Agent": AGENT})


async def login(driver: LoginFlowDriver, username: str, password: str, code: str | None = None) -> dict[str, Any]:
    """A full login (password, maybe a TOTP code) and its tokens."""
    status, result = await driver.start(HANDLER)
    assert status == 200, result
    status, result = await driver.step(result["flow_id"], username=username, password=password)
    if code is not None:
        assert result["step_id"] == "mfa", result
        status, result = await driver.step(result["flow_id"], code=code)
    assert result["type"] == "create_entry", result
    status, tokens = await driver.token(grant_type="authorization_code", client_id=CLIENT_ID, code=result["result"])
    assert status == 200, tokens
    return {**tokens, "code": result["result"]}


class Ws:
    """An authenticated websocket connection with numbered commands."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 1

    async def call(self, **message: Any) -> Any:
        """Send a command; its result (asserting success)."""
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, **message})
        while True:
            reply = await self.ws.receive_json(timeout=10)
            if reply.get("id") == self.next_id:
                assert reply["success"], reply
                return reply["result"]


async def websocket(session: aiohttp.ClientSession, url: str, access_token: str) -> Any:
    """Open and authenticate /api/websocket."""
    ws = await session.ws_connect(f"{url}/api/websocket")
    assert (await ws.receive_json())["type"] == "auth_required"
    await ws.send_json({"type": "auth", "access_token": access_token})
    assert (await ws.receive_json())["type"] == "auth_ok"
    return ws


def records(config_dir: Path) -> list[dict[str, Any]]:
    """Every record written, in order."""
    return [json.loads(line) for path in log_files(config_dir / "audit") for line in path.read_text().splitlines()]


def of(found: list[dict[str, Any]], kind: str, **match: Any) -> list[dict[str, Any]]:
    """Records of a type whose fields match."""
    return [r for r in found if r["type"] == kind and all(r.get(k) == v for k, v in match.items())]


@pytest.fixture
def served(config_dir: Path, tmp_path: Path) -> Any:
    """A configuration with owner and bob added through the CLI, and a function starting the server."""
    (config_dir / "configuration.yaml").write_text(CONFIG)
    assert (
        opp_auth(config_dir, "auth", "add", "owner", "--owner", "--password-stdin", stdin=OWNER_PASSWORD).returncode
        == 0
    )
    assert opp_auth(config_dir, "auth", "add", "bob", "--password-stdin", stdin=BOB_PASSWORD).returncode == 0
    servers: list[Server] = []

    def start() -> Server:
        servers.append(Server(config_dir, tmp_path / f"serve-{len(servers)}.log"))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


async def test_every_way_in_is_audited_once_with_its_origin_and_no_secret(
    served: Any, config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Logins, failures (password, code, throttle, ban), tokens, MFA, user changes; then CLI changes offline."""
    server = served()
    secrets: list[str] = [OWNER_PASSWORD, BOB_PASSWORD, BOB_NEW_PASSWORD, BOB_CLI_PASSWORD]
    async with session_from("127.0.0.1") as session:
        driver = LoginFlowDriver(session, server.url)
        owner = await login(driver, "owner", OWNER_PASSWORD)
        secrets += [owner["access_token"], owner["refresh_token"], owner["code"]]
        ws = Ws(await websocket(session, server.url, owner["access_token"]))
        me = await ws.call(type="auth/current_user")
        users = {u["name"]: u for u in await ws.call(type="config/auth/list")}
        bob_id = users["bob"]["id"]
        long_lived = await ws.call(type="auth/long_lived_access_token", lifespan=10, client_name="Audit probe")
        secrets.append(long_lived)
        setup = await ws.call(type="auth/setup_mfa", mfa_module_id="totp")
        totp = pyotp.TOTP(setup["description_placeholders"]["code"])
        secrets.append(setup["description_placeholders"]["code"])
        enrol_code = totp.at(time.time() - 30)
        done = await ws.call(type="auth/setup_mfa", flow_id=setup["flow_id"], user_input={"code": enrol_code})
        assert done["type"] == "create_entry"
        secrets += [enrol_code, *(done.get("data") or {}).get("recovery_codes", [])]
        await ws.call(type="config/auth/update", user_id=bob_id, is_active=False)
        await ws.call(type="config/auth/update", user_id=bob_id, is_active=True, name="Robert")
        await ws.call(
            type="config/auth_provider/openpeerpower/admin_change_password", user_id=bob_id, password=BOB_NEW_PASSWORD
        )
        tokens = await ws.call(type="auth/refresh_tokens")
        (probe,) = [t for t in tokens if t["client_name"] == "Audit probe"]
        await ws.call(type="auth/delete_refresh_token", refresh_token_id=probe["id"])

        # A wrong TOTP code, then the right one.
        status, result = await driver.start(HANDLER)
        _, result = await driver.step(result["flow_id"], username="owner", password=OWNER_PASSWORD)
        wrong = "000000" if totp.now() != "000000" else "111111"
        _, result = await driver.step(result["flow_id"], code=wrong)
        assert result["errors"] == {"base": "invalid_code"}
        await asyncio.sleep(2.1)  # the throttle locks the pair (address, account) for a moment after a failure
        code = totp.now()
        _, result = await driver.step(result["flow_id"], code=code)
        assert result.get("type") == "create_entry", result
        secrets += [code, result["result"]]

    # Throttled: after a failure the pair (address, account) is locked for a moment.
    async with session_from("127.0.0.3") as session:
        driver = LoginFlowDriver(session, server.url)
        _, result = await driver.start(HANDLER)
        _, result = await driver.step(result["flow_id"], username="bob", password="not-" + BOB_PASSWORD)
        assert result["errors"] == {"base": "invalid_auth"}
        _, result = await driver.start(HANDLER)
        status, _ = await driver.step(result["flow_id"], username="bob", password=BOB_NEW_PASSWORD)
        assert status == 429
        # A username made to forge a line of `audit show`, and a huge one.
        for name in (HOSTILE, "x" * 5000):
            _, result = await driver.start(HANDLER)
            await driver.step(result["flow_id"], username=name, password="whatever-1")

    # Banned: three failures from 127.0.0.2, then every request is refused.
    async with session_from("127.0.0.2") as session:
        driver = LoginFlowDriver(session, server.url)
        for n in range(3):
            _, result = await driver.start(HANDLER)
            await driver.step(result["flow_id"], username=f"ghost{n}", password="guess-guess")
        async with session.get(f"{server.url}/auth/providers") as resp:
            assert resp.status == 403

    async with session_from("127.0.0.1") as session:
        ws = Ws(await websocket(session, server.url, owner["access_token"]))
        await ws.call(type="config/auth/bans/remove", ip_address="127.0.0.2")
        await ws.call(type="config/auth/lockouts/clear", username="bob")
        driver = LoginFlowDriver(session, server.url)
        status, _ = await driver.token(action="revoke", token=owner["refresh_token"])
        assert status == 200
    server.stop()

    # Offline: the CLI changes bob's password and removes him.
    assert (
        opp_auth(config_dir, "auth", "change-password", "bob", "--password-stdin", stdin=BOB_CLI_PASSWORD).returncode
        == 0
    )
    assert opp_auth(config_dir, "auth", "delete", "bob").returncode == 0

    found = records(config_dir)
    owner_id = me["id"]
    assert [r["via"] for r in of(found, "user_created")] == ["cli", "cli"]
    (first_login,) = of(found, "login_succeeded", user_id=owner_id, via="http", mfa_module=None)
    assert first_login["remote_address"] == "127.0.0.1" and first_login["user_agent"] == AGENT
    assert first_login["client_id"] == CLIENT_ID and first_login["username"] == "owner"
    assert first_login["provider"] == ["openpeerpower", None]
    assert of(found, "login_succeeded", user_id=owner_id, mfa_module="totp")
    assert of(found, "mfa_used", user_id=owner_id, mfa_module="totp")
    assert of(found, "mfa_enrolled", user_id=owner_id, mfa_module="totp", via="websocket")
    assert of(found, "login_failed", reason="mfa_failed", username="owner")
    assert len(of(found, "refresh_token_created", user_id=owner_id)) == 1
    (created,) = of(found, "long_lived_token_created", user_id=owner_id, client_name="Audit probe")
    (removed,) = of(found, "long_lived_token_removed", token_id=created["token_id"])
    assert removed["via"] == "websocket" and removed["details"] == {"cause": "revoked"}
    assert of(found, "refresh_token_removed", user_id=owner_id, via="http")
    (off,) = of(found, "user_deactivated", user_id=bob_id)
    assert off["actor_id"] == owner_id and off["via"] == "websocket" and off["remote_address"] == "127.0.0.1"
    assert of(found, "user_activated", user_id=bob_id)
    assert of(found, "user_changed", user_id=bob_id)[0]["details"] == {"changed": ["name"]}
    changes = of(found, "password_changed", user_id=bob_id)
    assert [(c["via"], c.get("actor_id")) for c in changes] == [("websocket", owner_id), ("cli", None)]
    assert len(of(found, "login_failed", reason="invalid_auth", username="bob", remote_address="127.0.0.3")) == 1
    (throttled,) = of(found, "login_failed", reason="throttled", username="bob")
    assert throttled["remote_address"] == "127.0.0.3" and throttled["details"]["retry_after"] > 0
    assert of(found, "login_failed", reason="invalid_username", remote_address="127.0.0.3")
    (huge,) = [r for r in found if (r.get("username") or "").startswith("xxxx")]
    assert len(huge["username"]) == 256
    assert of(found, "address_banned")[0]["details"]["ip_address"] == "127.0.0.2"
    assert of(found, "login_failed", reason="banned", remote_address="127.0.0.2")
    (unban,) = of(found, "address_unbanned")
    assert unban["actor_id"] == owner_id and unban["details"] == {"ip_address": "127.0.0.2"}
    assert of(found, "lockout_cleared", actor_id=owner_id)[0]["details"]["username"] == "bob"
    assert of(found, "user_removed", user_id=bob_id, via="cli")
    own = [r["type"] for r in found if r["type"].startswith("audit_")]
    assert own == ["audit_started", "audit_stopped"] * 5  # two CLI commands, the server, two CLI commands

    # No secret of the run, in any form, in any file.
    text = "".join(path.read_text() for path in log_files(config_dir / "audit"))
    assert find_secrets(text, secrets) == []
    assert "\x1b" not in text and "\u202e" not in text

    assert opp_auth(config_dir, "audit", "verify").returncode == 0
    shown = opp_auth(config_dir, "audit", "show", "--user", "bob").stdout
    assert "user_deactivated" in shown and "password_changed" in shown and "login_succeeded  " not in shown
    failed = opp_auth(config_dir, "audit", "show", "--failed", "--since", "1h").stdout
    lines = failed.splitlines()
    assert all("login_failed" in line for line in lines[:-2])
    hostile = [line for line in lines if "evil" in line]
    assert len(hostile) == 1 and "\\u{a}" in hostile[0] and "\\u{1b}" in hostile[0] and "\\u{202e}" in hostile[0]
    assert not any(line.startswith("2026-01-01") for line in lines)
