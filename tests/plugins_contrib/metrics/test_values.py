"""Real traffic over HTTP and the websocket, then a parsed /metrics with the expected values."""

from __future__ import annotations

import asyncio
from typing import Any

from opp_auth import UserMeta
from opp_auth.manager import AuthManager
from opp_auth.testing import CLIENT_ID, OppAuthClient

from .conftest import HANDLER, PASSWORDS, PROXIED, Scrape, scrape

WS_TIMEOUT = 5.0
PIN = "4242"
PIN_MODULE = {"type": "insecure_example", "id": "pin", "data": []}


async def settle(auth: AuthManager) -> None:
    """Let the background event deliveries (the plugin's hooks) run to the end."""
    await auth.events.async_drain()


async def scrape_settled(auth: AuthManager, client: OppAuthClient) -> Scrape:
    """/metrics once every event so far was delivered."""
    await settle(auth)
    return await scrape(client)


async def login(client: OppAuthClient, username: str, password: str) -> tuple[int, Any]:
    """One login flow with a username and password: the last step's (status, body)."""
    status, result = await client.login.start(HANDLER)
    assert status == 200, result
    return await client.login.step(result["flow_id"], username=username, password=password)


async def api(client: OppAuthClient, token: str, **headers: str) -> int:
    """GET /api/ with a bearer token: the status."""
    async with client.request("GET", "/api/", headers={"Authorization": f"Bearer {token}", **headers}) as resp:
        return resp.status


async def ws_auth(client: OppAuthClient, token: str) -> tuple[Any, dict[str, Any]]:
    """A websocket after its auth message: (socket, the auth reply)."""
    ws = await client.session.ws_connect(client.url("/api/websocket"))
    assert (await ws.receive_json(timeout=WS_TIMEOUT))["type"] == "auth_required"
    await ws.send_json({"type": "auth", "access_token": token})
    return ws, await ws.receive_json(timeout=WS_TIMEOUT)


async def test_every_metric_is_there_at_zero_before_any_traffic(metrics_server: Any) -> None:
    auth, client = await metrics_server()
    result = await scrape(client)
    for name in (
        "opp_auth_logins",
        "opp_auth_mfa_results",
        "opp_auth_token_checks",
        "opp_auth_refresh_grants",
        "opp_auth_throttled_requests",
        "opp_auth_banned_requests",
        "opp_auth_websocket_connections",
        "opp_auth_login_flows_in_progress",
        "opp_auth_mfa_setup_flows_in_progress",
        "opp_auth_login_duration_seconds",
        "opp_auth_http_request_duration_seconds",
    ):
        assert name in result.families, name
    assert result.value("opp_auth_websocket_connections") == 0
    assert result.value("opp_auth_token_checks_total", kind="access_token", outcome="valid") == 0


async def test_logins_are_counted_by_provider_type_and_result(metrics_server: Any) -> None:
    auth, client = await metrics_server()
    status, result = await login(client, "alice", PASSWORDS["alice"])
    assert (status, result["type"]) == (200, "create_entry")
    for _ in range(2):
        status, result = await login(client, "bob", "wrong")
        assert result["errors"] == {"base": "invalid_auth"}
    metrics = await scrape_settled(auth, client)
    assert metrics.value("opp_auth_logins_total", provider_type="insecure_example", result="success") == 1
    assert metrics.value("opp_auth_logins_total", provider_type="insecure_example", result="invalid_auth") == 2


