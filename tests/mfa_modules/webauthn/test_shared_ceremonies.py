"""Passkey logins with several servers on one database: a challenge issued by A verifies on B, exactly once.

The passwordless flow (``PasskeyLoginFlow``, shared) and the webauthn MFA step of a
password login (the username/password flow is shared) each keep their challenge
where every server sees it (``PluginContext.async_put_shared``): issued by A,
taken by whichever server receives the assertion, by one atomic delete, expiring
``timeout`` seconds after issue by the database's clock. Assertions come from the
software authenticator of conftest.py; it does not count (``counting = False``,
as synced passkeys send 0), so only the challenge stands between a replay and a
login.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from opp_auth_webauthn import CeremonyError
from opp_auth_webauthn.passwordless import PasskeyLoginFlow

from opp_auth.flow import UnknownFlow
from opp_auth.testing import CLIENT_ID, REDIRECT_URI, async_wait_until

from .conftest import SoftAuthenticator
from .test_passwordless import PROVIDERS, WEBAUTHN, user_with_passkey

PASSKEY = ("webauthn", None)
PASSWORD = ("insecure_example", None)
ADDRESS = "192.168.0.5"


@pytest.fixture
def opp_auth_storage_type() -> str:
    return "postgresql"


async def cluster(opp_auth_factory: Any, authenticator: Any, count: int = 2) -> tuple[list[Any], Any]:
    """count servers on one database; Mia (example provider) enrolled a passkey on the first; all know it."""
    authenticator.counting = False
    servers = [await opp_auth_factory(providers=PROVIDERS, mfa_modules=[WEBAUTHN]) for _ in range(count)]
    mia = await user_with_passkey(servers[0], authenticator)
    passkey_id = next(iter(module(servers[0])._by_credential))
    for server in servers[1:]:
        await async_wait_until(
            lambda s=server: s.store.get_user(mia.id) is not None and passkey_id in module(s)._by_credential
        )
    return servers, mia


def module(server: Any) -> Any:
    return server.registry.get_auth_mfa_module("webauthn")


def options_of(form: dict[str, Any]) -> dict[str, Any]:
    return form["description_placeholders"]["challenge"]["webauthn"]


async def start(server: Any, handler: tuple[str, None] = PASSKEY) -> dict[str, Any]:
    return await server.login_flow.async_start_login(
        handler, ip_address=ADDRESS, client_id=CLIENT_ID, redirect_uri=REDIRECT_URI, client_ok=True
    )


async def step(server: Any, flow_id: str, user_input: dict[str, Any]) -> dict[str, Any]:
    return await server.login_flow.async_login_step(
        flow_id, user_input, ip_address=ADDRESS, client_id=CLIENT_ID, client_ok=True
    )


async def mfa_form(server: Any, username: str = "mia") -> dict[str, Any]:
    """A password login on server, at its webauthn MFA step."""
    form = await start(server, PASSWORD)
    form = await step(server, form["flow_id"], {"username": username, "password": f"{username}-pass"})
    assert (form["type"], form["step_id"]) == ("form", "mfa"), form
    return form


async def tokens(server: Any, done: dict[str, Any]) -> Any:
    """Exchange a finished login's code on server for a refresh and an access token; the user."""
    assert done["type"] == "create_entry", done
    credentials = await server.login_flow.codes.async_redeem(CLIENT_ID, done["result"], "authorize")
    assert credentials is not None
    user = await server.users.async_get_or_create_user(credentials)
    refresh = await server.refresh_tokens.async_create_refresh_token(user, CLIENT_ID, credential=credentials)
    assert await server.access_tokens.async_create_access_token(refresh, ADDRESS)
    return user


