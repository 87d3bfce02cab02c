"""Login throttling (opp_auth.throttle) and the caps on resources, against a real server."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import voluptuous as vol
from aiohttp import web

from opp_auth import User, UserMeta
from opp_auth.codes import AUTHORIZE, MAX_CODES
from opp_auth.config import HTTP_SCHEMA
from opp_auth.http import websocket_api
from opp_auth.http.app import MAX_BODY_SIZE
from opp_auth.http.websocket_api import MAX_CONNECTIONS_PER_USER, RATE_BURST
from opp_auth.login_flow import MAX_FLOWS_PER_ADDRESS
from opp_auth.manager import AuthManager
from opp_auth.models import Credentials
from opp_auth.testing import CLIENT_ID, OppAuthClient
from opp_auth.throttle import LoginThrottle

HANDLER = ["insecure_example", None]
PROVIDER = {
    "type": "insecure_example",
    "users": [{"username": "alice", "password": "alice-pw", "name": "Alice"}],
}
PROXIED = {"use_x_forwarded_for": True, "trusted_proxies": ["127.0.0.1"]}


class Clock:
    """A hand-moved monotonic clock, so decay is tested without sleeping."""

    def __init__(self) -> None:
        """Start at 1000 s."""
        self.now = 1000.0

    def __call__(self) -> float:
        """The current time."""
        return self.now


def throttle(**kwargs: Any) -> tuple[LoginThrottle, Clock]:
    """A throttle with a hand-moved clock."""
    clock = Clock()
    return LoginThrottle(clock=clock, **kwargs), clock


def fail(t: LoginThrottle, ip: str, username: str | None, times: int = 1) -> None:
    """Record failed attempts."""
    for _ in range(times):
        t.record_failure(ip, username, "invalid_auth")


async def settle(auth: AuthManager) -> None:
    """Let the fire-and-forget login events reach the plugins."""
    while auth._background:
        await asyncio.gather(*list(auth._background))


# ---- the throttle's arithmetic --------------------------------------------------------------


def test_first_four_failures_of_a_pair_cost_nothing() -> None:
    t, _ = throttle()
    fail(t, "203.0.113.1", "alice", 4)
    assert t.retry_after("203.0.113.1", "alice") == 0


def test_delay_doubles_from_the_fifth_failure() -> None:
    t, _ = throttle()
    waits = []
    for _ in range(8):
        fail(t, "203.0.113.1", "alice")
        waits.append(t.retry_after("203.0.113.1", "alice"))
    assert waits == [0, 0, 0, 0, 1, 2, 4, 8]


def test_delay_is_capped_at_max_lock() -> None:
    t, _ = throttle(max_lock_seconds=900)
    fail(t, "203.0.113.1", "alice", 40)
    assert t.retry_after("203.0.113.1", "alice") == 900


def test_lock_ends_when_its_delay_has_passed() -> None:
    t, clock = throttle()
    fail(t, "203.0.113.1", "alice", 7)
    clock.now += 3.9
    assert t.retry_after("203.0.113.1", "alice") == pytest.approx(0.1)
    clock.now += 0.1
    assert t.retry_after("203.0.113.1", "alice") == 0


def test_failures_are_forgotten_after_the_reset_period() -> None:
    t, clock = throttle(reset_after_seconds=3600)
    fail(t, "203.0.113.1", "alice", 4)
    clock.now += 3601
    fail(t, "203.0.113.1", "alice")
    assert t.retry_after("203.0.113.1", "alice") == 0


def test_usernames_are_compared_case_folded_and_stripped() -> None:
    t, _ = throttle()
    fail(t, "203.0.113.1", " Alice ", 5)
    assert t.retry_after("203.0.113.1", "ALICE") == 1


@pytest.mark.parametrize(
    ("typed", "other"),
    [
        ("J\u00e9r\u00f4me", "Je\u0301ro\u0302me"),  # NFC and NFD
        ("alice", "\uff41\uff4c\uff49\uff43\uff45"),  # full-width letters
        ("office", "o\ufb03ce"),  # the ffi ligature
        ("alice", "\u00a0alice\u2003"),  # a no-break space and an em space around it
        ("stra\u00dfe", "STRASSE"),  # case folding after normalisation
    ],
)
def test_forms_a_directory_takes_for_one_account_share_its_counters(typed: str, other: str) -> None:
    """Each form an LDAP server folds into one account (RFC 4518's preparation) counts against the same
    account and pair: typing a new form buys no fresh attempts."""
    t, _ = throttle()
    fail(t, "203.0.113.1", typed, 5)
    assert t.retry_after("203.0.113.1", other) == t.retry_after("203.0.113.1", typed) == 1  # the pair
    t, _ = throttle(attempts_per_user=3)
    for n in range(4):  # the account's tally of strangers counts every form
        fail(t, f"198.51.100.{n}", (typed, other)[n % 2])
    assert t.retry_after("192.0.2.9", other) == t.retry_after("192.0.2.9", typed) > 0


def test_other_accounts_from_the_same_address_are_not_locked_by_a_pair() -> None:
    t, _ = throttle()
    fail(t, "203.0.113.1", "alice", 5)
    assert t.retry_after("203.0.113.1", "bob") == 0


def test_one_address_spraying_many_accounts_is_locked() -> None:
    t, _ = throttle(attempts_per_address=20)
    for i in range(20):
        fail(t, "203.0.113.1", f"user{i}")
    assert t.retry_after("203.0.113.1", "someone-new") == 1
    assert t.retry_after("203.0.113.2", "someone-new") == 0


def test_guesses_from_many_addresses_lock_the_account_for_strangers() -> None:
    t, _ = throttle(attempts_per_user=10)
    for i in range(10):
        fail(t, f"198.51.100.{i}", "alice")
    assert t.retry_after("198.51.100.200", "alice") == 1


def test_account_lock_spares_an_address_the_account_logged_in_from() -> None:
    t, _ = throttle(attempts_per_user=10)
    t.record_success("192.0.2.10", ["alice"])
    for i in range(30):
        fail(t, f"198.51.100.{i}", "alice")
    assert t.retry_after("198.51.100.200", "alice") > 0
    assert t.retry_after("192.0.2.10", "alice") == 0


def test_account_lock_spares_allowlisted_networks() -> None:
    t, _ = throttle(attempts_per_user=10, allowlist=["192.168.0.0/16"])
    for i in range(30):
        fail(t, f"198.51.100.{i}", "alice")
    assert t.retry_after("192.168.1.5", "alice") == 0


def test_allowlisted_address_is_never_locked_per_address() -> None:
    t, _ = throttle(attempts_per_address=3, allowlist=["192.168.0.0/16"])
    for i in range(10):
        fail(t, "192.168.1.5", f"user{i}")
    assert t.retry_after("192.168.1.5", "someone-new") == 0


def test_allowlisted_address_still_has_the_pair_brake() -> None:
    t, _ = throttle(allowlist=["192.168.0.0/16"])
    fail(t, "192.168.1.5", "alice", 5)
    assert t.retry_after("192.168.1.5", "alice") == 1


def test_success_clears_the_pair() -> None:
    t, _ = throttle()
    fail(t, "203.0.113.1", "alice", 6)
    t.record_success("203.0.113.1", ["alice"])
    assert t.retry_after("203.0.113.1", "alice") == 0


def test_success_does_not_reset_the_address_spray_brake() -> None:
    t, _ = throttle(attempts_per_address=5)
    for i in range(5):
        fail(t, "203.0.113.1", f"user{i}")
    t.record_success("203.0.113.1", ["mallory"])
    assert t.retry_after("203.0.113.1", "user9") == 1


def test_unauthorized_requests_are_not_login_attempts() -> None:
    t, _ = throttle(attempts_per_address=1)
    for _ in range(5):
        t.record_failure("203.0.113.1", None, "unauthorized")
    assert t.retry_after("203.0.113.1", None) == 0


def test_disabled_throttle_never_locks() -> None:
    t, _ = throttle(enabled=False)
    fail(t, "203.0.113.1", "alice", 50)
    assert t.retry_after("203.0.113.1", "alice") == 0


def test_counters_are_bounded() -> None:
    t, _ = throttle(max_tracked=100)
    for i in range(1000):
        fail(t, f"10.0.{i // 250}.{i % 250}", f"user{i}")
    assert all(len(counters.items) <= 100 for counters in t.maps.values())


def test_lockouts_lists_what_refuses_now_and_clear_forgets_it() -> None:
    t, _ = throttle()
    fail(t, "203.0.113.1", "alice", 6)
    fail(t, "203.0.113.2", "bob", 2)
    assert t.lockouts() == [
        {"type": "address_and_user", "ip_address": "203.0.113.1", "username": "alice", "failures": 6, "retry_after": 2}
    ]
    assert t.clear(ip="203.0.113.1", username="alice") == 1
    assert t.retry_after("203.0.113.1", "alice") == 0
    assert t.lockouts() == []


def test_clear_without_filters_forgets_everything() -> None:
    t, _ = throttle()
    fail(t, "203.0.113.1", "alice", 6)
    t.clear()
    assert all(not counters.items for counters in t.maps.values())


# ---- configuration ---------------------------------------------------------------------------


def test_http_block_defaults_turn_throttling_on() -> None:
    conf = HTTP_SCHEMA({})
    assert conf["login_throttle"] == {
        "enabled": True,
        "attempts_per_address_and_user": 5,
        "attempts_per_user": 10,
        "attempts_per_address": 20,
        "attempts_per_prefix": 100,
        "max_lock_seconds": 900,
        "reset_after_seconds": 3600,
    }
    assert conf["ban_allowlist"] == []


@pytest.mark.parametrize(
    "bad",
    [
        {"login_throttle": {"attempts_per_user": 0}},
        {"login_throttle": {"max_lock_seconds": -1}},
        {"login_throttle": {"unknown": 1}},
        {"ban_allowlist": ["not-a-network"]},
    ],
)
def test_http_block_rejects_bad_throttle_settings(bad: dict[str, Any]) -> None:
    with pytest.raises(vol.Invalid):
        HTTP_SCHEMA(bad)


# ---- through the real server ----------------------------------------------------------------


@pytest.fixture
async def auth(onboarded: Path, opp_auth_factory: Any) -> AuthManager:
    """The insecure_example provider and a PIN module, onboarded."""
    return await opp_auth_factory(providers=[PROVIDER], mfa_modules=[{"type": "insecure_example", "data": []}])


@pytest.fixture
async def client(auth: AuthManager, opp_auth_client: Any) -> OppAuthClient:
    """A live server."""
    return await opp_auth_client(auth)


async def new_flow(client: OppAuthClient) -> str:
    """A login flow's id."""
    status, body = await client.login.start(HANDLER)
    assert status == 200, body
    return str(body["flow_id"])


async def wrong_passwords(client: OppAuthClient, auth: AuthManager, flow_id: str, times: int) -> None:
    """Submit wrong passwords for alice."""
    for _ in range(times):
        status, body = await client.login.step(flow_id, username="alice", password="wrong")
        assert (status, body["errors"]) == (200, {"base": "invalid_auth"}), body
        await settle(auth)


async def test_login_step_answers_429_with_retry_after_after_five_wrong_passwords(
    client: OppAuthClient, auth: AuthManager
) -> None:
    flow_id = await new_flow(client)
    await wrong_passwords(client, auth, flow_id, 5)
    async with client.request(
        "POST", f"/auth/login_flow/{flow_id}", json={"client_id": CLIENT_ID, "username": "alice", "password": "wrong"}
    ) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "1"
        assert await resp.json() == {
            "message": "Too many login attempts, try again in 1 seconds",
            "code": "too_many_attempts",
        }


async def test_locked_pair_is_refused_even_with_the_right_password(client: OppAuthClient, auth: AuthManager) -> None:
    flow_id = await new_flow(client)
    await wrong_passwords(client, auth, flow_id, 5)
    status, _ = await client.login.step(flow_id, username="alice", password="alice-pw")
    assert status == 429


async def test_flow_survives_the_lock_and_logs_in_after_it(client: OppAuthClient, auth: AuthManager) -> None:
    flow_id = await new_flow(client)
    await wrong_passwords(client, auth, flow_id, 5)
    await asyncio.sleep(1.05)
    status, body = await client.login.step(flow_id, username="alice", password="alice-pw")
    assert (status, body["type"]) == (200, "create_entry")


async def test_other_account_from_the_same_address_may_still_try(client: OppAuthClient, auth: AuthManager) -> None:
    flow_id = await new_flow(client)
    await wrong_passwords(client, auth, flow_id, 5)
    status, body = await client.login.step(flow_id, username="bob", password="x")
    assert (status, body["errors"]) == (200, {"base": "invalid_auth"})


async def test_wrong_mfa_codes_count_against_the_username_of_the_first_step(
    client: OppAuthClient, auth: AuthManager
) -> None:
    credentials = await auth.registry.get_auth_provider("insecure_example", None).async_get_or_create_credentials(
        {"username": "alice"}
    )
    user = await auth.users.async_get_or_create_user(credentials)
    await auth.users.async_enable_user_mfa(user, "insecure_example", {"pin": "123456"})
    results = []
    for codes in (3, 3):  # the module aborts a flow after three wrong codes
        flow_id = await new_flow(client)
        status, body = await client.login.step(flow_id, username="alice", password="alice-pw")
        assert body["step_id"] == "mfa", body
        for _ in range(codes):
            status, body = await client.login.step(flow_id, pin="000000")
            results.append(status)
            await settle(auth)
    assert results == [200, 200, 200, 200, 200, 429]


async def test_websocket_auth_is_refused_while_the_address_is_locked(
    onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any, ws_connector: Any
) -> None:
    auth = await opp_auth_factory(providers=[PROVIDER], mfa_modules=[], http={"login_throttle": {"attempts_per_address": 2}})
    client = await opp_auth_client(auth)
    connector = ws_connector(client)
    user = await auth.users.async_create_user("Alice", [UserMeta.GROUP_USER])
    _, good_token = await connector.mint(auth, user)
    for token in ("bad-1", "bad-2", good_token):
        ws = await connector.open()
        await ws.receive_json()
        await ws.send_json({"type": "auth", "access_token": token})
        reply = await ws.receive_json()
        await settle(auth)
    assert reply == {"type": "auth_invalid", "message": "Too many login attempts, try again in 1 seconds"}


async def test_failures_from_forwarded_addresses_are_counted_per_client(
    onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any
) -> None:
    auth = await opp_auth_factory(providers=[PROVIDER], mfa_modules=[], http=PROXIED)
    client = await opp_auth_client(auth)

    async def attempt(ip: str, flow_id: str | None = None) -> tuple[int, str]:
        headers = {"X-Forwarded-For": ip}
        if flow_id is None:
            async with client.request("POST", "/auth/login_flow", headers=headers, json={
                "client_id": CLIENT_ID, "handler": HANDLER, "redirect_uri": CLIENT_ID + "/"
            }) as resp:
                flow_id = (await resp.json())["flow_id"]
        async with client.request(
            "POST", f"/auth/login_flow/{flow_id}", headers=headers,
            json={"client_id": CLIENT_ID, "username": "alice", "password": "wrong"},
        ) as resp:
            await settle(auth)
            return resp.status, flow_id

    _, flow_id = await attempt("203.0.113.7")
    for _ in range(5):
        status, _ = await attempt("203.0.113.7", flow_id)
    assert status == 429
    assert (await attempt("203.0.113.8"))[0] == 200


# ---- websocket commands for administrators -------------------------------------------------


@pytest.fixture
async def admin(auth: AuthManager) -> User:
    """An administrator."""
    return await auth.users.async_create_user("Admin", [UserMeta.GROUP_ADMIN], is_owner=True)


async def test_admin_lists_current_lockouts(
    client: OppAuthClient, auth: AuthManager, admin: User, ws_connector: Any
) -> None:
    flow_id = await new_flow(client)
    await wrong_passwords(client, auth, flow_id, 5)
    session = await ws_connector(client).user(auth, admin)
    assert await session.result("config/auth/lockouts/list") == [
        {"type": "address_and_user", "ip_address": "127.0.0.1", "username": "alice", "failures": 5, "retry_after": 1}
    ]


async def test_admin_clearing_a_lockout_lets_the_login_through(
    client: OppAuthClient, auth: AuthManager, admin: User, ws_connector: Any
) -> None:
    flow_id = await new_flow(client)
    await wrong_passwords(client, auth, flow_id, 5)
    session = await ws_connector(client).user(auth, admin)
    # The pair's counter and the account's.
    assert await session.result("config/auth/lockouts/clear", username="alice") == {"cleared": 2}
    status, body = await client.login.step(flow_id, username="alice", password="alice-pw")
    assert (status, body["type"]) == (200, "create_entry")


@pytest.mark.parametrize("command", ["config/auth/lockouts/list", "config/auth/bans/list"])
async def test_lockout_and_ban_commands_are_for_admins_only(
    client: OppAuthClient, auth: AuthManager, ws_connector: Any, command: str
) -> None:
    user = await auth.users.async_create_user("Bob", [UserMeta.GROUP_USER])
    session = await ws_connector(client).user(auth, user)
    assert (await session.error(command))["code"] == "unauthorized"


# ---- bounded resources -----------------------------------------------------------------------


async def test_body_over_the_limit_is_413_json(client: OppAuthClient) -> None:
    async with client.request(
        "POST", "/auth/login_flow", data=b"x" * (MAX_BODY_SIZE + 1), headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 413
        assert resp.content_type == "application/json"
        assert (await resp.json())["message"].startswith("Request body too large")


async def test_login_flows_per_address_are_capped_and_others_may_still_start(
    onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any
) -> None:
    auth = await opp_auth_factory(providers=[PROVIDER], mfa_modules=[], http=PROXIED)
    client = await opp_auth_client(auth)
    body = {"client_id": CLIENT_ID, "handler": HANDLER, "redirect_uri": CLIENT_ID + "/"}

    async def start(ip: str) -> tuple[int, Any]:
        async with client.request("POST", "/auth/login_flow", json=body, headers={"X-Forwarded-For": ip}) as resp:
            return resp.status, await resp.json()

    statuses = [(await start("203.0.113.9"))[0] for _ in range(MAX_FLOWS_PER_ADDRESS + 1)]
    assert statuses == [200] * MAX_FLOWS_PER_ADDRESS + [429]
    assert await start("203.0.113.9") == (429, {"message": "Too many logins in progress, try again later"})
    assert (await start("203.0.113.10"))[0] == 200


async def test_login_flows_in_total_are_capped(onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any) -> None:
    auth = await opp_auth_factory(providers=[PROVIDER], mfa_modules=[], http=PROXIED, max_login_flows=3)
    client = await opp_auth_client(auth)
    body = {"client_id": CLIENT_ID, "handler": HANDLER, "redirect_uri": CLIENT_ID + "/"}
    statuses = []
    for i in range(4):
        async with client.request("POST", "/auth/login_flow", json=body, headers={"X-Forwarded-For": f"203.0.113.{i}"}) as resp:
            statuses.append(resp.status)
    assert statuses == [200, 200, 200, 429]


async def test_pending_authorization_codes_are_capped(auth: AuthManager) -> None:
    credentials = Credentials(auth_provider_type="insecure_example", auth_provider_id=None, data={"username": "alice"})
    first = auth.codes.issue(CLIENT_ID, credentials, AUTHORIZE)
    for _ in range(MAX_CODES):
        auth.codes.issue(CLIENT_ID, credentials, AUTHORIZE)
    assert len(auth.codes) == MAX_CODES
    assert auth.codes.redeem(CLIENT_ID, first, AUTHORIZE) is None


async def test_websocket_connections_per_user_are_capped(
    client: OppAuthClient, auth: AuthManager, ws_connector: Any
) -> None:
    connector = ws_connector(client)
    user = await auth.users.async_create_user("Alice", [UserMeta.GROUP_USER])
    _, token = await connector.mint(auth, user)
    for _ in range(MAX_CONNECTIONS_PER_USER):
        await connector.auth(token)
    ws = await connector.open()
    await ws.receive_json()
    await ws.send_json({"type": "auth", "access_token": token})
    assert await ws.receive_json() == {"type": "auth_invalid", "message": "Too many connections"}


async def test_websocket_messages_beyond_the_burst_are_rate_limited(
    client: OppAuthClient, auth: AuthManager, ws_connector: Any
) -> None:
    user = await auth.users.async_create_user("Alice", [UserMeta.GROUP_USER])
    session = await ws_connector(client).user(auth, user)
    count = int(RATE_BURST) + 50
    await session.ws.send_json([{"id": i, "type": "ping"} for i in range(1, count + 1)])
    replies = [await session.receive() for _ in range(count)]
    limited = [r for r in replies if r.get("type") == "result" and r["error"]["code"] == "rate_limited"]
    assert len(limited) >= 40
    assert sum(1 for r in replies if r["type"] == "pong") <= RATE_BURST + 10


async def test_password_checks_run_at_most_the_configured_number_at_once(opp_auth_factory: Any) -> None:
    auth = await opp_auth_factory(providers=[PROVIDER], mfa_modules=[], max_password_checks=2)
    lock = threading.Lock()
    running = [0, 0]  # now, most

    def check() -> None:
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1

    await asyncio.gather(*(auth.executor.async_password_check(check) for _ in range(6)))
    assert running[1] == 2


async def test_simultaneous_websocket_connects_cannot_pass_the_cap_together(
    client: OppAuthClient, auth: AuthManager, ws_connector: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connections are counted before the auth_ok is sent, so a burst of connects gets at most the cap."""
    monkeypatch.setattr(websocket_api, "MAX_CONNECTIONS_PER_USER", 2)
    real_send = web.WebSocketResponse.send_json

    async def slow_send(self: web.WebSocketResponse, data: Any, *args: Any, **kwargs: Any) -> None:
        # A slow client: sending yields to the other connections' handlers.
        await asyncio.sleep(0.01)
        await real_send(self, data, *args, **kwargs)

    monkeypatch.setattr(web.WebSocketResponse, "send_json", slow_send)
    connector = ws_connector(client)
    user = await auth.users.async_create_user("Alice", [UserMeta.GROUP_USER])
    _, token = await connector.mint(auth, user)
    sockets = [await connector.open() for _ in range(6)]
    for ws in sockets:
        await ws.receive_json()
    await asyncio.gather(*(ws.send_json({"type": "auth", "access_token": token}) for ws in sockets))
    answers = [(await ws.receive_json())["type"] for ws in sockets]
    assert sorted(answers) == ["auth_invalid"] * 4 + ["auth_ok"] * 2


async def test_simultaneous_wrong_passwords_cannot_pass_the_lock_together(
    onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Red team: 12 wrong passwords for one account sent at once, each in its own flow, all passed the
    throttle's check before the first failure was counted (the local provider checks in a thread), so a
    burst got 30 guesses from one address (1000 from many) where the design allows 5 (10)."""
    import opp_auth_local

    monkeypatch.setattr(opp_auth_local, "BCRYPT_ROUNDS", 4)
    auth = await opp_auth_factory(providers=[{"type": "openpeerpower"}], mfa_modules=[])
    await auth.registry.get_auth_provider("openpeerpower", None).async_add_auth("alice", "alice-password")
    client = await opp_auth_client(auth)
    flows = []
    for _ in range(12):
        status, body = await client.login.start(["openpeerpower", None])
        assert status == 200, body
        flows.append(body["flow_id"])
    results = await asyncio.gather(
        *(client.login.step(flow_id, username="alice", password=f"wrong-{n}") for n, flow_id in enumerate(flows))
    )
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * 5 + [429] * 7, results
