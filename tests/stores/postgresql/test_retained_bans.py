"""Retained events (bans, lifted bans) outlive the change retention: a server started any time later gets them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from opp_auth_postgresql.backend import PostgresBackend

from opp_auth.http.ban import TOPIC, BanManager
from opp_auth.manager import AuthManager

Factory = Callable[..., Awaitable[AuthManager]]


@pytest.fixture
def opp_auth_storage_type() -> str:
    """Every test here runs on PostgreSQL."""
    return "postgresql"


async def _backend(factory: Factory) -> PostgresBackend:
    """The backend of a new server."""
    auth = await factory(providers=[{"type": "insecure_example", "users": []}])
    assert isinstance(auth.backend, PostgresBackend)
    return auth.backend


async def test_the_pruner_keeps_the_latest_retained_event_of_each_key(opp_auth_factory: Factory) -> None:
    """Everything older than the retention goes, but the last ban or lift of each address."""
    a = await _backend(opp_auth_factory)
    state = a.ephemeral_state()
    await state.async_publish_retained(
        TOPIC, {"op": "ban", "ip": "192.0.2.1", "at": "2020-01-01T00:00:00+00:00"}, "192.0.2.1"
    )
    await state.async_publish_retained(
        TOPIC, {"op": "ban", "ip": "192.0.2.2", "at": "2020-01-01T00:00:00+00:00"}, "192.0.2.2"
    )
    await state.async_publish_retained(TOPIC, {"op": "unban", "ip": "192.0.2.2"}, "192.0.2.2")
    await state.async_publish(TOPIC, {"op": "ban", "ip": "192.0.2.3", "at": "2020-01-01T00:00:00+00:00"})
    await state.async_publish("login_failures", {"op": "fail", "ip": "192.0.2.4", "keys": []})
    assert await a.async_prune(older_than_hours=0) == 3
    assert await a.async_prune(older_than_hours=0) == 0

    b = await _backend(opp_auth_factory)
    # Once its change feed has caught up: what the feed applies at start is not the replay under test
    # (subscribed earlier, the same events could arrive twice).
    await b.connected.wait()
    seen: list[dict[str, Any]] = []
    b.ephemeral_state().subscribe(TOPIC, lambda event, age: seen.append(event))
    await b.ephemeral_state().async_replay(TOPIC, 1.0)
    assert [(e["op"], e["ip"]) for e in seen] == [("ban", "192.0.2.1"), ("unban", "192.0.2.2")]


async def test_a_server_started_after_the_retention_has_every_ban_and_no_lifted_one(
    opp_auth_factory: Factory, tmp_path: Path
) -> None:
    """Banned on A; another lifted on A: a new server whose file still lists the lifted one refuses only the first."""
    a = await _backend(opp_auth_factory)
    on_a = BanManager(tmp_path / "a", threshold=1)
    (tmp_path / "a").mkdir()
    on_a.share(a.ephemeral_state())
    on_a.add_ban("192.0.2.1")
    on_a.add_ban("192.0.2.2")
    on_a.add_ban("192.0.2.3")
    for task in list(on_a._pending):
        await task
    old_file = (tmp_path / "a" / "ip_bans.yaml").read_text(encoding="utf-8")
    assert on_a.remove_ban("192.0.2.2")
    assert on_a.remove_ban("192.0.2.3")
    for task in list(on_a._pending):
        await task
    assert await a.async_prune(older_than_hours=0) > 0

    # Elsewhere: a lifted ban in the file from before the lift; another written there by hand after its lift.
    (tmp_path / "c").mkdir()
    later = (datetime.now(UTC) + timedelta(seconds=5)).isoformat()
    entries = yaml.safe_load(old_file)
    (tmp_path / "c" / "ip_bans.yaml").write_text(
        yaml.safe_dump({"192.0.2.2": entries["192.0.2.2"], "192.0.2.3": {"banned_at": later}}), encoding="utf-8"
    )
    c = await _backend(opp_auth_factory)
    on_c = BanManager(tmp_path / "c", threshold=1)
    on_c.share(c.ephemeral_state())
    on_c.load()
    await c.ephemeral_state().async_replay(TOPIC, 1.0)
    assert on_c.is_banned("192.0.2.1")
    assert not on_c.is_banned("192.0.2.2")
    assert on_c.is_banned("192.0.2.3")
