"""Fair shares (opp_auth.shares) of login flows and authorization codes: arithmetic, bounds, cost per change."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opp_auth.codes import AUTHORIZE
from opp_auth.flow import TooManyFlows
from opp_auth.login_flow import MAX_FLOWS, MAX_FLOWS_PER_ADDRESS, MAX_FLOWS_PER_PREFIX
from opp_auth.manager import AuthManager
from opp_auth.models import Credentials
from opp_auth.network import address_and_prefix
from opp_auth.shares import AddressShares, FairPool, Full, KnownAddresses
from opp_auth.testing import CLIENT_ID

EXAMPLE = {"type": "insecure_example", "users": [{"username": "alice", "password": "alice-pw"}]}
HANDLER = ("insecure_example", None)


def context(ip: str | None) -> dict[str, Any]:
    """A login flow context from ip."""
    return {"ip_address": ip, "credential_only": False, "client_id": CLIENT_ID}


# ---- addresses and prefixes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("203.0.113.9", ("203.0.113.9", "203.0.113.0/24")),
        ("2001:db8:0:0:1::7", ("2001:db8::1:0:0:7", "2001:db8::/64")),
        ("2001:DB8:1:2:3:4:5:6", ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64")),
        ("::ffff:198.51.100.4", ("198.51.100.4", "198.51.100.0/24")),
        ("fe80::1%eth0", ("fe80::1%eth0", "fe80::/64")),
        ("not an address", None),
        ("", None),
        ("1.2.3", None),
    ],
)
def test_address_and_prefix(address: str, expected: Any) -> None:
    assert address_and_prefix(address) == expected


# ---- the pool ------------------------------------------------------------------------------


def test_address_and_prefix_shares_refuse() -> None:
    pool = FairPool(capacity=100, per_address=2, per_group=3)
    pool.admit(1, "a1", "g")
    pool.admit(2, "a1", "g")
    with pytest.raises(Full):
        pool.admit(3, "a1", "g")
    pool.admit(3, "a2", "g")
    with pytest.raises(Full):
        pool.admit(4, "a3", "g")
    assert pool.admit(4, "b1", "h") == []


def test_full_pool_displaces_the_oldest_entry_of_the_largest_group() -> None:
    pool = FairPool(capacity=4, per_address=10, per_group=10)
    for key in range(3):
        pool.admit(("big", key), f"a{key}", "big")
    pool.admit(("small", 0), "s0", "small")
    assert pool.admit(("new", 0), "n0", "new") == [("big", 0)]
    assert pool.admit(("new", 1), "n0", "new") == [("big", 1)]
    # Now every group holds at most 2: "new" is one of the largest and is refused.
    assert (pool.group_count("big"), pool.group_count("small"), pool.group_count("new")) == (1, 1, 2)
    with pytest.raises(Full):
        pool.admit(("new", 2), "n0", "new")
    assert pool.admit(("small", 1), "s0", "small") == [("new", 0)]


def test_displace_own_replaces_the_callers_oldest_instead_of_refusing() -> None:
    pool = FairPool(capacity=3, per_address=2, per_group=10)
    pool.admit(1, "a", "g")
    pool.admit(2, "a", "g")
    assert pool.admit(3, "a", "g", displace_own=True) == [1]
    pool.admit(4, "b", "g")
    assert pool.admit(5, "c", "g", displace_own=True) == [2]
    assert len(pool) == 3


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.booleans(), st.integers(0, 5), st.integers(0, 3), st.booleans()), min_size=1, max_size=120
    ),
    capacity=st.integers(1, 12),
    per_address=st.integers(1, 6),
    per_group=st.integers(1, 8),
)
def test_pool_keeps_its_bounds_and_its_counts_right(
    ops: list[tuple[bool, int, int, bool]], capacity: int, per_address: int, per_group: int
) -> None:
    """Random admissions and releases against a model: bounds hold, counts and the largest group are exact."""
    pool = FairPool(capacity, per_address, per_group)
    held: dict[int, tuple[str, str]] = {}
    for key, (add, address_n, group_n, displace) in enumerate(ops):
        group = f"g{group_n}"
        address = f"{group}.a{address_n}"
        if add:
            before = {k: v for k, v in held.items()}
            try:
                displaced = pool.admit(key, address, group, displace_own=displace)
            except Full:
                assert not displace or len(held) >= capacity
                continue
            for old in displaced:
                assert old in before
                del held[old]
            held[key] = (address, group)
        elif held:
            victim = sorted(held)[key % len(held)]
            assert pool.release(victim)
            del held[victim]
        assert len(pool) == len(held) <= capacity
        by_group: dict[str, int] = {}
        by_address: dict[str, int] = {}
        for address_of, group_of in held.values():
            by_group[group_of] = by_group.get(group_of, 0) + 1
            by_address[address_of] = by_address.get(address_of, 0) + 1
        assert all(count <= per_group for count in by_group.values())
        assert all(count <= per_address for count in by_address.values())
        assert pool.largest == max(by_group.values(), default=0)
        assert all(pool.group_count(g) == c for g, c in by_group.items())


def test_known_addresses_are_bounded_per_account_and_in_accounts() -> None:
    known = KnownAddresses(per_account=2, max_accounts=2)
    known.add("u1", "203.0.113.1")
    known.add("u1", "203.0.113.2")
    known.add("u2", "203.0.113.2")
    known.add("u1", "203.0.113.3")
    assert "203.0.113.1" not in known
    assert {"203.0.113.2", "203.0.113.3"} <= {a for a in ("203.0.113.2", "203.0.113.3") if a in known}
    known.add("u3", "198.51.100.1")  # u2, seen longest ago, is forgotten; u1 still knows .2
    assert "203.0.113.2" in known and "198.51.100.1" in known
    known.add("u4", "::ffff:192.0.2.1")
    assert "192.0.2.1" in known and len(known) == 2
    known.add("u4", "not an ip")
    known.add(None, "192.0.2.9")
    assert "192.0.2.9" not in known


# ---- the login flow manager ----------------------------------------------------------------


@pytest.fixture
async def auth(opp_auth_factory: Any) -> AuthManager:
    """A manager with the insecure_example provider and 192.168.1.0/24 on ban_allowlist."""
    return await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[], http={"ban_allowlist": ["192.168.1.0/24"]})


async def start(auth: AuthManager, ip: str | None) -> str:
    """Start a flow from ip; its id."""
    result = await auth.login_flow.async_init(HANDLER, context=context(ip))
    assert result["type"] == "form"
    return str(result["flow_id"])


async def test_defaults_are_the_documented_ones(auth: AuthManager) -> None:
    flows = auth.login_flow
    assert (flows.max_flows, flows.max_per_address, flows.max_per_prefix) == (1000, 30, 100)
    assert (MAX_FLOWS, MAX_FLOWS_PER_ADDRESS, MAX_FLOWS_PER_PREFIX) == (1000, 30, 100)


async def test_a_flood_from_ever_more_prefixes_never_refuses_known_or_trusted_addresses(auth: AuthManager) -> None:
    """1,500 IPv6 /64s (more than the pool holds) fill and churn the strangers' pool; the privileged do not care."""
    auth.known_addresses.add("owner-id", "198.51.100.7")
    owner = await start(auth, "198.51.100.7")
    home = await start(auth, "192.168.1.20")
    refused = 0
    for n in range(1500):
        for i in range(3):
            try:
                await start(auth, f"2001:db8:{n:x}:1::{i + 1:x}")
            except TooManyFlows:
                refused += 1
    assert len(auth.login_flow.shares.strangers) == 1000
    assert auth.login_flow.async_get(owner) and auth.login_flow.async_get(home)
    assert await start(auth, "198.51.100.7") and await start(auth, "192.168.1.21")
    # A fresh prefix still gets in: it displaces the oldest flow of a largest prefix.
    fresh = await start(auth, "192.0.2.50")
    assert auth.login_flow.async_get(fresh)
    assert refused > 0
    result = await auth.login_flow.async_configure(owner, {"username": "alice", "password": "alice-pw"})
    assert result["type"] == "create_entry"


