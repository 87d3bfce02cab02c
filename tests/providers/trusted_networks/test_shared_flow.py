"""The trusted_networks login flow shared by servers on one database: started on A, finished on B.

Nothing of the choice is stored: the address is the flow context's (the engine refuses
another address), the users on offer are worked out again on B, and a stored state
naming a user that address may not pick is refused.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from opp_auth_trusted_networks import TrustedNetworksLoginFlow

from opp_auth.flow import UnknownFlow
from opp_auth.login_flow import AddressChanged
from opp_auth.testing import CLIENT_ID, async_wait_until

HANDLER = ("trusted_networks", None)
HTTP = {"use_x_forwarded_for": True, "trusted_proxies": ["127.0.0.1"]}
HOME = "192.168.0.5"
OFFICE = "10.0.0.7"
REDIRECT = CLIENT_ID + "auth_callback"


@pytest.fixture
def opp_auth_storage_type() -> str:
    return "postgresql"


async def cluster(opp_auth_factory: Any, *, mfa: bool = False) -> tuple[Any, Any, dict[str, str]]:
    """Servers A and B; ann may log in from HOME, bob from OFFICE only (trusted_users), both from elsewhere."""
    seed = await opp_auth_factory(providers=[{"type": "trusted_networks", "trusted_networks": ["0.0.0.0/0"]}])
    ids = {name: (await seed.users.async_create_user(name)).id for name in ("ann", "bob")}
    config = {
        "providers": [
            {
                "type": "trusted_networks",
                "trusted_networks": ["192.168.0.0/24", OFFICE],
                "trusted_users": {"192.168.0.0/24": [ids["ann"]], OFFICE: [ids["bob"]]},
            }
        ],
        "mfa_modules": [{"type": "insecure_example", "data": []}] if mfa else [],
        "http": HTTP,
    }
    a = await opp_auth_factory(**config)
    b = await opp_auth_factory(**config)
    for server in (a, b):
        await async_wait_until(lambda s=server: all(s.store.get_user(i) is not None for i in ids.values()))
        if mfa:
            for user_id in ids.values():
                await server.registry.get_auth_mfa_module("insecure_example").async_setup_user(user_id, {"pin": "1234"})
    return a, b, ids


async def start(server: Any, address: str) -> dict[str, Any]:
    return await server.login_flow.async_start_login(
        HANDLER, ip_address=address, client_id=CLIENT_ID, redirect_uri=REDIRECT, client_ok=True
    )


async def step(server: Any, flow_id: str, user_input: dict[str, Any], address: str) -> dict[str, Any]:
    return await server.login_flow.async_login_step(
        flow_id, user_input, ip_address=address, client_id=CLIENT_ID, client_ok=True
    )


async def test_started_on_a_finished_on_b_and_the_code_exchanged_on_a(opp_auth_factory: Any) -> None:
    """The picker shown by A is answered on B; the code B issued is redeemed on A for ann's credentials."""
    a, b, ids = await cluster(opp_auth_factory)
    form = await start(a, HOME)
    assert (form["type"], form["step_id"]) == ("form", "init"), form
    done = await step(b, form["flow_id"], {"user": ids["ann"]}, HOME)
    assert done["type"] == "create_entry", done
    credentials = await a.login_flow.codes.async_redeem(CLIENT_ID, done["result"], "authorize")
    assert credentials is not None and credentials.data == {"user_id": ids["ann"]}


async def test_b_offers_only_the_users_of_the_flows_address(opp_auth_factory: Any) -> None:
    """bob is not on offer at HOME: B works the choices out again and refuses him (invalid_auth)."""
    a, b, ids = await cluster(opp_auth_factory)
    form = await start(a, HOME)
    refused = await step(b, form["flow_id"], {"user": ids["bob"]}, HOME)
    assert (refused["type"], refused["errors"]) == ("form", {"base": "invalid_auth"}), refused
    done = await step(a, form["flow_id"], {"user": ids["ann"]}, HOME)
    assert done["type"] == "create_entry", done