async def test_second_factors_and_login_durations(metrics_server: Any) -> None:
    auth, client = await metrics_server(mfa_modules=[PIN_MODULE])
    await client.login.tokens(HANDLER, [{"username": "alice", "password": PASSWORDS["alice"]}])  # creates Alice
    alice = next(u for u in auth.store.users() if u.name == "Alice")
    await auth.users.async_enable_user_mfa(alice, "pin", {"pin": PIN})
    status, result = await login(client, "alice", PASSWORDS["alice"])
    assert (result["type"], result["step_id"]) == ("form", "mfa"), result
    status, result = await client.login.step(result["flow_id"], pin="0000")
    assert result["errors"] == {"base": "invalid_code"}, result
    status, result = await client.login.step(result["flow_id"], pin=PIN)
    assert result["type"] == "create_entry", result
    metrics = await scrape_settled(auth, client)
    assert metrics.value("opp_auth_mfa_results_total", mfa_module_type="insecure_example", result="failure") == 1
    assert metrics.value("opp_auth_mfa_results_total", mfa_module_type="insecure_example", result="success") == 1
    assert metrics.value("opp_auth_logins_total", provider_type="insecure_example", result="success") == 2
    assert metrics.value("opp_auth_logins_total", provider_type="insecure_example", result="mfa_failed") == 1
    duration = "opp_auth_login_duration_seconds_count"
    assert metrics.value(duration, provider_type="insecure_example", result="success") == 2
    assert metrics.value(duration, provider_type="insecure_example", result="mfa_failed") == 1
    assert (
        0 < metrics.value("opp_auth_login_duration_seconds_sum", provider_type="insecure_example", result="success") < 5
    )
    assert PIN not in metrics.text


async def test_throttled_and_banned_requests(metrics_server: Any) -> None:
    """A guessing client is throttled (429), then banned (403): each refusal counted once, not as a login."""
    throttle = {"attempts_per_address_and_user": 1, "max_lock_seconds": 60}
    auth, client = await metrics_server(http={**PROXIED, "login_attempts_threshold": 3, "login_throttle": throttle})
    forwarded = {"X-Forwarded-For": "203.0.113.66"}
    statuses = []
    for _ in range(3):
        body = {"client_id": CLIENT_ID, "handler": HANDLER, "redirect_uri": f"{CLIENT_ID}/callback"}
        async with client.request("POST", "/auth/login_flow", json=body, headers=forwarded) as resp:
            flow = await resp.json()
        step = {"client_id": CLIENT_ID, "username": "bob", "password": "guess"}
        async with client.request("POST", f"/auth/login_flow/{flow['flow_id']}", json=step, headers=forwarded) as resp:
            statuses.append(resp.status)
        await settle(auth)
    assert statuses == [200, 429, 429], statuses
    for _ in range(3):  # two more failures (401s) ban the address; then refusals
        async with client.request("GET", "/api/", headers=forwarded) as resp:
            statuses.append(resp.status)
        await settle(auth)
    assert statuses[3:] == [401, 401, 403], statuses
    metrics = await scrape_settled(auth, client)
    assert metrics.value("opp_auth_throttled_requests_total") == 2
    assert metrics.value("opp_auth_banned_requests_total") == 1
    assert metrics.value("opp_auth_logins_total", provider_type="insecure_example", result="invalid_auth") == 1
    assert metrics.total("opp_auth_logins_total") == 1


async def test_token_checks_refresh_grants_and_deleted_tokens(metrics_server: Any) -> None:
    auth, client = await metrics_server()
    tokens = await client.login.tokens(HANDLER, [{"username": "alice", "password": PASSWORDS["alice"]}])
    assert await api(client, tokens["access_token"]) == 200
    assert await api(client, tokens["access_token"]) == 200
    assert await api(client, "not-a-token") == 401
    status, refreshed = await client.login.token(
        grant_type="refresh_token", refresh_token=tokens["refresh_token"], client_id=CLIENT_ID
    )
    assert status == 200, refreshed
    status, _ = await client.login.token(grant_type="refresh_token", refresh_token="nope", client_id=CLIENT_ID)
    assert status == 400
    # Deleting the session: its access tokens stop working and are counted invalid.
    async with client.request("POST", "/auth/revoke", data={"token": tokens["refresh_token"]}) as resp:
        assert resp.status == 200
    assert await api(client, refreshed["access_token"]) == 401
    metrics = await scrape_settled(auth, client)
    assert metrics.value("opp_auth_token_checks_total", kind="access_token", outcome="valid") == 2
    assert metrics.value("opp_auth_token_checks_total", kind="access_token", outcome="invalid") == 2
    assert metrics.value("opp_auth_refresh_grants_total", result="success") == 1
    assert metrics.value("opp_auth_refresh_grants_total", result="invalid_grant") == 1


