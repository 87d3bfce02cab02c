"""A Home Assistant configuration directory of 2024-2026, as fixtures.

The directory is written by hand from Home Assistant's documented .storage
formats, not by Home Assistant itself (installing Home Assistant to write it is
heavier than every other test here together). The shapes follow Home
Assistant's own code as of 2024-2026:

- ``homeassistant/auth/auth_store.py``: ``.storage/auth`` version 1, minor
  version 1; users with ``group_ids``, ``is_owner``, ``is_active``, ``name``,
  ``system_generated``, ``local_only``; groups (system groups with id and name
  only); credentials; refresh tokens with ``token`` and ``jwt_key`` in clear,
  ``token_type`` (normal, system, long_lived_access_token), ``expire_at``
  (epoch seconds or null), ``credential_id`` and ``version``.
- ``homeassistant/auth/providers/homeassistant.py``:
  ``.storage/auth_provider.homeassistant`` version 1, ``{"users": [{"username",
  "password"}]}`` with base64-encoded bcrypt hashes; usernames stored casefolded.
- ``homeassistant/auth/mfa_modules/totp.py``: ``.storage/auth_module.totp``
  version 1, ``{"users": {user_id: secret}}``, secrets of pyotp.random_base32()
  (32 base32 characters).
- ``homeassistant/components/onboarding``: ``.storage/onboarding`` version 4,
  ``{"done": [...]}``.
- Every envelope is Home Assistant's Store: ``{"version", "minor_version",
  "key", "data"}``, indented by 2.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from pathlib import Path
from typing import Any

import bcrypt
import pyotp
import pytest

from opp_auth.config import load_config
from opp_auth.plugins import make_plugin_manager
from opp_auth.server import build_auth

HA_LOCAL = ["homeassistant", None]
PASSWORDS = {"paulus": "correct horse battery staple", "anne": "anne's own secret", "guest": "guest password 1"}
HA_VERSION = "2025.11.3"
HA_CLIENT_ID = "http://homeassistant.local:8123/"
TEN_YEARS = 3650 * 86400

OWNER_ID = "a1b2c3d4e5f64a7b8c9d0e1f2a3b4c5d"
ANNE_ID = "b2c3d4e5f6a74b8c9d0e1f2a3b4c5d6e"
GUEST_ID = "c3d4e5f6a7b84c9d0e1f2a3b4c5d6e7f"
CONTENT_ID = "d4e5f6a7b8c94d0e1f2a3b4c5d6e7f80"
CREDENTIALS = {
    OWNER_ID: "e5f6a7b8c9d04e1f2a3b4c5d6e7f8091",
    ANNE_ID: "f6a7b8c9d0e14f2a3b4c5d6e7f8091a2",
    GUEST_ID: "a7b8c9d0e1f24a3b4c5d6e7f8091a2b3",
}
LONG_LIVED_ID = "0a1b2c3d4e5f40718293a4b5c6d7e8f9"
OWNER_SESSION_ID = "1b2c3d4e5f6a41829304b5c6d7e8f90a"
EXPIRED_SESSION_ID = "2c3d4e5f6a7b42930415c6d7e8f90a1b"
ANNE_SESSION_ID = "3d4e5f6a7b8c43041526d7e8f90a1b2c"
GUEST_SESSION_ID = "4e5f6a7b8c9d44152637e8f90a1b2c3d"
SYSTEM_ID = "5f6a7b8c9d0e45263748f90a1b2c3d4e"

CONFIGURATION_YAML = """\
# Loads default set of integrations. Do not remove.
default_config:

# Load frontend themes from the themes folder
frontend:
  themes: !include_dir_merge_named themes

automation: !include automations.yaml
script: !include scripts.yaml
scene: !include scenes.yaml

homeassistant:
  name: Home
  latitude: 52.3731
  longitude: 4.8922
  elevation: 0
  unit_system: metric
  currency: EUR
  country: NL
  time_zone: Europe/Amsterdam
  external_url: https://home.example.org
  internal_url: http://homeassistant.local:8123
  auth_providers:
    - type: homeassistant
  auth_mfa_modules:
    - type: totp

http:
  server_port: 8123
  use_x_frame_options: true
  ip_ban_enabled: true
  login_attempts_threshold: 5

sensor:
  - platform: template
    sensors:
      solar_angle:
        value_template: "{{ state_attr('sun.sun', 'elevation') }}"

logger:
  default: info
"""


def envelope(key: str, version: int, data: Any) -> str:
    """A .storage file as Home Assistant's Store writes it (JSON indented by 2, minor_version 1)."""
    return json.dumps({"version": version, "minor_version": 1, "key": key, "data": data}, indent=2)


def ha_refresh_token(token_id: str, user_id: str, **fields: Any) -> dict[str, Any]:
    """A refresh token record of Home Assistant's .storage/auth."""
    record: dict[str, Any] = {
        "id": token_id,
        "user_id": user_id,
        "client_id": HA_CLIENT_ID,
        "client_name": None,
        "client_icon": None,
        "token_type": "normal",
        "created_at": "2025-03-01T10:00:00.123456+00:00",
        "access_token_expiration": 1800.0,
        "token": secrets.token_hex(64),
        "jwt_key": secrets.token_hex(64),
        "last_used_at": "2025-11-20T08:30:00.000000+00:00",
        "last_used_ip": "192.168.1.10",
        "expire_at": time.time() + 80 * 86400,
        "credential_id": None,
        "version": HA_VERSION,
    }
    record.update(fields)
    return record


