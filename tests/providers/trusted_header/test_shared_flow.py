"""The trusted_header login flow shared by servers on one database: the proxy's word on A, the MFA step on B.

The proxy's word is read from the request that starts the flow on A and never
stored; B rebuilds the flow for the MFA step from the user and this provider's
credentials of that user, and refuses a stored state that names anything else.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from opp_auth_trusted_header import TrustedHeaderLoginFlow

from opp_auth.ephemeral import digest
from opp_auth.flow import UnknownFlow
from opp_auth.testing import CLIENT_ID, async_wait_until

HANDLER = ("trusted_header", None)
PROXY = "127.0.0.2"
HTTP = {"use_x_forwarded_for": True, "trusted_proxies": [PROXY]}
CLIENT = "192.168.0.5"
REDIRECT = CLIENT_ID + "auth_callback"
CONFIG = {
    "providers": [{"type": "trusted_header"}],
    "mfa_modules": [{"type": "insecure_example", "data": []}],
    "http": HTTP,
}


@pytest.fixture
def opp_auth_storage_type() -> str:
    return "postgresql"


async def start(server: Any, username: str, more: dict[str, str] | None = None) -> dict[str, Any]:
    return await server.login_flow.async_start_login(
        HANDLER,
        ip_address=CLIENT,
        client_id=CLIENT_ID,
        redirect_uri=REDIRECT,
        client_ok=True,
        peer_address=PROXY,
        headers={"Remote-User": username, **(more or {})},
    )


async def step(server: Any, flow_id: str, user_input: dict[str, Any]) -> dict[str, Any]:
    return await server.login_flow.async_login_step(
        flow_id, user_input, ip_address=CLIENT, client_id=CLIENT_ID, client_ok=True
    )


async def enrolled(opp_auth_factory: Any, *names: str) -> tuple[Any, Any, dict[str, Any]]:
    """Servers A and B; each name logged in once (its user made) and then given a PIN on both servers."""
    a = await opp_auth_factory(**CONFIG)
    b = await opp_auth_factory(**CONFIG)
    users = {}
    for name in names:
        done = await start(a, name)
        assert done["type"] == "create_entry", done
        credentials = await a.login_flow.codes.async_redeem(CLIENT_ID, done["result"], "authorize")
        users[name] = await a.users.async_get_or_create_user(credentials)
    for server in (a, b):
        await async_wait_until(lambda s=server: all(s.store.get_user(u.id) is not None for u in users.values()))
        for user in users.values():
            await server.registry.get_auth_mfa_module("insecure_example").async_setup_user(user.id, {"pin": "1234"})
    return a, b, users


async def test_proxys_word_on_a_mfa_on_b_code_on_a(opp_auth_factory: Any) -> None:
    """The flow A started from the proxy's headers asks for MFA; B checks the PIN; A exchanges the code."""
    a, b, users = await enrolled(opp_auth_factory, "alice")
    form = await start(a, "alice")
    assert (form["type"], form["step_id"]) == ("form", "mfa"), form
    wrong = await step(b, form["flow_id"], {"pin": "0000"})
    assert wrong["errors"] == {"base": "invalid_code"}, wrong
    done = await step(b, form["flow_id"], {"pin": "1234"})
    assert done["type"] == "create_entry", done
    credentials = await a.login_flow.codes.async_redeem(CLIENT_ID, done["result"], "authorize")
    assert credentials is not None and a.store.user_for_credentials(credentials).id == users["alice"].id