async def test_passkey_login_started_on_a_finished_on_b_and_its_code_exchanged_on_a(
    opp_auth_factory: Any, authenticator: Any
) -> None:
    """The form A showed is answered on B; A exchanges the code for Mia's tokens. No challenge stays in memory."""
    (a, b), mia = await cluster(opp_auth_factory, authenticator)
    form = await start(a)
    assert (form["type"], form["step_id"]) == ("form", "init"), form
    done = await step(b, form["flow_id"], {"credential": authenticator.get(options_of(form))})
    assert (await tokens(a, done)).id == mia.id
    # What A keeps for every server: the challenge, for no user yet, living the module's timeout.
    form = await start(a)
    assert not module(a)._pending and not module(b)._pending
    stored = await a.context.async_get_shared(f"webauthn.webauthn.challenge.passwordless:{form['flow_id']}")
    assert stored is not None and set(stored[0]) == {"challenge", "user_id", "uv"}
    assert stored[0] == {"challenge": options_of(form)["challenge"], "user_id": None, "uv": "required"}
    assert module(a).timeout - 2 < stored[1] <= module(a).timeout  # expires as in memory: timeout after issue


async def test_a_refused_assertion_on_b_gives_a_challenge_a_accepts(opp_auth_factory: Any, authenticator: Any) -> None:
    """A bad signature on B spends A's challenge and B shows a fresh one; its answer is accepted on A."""
    (a, b), mia = await cluster(opp_auth_factory, authenticator)
    form = await start(a)
    bad = await step(b, form["flow_id"], {"credential": authenticator.get(options_of(form), bad_signature=True)})
    assert bad["errors"] == {"base": "invalid_auth"}, bad
    assert options_of(bad)["challenge"] != options_of(form)["challenge"]
    late = await step(a, form["flow_id"], {"credential": authenticator.get(options_of(form))})
    assert late["errors"] == {"base": "invalid_auth"}, late
    done = await step(a, form["flow_id"], {"credential": authenticator.get(options_of(late))})
    assert (await tokens(a, done)).id == mia.id


async def test_webauthn_mfa_after_a_password_on_a_assertion_on_b(opp_auth_factory: Any, authenticator: Any) -> None:
    """Password on A, the MFA step's assertion on B: logged in; the code is exchanged on A."""
    (a, b), mia = await cluster(opp_auth_factory, authenticator)
    form = await mfa_form(a)
    wrong = await step(b, form["flow_id"], {"credential": authenticator.get(options_of(form), bad_signature=True)})
    assert wrong["errors"] == {"base": "invalid_code"}, wrong
    done = await step(a, form["flow_id"], {"credential": authenticator.get(options_of(wrong))})  # issued by B
    assert (await tokens(a, done)).id == mia.id
    form = await mfa_form(a)
    done = await step(b, form["flow_id"], {"credential": authenticator.get(options_of(form))})
    assert (await tokens(b, done)).id == mia.id
    assert not module(a)._pending and not module(b)._pending


async def test_an_assertion_accepted_on_b_is_refused_on_a(opp_auth_factory: Any, authenticator: Any) -> None:
    """Replayed on A after B accepted it: in the same flow (gone), in another flow, and as the module sees it."""
    (a, b), mia = await cluster(opp_auth_factory, authenticator)
    form = await start(a)
    assertion = authenticator.get(options_of(form))
    await tokens(a, await step(b, form["flow_id"], {"credential": assertion}))
    with pytest.raises(UnknownFlow):
        await step(a, form["flow_id"], {"credential": assertion})
    other = await start(a)
    assert (await step(a, other["flow_id"], {"credential": assertion}))["errors"] == {"base": "invalid_auth"}
    # The challenge itself: taken by B, no longer there for A (neither kind of login binding).
    on_a, on_b = module(a), module(b)
    for binding, user_id in (("flow:replayed", mia.id), ("passwordless:replayed", None)):
        if user_id is None:
            options = await on_a.async_request_options(binding, None, user_verification="required")
        else:
            options = (await on_a.async_login_challenge(mia.id, "replayed"))["webauthn"]
        assertion = authenticator.get(options)
        assert (await on_b.async_verify_assertion(binding, assertion, user_id=user_id)).user_id == mia.id
        with pytest.raises(CeremonyError) as refused:
            await on_a.async_verify_assertion(binding, assertion, user_id=user_id)
        assert refused.value.code == "invalid_challenge"