async def test_refused_sessions_are_counted_by_reason(metrics_server: Any) -> None:
    """A deactivated user's and a local-only user's tokens from outside: the access decision's refusals."""
    auth, client = await metrics_server(http=PROXIED)
    user = await auth.users.async_create_user("Carol", [UserMeta.GROUP_ADMIN], local_only=True)
    refresh_token = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    token = await auth.access_tokens.async_create_access_token(refresh_token, "127.0.0.1")
    assert await api(client, token, **{"X-Forwarded-For": "203.0.113.7"}) == 401
    await auth.users.async_update_user(user, is_active=False)
    assert await api(client, token) == 401
    metrics = await scrape_settled(auth, client)
    assert metrics.value("opp_auth_token_checks_total", kind="access_token", outcome="local_only") == 1
    assert metrics.value("opp_auth_token_checks_total", kind="access_token", outcome="user_inactive") == 1


async def test_websocket_connections_and_flows_in_progress_are_gauges(metrics_server: Any) -> None:
    auth, client = await metrics_server()
    tokens = await client.login.tokens(HANDLER, [{"username": "alice", "password": PASSWORDS["alice"]}])
    first, reply = await ws_auth(client, tokens["access_token"])
    assert reply["type"] == "auth_ok"
    second, reply = await ws_auth(client, tokens["access_token"])
    assert reply["type"] == "auth_ok"
    refused, reply = await ws_auth(client, "garbage")
    assert reply["type"] == "auth_invalid"
    await refused.close()
    status, _ = await client.login.start(HANDLER)  # left unfinished
    assert status == 200
    metrics = await scrape_settled(auth, client)
    assert metrics.value("opp_auth_websocket_connections") == 2
    assert metrics.value("opp_auth_login_flows_in_progress") == 1
    assert metrics.value("opp_auth_token_checks_total", kind="access_token", outcome="valid") == 2
    assert metrics.value("opp_auth_token_checks_total", kind="access_token", outcome="invalid") == 1
    await first.close()
    # Deleting the refresh token closes the other socket (G6): the gauge follows.
    refresh_token = next(t for t in auth.store.refresh_tokens() if t.user.name == "Alice")
    await auth.refresh_tokens.async_remove_refresh_token(refresh_token)
    msg = await second.receive(timeout=WS_TIMEOUT)
    assert msg.type.name in ("CLOSE", "CLOSING", "CLOSED"), msg
    for _ in range(50):
        if (await scrape(client)).value("opp_auth_websocket_connections") == 0:
            break
        await asyncio.sleep(0.02)
    assert (await scrape(client)).value("opp_auth_websocket_connections") == 0


async def test_request_latency_is_labelled_by_route_template_not_path(metrics_server: Any) -> None:
    auth, client = await metrics_server()
    status, result = await client.login.start(HANDLER)
    flow_id = result["flow_id"]
    await client.login.step(flow_id, username="alice", password=PASSWORDS["alice"])
    async with client.request("GET", "/no/such/path/12345") as resp:
        assert resp.status == 404
    metrics = await scrape_settled(auth, client)
    name = "opp_auth_http_request_duration_seconds_count"
    assert metrics.value(name, route="/auth/login_flow/{flow_id}", method="POST", status_class="2xx") == 1
    assert metrics.value(name, route="/auth/login_flow", method="POST", status_class="2xx") == 1
    assert metrics.value(name, route="unmatched", method="GET", status_class="4xx") == 1
    assert flow_id not in metrics.text
    assert "12345" not in metrics.text
