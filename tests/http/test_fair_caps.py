"""Issue 11 item 3 against a real server: no flood of anonymous login flows refuses the owner.

35 addresses x 30 `POST /auth/login_flow` used to fill the global cap of 1,000
flows and answer the owner 429 for ten minutes, and an IPv6 /64 was an
unlimited supply of addresses. The flood here comes through a trusted reverse
proxy (X-Forwarded-For), with the default limits.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from opp_auth.login_flow import MAX_FLOWS, MAX_FLOWS_PER_ADDRESS, MAX_FLOWS_PER_PREFIX
from opp_auth.manager import AuthManager
from opp_auth.testing import CLIENT_ID, REDIRECT_URI, OppAuthClient

HANDLER = ["insecure_example", None]
PROVIDER = {"type": "insecure_example", "users": [{"username": "owner", "password": "owner-pw", "name": "Owner"}]}
HTTP = {"use_x_forwarded_for": True, "trusted_proxies": ["127.0.0.1"], "ban_allowlist": ["192.168.7.0/24"]}
HOME = "198.51.100.7"  # the owner logged in from here before the flood
FRESH = "192.0.2.200"  # never seen, a prefix the flood does not use
LAN = "192.168.7.20"  # on ban_allowlist, never seen
FLOOD_V4 = [f"203.0.{n}.9" for n in range(35)]  # 35 addresses, each in its own /24
FLOOD_V6 = [f"2001:db8:bad:1:{n >> 8:x}:{n & 0xFF:x}::1" for n in range(3000)]  # 3,000 addresses of one /64


async def start(client: OppAuthClient, ip: str) -> tuple[int, Any]:
    """POST /auth/login_flow from ip (through the proxy)."""
    body = {"client_id": CLIENT_ID, "handler": HANDLER, "redirect_uri": REDIRECT_URI}
    async with client.request("POST", "/auth/login_flow", json=body, headers={"X-Forwarded-For": ip}) as resp:
        return resp.status, await resp.json()


async def log_in(client: OppAuthClient, ip: str) -> dict[str, Any]:
    """The whole login from ip: start, password, code for tokens; the token answer."""
    status, form = await start(client, ip)
    assert status == 200, form
    headers = {"X-Forwarded-For": ip}
    step = {"client_id": CLIENT_ID, "username": "owner", "password": "owner-pw"}
    async with client.request("POST", f"/auth/login_flow/{form['flow_id']}", json=step, headers=headers) as resp:
        assert resp.status == 200
        done = await resp.json()
    assert done["type"] == "create_entry", done
    form_data = {"grant_type": "authorization_code", "client_id": CLIENT_ID, "code": done["result"]}
    async with client.request("POST", "/auth/token", data=form_data, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


async def flood(client: OppAuthClient, addresses: list[str]) -> Counter[int]:
    """Start a flow from each address, 50 at a time; count the statuses."""
    statuses: Counter[int] = Counter()
    for first in range(0, len(addresses), 50):
        for status, _ in await asyncio.gather(*(start(client, ip) for ip in addresses[first : first + 50])):
            statuses[status] += 1
    return statuses


async def test_flooded_login_flows_leave_the_owner_room_at_home_on_the_lan_and_anywhere_new(
    onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any
) -> None:
    auth: AuthManager = await opp_auth_factory(providers=[PROVIDER], mfa_modules=[], http=HTTP)
    client = await opp_auth_client(auth)
    await log_in(client, HOME)

    v4 = await flood(client, [ip for ip in FLOOD_V4 for _ in range(MAX_FLOWS_PER_ADDRESS + 1)])
    v6 = await flood(client, FLOOD_V6)
    assert set(v4) | set(v6) <= {200, 429}
    assert v6[200] <= MAX_FLOWS_PER_PREFIX  # one /64 is one share, whatever its number of addresses
    assert v4[429] >= len(FLOOD_V4)  # the 31st start of each address
    strangers = auth.login_flow.shares.strangers
    assert len(strangers) == MAX_FLOWS  # the strangers' pool is full ...
    # ... in equal shares: the /64 came last and took places from the largest /24s until it was as large.
    shares = [strangers.group_count(f"203.0.{n}.0/24") for n in range(35)] + [
        strangers.group_count("2001:db8:bad:1::/64")
    ]
    assert max(shares) - min(shares) <= 1, shares

    # ... yet the owner logs in at home, on the LAN, and from a fresh address of another prefix.
    for ip in (HOME, LAN, FRESH):
        tokens = await log_in(client, ip)
        async with client.request(
            "GET", "/api/", headers={"Authorization": f"Bearer {tokens['access_token']}", "X-Forwarded-For": ip}
        ) as resp:
            assert resp.status == 200

    # The flood goes on; the flooding /64 never holds more than its share, and the owner is still let in.
    assert (await flood(client, FLOOD_V6[:500]))[429] >= 500 - MAX_FLOWS_PER_PREFIX
    assert strangers.group_count("2001:db8:bad:1::/64") <= MAX_FLOWS_PER_PREFIX
    assert set(await flood(client, FLOOD_V4)) <= {200, 429}
    await log_in(client, HOME)
    await log_in(client, FRESH)