async def test_another_address_cannot_take_the_flow_over_on_b(opp_auth_factory: Any) -> None:
    """A flow started at HOME, its step sent to B from OFFICE (trusted too): refused, whoever it names."""
    a, b, ids = await cluster(opp_auth_factory)
    form = await start(a, HOME)
    with pytest.raises(AddressChanged):
        await step(b, form["flow_id"], {"user": ids["bob"]}, OFFICE)
    done = await step(b, form["flow_id"], {"user": ids["ann"]}, HOME)
    assert done["type"] == "create_entry", done


async def test_mfa_step_on_b_and_a_tampered_user_is_refused(
    opp_auth_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Past the picker the stored flow names ann; rewritten to name bob (not allowed at HOME) it ends on B."""
    a, b, ids = await cluster(opp_auth_factory, mfa=True)
    # bob's credentials of this provider exist (he logged in at the OFFICE once).
    office = await step(a, (await start(a, OFFICE))["flow_id"], {"user": ids["bob"]}, OFFICE)
    office = await step(b, office["flow_id"], {"pin": "1234"}, OFFICE)
    bob = await a.login_flow.codes.async_redeem(CLIENT_ID, office["result"], "authorize")
    assert bob is not None
    await async_wait_until(lambda: b.store.get_credentials(bob.id) is not None)
    # ann's flow, at its MFA step: honest, it finishes on B.
    form = await start(a, HOME)
    mfa = await step(b, form["flow_id"], {"user": ids["ann"]}, HOME)
    assert (mfa["type"], mfa["step_id"]) == ("form", "mfa"), mfa
    done = await step(a, form["flow_id"], {"pin": "1234"}, HOME)
    assert done["type"] == "create_entry", done
    # Again, and someone with write access to the row makes it name bob and his credentials.
    form = await start(a, HOME)
    mfa = await step(b, form["flow_id"], {"user": ids["ann"]}, HOME)
    assert mfa["step_id"] == "mfa", mfa
    from opp_auth.ephemeral import digest

    row = await a.ephemeral._one("SELECT state FROM opp_auth_flows WHERE id = %s", (digest(form["flow_id"]),))
    state = json.loads(row[0])
    state["flow"]["user_id"] = ids["bob"]
    state["flow"]["credentials"] = {"id": bob.id}
    await a.ephemeral._one(
        "UPDATE opp_auth_flows SET state = %s WHERE id = %s", (json.dumps(state), digest(form["flow_id"]))
    )
    with pytest.raises(UnknownFlow):
        await step(b, form["flow_id"], {"pin": "1234"}, HOME)
    assert "a user this address may not log in as" in caplog.text


async def test_state_round_trip_and_tampered_states(opp_auth_factory: Any) -> None:
    """dump_state then load_state on a new flow of the same context gives the same state; a state whose
    address is not the context's, or that names a user the address may not pick, raises ValueError."""
    a, _b, ids = await cluster(opp_auth_factory)
    provider = a.auth_providers[0]
    flow = await provider.async_login_flow({"ip_address": HOME})
    assert isinstance(flow, TrustedNetworksLoginFlow) and flow.SHARED_STATE
    state = json.loads(json.dumps(flow.dump_state()))
    assert state["ip"] == HOME
    again = await provider.async_login_flow({"ip_address": HOME})
    again.load_state(state, None, None)
    assert again.dump_state() == state
    assert set(again.step_schema("init").schema) == {"user"}
    with pytest.raises(ValueError):
        (await provider.async_login_flow({"ip_address": "192.168.0.6"})).load_state(state, None, None)
    with pytest.raises(ValueError):  # a user, without credentials of this provider
        (await provider.async_login_flow({"ip_address": HOME})).load_state(
            {**state, "user_id": ids["ann"]}, None, a.store.get_user(ids["ann"])
        )
    with pytest.raises(ValueError):  # bob, not allowed at HOME
        (await provider.async_login_flow({"ip_address": HOME})).load_state(
            {**state, "user_id": ids["bob"]}, None, a.store.get_user(ids["bob"])
        )
    with pytest.raises(ValueError):  # a flow at rest never passed MFA
        (await provider.async_login_flow({"ip_address": HOME})).load_state(
            {**state, "mfa_passed": [ids["ann"], "totp"]}, None, None
        )