async def test_an_ipv6_64_is_one_share_however_many_addresses_it_uses(auth: AuthManager) -> None:
    accepted = 0
    for n in range(3000):
        try:
            await start(auth, f"2001:db8:77:1:{n >> 8:x}:{n & 0xFF:x}:0:1")
            accepted += 1
        except TooManyFlows:
            pass
    assert accepted == MAX_FLOWS_PER_PREFIX
    assert await start(auth, "2001:db8:77:2::1")  # the next /64 has its own share


async def test_a_flow_displaced_while_being_built_is_refused(auth: AuthManager, monkeypatch: Any) -> None:
    """The place is taken before the provider builds the flow; losing it meanwhile refuses, never leaks."""
    flows = auth.login_flow
    flows.max_flows = 1
    provider = auth.registry.get_auth_provider(*HANDLER)
    assert provider is not None
    original = provider.async_login_flow

    async def slow(ctx: dict[str, Any]) -> Any:
        if ctx["ip_address"] == "203.0.113.1":
            await start(auth, "198.51.100.1")  # displaces the flow being built (its prefix is largest)
        return await original(ctx)

    monkeypatch.setattr(provider, "async_login_flow", slow)
    with pytest.raises(TooManyFlows):
        await start(auth, "203.0.113.1")
    assert len(flows.shares) == len(flows.async_progress()) == 1


