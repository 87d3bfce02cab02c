"""The request pipeline through the real server: security filter, CORS, proxies, bans, body size (SPEC 6, 7; G17)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from multidict import CIMultiDict

from opp_auth.http.view import AUTH_KEY
from opp_auth.testing import CLIENT_ID, REDIRECT_URI

HANDLER = ["insecure_example", None]
PROVIDER = {"type": "insecure_example", "users": [{"username": "alice", "password": "alice-pw", "name": "Alice"}]}
ALICE = {"username": "alice", "password": "alice-pw"}
ALLOWED_ORIGIN = "https://allowed.example"
OTHER_ORIGIN = "https://other.example"
PROXY_CONFIG = {"use_x_forwarded_for": True, "trusted_proxies": ["127.0.0.1"]}
FLOW_BODY = {"client_id": CLIENT_ID, "handler": HANDLER, "redirect_uri": REDIRECT_URI}


async def make_client(opp_auth_factory: Any, opp_auth_client: Any, http: dict[str, Any] | None = None) -> Any:
    """A live server with the insecure_example provider and the given http: options."""
    auth = await opp_auth_factory(providers=[PROVIDER], mfa_modules=[], http=http)
    return await opp_auth_client(auth)


@pytest.fixture
async def client(onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any) -> Any:
    """A live server with default http: options."""
    return await make_client(opp_auth_factory, opp_auth_client)


async def raw_status(client: Any, target: str) -> int:
    """Send a GET with the request target exactly as given (no client-side normalisation)."""
    host, port = client.server.host, client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status_line = await reader.readline()
        await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    return int(status_line.split()[1])


async def eventually(condition: Any, timeout: float = 2.0) -> None:
    """Wait for a background effect (login events are fired after the reply is sent)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# ---- security filter ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/proc/self/environ",
        "/api/?file=/proc/self/environ",
        "/api/?q=<script>alert(1)</script>",
        "/api/?q=%3Cscript%3Ealert(1)%3C/script%3E",
        "/static/../../etc/passwd",
        "/api/?path=..%2F..%2Fetc%2Fpasswd",
        "/api/?x=/./etc/passwd",
        "/api/?id=1%20UNION%20SELECT%20password(",
        "/api/?id=1%20union%20all%20select%20x",
        "/api/?name=CONCAT(0x71)",
    ],
)
async def test_security_filter_rejects_attack_patterns(
    client: Any, target: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Paths and queries that only attacks send get 400 before any view runs, with a warning."""
    assert await raw_status(client, target) == 400
    assert any(r.levelno == logging.WARNING and "harmful request" in r.getMessage() for r in caplog.records), (
        caplog.text
    )


@pytest.mark.parametrize(
    "target",
    [
        "/api/?file=proc%2Fself%2Fenviron",
        "/api/?file=%70roc/self/environ",
        "/%3Cscript%3E",
        "/api/?q=<ScRiPt src=x>",
        "/api/?q=%3cscript%3e",
        "/static/%2E%2E/%2E%2E/etc/passwd",
        "/static/..%2f..%2fetc%2fpasswd",
        "/api/?x=%2F.%2Fetc",
        "/api/?id=1+UnIoN+SeLeCt+pass(",
        "/api/?id=1%20union%20select%20pass%28",
        "/api/?id=1%20UNION%20ALL%20SELECT%201",
        "/api/?name=concat%28a%29",
        "/api/?name=CONCAT%20(0x71)",
    ],
)
async def test_security_filter_rejects_encoded_and_mixed_case_forms(client: Any, target: str) -> None:
    """Every SPEC 6.6 pattern is caught percent-encoded and in any letter case too."""
    assert await raw_status(client, target) == 400


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/api/", 401),
        ("/auth/providers", 200),
        ("/auth/authorize?client_id=https%3A%2F%2Fexample.com%2F&redirect_uri=https%3A%2F%2Fexample.com%2Fcb", 200),
        ("/api/?selection=union", 401),
    ],
)
async def test_security_filter_lets_normal_requests_through(client: Any, target: str, status: int) -> None:
    """Ordinary paths, encoded URLs and harmless words reach their views."""
    assert await raw_status(client, target) == status


# ---- CORS -----------------------------------------------------------------------------------


@pytest.fixture
async def cors_client(onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any) -> Any:
    """A server with one configured CORS origin."""
    return await make_client(opp_auth_factory, opp_auth_client, {"cors_allowed_origins": [ALLOWED_ORIGIN]})


def preflight_headers(origin: str) -> dict[str, str]:
    """A browser's CORS preflight headers."""
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Authorization",
    }


