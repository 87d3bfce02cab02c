"""Refresh tokens at rest and their idle expiry (G8)."""

from __future__ import annotations

import json
import os
import stat
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest

from opp_auth.manager import SECRET_FILE, AuthManager
from opp_auth.models import TOKEN_TYPE_LONG_LIVED_ACCESS_TOKEN
from opp_auth.testing import CLIENT_ID

PROVIDERS = [{"type": "insecure_example", "users": [{"username": "u", "password": "p", "name": "U"}]}]


async def make(opp_auth_factory: Any, **kwargs: Any) -> AuthManager:
    """A manager with the example provider."""
    return await opp_auth_factory(providers=PROVIDERS, mfa_modules=[], **kwargs)


def auth_file(config_dir: Path) -> dict[str, Any]:
    """The parsed .storage/auth."""
    return json.loads((config_dir / ".storage" / "auth").read_text())


@pytest.mark.storage_types("json")  # reads the .storage files
async def test_auth_file_holds_no_refresh_secret_and_no_signing_key(opp_auth_factory: Any, config_dir: Path) -> None:
    """A stolen .storage/auth or its journal has only digests: neither the refresh token nor its signing key."""
    auth = await make(opp_auth_factory)
    user = await auth.users.async_create_user("U", ["system-users"])
    token = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    secret = token.token
    assert secret is not None
    journal = (config_dir / ".storage" / ".auth.journal").read_text()
    assert token.id in journal
    assert secret not in journal and token.jwt_key not in journal
    await auth.store.async_compact()
    text = (config_dir / ".storage" / "auth").read_text()
    assert secret not in text and token.jwt_key not in text
    (record,) = auth_file(config_dir)["data"]["refresh_tokens"]
    assert record["jwt_key"] is None and len(record["token_hash"]) == 64


async def test_signing_key_comes_from_the_secret_kept_apart(opp_auth_factory: Any, config_dir: Path) -> None:
    """The server secret lives outside .storage, readable by the owner only; without it the keys differ."""
    auth = await make(opp_auth_factory)
    user = await auth.users.async_create_user("U", ["system-users"])
    token = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    access = await auth.access_tokens.async_create_access_token(token)
    secret_path = config_dir / SECRET_FILE
    assert secret_path.parent == config_dir
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    # An attacker with the file but not the secret guesses a key: the forged token is refused.
    now = int(time.time())
    forged = jwt.encode({"iss": token.id, "iat": now, "exp": now + 60}, "0" * 128, algorithm="HS256")
    assert auth.access_tokens.validate_access_token(forged) is None
    assert auth.access_tokens.validate_access_token(access) is token


async def test_tokens_survive_a_restart_with_the_same_secret(opp_auth_factory: Any, config_dir: Path) -> None:
    """After a restart the refresh secret still finds its token and old access tokens still verify."""
    first = await make(opp_auth_factory)
    user = await first.users.async_create_user("U", ["system-users"])
    token = await first.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    secret, access = token.token, await first.access_tokens.async_create_access_token(token)
    await first.async_shutdown()
    second = await make(opp_auth_factory)
    found = await second.refresh_tokens.async_get_refresh_token_by_token(secret)  # type: ignore[arg-type]
    assert found is not None and found.id == token.id
    assert second.access_tokens.validate_access_token(access) is not None


@pytest.mark.storage_types("json")  # a server on PostgreSQL refuses to start with another secret
async def test_a_lost_secret_invalidates_new_tokens_not_the_store(opp_auth_factory: Any, config_dir: Path) -> None:
    """Without the secret file, tokens made by opp-auth stop verifying; users and logins stay."""
    first = await make(opp_auth_factory)
    user = await first.users.async_create_user("U", ["system-users"])
    token = await first.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    access = await first.access_tokens.async_create_access_token(token)
    await first.async_shutdown()
    os.unlink(config_dir / SECRET_FILE)
    second = await make(opp_auth_factory)
    assert second.access_tokens.validate_access_token(access) is None
    assert second.users.get_user(user.id) is not None


async def test_unused_session_token_expires(opp_auth_factory: Any) -> None:
    """A normal refresh token unused past its expiry is removed when presented."""
    auth = await make(opp_auth_factory, refresh_token_expiry=timedelta(days=90))
    user = await auth.users.async_create_user("U", ["system-users"])
    token = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    assert token.expire_at is not None and abs(token.expire_at - (time.time() + 90 * 86400)) < 5
    secret = token.token
    token.expire_at = time.time() - 1
    assert await auth.refresh_tokens.async_get_refresh_token_by_token(secret) is None  # type: ignore[arg-type]
    assert auth.store.get_refresh_token(token.id) is None


