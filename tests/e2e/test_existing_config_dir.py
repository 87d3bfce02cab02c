"""An existing Open Peer Power configuration directory works unchanged (SPEC 1.6, 1.7, 1.10, 2; DESIGN compatibility).

The directory is written by hand from the documented formats, then served the
way ``opp-auth serve`` builds the application.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from pathlib import Path
from typing import Any

import bcrypt
import jwt
import pytest

from opp_auth.config import load_config
from opp_auth.http.view import AUTH_KEY
from opp_auth.plugins import make_plugin_manager
from opp_auth.server import build_auth

LOCAL = ["openpeerpower", None]
PASSWORD = "correct horse battery staple"
APP_CLIENT_ID = "https://example.com/app"
TEN_YEARS = 3650 * 86400

OWNER_ID = "0b6f1d3c2a8e4f5b9c7d6e5f4a3b2c1d"
CLOUD_ID = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"
CREDENTIAL_ID = "5a4b3c2d1e0f4a9b8c7d6e5f4a3b2c1d"
LONG_LIVED_ID = "1c2d3e4f5a6b4c7d8e9f0a1b2c3d4e5f"
NORMAL_ID = "2d3e4f5a6b7c4d8e9f0a1b2c3d4e5f6a"
SYSTEM_ID = "3e4f5a6b7c8d4e9f0a1b2c3d4e5f6a7b"

CONFIGURATION_YAML = """\
openpeerpower:
  name: Home
  latitude: 52.3731
  longitude: 4.8922
  elevation: 0
  unit_system: metric
  time_zone: Europe/Amsterdam

http:
  server_port: 8123
  cors_allowed_origins:
    - https://cast.openpeerpower.io