async def test_places_are_given_back_on_every_way_out(auth: AuthManager, monkeypatch: Any) -> None:
    """Finish, abort, error, unknown step and expiry each free the place."""
    import opp_auth.flow

    flows = auth.login_flow
    done = await start(auth, "203.0.113.1")
    await flows.async_configure(done, {"username": "alice", "password": "alice-pw"})
    aborted = await start(auth, "203.0.113.1")
    flows.async_abort(aborted)
    await start(auth, "203.0.113.1")
    clock = time.monotonic() + flows.ttl + 1
    monkeypatch.setattr(opp_auth.flow.time, "monotonic", lambda: clock)
    assert flows.async_progress() == []
    assert len(flows.shares) == 0 and flows.shares.strangers.address_count("203.0.113.1") == 0


async def test_starting_a_flow_costs_the_same_with_none_or_a_thousand_in_progress(
    auth: AuthManager, opp_auth_factory: Any
) -> None:
    """Issue 13: the start used to scan every flow in progress (9.6 us with none, 61 us with 900).

    Two managers, one empty and one with 990 flows, timed in turns so that the
    load of a shared machine falls on both alike; the scan made it ten times slower.
    """
    busy = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[])
    for n in range(990):
        await start(busy, f"2001:db8:{n:x}::1")

    async def cost(manager: AuthManager, n: int = 200) -> float:
        addresses = [f"10.{random.randrange(256)}.{random.randrange(256)}.{i % 250 + 1}" for i in range(n)]
        began = time.perf_counter()
        for ip in addresses:
            auth_flow = await start(manager, ip)
            manager.login_flow.async_abort(auth_flow)
        return (time.perf_counter() - began) / n

    empty, full = [], []
    for _ in range(7):
        empty.append(await cost(auth))
        full.append(await cost(busy))
    assert min(full) < min(empty) * 3, (min(empty), min(full))


async def test_known_addresses_come_back_from_stored_refresh_tokens(opp_auth_factory: Any, config_dir: Path) -> None:
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[])
    user = await auth.users.async_create_user("Owner")
    token = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    await auth.access_tokens.async_create_access_token(token, "2001:db8:5::9")
    assert "2001:db8:5::9" in auth.known_addresses
    await auth.async_shutdown()
    again = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[])
    assert "2001:db8:5::9" in again.known_addresses
    assert again.login_flow.shares.classify("2001:db8:5::9")[0] is again.login_flow.shares.privileged


# ---- authorization codes -------------------------------------------------------------------


def credentials(name: str) -> Credentials:
    """Credentials of the example provider for name."""
    return Credentials(auth_provider_type="insecure_example", auth_provider_id=None, data={"username": name})


async def test_codes_of_a_flooding_prefix_never_displace_a_known_addresss_code(auth: AuthManager) -> None:
    auth.codes.max_codes = 50
    auth.known_addresses.add("owner-id", "198.51.100.7")
    owner, stranger, flood = credentials("owner"), credentials("stranger"), credentials("flood")
    owners = auth.codes.issue(CLIENT_ID, owner, AUTHORIZE, ip_address="198.51.100.7")
    strangers = auth.codes.issue(CLIENT_ID, stranger, AUTHORIZE, ip_address="192.0.2.1")
    for n in range(2000):
        auth.codes.issue(CLIENT_ID, flood, AUTHORIZE, ip_address=f"2001:db8:{n % 40:x}::{n:x}")
    assert len(auth.codes) == len(auth.codes.shares) <= 100
    assert auth.codes.redeem(CLIENT_ID, owners, AUTHORIZE) is owner
    # The stranger's prefix held one code while the flood's prefixes held more: it survived too.
    assert auth.codes.redeem(CLIENT_ID, strangers, AUTHORIZE) is stranger