async def test_a_stored_flow_rewritten_to_another_user_is_refused(
    opp_auth_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """alice's flow at its MFA step, its row made to name bob with alice's credentials: B ends it."""
    a, b, users = await enrolled(opp_auth_factory, "alice", "bob")
    form = await start(a, "alice")
    key = digest(form["flow_id"])
    row = await a.ephemeral._one("SELECT state FROM opp_auth_flows WHERE id = %s", (key,))
    state = json.loads(row[0])
    # The core's state only (the proxy's word is not kept); credentials by their stored data, no meta.
    assert set(state["flow"]) == {
        "mfa_module",
        "mfa_modules",
        "invalid_mfa_times",
        "user_id",
        "credentials",
        "mfa_passed",
    }
    assert state["flow"]["credentials"]["meta"] is None
    state["flow"]["user_id"] = users["bob"].id
    await a.ephemeral._one("UPDATE opp_auth_flows SET state = %s WHERE id = %s", (json.dumps(state), key))
    with pytest.raises(UnknownFlow):
        await step(b, form["flow_id"], {"pin": "1234"})
    assert "the credentials are not that user's" in caplog.text


async def test_state_round_trip_and_refusals(opp_auth_factory: Any) -> None:
    """dump_state/load_state round-trip at the MFA step; a stored flow without a user (its first step) or
    having passed MFA is refused; the rebuilt flow never trusts headers again."""
    a, _b, users = await enrolled(opp_auth_factory, "alice")
    form = await start(a, "alice")
    state = (await a.ephemeral.async_claim_flow(form["flow_id"], 1.0))[0]["flow"]
    provider = a.auth_providers[0]
    credentials = a.store.get_credentials(state["credentials"]["id"])
    flow = await provider.async_login_flow({"ip_address": CLIENT})
    assert isinstance(flow, TrustedHeaderLoginFlow) and flow.SHARED_STATE
    flow.load_state(state, credentials, users["alice"])
    assert flow.dump_state() == state
    assert set(flow.step_schema("mfa").schema) == {"pin"}
    with pytest.raises(KeyError):
        flow.step_schema("init")  # it never waits at its first step
    for bad in (
        (state, None, None),
        (state, None, users["alice"]),
        ({**state, "mfa_passed": [users["alice"].id, "insecure_example"]}, credentials, users["alice"]),
    ):
        with pytest.raises(ValueError):
            (await provider.async_login_flow({"ip_address": CLIENT})).load_state(*bad)


async def test_a_new_users_first_code_is_exchanged_on_another_server_with_the_proxys_name_and_group(
    opp_auth_factory: Any,
) -> None:
    """The proxy's word about a new person (an object: no JSON) stays on A, but what A's provider says the user
    will be travels with the code: B exchanges it and makes the user with that name and group."""
    config = {**CONFIG, "providers": [{"type": "trusted_header", "admin_groups": ["admins"]}]}
    a = await opp_auth_factory(**config)
    b = await opp_auth_factory(**config)
    done = await start(a, "carol", {"Remote-Name": "Carol C.", "Remote-Groups": "staff,admins"})
    assert done["type"] == "create_entry", done
    row = await a.ephemeral._one("SELECT value FROM opp_auth_codes", None)
    stored = json.loads(row[0])["credentials"]
    assert stored["meta"] is None and stored["user_meta"] == {
        "name": "Carol C.",
        "is_active": True,
        "group": "system-admin",
        "local_only": False,
    }
    credentials = await b.login_flow.codes.async_redeem(CLIENT_ID, done["result"], "authorize")
    assert credentials is not None and credentials.is_new
    user = await b.users.async_get_or_create_user(credentials)
    assert user.name == "Carol C." and [g.id for g in user.groups] == ["system-admin"]
    assert await a.login_flow.codes.async_redeem(CLIENT_ID, done["result"], "authorize") is None  # once


async def test_a_forged_user_meta_in_a_shared_code_is_refused(opp_auth_factory: Any) -> None:
    """A code row whose user_meta is not what credentials_value writes gives no credentials."""
    a = await opp_auth_factory(**CONFIG)
    b = await opp_auth_factory(**CONFIG)
    done = await start(a, "dave")
    assert done["type"] == "create_entry", done
    row = await a.ephemeral._one("SELECT id, value FROM opp_auth_codes", None)
    value = json.loads(row[1])
    value["credentials"]["user_meta"] = {"name": "x", "is_active": "yes", "group": 1, "local_only": False}
    await a.ephemeral._one("UPDATE opp_auth_codes SET value = %s WHERE id = %s", (json.dumps(value), row[0]))
    assert await b.login_flow.codes.async_redeem(CLIENT_ID, done["result"], "authorize") is None
