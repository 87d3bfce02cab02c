"""The one event stream: its schema, its subscription, and what it costs when nobody listens."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from opp_auth import AuthEvent
from opp_auth.events import EVENT_TYPES, FAILURE_REASONS, ORIGIN, Origin
from opp_auth.manager import AuthManager

EXAMPLE = {"type": "insecure_example", "users": [{"username": "ann", "password": "pw", "name": "Ann"}]}


@pytest.fixture
async def auth(opp_auth_factory: Any) -> AuthManager:
    """A manager with the example provider."""
    return await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[])


async def test_nothing_is_built_when_nobody_listens(opp_auth_factory: Any) -> None:
    """Without a subscriber (audit off, login history closed) or an opp_auth_event plugin, emit builds no event."""
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[], blocks={"audit": {"enabled": False}})
    auth.login_history.close()
    if auth.pm.hook.opp_auth_event.get_hookimpls():  # an installed plugin listens: take it away
        for impl in auth.pm.hook.opp_auth_event.get_hookimpls():
            auth.pm.unregister(impl.plugin)
    assert not auth.events.listened
    assert auth.events.emit("user_created", user_id="x") is None


async def test_a_subscriber_receives_each_event_once_in_line(auth: AuthManager) -> None:
    """A subscriber is called with the event before the operation returns; unsubscribing stops it."""
    seen: list[AuthEvent] = []
    unsubscribe = auth.events.subscribe(seen.append)
    user = await auth.users.async_create_user("Bob")
    assert [(e.type, e.user_id) for e in seen] == [("user_created", user.id)]
    unsubscribe()
    await auth.users.async_create_user("Carl")
    assert len(seen) == 1


async def test_a_failing_consumer_is_logged_and_the_action_goes_on(
    auth: AuthManager, caplog: pytest.LogCaptureFixture
) -> None:
    """A consumer that raises does not fail the operation, nor keep the others from the event."""
    seen: list[AuthEvent] = []

    def broken(event: AuthEvent) -> None:
        raise RuntimeError("disk on fire")

    auth.events.subscribe(broken)
    auth.events.subscribe(seen.append)
    with caplog.at_level(logging.ERROR):
        user = await auth.users.async_create_user("Bob")
    assert auth.users.get_user(user.id) is user
    assert [e.type for e in seen] == ["user_created"]
    assert "disk on fire" in caplog.text and "user_created" in caplog.text


async def test_user_changes_are_told_apart(auth: AuthManager) -> None:
    """Deactivate, activate and rename are three events; an update that changes nothing is none."""
    seen: list[AuthEvent] = []
    auth.events.subscribe(seen.append)
    user = await auth.users.async_create_user("Bob")
    await auth.users.async_deactivate_user(user)
    await auth.users.async_activate_user(user)
    await auth.users.async_update_user(user, name="Robert")
    await auth.users.async_update_user(user, name="Robert")
    assert [e.type for e in seen] == ["user_created", "user_deactivated", "user_activated", "user_changed"]
    assert seen[-1].details["changed"] == ["name"]


async def test_client_strings_are_clipped_and_the_origin_fills_in(auth: AuthManager) -> None:
    """A huge username or user agent is clipped; address, agent and actor come from the origin."""
    seen: list[AuthEvent] = []
    auth.events.subscribe(seen.append)
    ORIGIN.set(Origin(via="websocket", remote_address="192.0.2.7", user_agent="x" * 10_000, actor_id="admin"))
    try:
        auth.events.login_failed("192.0.2.7", None, "a" * 100_000, "invalid_auth")
    finally:
        ORIGIN.set(None)
    (event,) = seen
    assert len(event.username or "") == 256 and (event.username or "").endswith("\u2026")
    assert len(event.user_agent or "") == 512
    assert (event.remote_address, event.via, event.actor_id) == ("192.0.2.7", "websocket", "admin")


async def test_unknown_types_and_fields_are_refused(auth: AuthManager) -> None:
    """A typo in the core is a loud error, not a silently undocumented event."""
    auth.events.subscribe(lambda event: None)
    with pytest.raises(ValueError):
        auth.events.emit("user_exploded")
    with pytest.raises(TypeError):
        auth.events.emit("user_created", password="hunter2")


def test_the_schema_is_documented() -> None:
    """Every type and reason has its sentence; as_dict leaves out what is unknown."""
    assert all(EVENT_TYPES.values()) and all(FAILURE_REASONS.values())
    event = AuthEvent(type="login_failed", time=1.0, reason="invalid_auth", provider=("openpeerpower", None))
    assert event.failed
    assert event.as_dict() == {
        "type": "login_failed",
        "time": 1.0,
        "reason": "invalid_auth",
        "provider": ["openpeerpower", None],
    }
