"""A Home Assistant configuration directory works as it is (issue 14).

The directory is tests/homeassistant/conftest.py's: written by hand from Home
Assistant's documented .storage formats (its docstring says which).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pyotp
import pytest

from opp_auth.config import load_config
from opp_auth.http.view import AUTH_KEY
from opp_auth.plugins import make_plugin_manager
from opp_auth.testing import CLIENT_ID
from opp_auth.yaml import ConfigError

from .conftest import (
    ANNE_ID,
    ANNE_SESSION_ID,
    EXPIRED_SESSION_ID,
    GUEST_SESSION_ID,
    HA_CLIENT_ID,
    HA_LOCAL,
    LONG_LIVED_ID,
    OWNER_ID,
    OWNER_SESSION_ID,
    PASSWORDS,
    serve,
)


@pytest.fixture
async def served(ha_dir: dict[str, Any], opp_auth_client: Any) -> Any:
    """The Home Assistant directory, served."""
    return await serve(opp_auth_client, ha_dir["dir"])


async def api_status(client: Any, access_token: str, **headers: str) -> int:
    """GET /api/ as a bearer."""
    async with client.request("GET", "/api/", headers={"Authorization": f"Bearer {access_token}", **headers}) as resp:
        return int(resp.status)


async def login(client: Any, username: str, password: str, totp_secret: str | None) -> tuple[int, Any]:
    """Password, then (when asked) the authenticator code: the last step's (status, body)."""
    status, step = await client.login.start(HA_LOCAL)
    assert status == 200, step
    status, step = await client.login.step(step["flow_id"], username=username, password=password)
    if step.get("type") == "form" and step.get("step_id") == "mfa":
        assert totp_secret is not None, step
        status, step = await client.login.step(step["flow_id"], code=pyotp.TOTP(totp_secret).now())
    return status, step


def storage_bytes(config_dir: Path) -> dict[str, bytes]:
    """Every file of .storage (not the lock), by name."""
    return {p.name: p.read_bytes() for p in (config_dir / ".storage").iterdir() if p.is_file() and p.name[0] != "."}


# ---- configuration ------------------------------------------------------------------------------


def test_homeassistant_block_gives_its_providers_and_mfa_modules(ha_dir: dict[str, Any]) -> None:
    """The homeassistant: block is read like openpeerpower:, not silently ignored."""
    config = load_config(ha_dir["dir"], make_plugin_manager())
    assert config.core_block == "homeassistant"
    assert [(cls.TYPE, conf.get("id")) for cls, conf in config.providers] == [("homeassistant", None)]
    assert [cls.TYPE for cls, _ in config.mfa_modules] == ["totp"]
    assert config.http["auth_api"] == "homeassistant"
    assert config.http["login_attempts_threshold"] == 5


def test_default_provider_of_a_homeassistant_block_is_homeassistant(tmp_path: Path) -> None:
    """Without auth_providers, a Home Assistant directory gets Home Assistant's default local provider."""
    (tmp_path / "configuration.yaml").write_text("homeassistant:\n  name: Home\n", encoding="utf-8")
    config = load_config(tmp_path, make_plugin_manager())
    assert [cls.TYPE for cls, _ in config.providers] == ["homeassistant"]


