"""The totp MFA module: enrolment, codes checked against oathtool, replay protection, recovery codes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

import pyotp
import pytest

from opp_auth.storage import Store
from opp_auth.testing import MfaContract, run_login_flow

LOGIN = [{"username": "mfa-user", "password": "mfa-pass"}]
PROVIDERS = [{"type": "insecure_example", "users": [{"username": "mfa-user", "password": "mfa-pass", "name": "Mia"}]}]


def oathtool(secret: str, at: float | None = None) -> str:
    """The code an independent implementation (Debian's oathtool) computes."""
    path = shutil.which("oathtool")
    if path is None:
        message = "oathtool (Debian package oathtool) is not installed"
        if os.environ.get("OPP_AUTH_REQUIRE_INTEGRATION") == "1":
            pytest.fail(message)
        pytest.skip(message)
    args = [path, "--totp", "-b", secret]
    if at is not None:
        args += ["--now", datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")]
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


def next_step(at: float | None = None) -> float:
    """A moment in the next 30-second step (accepted by the one-step window, never used before)."""
    return (at or time.time()) + 30


@pytest.fixture
async def auth(opp_auth_factory: Any) -> Any:
    """Example provider plus totp."""
    return await opp_auth_factory(providers=PROVIDERS, mfa_modules=[{"type": "totp"}])


async def fresh_load(auth: Any) -> Any:
    """What a restarted server reads of the TOTP store: its file and its journal."""
    return await Store(auth.config_dir, "auth_module.totp", 1, journal=True).async_load()


async def make_user(auth: Any) -> Any:
    """A user with example-provider credentials."""
    result = await run_login_flow(auth, ("insecure_example", None), LOGIN)
    return await auth.users.async_get_or_create_user(result["result"])


async def enrol_through_flow(auth: Any, user: Any) -> tuple[str, list[str], dict[str, Any]]:
    """Run the setup flow as the profile page does; return secret, recovery codes, first form."""
    form = await auth.mfa_setup_flow.async_init("totp", context={"user_id": user.id})
    secret = form["description_placeholders"]["code"]
    done = await auth.mfa_setup_flow.async_configure(form["flow_id"], {"code": oathtool(secret)})
    assert done["type"] == "create_entry", done
    return secret, done["data"]["recovery_codes"], form


class TestTotpContract(MfaContract):
    """totp passes the MFA contract."""

    @pytest.fixture
    def module_config(self) -> dict[str, Any]:
        return {"type": "totp"}

    @pytest.fixture
    def enrol(self) -> Any:
        async def do(auth: Any, module: Any, user_id: str) -> None:
            await module.async_setup_user(user_id, {})

        return do

    @pytest.fixture
    def valid_code(self) -> Any:
        async def code(module: Any, user_id: str) -> dict[str, str]:
            return {"code": oathtool(module._users[user_id])}

        return code

    @pytest.fixture
    def break_module(self) -> Any:
        def breaker(module: Any, monkeypatch: pytest.MonkeyPatch) -> None:
            def boom(*args: Any, **kwargs: Any) -> None:
                raise RuntimeError("totp exploded")

            monkeypatch.setattr("opp_auth_totp._matching_timecode", boom)

        return breaker


async def test_setup_form_shows_secret_uri_and_inline_svg(auth: Any) -> None:
    """The first form carries a 160-bit secret, the otpauth URI with the issuer, and an inline SVG."""
    user = await make_user(auth)
    form = await auth.mfa_setup_flow.async_init("totp", context={"user_id": user.id})
    placeholders = form["description_placeholders"]
    assert form["step_id"] == "init" and form["errors"] == {}
    assert re.fullmatch(r"[A-Z2-7]{32}", placeholders["code"])
    assert placeholders["url"].startswith("otpauth://totp/")
    assert "issuer=Open%20Peer%20Power" in placeholders["url"]
    assert f"secret={placeholders['code']}" in placeholders["url"]
    svg = placeholders["qr_code"]
    assert svg.startswith("<svg") and "\n" not in svg and "<?xml" not in svg


async def test_setup_with_oathtool_code_enrols_without_echoing_the_secret(auth: Any) -> None:
    """A code computed by oathtool confirms enrolment; the result holds recovery codes, not the secret."""
    user = await make_user(auth)
    secret, codes, _ = await enrol_through_flow(auth, user)
    assert len(codes) == 10 and len(set(codes)) == 10
    module = auth.registry.get_auth_mfa_module("totp")
    assert await module.async_is_user_setup(user.id)
    # Changes are journaled (.auth_module.totp.journal); a compaction writes Open Peer Power's file.
    assert (await fresh_load(auth))["users"] == {user.id: secret}
    await module._store.async_compact()
    stored = json.loads(auth.config_dir and open(f"{auth.config_dir}/.storage/auth_module.totp").read())
    assert stored["version"] == 1 and stored["key"] == "auth_module.totp"
    assert stored["data"]["users"] == {user.id: secret}
    assert secret not in json.dumps(codes)
    assert all(code not in json.dumps(stored) for code in codes)


async def test_wrong_setup_code_keeps_the_same_secret(auth: Any) -> None:
    """A wrong code shows invalid_code with the same secret and QR code."""
    user = await make_user(auth)
    form = await auth.mfa_setup_flow.async_init("totp", context={"user_id": user.id})
    again = await auth.mfa_setup_flow.async_configure(form["flow_id"], {"code": "000000" if oathtool(form["description_placeholders"]["code"]) != "000000" else "111111"})
    assert again["errors"] == {"base": "invalid_code"}
    assert again["description_placeholders"] == form["description_placeholders"]


async def test_login_asks_for_code_and_accepts_oathtool_code(auth: Any) -> None:
    """After enrolment a login needs the code; the next step's code (never used) gets in."""
    user = await make_user(auth)
    secret, _, _ = await enrol_through_flow(auth, user)
    result = await run_login_flow(auth, ("insecure_example", None), LOGIN)
    assert result["step_id"] == "mfa"
    assert result["description_placeholders"] == {"mfa_module_name": "Time-based One Time Password", "mfa_module_id": "totp"}
    result = await auth.login_flow.async_configure(result["flow_id"], {"code": oathtool(secret, next_step())})
    assert result["type"] == "create_entry"


async def test_setup_code_cannot_be_replayed_at_login(auth: Any) -> None:
    """The code used to confirm enrolment is spent."""
    user = await make_user(auth)
    secret, _, _ = await enrol_through_flow(auth, user)
    result = await run_login_flow(auth, ("insecure_example", None), LOGIN)
    result = await auth.login_flow.async_configure(result["flow_id"], {"code": oathtool(secret)})
    assert result["errors"] == {"base": "invalid_code"}


async def test_accepted_code_cannot_be_used_twice(auth: Any) -> None:
    """Replay protection: a code that let someone in is refused the second time."""
    user = await make_user(auth)
    module = auth.registry.get_auth_mfa_module("totp")
    secret = await module.async_setup_user(user.id, {})
    code = oathtool(secret)
    assert await module.async_validate(user.id, {"code": code}) is True
    assert await module.async_validate(user.id, {"code": code}) is False


async def test_codes_outside_the_window_are_refused(auth: Any) -> None:
    """Only one step of drift either way."""
    user = await make_user(auth)
    module = auth.registry.get_auth_mfa_module("totp")
    secret = await module.async_setup_user(user.id, {})
    now = time.time()
    assert await module.async_validate(user.id, {"code": oathtool(secret, now - 90)}) is False
    assert await module.async_validate(user.id, {"code": oathtool(secret, now + 90)}) is False
    assert await module.async_validate(user.id, {"code": oathtool(secret, now - 30)}) is True


async def test_open_peer_power_80_bit_secret_keeps_working(opp_auth_factory: Any, config_dir: Any) -> None:
    """A 16-character secret from an existing auth_module.totp file validates."""
    storage = config_dir / ".storage"
    storage.mkdir()
    old_secret = "JBSWY3DPEHPK3PXP"
    (storage / "auth_module.totp").write_text(
        json.dumps({"version": 1, "key": "auth_module.totp", "data": {"users": {"old-user": old_secret}}})
    )
    auth = await opp_auth_factory(providers=PROVIDERS, mfa_modules=[{"type": "totp"}])
    module = auth.registry.get_auth_mfa_module("totp")
    assert await module.async_is_user_setup("old-user")
    assert await module.async_validate("old-user", {"code": oathtool(old_secret)}) is True


async def test_recovery_code_replaces_a_code_once(auth: Any) -> None:
    """Each recovery code works once, with or without dashes and in any case."""
    user = await make_user(auth)
    _, codes, _ = await enrol_through_flow(auth, user)
    module = auth.registry.get_auth_mfa_module("totp")
    result = await run_login_flow(auth, ("insecure_example", None), LOGIN)
    result = await auth.login_flow.async_configure(result["flow_id"], {"code": codes[0].upper().replace("-", " ")})
    assert result["type"] == "create_entry"
    assert module.recovery_codes_left(user.id) == 9
    assert await module.async_validate(user.id, {"code": codes[0]}) is False
    assert await module.async_validate(user.id, {"code": codes[1]}) is True


async def test_depose_forgets_secret_and_recovery_codes(auth: Any) -> None:
    """After depose nothing of the enrolment is left on disk."""
    user = await make_user(auth)
    await enrol_through_flow(auth, user)
    module = auth.registry.get_auth_mfa_module("totp")
    await module.async_depose_user(user.id)
    stored = await fresh_load(auth)
    assert user.id not in stored["users"] and user.id not in stored["recovery_codes"]


async def test_recovery_codes_command_needs_a_current_code(auth: Any, opp_auth_client: Any) -> None:
    """The websocket command makes a new set only with a valid code, and old codes stop working."""
    user = await make_user(auth)
    secret, old_codes, _ = await enrol_through_flow(auth, user)
    refresh = await auth.refresh_tokens.async_create_refresh_token(user, "https://example.com/app")
    access = await auth.access_tokens.async_create_access_token(refresh)
    client = await opp_auth_client(auth)
    async with client.session.ws_connect(client.url("/api/websocket")) as ws:
        await ws.receive_json()
        await ws.send_json({"type": "auth", "access_token": access})
        assert (await ws.receive_json())["type"] == "auth_ok"
        await ws.send_json({"id": 1, "type": "auth/totp/recovery_codes", "code": "12345x"})
        reply = await ws.receive_json()
        assert reply["success"] is False and reply["error"]["code"] == "invalid_code"
        await ws.send_json({"id": 2, "type": "auth/totp/recovery_codes", "code": oathtool(secret, next_step())})
        reply = await ws.receive_json()
        assert reply["success"] is True
        new_codes = reply["result"]["recovery_codes"]
    module = auth.registry.get_auth_mfa_module("totp")
    assert len(new_codes) == 10
    assert await module.async_validate(user.id, {"code": old_codes[0]}) is False
    assert await module.async_validate(user.id, {"code": new_codes[0]}) is True


async def test_totp_is_the_default_module_when_none_configured(opp_auth_factory: Any) -> None:
    """Without auth_mfa_modules the installed totp module is enabled as Open Peer Power does."""
    auth = await opp_auth_factory(providers=PROVIDERS)
    modules = auth.auth_mfa_modules
    assert [(m.id, m.name, m.type) for m in modules] == [("totp", "Authenticator app", "totp")]


async def test_pyotp_and_oathtool_agree(auth: Any) -> None:
    """Sanity: the module's codes are the standard RFC 6238 codes."""
    secret = pyotp.random_base32(32)
    assert pyotp.TOTP(secret).now() == oathtool(secret) or pyotp.TOTP(secret).at(time.time() + 1) == oathtool(secret)


async def test_info_command_lists_enrolments_and_codes_left(auth: Any, opp_auth_client: Any) -> None:
    """auth/totp/info tells the profile which totp modules the caller uses and how many codes are left."""
    user = await make_user(auth)
    refresh = await auth.refresh_tokens.async_create_refresh_token(user, "https://example.com/app")
    access = await auth.access_tokens.async_create_access_token(refresh)
    client = await opp_auth_client(auth)
    async with client.session.ws_connect(client.url("/api/websocket")) as ws:
        await ws.receive_json()
        await ws.send_json({"type": "auth", "access_token": access})
        assert (await ws.receive_json())["type"] == "auth_ok"
        await ws.send_json({"id": 1, "type": "auth/totp/info"})
        assert (await ws.receive_json())["result"] == {"modules": {}}
        _, codes, _ = await enrol_through_flow(auth, user)
        await auth.registry.get_auth_mfa_module("totp").async_validate(user.id, {"code": codes[0]})
        await ws.send_json({"id": 2, "type": "auth/totp/info"})
        assert (await ws.receive_json())["result"] == {"modules": {"totp": {"recovery_codes_left": 9}}}