async def test_the_same_assertion_on_b_and_c_at_once_wins_once(opp_auth_factory: Any, authenticator: Any) -> None:
    """A replay raced on two servers that did not issue the challenge: exactly one accepts, every time."""
    (a, b, c), mia = await cluster(opp_auth_factory, authenticator, 3)
    for round_ in range(4):
        options = (await module(a).async_login_challenge(mia.id, f"race-{round_}"))["webauthn"]
        answer = {"credential": authenticator.get(options)}
        results = await asyncio.gather(
            module(b).async_validate_in_flow(mia.id, answer, f"race-{round_}"),
            module(c).async_validate_in_flow(mia.id, answer, f"race-{round_}"),
        )
        assert sorted(results) == [False, True]
        binding = f"passwordless:race-{round_}"
        assertion = authenticator.get(
            await module(a).async_request_options(binding, None, user_verification="required")
        )
        outcomes = await asyncio.gather(
            module(b).async_verify_assertion(binding, assertion, user_id=None),
            module(c).async_verify_assertion(binding, assertion, user_id=None),
            return_exceptions=True,
        )
        assert sorted(type(o).__name__ for o in outcomes) == ["Assertion", "CeremonyError"], outcomes
    # Whole login steps: one flow's assertion sent to B and C at once finishes one login.
    form = await start(a)
    assertion = authenticator.get(options_of(form))
    steps = await asyncio.gather(
        step(b, form["flow_id"], {"credential": assertion}),
        step(c, form["flow_id"], {"credential": assertion}),
        return_exceptions=True,
    )
    finished = [s for s in steps if isinstance(s, dict) and s.get("type") == "create_entry"]
    assert len(finished) == 1, steps
    assert all(s is finished[0] or isinstance(s, UnknownFlow) or (isinstance(s, dict) and s["errors"]) for s in steps)


async def test_an_expired_challenge_is_refused_on_every_server(opp_auth_factory: Any, authenticator: Any) -> None:
    """The MFA step's challenge past its expiry (the database's clock): B refuses and issues a fresh one, A
    accepts that; the passwordless flow's expired challenge is refused on A and B alike."""
    (a, b), mia = await cluster(opp_auth_factory, authenticator)
    from opp_auth_postgresql.ephemeral import VALUE_PREFIX, digest

    async def expire(binding: str) -> bool:
        """Move the shared challenge of binding past its expiry; whether there was one."""
        key = digest(VALUE_PREFIX + f"webauthn.webauthn.challenge.{binding}")
        row = await a.ephemeral._one(
            "UPDATE opp_auth_values SET expires_at = clock_timestamp() - interval '1 second' WHERE id = %s "
            "RETURNING id",
            (key,),
        )
        return row is not None

    form = await mfa_form(a)
    expired = await expire(f"flow:{form['flow_id']}")
    late = await step(b, form["flow_id"], {"credential": authenticator.get(options_of(form))})
    assert late["errors"] == {"base": "invalid_code"}, late
    done = await step(a, form["flow_id"], {"credential": authenticator.get(options_of(late))})
    assert (await tokens(a, done)).id == mia.id
    assert expired
    form = await start(a)
    assert await expire(f"passwordless:{form['flow_id']}")
    for server in (b, a):
        refused = await step(server, form["flow_id"], {"credential": authenticator.get(options_of(form))})
        assert refused["errors"] == {"base": "invalid_auth"}, refused


async def test_a_challenge_serves_its_own_flow_and_user_only(opp_auth_factory: Any, authenticator: Any) -> None:
    """Across servers: an assertion for flow X's challenge does not pass flow Y (and leaves X's); Mia's passkey
    signing Otto's MFA challenge is refused; an MFA challenge does not pass a passkey login."""
    (a, b), mia = await cluster(opp_auth_factory, authenticator)
    ottos = SoftAuthenticator(counting=False)
    otto = await user_with_passkey(a, ottos, "otto")
    await async_wait_until(lambda: otto.id in module(b)._users and b.store.get_user(otto.id) is not None)
    x, y = await mfa_form(a), await mfa_form(a)
    for_x = authenticator.get(options_of(x))
    assert (await step(b, y["flow_id"], {"credential": for_x}))["errors"] == {"base": "invalid_code"}
    assert (await tokens(a, await step(b, x["flow_id"], {"credential": for_x}))).id == mia.id
    ottos_form = await mfa_form(a, "otto")
    signed_by_mia = authenticator.get(options_of(ottos_form), credential=authenticator.credentials[0])
    assert (await step(b, ottos_form["flow_id"], {"credential": signed_by_mia}))["errors"] == {"base": "invalid_code"}
    mfa, passwordless = await mfa_form(a), await start(a)
    from_mfa = authenticator.get(options_of(mfa))
    assert (await step(b, passwordless["flow_id"], {"credential": from_mfa}))["errors"] == {"base": "invalid_auth"}