async def test_preflight_from_configured_origin_is_allowed(cors_client: Any) -> None:
    """The allowed origin gets the allow headers on any route."""
    async with cors_client.request("OPTIONS", "/api/", headers=preflight_headers(ALLOWED_ORIGIN)) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
        assert resp.headers["Access-Control-Allow-Methods"] == "POST"
        allowed = {h.strip() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
        assert allowed == {"Origin", "Accept", "X-Requested-With", "Content-Type", "Authorization"}


async def test_preflight_from_any_origin_is_allowed_on_token_endpoint(cors_client: Any) -> None:
    """/auth/token accepts every origin."""
    async with cors_client.request("OPTIONS", "/auth/token", headers=preflight_headers(OTHER_ORIGIN)) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == OTHER_ORIGIN


async def test_preflight_from_other_origin_is_refused_elsewhere(cors_client: Any) -> None:
    """An unlisted origin gets no allow headers on other routes."""
    async with cors_client.request("OPTIONS", "/auth/login_flow", headers=preflight_headers(OTHER_ORIGIN)) as resp:
        assert resp.status >= 400
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_actual_request_from_configured_origin_carries_allow_origin(cors_client: Any) -> None:
    """The response to a cross-origin request names the allowed origin."""
    async with cors_client.request("GET", "/auth/providers", headers={"Origin": ALLOWED_ORIGIN}) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN


async def test_actual_request_from_other_origin_has_no_allow_origin(cors_client: Any) -> None:
    """An unlisted origin's response does not allow it to read the reply."""
    async with cors_client.request("GET", "/auth/providers", headers={"Origin": OTHER_ORIGIN}) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_token_endpoint_reply_allows_any_origin(cors_client: Any) -> None:
    """Any origin may read /auth/token replies."""
    async with cors_client.request("POST", "/auth/token", data={}, headers={"Origin": OTHER_ORIGIN}) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == OTHER_ORIGIN


# ---- reverse proxies ----------------------------------------------------------------------------


async def flow_ip(client: Any, headers: Any) -> str:
    """Start a login flow with headers; the address recorded in its context."""
    async with client.request("POST", "/auth/login_flow", json=FLOW_BODY, headers=headers) as resp:
        assert resp.status == 200
        flow_id = (await resp.json())["flow_id"]
    login_flow = client.app[AUTH_KEY].login_flow
    if login_flow.state.shared:  # the flow's state is in the shared storage (opp_auth.ephemeral)
        claimed = await login_flow.state.async_claim_flow(flow_id, 5.0)
        assert claimed is not None
        await login_flow.state.async_save_flow(flow_id, claimed[0])
        return str(claimed[0]["context"]["ip_address"])
    return str(login_flow.async_get(flow_id).context["ip_address"])


async def test_trusted_proxy_forwards_the_client_address(
    onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any
) -> None:
    """From a trusted proxy, the flow belongs to the address in X-Forwarded-For."""
    client = await make_client(opp_auth_factory, opp_auth_client, PROXY_CONFIG)
    assert await flow_ip(client, {"X-Forwarded-For": "192.168.1.20, 127.0.0.1"}) == "192.168.1.20"


async def test_untrusted_peer_header_is_ignored(onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any) -> None:
    """From a peer that is not a trusted proxy, the socket address counts."""
    client = await make_client(
        opp_auth_factory, opp_auth_client, {"use_x_forwarded_for": True, "trusted_proxies": ["10.0.0.0/8"]}
    )
    assert await flow_ip(client, {"X-Forwarded-For": "192.168.1.20"}) == "127.0.0.1"


async def test_header_is_ignored_when_proxies_are_not_configured(client: Any) -> None:
    """Without use_x_forwarded_for nobody can choose their address."""
    assert await flow_ip(client, {"X-Forwarded-For": "192.168.1.20"}) == "127.0.0.1"


async def test_two_forwarded_for_headers_are_refused(
    onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any
) -> None:
    """More than one X-Forwarded-For header: 400."""
    client = await make_client(opp_auth_factory, opp_auth_client, PROXY_CONFIG)
    headers = CIMultiDict([("X-Forwarded-For", "192.168.1.20"), ("X-Forwarded-For", "192.168.1.21")])
    async with client.request("GET", "/auth/providers", headers=headers) as resp:
        assert resp.status == 400


async def test_invalid_forwarded_address_is_refused(
    onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any
) -> None:
    """A value that is not an IP address: 400."""
    client = await make_client(opp_auth_factory, opp_auth_client, PROXY_CONFIG)
    async with client.request("GET", "/auth/providers", headers={"X-Forwarded-For": "not-an-ip"}) as resp:
        assert resp.status == 400


# ---- IP bans --------------------------------------------------------------------------------------


async def test_too_many_wrong_passwords_ban_the_address(
    onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any
) -> None:
    """Threshold 2: the second wrong password writes ip_bans.yaml and later requests get 403."""
    client = await make_client(opp_auth_factory, opp_auth_client, {"login_attempts_threshold": 2})
    bans = onboarded / "ip_bans.yaml"
    for _ in range(2):
        _, started = await client.login.start(HANDLER)
        status, body = await client.login.step(started["flow_id"], username="alice", password="wrong")
        assert (status, body["errors"]) == (200, {"base": "invalid_auth"})
    await eventually(bans.exists)
    entries = yaml.safe_load(bans.read_text(encoding="utf-8"))
    assert list(entries) == ["127.0.0.1"]
    assert str(entries["127.0.0.1"]["banned_at"]).endswith("+00:00")
    async with client.request("GET", "/auth/providers") as resp:
        assert resp.status == 403
    status, _ = await client.login.start(HANDLER)
    assert status == 403


async def test_one_wrong_password_below_threshold_does_not_ban(
    onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any
) -> None:
    """Below the threshold nothing is written and the address keeps working."""
    client = await make_client(opp_auth_factory, opp_auth_client, {"login_attempts_threshold": 2})
    _, started = await client.login.start(HANDLER)
    await client.login.step(started["flow_id"], username="alice", password="wrong")
    await client.login.tokens(HANDLER, [ALICE])
    assert not (onboarded / "ip_bans.yaml").exists()


async def test_no_automatic_bans_by_default(client: Any, onboarded: Path) -> None:
    """The default threshold (-1) never bans."""
    for _ in range(3):
        _, started = await client.login.start(HANDLER)
        await client.login.step(started["flow_id"], username="alice", password="wrong")
    async with client.request("GET", "/auth/providers") as resp:
        assert resp.status == 200
    assert not (onboarded / "ip_bans.yaml").exists()


async def test_hand_edited_ban_file_loads_what_it_can(
    onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any
) -> None:
    """A bare IP, a non-IP key and a bad datetime don't stop start-up (G17); valid entries are banned."""
    (onboarded / "ip_bans.yaml").write_text(
        "127.0.0.1:\n"
        "not-an-ip:\n"
        "  banned_at: '2021-01-01T00:00:00+00:00'\n"
        "192.168.1.30:\n"
        "  banned_at: 'yesterday-ish'\n"
        "192.168.1.31:\n"
        "  banned_at: '2021-01-01T00:00:00+00:00'\n",
        encoding="utf-8",
    )
    client = await make_client(opp_auth_factory, opp_auth_client, PROXY_CONFIG)

    async def status_as(address: str | None) -> int:
        headers = {"X-Forwarded-For": address} if address else {}
        async with client.request("GET", "/auth/providers", headers=headers) as resp:
            return resp.status

    assert await status_as(None) == 403  # bare IP entry: banned since load time
    assert await status_as("192.168.1.31") == 403
    assert await status_as("192.168.1.30") == 200  # bad datetime: entry skipped
    assert await status_as("192.168.1.32") == 200


# ---- body size ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/auth/login_flow", "/auth/token"])
async def test_body_over_16_mib_is_413(client: Any, path: str) -> None:
    """An oversized body is refused with 413, not a 500."""
    body = b"a" * (16 * 1024 * 1024 + 1)
    try:
        async with client.request(
            "POST", path, data=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
        ) as resp:
            assert resp.status == 413
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as err:
        pytest.fail(f"server dropped the connection instead of answering 413: {err}")


async def test_the_test_client_checks_an_http_block_like_the_configuration(
    opp_auth_factory: Any, opp_auth_client: Any
) -> None:
    """opp_auth_client(auth, http) runs the http: schema: a raw string proxy list is parsed, nonsense refused."""
    import voluptuous as vol

    auth = await opp_auth_factory(providers=[PROVIDER], mfa_modules=[])
    client = await opp_auth_client(auth, PROXY_CONFIG)
    async with client.request("GET", "/api/", headers={"X-Forwarded-For": "203.0.113.9"}) as resp:
        assert resp.status == 401  # answered through the proxy rules, not a 500 from unparsed strings
    with pytest.raises(vol.Invalid):
        await opp_auth_client(auth, {"trusted_proxies": ["not an address"]})