def test_errors_in_the_homeassistant_block_name_it(tmp_path: Path) -> None:
    """A mistake points at homeassistant: ..., with the line."""
    (tmp_path / "configuration.yaml").write_text(
        "homeassistant:\n  auth_providers:\n    - type: homeassistant\n      id: second\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path, make_plugin_manager())
    message = str(err.value)
    assert "line 3" in message and "homeassistant -> auth_providers -> 0" in message, message
    assert "ID is not allowed for the homeassistant auth provider" in message


def test_both_core_blocks_is_an_error(tmp_path: Path) -> None:
    """Two core blocks would leave one silently ignored: refuse, naming the file and line."""
    (tmp_path / "configuration.yaml").write_text(
        "openpeerpower:\n  name: A\nhomeassistant:\n  auth_providers:\n    - type: homeassistant\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError, match="Both openpeerpower: and homeassistant: are present") as err:
        load_config(tmp_path, make_plugin_manager())
    assert "configuration.yaml" in str(err.value)


def test_auth_api_key_overrides_the_generation(tmp_path: Path) -> None:
    """http: auth_api picks the wire generation whatever the core block; a wrong value is a located error."""
    (tmp_path / "configuration.yaml").write_text("homeassistant:\nhttp:\n  auth_api: openpeerpower\n", encoding="utf-8")
    assert load_config(tmp_path, make_plugin_manager()).http["auth_api"] == "openpeerpower"
    (tmp_path / "configuration.yaml").write_text("openpeerpower:\nhttp:\n  auth_api: hass\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="line 3.*auth_api.*must be one of openpeerpower, homeassistant"):
        load_config(tmp_path, make_plugin_manager())


def test_check_config_names_the_blocks_it_does_not_use(ha_dir: dict[str, Any]) -> None:
    """The rest of Home Assistant's configuration is accepted, and named, so nothing is silently dropped."""
    result = subprocess.run(
        [sys.executable, "-m", "opp_auth.cli", "-c", str(ha_dir["dir"]), "check-config"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "provider homeassistant" in result.stdout and "mfa module totp" in result.stdout
    assert "Read from homeassistant: and http:; HTTP API generation: homeassistant." in result.stdout
    assert (
        "Not used by opp-auth (accepted and ignored): default_config:, frontend:, automation:, script:, scene:, "
        "sensor:, logger:" in result.stdout
    ), result.stdout


# ---- logins and tokens -------------------------------------------------------------------------


async def test_every_user_logs_in_with_password_and_totp(served: Any, ha_dir: dict[str, Any]) -> None:
    """The stored bcrypt hashes and 32-character TOTP secrets are Home Assistant's; logins reach the existing users."""
    auth = served.app[AUTH_KEY]
    for username, user_id in (("Paulus", OWNER_ID), ("anne", ANNE_ID)):
        assert len(ha_dir["totp"][user_id]) == 32
        status, step = await login(served, username, PASSWORDS[username.lower()], ha_dir["totp"][user_id])
        assert (status, step["type"]) == (200, "create_entry"), step
        status, tokens = await served.login.token(
            grant_type="authorization_code", client_id=CLIENT_ID, code=step["result"]
        )
        assert status == 200, tokens
        assert tokens["ha_auth_provider"] == "homeassistant"
        assert auth.access_tokens.validate_access_token(tokens["access_token"], "127.0.0.1").user.id == user_id
    assert len([u for u in auth.store.users() if not u.system_generated]) == 3


async def test_wrong_totp_code_is_refused(served: Any, ha_dir: dict[str, Any]) -> None:
    """The password alone is not enough: the authenticator step checks the stored secret."""
    status, step = await served.login.start(HA_LOCAL)
    status, step = await served.login.step(step["flow_id"], username="paulus", password=PASSWORDS["paulus"])
    assert step["step_id"] == "mfa"
    wrong = pyotp.TOTP(pyotp.random_base32()).now()
    status, step = await served.login.step(step["flow_id"], code=wrong)
    assert step.get("errors") == {"base": "invalid_code"}, step


async def test_deactivated_user_stays_out(served: Any) -> None:
    """is_active false: the right password gives no tokens, and the old session token refreshes nothing."""
    status, step = await login(served, "guest", PASSWORDS["guest"], None)
    if step["type"] == "create_entry":
        status, body = await served.login.token(
            grant_type="authorization_code", client_id=CLIENT_ID, code=step["result"]
        )
        assert (status, body["error"]) == (403, "access_denied")
    else:
        assert step["type"] in ("abort", "form") and step.get("errors") != {}, step


async def test_deactivated_users_session_token_is_refused(served: Any, ha_dir: dict[str, Any]) -> None:
    """A stored refresh token of a deactivated user gives no access token."""
    stored = ha_dir["tokens"][GUEST_SESSION_ID]
    status, body = await served.login.token(
        grant_type="refresh_token", client_id=HA_CLIENT_ID, refresh_token=stored["token"]
    )
    assert status in (400, 403) and "access_token" not in body, body


async def test_long_lived_token_keeps_working(served: Any, ha_dir: dict[str, Any]) -> None:
    """An access token Home Assistant minted from the stored jwt_key (ten years) is accepted."""
    stored = ha_dir["tokens"][LONG_LIVED_ID]
    now = int(time.time())
    token = jwt.encode({"iss": LONG_LIVED_ID, "iat": now - 86400, "exp": now + 3650 * 86400}, stored["jwt_key"])
    assert await api_status(served, token) == 200
    forged = jwt.encode({"iss": LONG_LIVED_ID, "iat": now, "exp": now + 60}, "another key" * 8)
    assert await api_status(served, forged) == 401


async def test_refresh_token_keeps_working_and_its_expiry_moves(served: Any, ha_dir: dict[str, Any]) -> None:
    """A session's refresh token (with Home Assistant's expire_at) refreshes; using it pushes expire_at on."""
    stored = ha_dir["tokens"][OWNER_SESSION_ID]
    status, body = await served.login.token(
        grant_type="refresh_token", client_id=HA_CLIENT_ID, refresh_token=stored["token"]
    )
    assert status == 200, body
    assert await api_status(served, body["access_token"]) == 200
    token = served.app[AUTH_KEY].store.get_refresh_token(OWNER_SESSION_ID)
    assert token.expire_at > stored["expire_at"] + 3600


async def test_expired_refresh_token_is_refused(served: Any, ha_dir: dict[str, Any]) -> None:
    """expire_at in the past: the token is gone."""
    stored = ha_dir["tokens"][EXPIRED_SESSION_ID]
    status, body = await served.login.token(
        grant_type="refresh_token", client_id=HA_CLIENT_ID, refresh_token=stored["token"]
    )
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_local_only_user_is_refused_from_outside(ha_dir: dict[str, Any], opp_auth_client: Any) -> None:
    """local_only holds: Anne's token works from the local network, not from a public address."""
    proxy = ipaddress.ip_network("127.0.0.1/32")
    client = await serve(opp_auth_client, ha_dir["dir"], use_x_forwarded_for=True, trusted_proxies=[proxy])
    stored = ha_dir["tokens"][ANNE_SESSION_ID]
    async with client.request(
        "POST", "/auth/token", data={"grant_type": "refresh_token", "client_id": HA_CLIENT_ID,
                                     "refresh_token": stored["token"]},
        headers={"X-Forwarded-For": "192.168.1.20"},
    ) as resp:
        assert resp.status == 200
        access_token = (await resp.json())["access_token"]
    assert await api_status(client, access_token, **{"X-Forwarded-For": "192.168.1.20"}) == 200
    assert await api_status(client, access_token, **{"X-Forwarded-For": "203.0.113.9"}) == 401
    async with client.request(
        "POST", "/auth/token", data={"grant_type": "refresh_token", "client_id": HA_CLIENT_ID,
                                     "refresh_token": stored["token"]},
        headers={"X-Forwarded-For": "203.0.113.9"},
    ) as resp:
        assert resp.status == 403


# ---- the files ---------------------------------------------------------------------------------


async def test_files_stay_home_assistants_until_the_first_change(
    tmp_path: Path, write_ha_directory: Any, opp_auth_client: Any
) -> None:
    """Serving, reading providers and using a long-lived token leave every file byte for byte as it was."""
    ha = write_ha_directory(tmp_path, expired_token=False)
    before = storage_bytes(tmp_path)
    client = await serve(opp_auth_client, tmp_path)
    async with client.request("GET", "/auth/providers") as resp:
        assert resp.status == 200
    stored = ha["tokens"][LONG_LIVED_ID]
    now = int(time.time())
    token = jwt.encode({"iss": LONG_LIVED_ID, "iat": now, "exp": now + 600}, stored["jwt_key"])
    assert await api_status(client, token) == 200
    await client.session.close()
    await client.server.close()
    after = storage_bytes(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
    # What opp-auth adds lives in files of its own, which Home Assistant does not read.
    assert not any(name.startswith(("auth", "onboarding", "core.")) for name in set(after) - set(before))


async def test_first_change_replaces_token_with_token_hash(served: Any, ha_dir: dict[str, Any]) -> None:
    """The change docs/homeassistant.md announces: .storage/auth keeps each token's digest, not the token."""
    status, step = await login(served, "paulus", PASSWORDS["paulus"], ha_dir["totp"][OWNER_ID])
    assert step["type"] == "create_entry"
    await served.session.close()
    await served.server.close()
    saved = json.loads((ha_dir["dir"] / ".storage" / "auth").read_text(encoding="utf-8"))
    assert (saved["version"], saved["key"]) == (1, "auth")
    records = {t["id"]: t for t in saved["data"]["refresh_tokens"]}
    long_lived = records[LONG_LIVED_ID]
    stored = ha_dir["tokens"][LONG_LIVED_ID]
    assert "token" not in long_lived
    assert long_lived["token_hash"] == hashlib.sha256(stored["token"].encode()).hexdigest()
    assert long_lived["jwt_key"] == stored["jwt_key"]
    users = {u["id"]: u for u in saved["data"]["users"]}
    assert users[ANNE_ID]["local_only"] is True
    provider = json.loads((ha_dir["dir"] / ".storage" / "auth_provider.homeassistant").read_text(encoding="utf-8"))
    assert [u["username"] for u in provider["data"]["users"]] == ["paulus", "anne", "guest"]