"""


def envelope(key: str, version: int, data: Any) -> str:
    """A .storage file as Open Peer Power writes it."""
    return json.dumps({"version": version, "key": key, "data": data}, indent=4)


def refresh_token(token_id: str, user_id: str, **fields: Any) -> dict[str, Any]:
    """A refresh token record of .storage/auth (SPEC 1.6)."""
    record = {
        "id": token_id,
        "user_id": user_id,
        "client_id": None,
        "client_name": None,
        "client_icon": None,
        "token_type": "normal",
        "created_at": "2021-06-01T10:00:00.123456+00:00",
        "access_token_expiration": 1800.0,
        "token": secrets.token_hex(64),
        "jwt_key": secrets.token_hex(64),
        "last_used_at": "2021-07-01T08:30:00.000000+00:00",
        "last_used_ip": "192.168.1.10",
        "credential_id": None,
        "version": "2021.7.3",
    }
    record.update(fields)
    return record


@pytest.fixture
def existing_dir(config_dir: Path) -> dict[str, Any]:
    """Write configuration.yaml and .storage/{auth, auth_provider.openpeerpower, onboarding}."""
    (config_dir / "configuration.yaml").write_text(CONFIGURATION_YAML, encoding="utf-8")
    storage = config_dir / ".storage"
    storage.mkdir()
    tokens = [
        refresh_token(
            LONG_LIVED_ID, OWNER_ID, client_name="Node-RED", token_type="long_lived_access_token",
            access_token_expiration=float(TEN_YEARS), last_used_at=None, last_used_ip=None,
        ),
        refresh_token(NORMAL_ID, OWNER_ID, client_id=APP_CLIENT_ID, credential_id=CREDENTIAL_ID),
        refresh_token(SYSTEM_ID, CLOUD_ID, token_type="system"),
    ]
    auth_data = {
        "users": [
            {"id": OWNER_ID, "group_ids": ["system-admin"], "is_owner": True, "is_active": True,
             "name": "Paulus", "system_generated": False},
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
        "refresh_tokens": tokens,
    }
    (storage / "auth").write_text(envelope("auth", 1, auth_data), encoding="utf-8")
    # A real bcrypt hash; cost 4 keeps the test fast and is still read like a cost-12 one.
    hashed = base64.b64encode(bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4))).decode()
    (storage / "auth_provider.openpeerpower").write_text(
        envelope("auth_provider.openpeerpower", 1, {"users": [{"username": "paulus", "password": hashed}]}),
        encoding="utf-8",
    )
    (storage / "onboarding").write_text(
        envelope("onboarding", 4, {"done": ["user", "core_config", "analytics", "integration"]}), encoding="utf-8"
    )
    return {"dir": config_dir, "tokens": {t["id"]: t for t in tokens}}


@pytest.fixture
async def served(existing_dir: dict[str, Any], opp_auth_client: Any) -> Any:
    """The application built as `opp-auth serve` builds it, on 127.0.0.1."""
    pm = make_plugin_manager()
    config = load_config(existing_dir["dir"], pm)
    auth = build_auth(config, pm)
    return await opp_auth_client(auth, config.http)


async def api_status(client: Any, access_token: str) -> int:
    """GET /api/ as a bearer."""
    async with client.request("GET", "/api/", headers={"Authorization": f"Bearer {access_token}"}) as resp:
        return resp.status


def read_auth(config_dir: Path) -> dict[str, Any]:
    """The .storage/auth envelope."""
    return dict(json.loads((config_dir / ".storage" / "auth").read_text(encoding="utf-8")))


async def test_owner_logs_in_with_the_existing_password(served: Any) -> None:
    """The stored bcrypt hash is checked; the login reaches the existing user, not a new one."""
    tokens = await served.login.tokens(LOCAL, [{"username": "Paulus", "password": PASSWORD}])
    assert await api_status(served, tokens["access_token"]) == 200
    auth = served.app[AUTH_KEY]
    assert [u.id for u in auth.store.users()] == [OWNER_ID, CLOUD_ID]
    assert auth.access_tokens.validate_access_token(tokens["access_token"]).user.id == OWNER_ID


async def test_wrong_password_is_refused(served: Any) -> None:
    """The stored hash does not accept another password."""
    _, started = await served.login.start(LOCAL)
    status, body = await served.login.step(started["flow_id"], username="paulus", password="wrong")
    assert (status, body["errors"]) == (200, {"base": "invalid_auth"})


async def test_existing_long_lived_token_signs_access_tokens(served: Any, existing_dir: dict[str, Any]) -> None:
    """An access token made from the stored jwt_key, as the old server made them, is accepted."""
    stored = existing_dir["tokens"][LONG_LIVED_ID]
    now = int(time.time())
    access_token = jwt.encode({"iss": LONG_LIVED_ID, "iat": now, "exp": now + TEN_YEARS}, stored["jwt_key"], algorithm="HS256")
    assert await api_status(served, access_token) == 200


async def test_access_token_signed_with_another_key_is_refused(served: Any) -> None:
    """The stored jwt_key is what makes the token valid."""
    now = int(time.time())
    forged = jwt.encode({"iss": LONG_LIVED_ID, "iat": now, "exp": now + 60}, secrets.token_hex(64), algorithm="HS256")
    assert await api_status(served, forged) == 401


async def test_existing_refresh_token_string_still_refreshes(served: Any, existing_dir: dict[str, Any]) -> None:
    """The refresh grant accepts the stored token string with its client id."""
    stored = existing_dir["tokens"][NORMAL_ID]
    status, body = await served.login.token(
        grant_type="refresh_token", client_id=APP_CLIENT_ID, refresh_token=stored["token"]
    )
    assert status == 200, body
    assert body["expires_in"] == 1800
    assert await api_status(served, body["access_token"]) == 200


async def test_storage_survives_a_served_session(served: Any, existing_dir: dict[str, Any]) -> None:
    """After logins and a stop, .storage/auth parses and keeps every user, credential and token."""
    tokens = await served.login.tokens(LOCAL, [{"username": "paulus", "password": PASSWORD}])
    stored = existing_dir["tokens"][NORMAL_ID]
    status, _ = await served.login.token(grant_type="refresh_token", client_id=APP_CLIENT_ID, refresh_token=stored["token"])
    assert status == 200
    await served.session.close()
    await served.server.close()

    saved = read_auth(existing_dir["dir"])
    assert (saved["version"], saved["key"]) == (1, "auth")
    data = saved["data"]
    assert [u["id"] for u in data["users"]] == [OWNER_ID, CLOUD_ID]
    assert data["users"][0]["is_owner"] is True
    assert [g["id"] for g in data["groups"]] == ["system-admin", "system-users", "system-read-only"]
    assert [c["id"] for c in data["credentials"]] == [CREDENTIAL_ID]
    by_id = {t["id"]: t for t in data["refresh_tokens"]}
    for token_id, original in existing_dir["tokens"].items():
        # G8: the secret is kept only as its digest; the old signing key stays so old tokens keep working.
        assert "token" not in by_id[token_id]
        assert by_id[token_id]["token_hash"] == hashlib.sha256(original["token"].encode()).hexdigest()
        assert by_id[token_id]["jwt_key"] == original["jwt_key"]
        assert by_id[token_id]["token_type"] == original["token_type"]
        assert by_id[token_id]["user_id"] == original["user_id"]
    (new,) = [t for t in data["refresh_tokens"] if t["id"] not in existing_dir["tokens"]]
    assert new["token_hash"] == hashlib.sha256(tokens["refresh_token"].encode()).hexdigest()
    assert new["jwt_key"] is None  # derived from the server secret kept outside .storage
    assert tokens["refresh_token"] not in json.dumps(saved)
    assert (new["user_id"], new["client_id"], new["credential_id"]) == (OWNER_ID, "https://example.com/app", CREDENTIAL_ID)
    assert by_id[NORMAL_ID]["last_used_ip"] == "127.0.0.1"