async def test_using_a_token_moves_its_expiry(opp_auth_factory: Any) -> None:
    """Minting an access token pushes the expiry out again."""
    auth = await make(opp_auth_factory, refresh_token_expiry=timedelta(days=90))
    user = await auth.users.async_create_user("U", ["system-users"])
    token = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    token.expire_at = time.time() + 10
    await auth.access_tokens.async_create_access_token(token)
    assert token.expire_at > time.time() + 89 * 86400


async def test_long_lived_tokens_do_not_expire(opp_auth_factory: Any) -> None:
    """Long-lived access tokens keep working however long they are unused."""
    auth = await make(opp_auth_factory, refresh_token_expiry=timedelta(days=1))
    user = await auth.users.async_create_user("U", ["system-users"])
    token = await auth.refresh_tokens.async_create_refresh_token(
        user, client_name="script", token_type=TOKEN_TYPE_LONG_LIVED_ACCESS_TOKEN, access_token_expiration=timedelta(days=3650)
    )
    assert token.expire_at is None
    assert await auth.refresh_tokens.async_purge_expired_tokens() == 0


async def test_expiry_can_be_switched_per_token(opp_auth_factory: Any) -> None:
    """The per-token switch turns expiry off and on again."""
    auth = await make(opp_auth_factory)
    user = await auth.users.async_create_user("U", ["system-users"])
    token = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    await auth.refresh_tokens.async_set_expiry(token, False)
    assert token.expire_at is None and not auth.refresh_tokens.is_expired(token, now=time.time() + 10**9)
    await auth.refresh_tokens.async_set_expiry(token, True)
    assert token.expire_at is not None


@pytest.mark.storage_types("json")  # reads the .storage files
async def test_expired_tokens_are_purged_at_start(opp_auth_factory: Any, config_dir: Path) -> None:
    """Tokens that expired while the server was down are gone after the next start."""
    first = await make(opp_auth_factory)
    user = await first.users.async_create_user("U", ["system-users"])
    token = await first.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    keep = await first.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    token.expire_at = time.time() - 5
    await first.store.async_save()
    await first.async_shutdown()
    second = await make(opp_auth_factory)
    assert second.store.get_refresh_token(token.id) is None
    assert second.store.get_refresh_token(keep.id) is not None


@pytest.mark.storage_types("json")  # reads the .storage files
async def test_open_peer_power_tokens_start_their_clock_when_loaded(opp_auth_factory: Any, config_dir: Path) -> None:
    """A years-old session token from Open Peer Power is not expired on the first start; it gets a full period."""
    auth = await make(opp_auth_factory)
    user = await auth.users.async_create_user("U", ["system-users"])
    token = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    await auth.async_shutdown()
    data = auth_file(config_dir)
    record = data["data"]["refresh_tokens"][0]
    record.pop("expire_at")
    record.pop("token_hash")
    record["token"] = "ab" * 64
    record["jwt_key"] = "cd" * 64
    record["last_used_at"] = "2021-01-01T00:00:00+00:00"
    (config_dir / ".storage" / "auth").write_text(json.dumps(data))
    again = await make(opp_auth_factory, refresh_token_expiry=timedelta(days=90))
    loaded = await again.refresh_tokens.async_get_refresh_token_by_token("ab" * 64)
    assert loaded is not None and loaded.id == token.id
    assert loaded.expire_at is not None and loaded.expire_at > time.time() + 89 * 86400


@pytest.mark.parametrize("days", [None, 30])
async def test_expiry_days_are_configurable(opp_auth_factory: Any, config_dir: Path, days: int | None) -> None:
    """openpeerpower: refresh_token_expiry_days sets the period; null turns expiry off."""
    from opp_auth.config import load_config
    from opp_auth.plugins import make_plugin_manager
    from opp_auth.server import expiry_of

    (config_dir / "configuration.yaml").write_text(
        f"openpeerpower:\n  refresh_token_expiry_days: {'null' if days is None else days}\n"
    )
    config = load_config(config_dir, make_plugin_manager())
    assert expiry_of(config) == (None if days is None else timedelta(days=days))
