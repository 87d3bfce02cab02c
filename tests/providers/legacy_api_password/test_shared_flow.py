"""The legacy_api_password login flow shared by servers on one database: started on A, finished on B.

Its stored state is the core's (the MFA progress), never the password.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from opp_auth_legacy_api_password import LegacyLoginFlow

from opp_auth.ephemeral import digest
from opp_auth.testing import CLIENT_ID, async_wait_until

HANDLER = ("legacy_api_password", None)
PASSWORD = "s3cret-pässword"
CLIENT = "192.168.0.5"
REDIRECT = CLIENT_ID + "auth_callback"


@pytest.fixture
def opp_auth_storage_type() -> str:
    return "postgresql"


async def servers(opp_auth_factory: Any) -> tuple[Any, Any]:
    config = {
        "providers": [{"type": "legacy_api_password", "api_password": PASSWORD}],
        "mfa_modules": [{"type": "insecure_example", "data": []}],
    }
    return await opp_auth_factory(**config), await opp_auth_factory(**config)


async def start(server: Any) -> dict[str, Any]:
    return await server.login_flow.async_start_login(
        HANDLER, ip_address=CLIENT, client_id=CLIENT_ID, redirect_uri=REDIRECT, client_ok=True
    )


async def step(server: Any, flow_id: str, user_input: dict[str, Any]) -> dict[str, Any]:
    return await server.login_flow.async_login_step(
        flow_id, user_input, ip_address=CLIENT, client_id=CLIENT_ID, client_ok=True
    )


async def test_form_on_a_password_on_b_code_on_a(opp_auth_factory: Any) -> None:
    """A wrong password on B, the right one on A's flow on B again; A exchanges the code for the shared user."""
    a, b = await servers(opp_auth_factory)
    form = await start(a)
    assert (form["type"], form["step_id"]) == ("form", "init"), form
    wrong = await step(b, form["flow_id"], {"password": "wrong"})
    assert wrong["errors"] == {"base": "invalid_auth"}, wrong
    row = await a.ephemeral._one("SELECT state FROM opp_auth_flows WHERE id = %s", (digest(form["flow_id"]),))
    assert "wrong" not in row[0] and PASSWORD not in row[0]
    with pytest.raises(Exception, match="required key not provided"):
        await step(a, form["flow_id"], {})  # the form's schema is rebuilt on the other server
    done = await step(b, form["flow_id"], {"password": PASSWORD})
    assert done["type"] == "create_entry", done
    credentials = await a.login_flow.codes.async_redeem(CLIENT_ID, done["result"], "authorize")
    assert credentials is not None and credentials.auth_provider_type == "legacy_api_password"


async def test_mfa_step_on_the_other_server_and_a_tampered_state(
    opp_auth_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The shared user with a PIN: password on A, PIN on B; a stored state naming another user ends."""
    a, b = await servers(opp_auth_factory)
    done = await step(a, (await start(a))["flow_id"], {"password": PASSWORD})
    user = await a.users.async_get_or_create_user(
        await a.login_flow.codes.async_redeem(CLIENT_ID, done["result"], "authorize")
    )
    other = await a.users.async_create_user("someone else")
    for server in (a, b):
        await async_wait_until(
            lambda s=server: s.store.get_user(user.id) is not None and s.store.get_user(other.id) is not None
        )
        await server.registry.get_auth_mfa_module("insecure_example").async_setup_user(user.id, {"pin": "1234"})
    form = await start(b)
    mfa = await step(a, form["flow_id"], {"password": PASSWORD})
    assert mfa["step_id"] == "mfa", mfa
    finished = await step(b, form["flow_id"], {"pin": "1234"})
    assert finished["type"] == "create_entry", finished
    # Again, and the stored row is made to name someone else.
    form = await start(b)
    await step(a, form["flow_id"], {"password": PASSWORD})
    key = digest(form["flow_id"])
    row = await a.ephemeral._one("SELECT state FROM opp_auth_flows WHERE id = %s", (key,))
    state = json.loads(row[0])
    state["flow"]["user_id"] = other.id
    await a.ephemeral._one("UPDATE opp_auth_flows SET state = %s WHERE id = %s", (json.dumps(state), key))
    from opp_auth.flow import UnknownFlow

    with pytest.raises(UnknownFlow):
        await step(b, form["flow_id"], {"pin": "1234"})
    assert "not this provider's credentials of that user" in caplog.text


async def test_state_round_trip(opp_auth_factory: Any) -> None:
    """dump_state then load_state on a fresh flow gives the same state and the password form."""
    a, _b = await servers(opp_auth_factory)
    provider = a.auth_providers[0]
    flow = await provider.async_login_flow({})
    assert isinstance(flow, LegacyLoginFlow) and flow.SHARED_STATE
    state = json.loads(json.dumps(flow.dump_state()))
    again = await provider.async_login_flow({})
    again.load_state(state, None, None)
    assert again.dump_state() == state
    assert set(again.step_schema("init").schema) == {"password"}
    with pytest.raises(ValueError):
        again.load_state({**state, "mfa_passed": ["x", "insecure_example"]}, None, None)
