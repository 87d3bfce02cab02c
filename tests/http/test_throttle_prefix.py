"""The login throttle's per-prefix brake: a spray that takes a new IPv6 address for every guess is braked too."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from opp_auth.testing import CLIENT_ID, REDIRECT_URI
from opp_auth.throttle import DEFAULTS, KIND_PREFIX, LoginThrottle

SPRAY = [f"2001:db8:bad:1:{n >> 8:x}:{n & 0xFF:x}::1" for n in range(400)]  # 400 addresses of one /64


class Clock:
    """A hand-moved monotonic clock."""

    def __init__(self) -> None:
        """Start at 1000 s."""
        self.now = 1000.0

    def __call__(self) -> float:
        """The current time."""
        return self.now


def test_a_spray_from_fresh_addresses_of_one_64_locks_the_64_and_nothing_else() -> None:
    clock = Clock()
    t = LoginThrottle(clock=clock)
    for n, ip in enumerate(SPRAY[: DEFAULTS["attempts_per_prefix"] - 1]):
        assert t.retry_after(ip, f"user{n}") == 0
        t.record_failure(ip, f"user{n}")
    # Every address failed once (its own brake untouched), yet at the 100th failure the /64 waits 2^0 s.
    assert t.retry_after(SPRAY[-1], "someone") == 0
    t.record_failure(SPRAY[-2], "user-x")
    assert t.retry_after(SPRAY[-1], "someone") == 1
    assert t.retry_after("2001:db8:bad:2::1", "someone") == 0  # the next /64
    assert t.retry_after("203.0.113.1", "someone") == 0
    for _ in range(20):
        t.record_failure(SPRAY[-3], "user-y")
    assert t.retry_after("2001:db8:bad:1:ffff::9", None) == DEFAULTS["max_lock_seconds"]
    clock.now += DEFAULTS["reset_after_seconds"] + 1
    assert t.retry_after(SPRAY[-1], "someone") == 0  # decayed


def test_the_prefix_brake_spares_allowlisted_and_known_addresses() -> None:
    t = LoginThrottle(clock=Clock(), attempts_per_prefix=3, allowlist=["198.51.100.0/24"])
    t.record_success("203.0.113.7", ["owner"])  # the owner logged in from .7 before
    for n in range(10):
        t.record_failure(f"203.0.113.{100 + n}", f"guess{n}")
        t.record_failure(f"198.51.100.{100 + n}", f"guess{n}")
    assert t.retry_after("203.0.113.50", "owner") > 0  # a stranger's address of that /24
    assert t.retry_after("203.0.113.7", "owner") == 0  # the owner at home
    assert t.retry_after("203.0.113.7", None) == 0
    assert t.retry_after("198.51.100.50", "owner") == 0  # never counted on the allow list
    assert not [lock for lock in t.lockouts() if lock["ip_address"] == "198.51.100.0/24"]


def test_prefix_locks_are_listed_and_cleared_by_an_address_of_the_prefix() -> None:
    t = LoginThrottle(clock=Clock(), attempts_per_prefix=2)
    for n in range(4):
        t.record_failure(f"2001:db8:5::{n + 1:x}", f"u{n}")
    locks = [lock for lock in t.lockouts() if lock["type"] == KIND_PREFIX]
    assert locks == [
        {"type": "prefix", "ip_address": "2001:db8:5::/64", "username": None, "failures": 4, "retry_after": 4}
    ]
    assert t.clear(ip="2001:db8:5::99") == 1  # the prefix counter of an address that never failed itself
    assert t.retry_after("2001:db8:5::77", "u9") == 0


def test_known_addresses_stay_bounded_and_counted() -> None:
    t = LoginThrottle(clock=Clock(), max_tracked=2)
    for n in range(40):
        t.record_success(f"203.0.113.{n}", ["a", "b"])
    assert len(t._known_refs) == 16  # both accounts know the same last 16
    t.record_success("198.51.100.1", ["c"])  # a third account: the least recent of a, b is forgotten
    assert t.is_known_address("198.51.100.1") and t.is_known_address("203.0.113.39")
    assert sum(t._known_refs.values()) == 16 + 1


async def test_a_spray_over_http_is_refused_429_while_the_owner_logs_in_at_home(
    onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any
) -> None:
    provider = {"type": "insecure_example", "users": [{"username": "owner", "password": "owner-pw"}]}
    http = {"use_x_forwarded_for": True, "trusted_proxies": ["127.0.0.1"], "login_throttle": {"attempts_per_prefix": 5}}
    auth = await opp_auth_factory(providers=[provider], mfa_modules=[], http=http)
    client = await opp_auth_client(auth)
    home = "2001:db8:bad:1::7"

    async def attempt(ip: str, username: str, password: str) -> tuple[int, Any]:
        body = {"client_id": CLIENT_ID, "handler": ["insecure_example", None], "redirect_uri": REDIRECT_URI}
        headers = {"X-Forwarded-For": ip}
        async with client.request("POST", "/auth/login_flow", json=body, headers=headers) as resp:
            form = await resp.json()
        step = {"client_id": CLIENT_ID, "username": username, "password": password}
        async with client.request("POST", f"/auth/login_flow/{form['flow_id']}", json=step, headers=headers) as resp:
            return resp.status, await resp.json()

    assert (await attempt(home, "owner", "owner-pw"))[1]["type"] == "create_entry"
    for n, ip in enumerate(SPRAY[:5]):
        status, body = await attempt(ip, f"user{n}", "guess")
        assert (status, body["errors"]) == (200, {"base": "invalid_auth"})
        await asyncio.sleep(0)  # the failure events are fire and forget
    while auth._background:
        await asyncio.gather(*list(auth._background))
    status, body = await attempt(SPRAY[7], "owner", "owner-pw")
    assert (status, body["code"]) == (429, "too_many_attempts")
    assert (await attempt(home, "owner", "owner-pw"))[1]["type"] == "create_entry"