async def test_one_address_keeps_only_its_last_thirty_codes(auth: AuthManager) -> None:
    issued = [auth.codes.issue(CLIENT_ID, credentials(f"u{n}"), AUTHORIZE, ip_address="203.0.113.5") for n in range(31)]
    assert auth.codes.redeem(CLIENT_ID, issued[0], AUTHORIZE) is None
    redeemed = auth.codes.redeem(CLIENT_ID, issued[1], AUTHORIZE)
    assert redeemed is not None and redeemed.data == {"username": "u1"}
    assert len(auth.codes.shares) == 29 == len(auth.codes)


async def test_expired_and_redeemed_codes_give_their_place_back(auth: AuthManager, monkeypatch: Any) -> None:
    import opp_auth.codes

    code = auth.codes.issue(CLIENT_ID, credentials("a"), AUTHORIZE, ip_address="203.0.113.5")
    auth.codes.redeem(CLIENT_ID, code, AUTHORIZE)
    auth.codes.issue(CLIENT_ID, credentials("b"), AUTHORIZE, ip_address="203.0.113.5")
    later = time.monotonic() + auth.codes.ttl + 1
    monkeypatch.setattr(opp_auth.codes.time, "monotonic", lambda: later)
    auth.codes.issue(CLIENT_ID, credentials("c"), AUTHORIZE, ip_address="198.51.100.1")
    assert len(auth.codes) == len(auth.codes.shares) == 1
    assert auth.codes.shares.strangers.address_count("203.0.113.5") == 0


def test_shares_refuse_the_same_key_twice() -> None:
    shares = AddressShares(10, 2, 5)
    shares.admit("k", "203.0.113.1")
    with pytest.raises(ValueError):
        shares.admit("k", "203.0.113.1")


# ---- MFA set-up flows (logged-in users only, but one cap for all of them) ---------------------


async def test_mfa_setup_flows_are_shared_out_per_user(opp_auth_factory: Any) -> None:
    from opp_auth.mfa import MAX_SETUP_FLOWS_PER_USER

    mfa = {"type": "insecure_example", "data": []}
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[mfa])
    setups = auth.mfa_setup_flow
    setups.shares.capacity = 30

    async def setup(user_id: str) -> str:
        result = await setups.async_init("insecure_example", context={"user_id": user_id})
        assert result["type"] == "form"
        return str(result["flow_id"])

    mine = [await setup("greedy") for _ in range(MAX_SETUP_FLOWS_PER_USER)]
    with pytest.raises(TooManyFlows):
        await setup("greedy")
    for n in range(40):  # many users fill the pool, each a little
        await setup(f"user{n % 20}")
    assert len(setups.async_progress()) == 30
    assert setups.shares.address_count("greedy") < MAX_SETUP_FLOWS_PER_USER  # the largest gave way first
    owner = await setup("owner")
    assert setups.async_get(owner)
    assert len(mine) == MAX_SETUP_FLOWS_PER_USER


async def test_the_start_remembers_the_most_recently_used_stored_addresses(opp_auth_factory: Any) -> None:
    from datetime import UTC, datetime, timedelta

    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[])
    now = datetime.now(UTC)
    for n in range(5):
        user = await auth.users.async_create_user(f"u{n}")
        token = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
        token.last_used_ip, token.last_used_at = f"203.0.113.{n}", now - timedelta(days=n)
    naive = await auth.refresh_tokens.async_create_refresh_token(await auth.users.async_create_user("old"), CLIENT_ID)
    naive.last_used_ip, naive.last_used_at = "198.51.100.1", datetime(2020, 1, 1)  # a naive time from an old file
    auth.known_addresses = KnownAddresses(max_accounts=2)
    auth._remember_addresses_of_stored_tokens()
    assert [
        ip for ip in ("203.0.113.0", "203.0.113.1", "203.0.113.2", "198.51.100.1") if ip in auth.known_addresses
    ] == [
        "203.0.113.0",
        "203.0.113.1",
    ]