async def test_a_stored_passkey_flow_naming_a_user_is_refused(
    opp_auth_factory: Any, authenticator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The passkey flow rests with no user; its row rewritten to name Mia (and her credentials) ends on B."""
    (a, b), mia = await cluster(opp_auth_factory, authenticator)
    from opp_auth.ephemeral import digest

    form = await start(a)
    key = digest(form["flow_id"])
    row = await a.ephemeral._one("SELECT state FROM opp_auth_flows WHERE id = %s", (key,))
    state = json.loads(row[0])
    assert state["flow"]["user_id"] is None and state["flow"]["credentials"] is None
    state["flow"]["user_id"] = mia.id
    state["flow"]["credentials"] = {"id": mia.credentials[0].id}
    await a.ephemeral._one("UPDATE opp_auth_flows SET state = %s WHERE id = %s", (json.dumps(state), key))
    with caplog.at_level(logging.ERROR), pytest.raises(UnknownFlow):
        await step(b, form["flow_id"], {"credential": authenticator.get(options_of(form))})
    assert "a stored flow is at its first step, with no user" in caplog.text


async def test_state_round_trip_and_refusals(opp_auth_factory: Any, authenticator: Any) -> None:
    """dump_state/load_state round-trip at the form; a state with a user, credentials or MFA progress raises."""
    (a, _b), mia = await cluster(opp_auth_factory, authenticator)
    provider = a.registry.get_auth_provider(*PASSKEY)
    flow = await provider.async_login_flow({"ip_address": ADDRESS})
    assert isinstance(flow, PasskeyLoginFlow) and flow.SHARED_STATE
    state = json.loads(json.dumps(flow.dump_state()))
    again = await provider.async_login_flow({"ip_address": ADDRESS})
    again.load_state(state, None, None)
    assert again.dump_state() == state
    assert set(again.step_schema("init").schema) == {"credential"}
    for name in ("select_mfa_module", "mfa"):
        with pytest.raises(KeyError):
            again.step_schema(name)
    credentials = mia.credentials[0]
    for bad in (
        (state, None, mia),
        (state, credentials, mia),
        ({**state, "user_id": mia.id}, None, None),
        ({**state, "mfa_passed": [mia.id, "webauthn"]}, None, None),
        ({**state, "mfa_module": "webauthn", "mfa_modules": {"webauthn": "Passkey"}}, None, None),
    ):
        with pytest.raises(ValueError):
            (await provider.async_login_flow({"ip_address": ADDRESS})).load_state(*bad)


async def test_a_malformed_stored_challenge_is_no_challenge(opp_auth_factory: Any, authenticator: Any) -> None:
    """A shared challenge value is input: one not of 32 bytes, or naming another user, passes nothing."""
    (a, b), mia = await cluster(opp_auth_factory, authenticator)
    on_a, on_b = module(a), module(b)
    options = (await on_a.async_login_challenge(mia.id, "odd"))["webauthn"]
    key = "webauthn.webauthn.challenge.flow:odd"
    value = (await a.context.async_get_shared(key))[0]
    for forged in ({**value, "challenge": "AAAA"}, {**value, "user_id": "someone-else"}, {**value, "uv": 1}):
        await a.context.async_put_shared(key, forged, 30)
        assert await on_b.async_validate_in_flow(mia.id, {"credential": authenticator.get(options)}, "odd") is False
    await a.context.async_put_shared(key, value, 30)
    assert await on_b.async_validate_in_flow(mia.id, {"credential": authenticator.get(options)}, "odd") is True
