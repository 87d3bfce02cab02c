"""Edges of logins shared by servers on one database, found by review: one person's first codes exchanged on two
servers at once; an MFA pass that stopped counting while the flow goes on to another server; an event type the
audit table's type column cannot hold as it is."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
import pytest
from opp_auth_postgresql.audit import PgAuditSink
from opp_auth_postgresql.schema import async_migrate

from opp_auth.errors import AuthManagerError
from opp_auth.testing import CLIENT_ID, async_wait_until

PROXY = "127.0.0.2"
CLIENT = "192.168.0.5"
REDIRECT = CLIENT_ID + "auth_callback"
HTTP = {"use_x_forwarded_for": True, "trusted_proxies": [PROXY]}


@pytest.fixture
def opp_auth_storage_type() -> str:
    return "postgresql"


async def header_login(server: Any, groups: str) -> str:
    """A trusted_header login of eve (the proxy's word); the code."""
    done = await server.login_flow.async_start_login(
        ("trusted_header", None),
        ip_address=CLIENT,
        client_id=CLIENT_ID,
        redirect_uri=REDIRECT,
        client_ok=True,
        peer_address=PROXY,
        headers={"Remote-User": "eve", "Remote-Groups": groups},
    )
    assert done["type"] == "create_entry", done
    return str(done["result"])


async def exchange(server: Any, code: str) -> Any:
    """The code's credentials, then their user (made when new)."""
    credentials = await server.login_flow.codes.async_redeem(CLIENT_ID, code, "authorize")
    assert credentials is not None
    return await server.users.async_get_or_create_user(credentials)


@pytest.mark.parametrize("crossed", [True, False], ids=["each-code-on-the-other-server", "each-on-its-own"])
async def test_one_persons_first_codes_exchanged_at_once_on_two_servers_make_one_user(
    opp_auth_factory: Any, crossed: bool
) -> None:
    """Two logins of eve before she has a user, one on A and one on B, exchanged at the same instant on two
    servers: one user is made; the other exchange is refused (log in again), never a second user."""
    config = {"providers": [{"type": "trusted_header", "admin_groups": ["admins"]}], "http": HTTP}
    a = await opp_auth_factory(**config)
    b = await opp_auth_factory(**config)
    code_a, code_b = await header_login(a, "staff"), await header_login(b, "staff,admins")
    first, second = (b, a) if crossed else (a, b)
    results = await asyncio.gather(exchange(first, code_a), exchange(second, code_b), return_exceptions=True)
    made = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(made) == 1 and len(refused) == 1 and isinstance(refused[0], AuthManagerError), results
    for server in (a, b):
        await async_wait_until(lambda s=server: s.store.get_user(made[0].id) is not None)
        holders = [u for u in server.store.users() if any(c.data.get("username") == "eve" for c in u.credentials)]
        assert [u.id for u in holders] == [made[0].id]


async def test_an_mfa_pass_that_stopped_counting_leaves_no_pass_in_the_stored_flow(opp_auth_factory: Any) -> None:
    """alice passes pin1 on B at the instant pin1 is removed for her: the flow goes on to pin2 and is stored
    without a pass, so A takes her pin2 step (a stored pass would be refused as forged)."""
    config = {
        "providers": [{"type": "insecure_example", "users": [{"username": "alice", "password": "pw"}]}],
        "mfa_modules": [
            {"type": "insecure_example", "id": "pin1", "data": []},
            {"type": "insecure_example", "id": "pin2", "data": []},
        ],
    }
    a = await opp_auth_factory(**config)
    b = await opp_auth_factory(**config)

    async def step(server: Any, flow_id: str, user_input: dict[str, Any]) -> dict[str, Any]:
        return await server.login_flow.async_login_step(  # type: ignore[no-any-return]
            flow_id, user_input, ip_address=CLIENT, client_id=CLIENT_ID, client_ok=True
        )

    async def password(server: Any) -> dict[str, Any]:
        form = await server.login_flow.async_start_login(
            ("insecure_example", None), ip_address=CLIENT, client_id=CLIENT_ID, redirect_uri=REDIRECT, client_ok=True
        )
        return await step(server, form["flow_id"], {"username": "alice", "password": "pw"})

    alice = await exchange(a, (await password(a))["result"])
    await async_wait_until(lambda: b.store.get_user(alice.id) is not None)
    for server in (a, b):
        await server.registry.get_auth_mfa_module("pin1").async_setup_user(alice.id, {"pin": "1111"})
        await server.registry.get_auth_mfa_module("pin2").async_setup_user(alice.id, {"pin": "2222"})
    form = await password(a)
    form = await step(b, form["flow_id"], {"multi_factor_auth_module": "pin1"})
    module = b.registry.get_auth_mfa_module("pin1")
    validate = module.async_validate

    async def validate_then_removed(user_id: str, user_input: dict[str, Any]) -> bool:
        valid = await validate(user_id, user_input)
        for server in (a, b):
            await server.registry.get_auth_mfa_module("pin1").async_depose_user(user_id)
        return bool(valid)

    module.async_validate = validate_then_removed  # type: ignore[method-assign]
    form = await step(b, form["flow_id"], {"pin": "1111"})
    assert (form["type"], form["step_id"], form["description_placeholders"]["mfa_module_id"]) == ("form", "mfa", "pin2")
    done = await step(a, form["flow_id"], {"pin": "2222"})
    assert done["type"] == "create_entry", done


def test_an_event_type_the_type_column_cannot_hold_is_escaped_there_and_kept_in_the_record(
    opp_auth_storage: dict[str, Any],
) -> None:
    """A plugin's event type with a NUL and a lone surrogate: the append succeeds (it used to fail, and with it
    every later audit write), the column holds an escaped form, the record its exact text."""
    url = opp_auth_storage["url"]

    async def migrate() -> None:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await async_migrate(conn)  # the schema, as a server makes it at start

    asyncio.run(migrate())
    sink = PgAuditSink(url)
    sink.open("test")
    sink.append([], [("odd\x00type\ud800", {"n": 1})])
    sink.close()
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT type, record FROM opp_auth_audit ORDER BY seq").fetchall()
    odd = [(kind, json.loads(text)) for kind, text in rows if "odd" in kind]
    assert len(odd) == 1 and odd[0][0] == "odd\\x00type\\ud800" and odd[0][1]["type"] == "odd\x00type\ud800"
