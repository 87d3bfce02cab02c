"""IP bans (SPEC 7, G17 fixed): ip_bans.yaml loading, automatic bans, the allow-list, admin commands."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from opp_auth import UserMeta
from opp_auth.http.ban import BanManager
from opp_auth.manager import AuthManager

PROVIDER = {"type": "insecure_example", "users": [{"username": "alice", "password": "alice-pw", "name": "Alice"}]}
PROXIED = {"use_x_forwarded_for": True, "trusted_proxies": ["127.0.0.1"]}


def load(config_dir: Path, text: str, **kwargs: Any) -> BanManager:
    """A BanManager that read text as ip_bans.yaml."""
    (config_dir / "ip_bans.yaml").write_text(text, encoding="utf-8")
    bans = BanManager(config_dir, threshold=3, **kwargs)
    bans.load()
    return bans


# ---- loading a hand-edited file never crashes (G17) -----------------------------------------


def test_entry_with_banned_at_keeps_its_time(config_dir: Path) -> None:
    bans = load(config_dir, "203.0.113.1:\n  banned_at: '2021-03-04T05:06:07+00:00'\n")
    assert bans.banned == {"203.0.113.1": datetime(2021, 3, 4, 5, 6, 7, tzinfo=UTC)}


@pytest.mark.parametrize(
    "text",
    ["203.0.113.1:\n", "203.0.113.1: {}\n", "203.0.113.1:\n  banned_at:\n", "203.0.113.1:\n  other: 1\n"],
    ids=["bare", "empty-mapping", "null-banned-at", "no-banned-at"],
)
def test_entry_without_a_time_is_banned_from_load_time(config_dir: Path, text: str) -> None:
    before = datetime.now(UTC)
    bans = load(config_dir, text)
    assert list(bans.banned) == ["203.0.113.1"]
    assert bans.banned["203.0.113.1"] >= before


@pytest.mark.parametrize(
    ("text", "logged"),
    [
        ("not-an-ip:\n  banned_at: '2021-03-04T05:06:07+00:00'\n203.0.113.2:\n", "not an IP address"),
        ("203.0.113.9:\n  banned_at: 'yesterday'\n203.0.113.2:\n", "invalid banned_at"),
    ],
    ids=["non-ip-key", "bad-datetime"],
)
def test_bad_entry_is_logged_and_skipped(
    config_dir: Path, caplog: pytest.LogCaptureFixture, text: str, logged: str
) -> None:
    bans = load(config_dir, text)
    assert list(bans.banned) == ["203.0.113.2"]
    assert logged in caplog.text


@pytest.mark.parametrize("text", ["- 203.0.113.1\n", "just text\n", "{unclosed: [\n"], ids=["list", "scalar", "invalid-yaml"])
def test_unusable_file_is_logged_and_bans_nothing(config_dir: Path, caplog: pytest.LogCaptureFixture, text: str) -> None:
    bans = load(config_dir, text)
    assert bans.banned == {}
    assert "Unable to load" in caplog.text


# ---- counting failures -----------------------------------------------------------------------


def test_threshold_failures_ban_and_append_to_the_file(config_dir: Path) -> None:
    bans = load(config_dir, "203.0.113.1:\n  banned_at: '2021-03-04T05:06:07+00:00'\n")
    assert [bans.record_failure("198.51.100.1") for _ in range(3)] == [False, False, True]
    saved = yaml.safe_load((config_dir / "ip_bans.yaml").read_text())
    assert set(saved) == {"203.0.113.1", "198.51.100.1"}
    assert datetime.fromisoformat(saved["198.51.100.1"]["banned_at"]).utcoffset().total_seconds() == 0


def test_failures_older_than_the_window_are_not_counted(config_dir: Path) -> None:
    bans = BanManager(config_dir, threshold=2, window=0.2)
    bans.record_failure("198.51.100.1")
    time.sleep(0.3)
    assert bans.record_failure("198.51.100.1") is False


def test_success_resets_the_count(config_dir: Path) -> None:
    bans = BanManager(config_dir, threshold=2)
    bans.record_failure("198.51.100.1")
    bans.record_success("198.51.100.1")
    assert bans.record_failure("198.51.100.1") is False


def test_default_threshold_never_bans(config_dir: Path) -> None:
    bans = BanManager(config_dir, threshold=-1)
    assert not any(bans.record_failure("198.51.100.1") for _ in range(100))


def test_allowlisted_address_is_never_banned(config_dir: Path) -> None:
    bans = BanManager(config_dir, threshold=1, allowlist=["192.168.0.0/16"])
    assert bans.record_failure("192.168.1.5") is False
    assert not (config_dir / "ip_bans.yaml").exists()


def test_failure_counts_are_bounded(config_dir: Path) -> None:
    bans = BanManager(config_dir, threshold=5)
    for i in range(20000):
        bans.record_failure(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert len(bans._failures) <= 10000


def test_remove_rewrites_the_file_without_the_address(config_dir: Path) -> None:
    bans = load(config_dir, "203.0.113.1:\n  banned_at: '2021-03-04T05:06:07+00:00'\n203.0.113.2:\n")
    assert bans.remove_ban("203.0.113.2") is True
    assert set(yaml.safe_load((config_dir / "ip_bans.yaml").read_text())) == {"203.0.113.1"}


# ---- through the real server -----------------------------------------------------------------


async def test_server_starts_with_a_hand_edited_file_and_refuses_listed_addresses(
    onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any
) -> None:
    (onboarded / "ip_bans.yaml").write_text("127.0.0.1:\nnot-an-ip:\n203.0.113.9:\n  banned_at: never\n")
    client = await opp_auth_client(await opp_auth_factory(providers=[PROVIDER], mfa_modules=[]))
    async with client.request("GET", "/auth/providers") as resp:
        assert resp.status == 403


async def test_listed_address_on_the_allowlist_is_served(
    onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any
) -> None:
    (onboarded / "ip_bans.yaml").write_text("127.0.0.1:\n")
    auth = await opp_auth_factory(providers=[PROVIDER], mfa_modules=[], http={"ban_allowlist": ["127.0.0.0/8"]})
    client = await opp_auth_client(auth)
    async with client.request("GET", "/auth/providers") as resp:
        assert resp.status == 200


async def test_wrong_passwords_from_one_client_ban_it_and_not_others(
    onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any
) -> None:
    auth = await opp_auth_factory(
        providers=[PROVIDER], mfa_modules=[], http={**PROXIED, "login_attempts_threshold": 2}
    )
    client = await opp_auth_client(auth)
    for _ in range(2):
        async with client.request("GET", "/api/", headers={"X-Forwarded-For": "203.0.113.5"}) as resp:
            assert resp.status == 401
        await asyncio.sleep(0.01)
    async with client.request("GET", "/auth/providers", headers={"X-Forwarded-For": "203.0.113.5"}) as resp:
        assert resp.status == 403
    async with client.request("GET", "/auth/providers", headers={"X-Forwarded-For": "203.0.113.6"}) as resp:
        assert resp.status == 200


@pytest.fixture
async def admin_session(onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any, ws_connector: Any) -> Any:
    """(client, admin websocket) of a server whose ip_bans.yaml bans 203.0.113.5."""
    (onboarded / "ip_bans.yaml").write_text("203.0.113.5:\n  banned_at: '2021-03-04T05:06:07+00:00'\n")
    auth: AuthManager = await opp_auth_factory(providers=[PROVIDER], mfa_modules=[], http=PROXIED)
    client = await opp_auth_client(auth)
    admin = await auth.users.async_create_user("Admin", [UserMeta.GROUP_ADMIN], is_owner=True)
    return client, await ws_connector(client).user(auth, admin)


async def test_admin_lists_bans(admin_session: Any) -> None:
    _, session = admin_session
    assert await session.result("config/auth/bans/list") == [
        {"ip_address": "203.0.113.5", "banned_at": "2021-03-04T05:06:07+00:00"}
    ]


async def test_admin_removing_a_ban_serves_the_address_at_once_and_saves(admin_session: Any, onboarded: Path) -> None:
    client, session = admin_session
    assert await session.result("config/auth/bans/remove", ip_address="203.0.113.5") is None
    async with client.request("GET", "/auth/providers", headers={"X-Forwarded-For": "203.0.113.5"}) as resp:
        assert resp.status == 200
    assert not yaml.safe_load((onboarded / "ip_bans.yaml").read_text())


async def test_admin_removing_an_address_that_is_not_banned_is_not_found(admin_session: Any) -> None:
    _, session = admin_session
    assert await session.error("config/auth/bans/remove", ip_address="203.0.113.77") == {
        "code": "not_found",
        "message": "IP address is not banned",
    }