def _hash(password: str) -> str:
    """A stored password as Home Assistant keeps it (cost 4 keeps the tests fast; the format is the same)."""
    return base64.b64encode(bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4))).decode()


def write_ha_directory(config_dir: Path, *, expired_token: bool = True) -> dict[str, Any]:
    """Write the directory; returns what the tests need to know about it.

    expired_token adds a session whose expire_at has passed (removing it at start-up is a write).
    """
    (config_dir / "configuration.yaml").write_text(CONFIGURATION_YAML, encoding="utf-8")
    for name in ("automations.yaml", "scripts.yaml", "scenes.yaml"):
        (config_dir / name).write_text("[]\n" if name == "automations.yaml" else "{}\n", encoding="utf-8")
    (config_dir / "themes").mkdir()
    (config_dir / "secrets.yaml").write_text("# Use this file to store secrets\n", encoding="utf-8")
    storage = config_dir / ".storage"
    storage.mkdir()
    now = time.time()
    tokens = [
        ha_refresh_token(
            LONG_LIVED_ID, OWNER_ID, client_id=None, client_name="Node-RED", token_type="long_lived_access_token",
            access_token_expiration=float(TEN_YEARS), expire_at=None, last_used_at=None, last_used_ip=None,
            credential_id=CREDENTIALS[OWNER_ID],
        ),
        ha_refresh_token(OWNER_SESSION_ID, OWNER_ID, credential_id=CREDENTIALS[OWNER_ID]),
        *(
            [ha_refresh_token(EXPIRED_SESSION_ID, OWNER_ID, credential_id=CREDENTIALS[OWNER_ID], expire_at=now - 86400)]
            if expired_token
            else []
        ),
        ha_refresh_token(ANNE_SESSION_ID, ANNE_ID, credential_id=CREDENTIALS[ANNE_ID]),
        ha_refresh_token(GUEST_SESSION_ID, GUEST_ID, credential_id=CREDENTIALS[GUEST_ID]),
        ha_refresh_token(SYSTEM_ID, CONTENT_ID, client_id=None, token_type="system", expire_at=None),
    ]

    def user(uid: str, name: str, groups: list[str], **extra: Any) -> dict[str, Any]:
        """A user record with Home Assistant's defaults."""
        record = {"id": uid, "group_ids": groups, "is_owner": False, "is_active": True, "name": name,
                  "system_generated": False, "local_only": False}
        record.update(extra)
        return record

    auth = {
        "users": [
            user(OWNER_ID, "Paulus", ["system-admin"], is_owner=True),
            user(ANNE_ID, "Anne", ["system-users"], local_only=True),
            user(GUEST_ID, "Guest", ["system-read-only"], is_active=False),
            user(CONTENT_ID, "Home Assistant Content", ["system-read-only"], system_generated=True),
        ],
        "groups": [
            {"id": "system-admin", "name": "Administrators"},
            {"id": "system-users", "name": "Users"},
            {"id": "system-read-only", "name": "Read Only"},
        ],
        "credentials": [
            {"id": CREDENTIALS[uid], "user_id": uid, "auth_provider_type": "homeassistant",
             "auth_provider_id": None, "data": {"username": username}}
            for uid, username in ((OWNER_ID, "paulus"), (ANNE_ID, "anne"), (GUEST_ID, "guest"))
        ],
        "refresh_tokens": tokens,
    }
    totp = {OWNER_ID: pyotp.random_base32(), ANNE_ID: pyotp.random_base32()}
    files = {
        "auth": envelope("auth", 1, auth),
        "auth_provider.homeassistant": envelope(
            "auth_provider.homeassistant", 1,
            {"users": [{"username": name, "password": _hash(password)} for name, password in PASSWORDS.items()]},
        ),
        "auth_module.totp": envelope("auth_module.totp", 1, {"users": totp}),
        "onboarding": envelope("onboarding", 4, {"done": ["user", "integration", "core_config", "analytics"]}),
        # Files of the rest of Home Assistant, which opp-auth must leave alone.
        "core.config": envelope("core.config", 1, {"latitude": 52.3731, "longitude": 4.8922, "unit_system_v2": "metric"}),
        "core.uuid": envelope("core.uuid", 1, {"uuid": secrets.token_hex(16)}),
    }
    for key, text in files.items():
        (storage / key).write_text(text, encoding="utf-8")
    return {"dir": config_dir, "tokens": {t["id"]: t for t in tokens}, "totp": totp}


@pytest.fixture
def ha_dir(tmp_path: Path) -> dict[str, Any]:
    """A Home Assistant configuration directory (see the module docstring for its provenance)."""
    config_dir = tmp_path / "homeassistant"
    config_dir.mkdir()
    return write_ha_directory(config_dir)


@pytest.fixture(name="write_ha_directory")
def write_ha_directory_fixture() -> Any:
    """write_ha_directory(path) for test modules that need the directory somewhere else."""
    return write_ha_directory


async def serve(opp_auth_client: Any, config_dir: Path, **http: Any) -> Any:
    """The application built as `opp-auth serve` builds it (http: overrides, e.g. for a test's proxy)."""
    pm = make_plugin_manager()
    config = load_config(config_dir, pm)
    config.http.update(http)
    return await opp_auth_client(build_auth(config, pm), config.http)
