"""openpeerpower: mfa_required: when an enrolled user must pass a second factor, over the real HTTP login API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import voluptuous as vol

from opp_auth.config import CORE_SCHEMA
from opp_auth.testing import run_login_flow

HANDLER = ["insecure_example", None]
PROVIDER = {"type": "insecure_example", "users": [{"username": "alice", "password": "alice-pw", "name": "Alice"}]}
ALICE = {"username": "alice", "password": "alice-pw"}
PIN_MODULE = {"type": "insecure_example", "data": []}
BEHIND_PROXY = {"use_x_forwarded_for": True, "trusted_proxies": ["127.0.0.1"]}


def test_policy_defaults_to_everywhere_and_names_the_choices() -> None:
    """Absent: everywhere; a wrong value is an error listing the three choices."""
    assert CORE_SCHEMA({})["mfa_required"] == "everywhere"
    with pytest.raises(vol.Invalid) as err:
        CORE_SCHEMA({"mfa_required": "sometimes"})
    assert "everywhere, outside_local_network, never" in str(err.value)


async def enrolled(opp_auth_factory: Any, policy: str | None) -> Any:
    """Alice with the PIN module enrolled, under the given policy."""
    auth = await opp_auth_factory(providers=[PROVIDER], mfa_modules=[PIN_MODULE], http=BEHIND_PROXY, mfa_required=policy)
    result = await run_login_flow(auth, ("insecure_example", None), [ALICE])
    user = await auth.users.async_get_or_create_user(result["result"])
    await auth.users.async_enable_user_mfa(user, "insecure_example", {"pin": "1234"})
    return auth


@pytest.mark.parametrize(
    ("policy", "address", "asked"),
    [
        (None, "127.0.0.1", True),
        ("everywhere", "192.168.1.20", True),
        ("outside_local_network", "127.0.0.1", False),
        ("outside_local_network", "192.168.1.20", False),
        ("outside_local_network", "fd12::5", False),
        ("outside_local_network", "203.0.113.7", True),
        ("outside_local_network", "2001:db8::1", True),
        ("outside_local_network", None, True),
        ("never", "203.0.113.7", False),
    ],
)
async def test_policy_decides_per_address(opp_auth_factory: Any, policy: str | None, address: str | None, asked: bool) -> None:
    """everywhere asks always; outside_local_network only off loopback/private/link-local (or unknown); never not."""
    auth = await enrolled(opp_auth_factory, policy)
    result = await run_login_flow(auth, ("insecure_example", None), [ALICE], context={"ip_address": address})
    if asked:
        assert result["type"] == "form" and result["step_id"] == "mfa", result
    else:
        assert result["type"] == "create_entry", result


async def test_forwarded_address_from_a_trusted_proxy_counts(
    onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any
) -> None:
    """Over HTTP behind a trusted proxy the client's forwarded address decides: outside asks, inside does not."""
    auth = await enrolled(opp_auth_factory, "outside_local_network")
    client = await opp_auth_client(auth)
    for forwarded, step in (("192.168.1.20", "create_entry"), ("203.0.113.7", "mfa")):
        headers = {"X-Forwarded-For": forwarded}
        async with client.request("POST", "/auth/login_flow", json={
            "client_id": "https://example.com/app", "handler": HANDLER, "redirect_uri": "https://example.com/app/callback",
        }, headers=headers) as resp:
            form = await resp.json()
        async with client.request("POST", f"/auth/login_flow/{form['flow_id']}", json={
            "client_id": "https://example.com/app", **ALICE}, headers=headers) as resp:
            result = await resp.json()
        assert result.get("step_id", result["type"]) == step, result
        if step == "mfa":
            async with client.request("POST", f"/auth/login_flow/{form['flow_id']}", json={
                "client_id": "https://example.com/app", "pin": "1234"}, headers=headers) as resp:
                assert (await resp.json())["type"] == "create_entry"
