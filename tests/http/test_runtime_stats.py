"""PluginContext.runtime_stats (token checks, refresh grants, gauges) and subscribe_events, without any metrics plugin."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from opp_auth import AuthEvent, UserMeta
from opp_auth.manager import AuthManager
from opp_auth.testing import CLIENT_ID

PROVIDER = {"type": "insecure_example", "users": [{"username": "ann", "password": "ann-pw", "name": "Ann"}]}
HANDLER = ["insecure_example", None]


async def test_token_checks_are_counted_by_kind_and_outcome(onboarded: Path, opp_auth_factory: Any) -> None:
    auth: AuthManager = await opp_auth_factory(providers=[PROVIDER], mfa_modules=[])
    user = await auth.users.async_create_user("Bo", [UserMeta.GROUP_ADMIN], local_only=True)
    refresh_token = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    token = await auth.access_tokens.async_create_access_token(refresh_token, "127.0.0.1")
    assert auth.access_tokens.validate_access_token(token, "127.0.0.1") is not None
    assert auth.access_tokens.validate_access_token(token, "203.0.113.1") is None
    assert auth.access_tokens.validate_access_token("x.y.z", "127.0.0.1") is None
    signed = auth.access_tokens.sign_path("/api/", timedelta(minutes=1), refresh_token.id).split("authSig=")[1]
    assert auth.access_tokens.validate_signed_path("/api/", signed, [], "127.0.0.1") is not None
    assert auth.access_tokens.validate_signed_path("/other", signed, [], "127.0.0.1") is None
    await auth.users.async_update_user(user, is_active=False)
    assert auth.access_tokens.validate_access_token(token, "127.0.0.1") is None
    checks = auth.context.runtime_stats()["token_checks"]
    assert {key: n for key, n in checks.items() if n} == {
        ("access_token", "valid"): 1,
        ("access_token", "local_only"): 1,
        ("access_token", "invalid"): 1,
        ("access_token", "user_inactive"): 1,
        ("signed_path", "valid"): 1,
        ("signed_path", "invalid"): 1,
    }


async def test_refresh_grants_and_gauges(
    onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any, ws_connector: Any
) -> None:
    auth: AuthManager = await opp_auth_factory(providers=[PROVIDER], mfa_modules=[])
    client = await opp_auth_client(auth)
    tokens = await client.login.tokens(HANDLER, [{"username": "ann", "password": "ann-pw"}])
    for refresh in (tokens["refresh_token"], "unknown"):
        await client.login.token(grant_type="refresh_token", refresh_token=refresh, client_id=CLIENT_ID)
    await client.login.token(grant_type="refresh_token", client_id=CLIENT_ID)
    await ws_connector(client).auth(tokens["access_token"])
    await client.login.start(HANDLER)
    stats = auth.context.runtime_stats()
    assert stats["refresh_grants"] == {"success": 1, "invalid_grant": 1, "invalid_request": 1, "access_denied": 0}
    assert stats["gauges"] == {
        "login_flows_in_progress": 1,
        "mfa_setup_flows_in_progress": 0,
        "websocket_connections": 1,
    }


async def test_a_subscription_receives_events_in_line_until_it_ends(onboarded: Path, opp_auth_factory: Any) -> None:
    auth: AuthManager = await opp_auth_factory(providers=[PROVIDER], mfa_modules=[])
    seen: list[AuthEvent] = []
    unsubscribe = auth.context.subscribe_events(seen.append)
    user = await auth.users.async_create_user("Cy")
    assert [(e.type, e.user_id) for e in seen] == [("user_created", user.id)]
    unsubscribe()
    await auth.users.async_create_user("Di")
    assert len(seen) == 1
