"""Passwordless login with a discoverable passkey: the login provider the module adds, over the real HTTP API."""

from __future__ import annotations

import json
from typing import Any

import pytest

from opp_auth.testing import run_login_flow

PROVIDERS = [
    {
        "type": "insecure_example",
        "users": [
            {"username": "mia", "password": "mia-pass", "name": "Mia"},
            {"username": "otto", "password": "otto-pass", "name": "Otto"},
        ],
    }
]
WEBAUTHN = {"type": "webauthn", "rp_id": "opp.example.com"}


async def user_with_passkey(auth: Any, authenticator: Any, username: str = "mia") -> Any:
    """An example user who enrolled a passkey of the software authenticator."""
    result = await run_login_flow(
        auth, ("insecure_example", None), [{"username": username, "password": f"{username}-pass"}]
    )
    user = await auth.users.async_get_or_create_user(result["result"])
    module = auth.registry.get_auth_mfa_module("webauthn")
    options = module.creation_options(f"register:{user.id}", user.id, username)
    await module.async_register(f"register:{user.id}", user.id, authenticator.create(options), "Phone")
    return user


@pytest.fixture
async def auth(opp_auth_factory: Any) -> Any:
    """Example provider plus webauthn (passwordless on by default) plus the PIN module."""
    return await opp_auth_factory(providers=PROVIDERS, mfa_modules=[WEBAUTHN, {"type": "insecure_example", "data": []}])


async def start(auth: Any) -> dict[str, Any]:
    """A passkey login flow's first form."""
    form = await auth.login_flow.async_init(("webauthn", None), context={"ip_address": "127.0.0.1"})
    assert form["type"] == "form" and form["step_id"] == "init", form
    return form


def options_of(form: dict[str, Any]) -> dict[str, Any]:
    """The request options a form carries."""
    return form["description_placeholders"]["challenge"]["webauthn"]


async def test_the_module_adds_a_passkey_login_after_the_configured_providers(auth: Any) -> None:
    """passwordless (default true) adds provider ("webauthn", None) last, named like the module."""
    assert [p.key for p in auth.auth_providers] == [("insecure_example", None), ("webauthn", None)]
    assert auth.auth_providers[-1].name == "Passkey"


async def test_passwordless_false_offers_no_passkey_login(opp_auth_factory: Any) -> None:
    """passwordless: false leaves the providers as configured."""
    auth = await opp_auth_factory(providers=PROVIDERS, mfa_modules=[{**WEBAUTHN, "passwordless": False}])
    assert [p.key for p in auth.auth_providers] == [("insecure_example", None)]
    assert auth.registry.get_auth_provider("webauthn", None) is None


async def test_form_asks_for_a_discoverable_credential_with_user_verification(auth: Any) -> None:
    """No allowed credentials (the browser offers what it has), user verification required."""
    options = options_of(await start(auth))
    assert options["allowCredentials"] == [] and options["userVerification"] == "required"
    assert options["rpId"] == "opp.example.com"


async def test_passkey_logs_in_without_password_or_further_mfa(auth: Any, authenticator: Any) -> None:
    """The assertion alone finishes the login with the user's own credentials, even with another module enrolled."""
    mia = await user_with_passkey(auth, authenticator)
    await auth.users.async_enable_user_mfa(mia, "insecure_example", {"pin": "1234"})
    form = await start(auth)
    result = await auth.login_flow.async_configure(form["flow_id"], {"credential": authenticator.get(options_of(form))})
    assert result["type"] == "create_entry", result
    assert result["result"] is mia.credentials[0]
    assert await auth.users.async_get_or_create_user(result["result"]) is mia


async def test_without_user_verification_it_is_refused(auth: Any, authenticator: Any) -> None:
    """A passkey that only proved presence is not both factors: invalid_auth."""
    await user_with_passkey(auth, authenticator)
    authenticator.user_verified = False
    form = await start(auth)
    result = await auth.login_flow.async_configure(form["flow_id"], {"credential": authenticator.get(options_of(form))})
    assert result["type"] == "form" and result["errors"] == {"base": "invalid_auth"}


async def test_user_handle_must_match(auth: Any, authenticator: Any) -> None:
    """An assertion whose user handle is not the passkey's account is refused."""
    await user_with_passkey(auth, authenticator)
    authenticator.credentials[0].user_handle = b"someone else entirely, 32 bytes"
    form = await start(auth)
    result = await auth.login_flow.async_configure(form["flow_id"], {"credential": authenticator.get(options_of(form))})
    assert result["errors"] == {"base": "invalid_auth"}


async def test_inactive_user_cannot_log_in_with_a_passkey(auth: Any, authenticator: Any) -> None:
    """A deactivated user's passkey is refused."""
    mia = await user_with_passkey(auth, authenticator)
    await auth.users.async_update_user(mia, is_active=False)
    form = await start(auth)
    result = await auth.login_flow.async_configure(form["flow_id"], {"credential": authenticator.get(options_of(form))})
    assert result["errors"] == {"base": "invalid_auth"}


async def test_replay_and_cross_flow_use_are_refused(auth: Any, authenticator: Any) -> None:
    """An assertion works once, in the flow that issued its challenge; MFA-step challenges do not work here."""
    authenticator.counting = False
    mia = await user_with_passkey(auth, authenticator)
    first, second = await start(auth), await start(auth)
    assertion = authenticator.get(options_of(first))
    assert (await auth.login_flow.async_configure(second["flow_id"], {"credential": assertion}))["errors"] == {
        "base": "invalid_auth"
    }
    assert (await auth.login_flow.async_configure(first["flow_id"], {"credential": assertion}))[
        "type"
    ] == "create_entry"
    third = await start(auth)
    assert (await auth.login_flow.async_configure(third["flow_id"], {"credential": assertion}))["errors"] == {
        "base": "invalid_auth"
    }
    mfa = await run_login_flow(auth, ("insecure_example", None), [{"username": "mia", "password": "mia-pass"}])
    assert mfa["step_id"] == "mfa"
    from_mfa = authenticator.get(mfa["description_placeholders"]["challenge"]["webauthn"])
    fourth = await start(auth)
    assert (await auth.login_flow.async_configure(fourth["flow_id"], {"credential": from_mfa}))["errors"] == {
        "base": "invalid_auth"
    }
    assert mia.is_active


async def test_link_user_is_not_offered(auth: Any) -> None:
    """A passkey cannot be linked as credentials of another account."""
    result = await auth.login_flow.async_init(
        ("webauthn", None), context={"ip_address": "127.0.0.1", "credential_only": True}
    )
    assert result["type"] == "abort" and result["reason"] == "not_supported"


async def test_over_http_a_passkey_gets_tokens(auth: Any, authenticator: Any, opp_auth_client: Any) -> None:
    """/auth/login_flow with the assertion; /auth/token gives Mia's tokens."""
    mia = await user_with_passkey(auth, authenticator)
    client = await opp_auth_client(auth)
    status, form = await client.login.start(["webauthn", None])
    assert status == 200 and form["step_id"] == "init"
    status, bad = await client.login.step(form["flow_id"], credential=json.dumps({"id": "AAAA"}))
    assert status == 200 and bad["errors"] == {"base": "invalid_auth"}
    status, done = await client.login.step(form["flow_id"], credential=authenticator.get(options_of(bad)))
    assert status == 200 and done["type"] == "create_entry", done
    status, tokens = await client.login.token(
        grant_type="authorization_code", client_id="https://example.com/app", code=done["result"]
    )
    assert status == 200
    refresh = await auth.refresh_tokens.async_get_refresh_token_by_token(tokens["refresh_token"])
    assert refresh.user is mia


def mark_onboarded(config_dir: Any) -> None:
    """.storage/onboarding with every step done, so /auth/providers answers."""
    storage = config_dir / ".storage"
    storage.mkdir(exist_ok=True)
    (storage / "onboarding").write_text(
        json.dumps({"version": 4, "key": "onboarding", "data": {"done": ["user", "core_config", "analytics", "integration"]}})
    )


@pytest.mark.parametrize(
    ("auth_api", "listed"),
    [
        ("openpeerpower", [{"name": "Unnamed auth provider", "id": None, "type": "insecure_example"}, {"name": "Passkey", "id": None, "type": "webauthn"}]),
        ("homeassistant", [{"name": "Unnamed auth provider", "id": None, "type": "insecure_example"}]),
    ],
)
async def test_providers_list_the_passkey_login_only_to_pages_that_can_run_it(
    config_dir: Any, opp_auth_factory: Any, opp_auth_client: Any, auth_api: str, listed: list[dict[str, Any]]
) -> None:
    """opp-auth's pages get the passkey login; Home Assistant's login page (no WebAuthn) does not see it."""
    mark_onboarded(config_dir)
    auth = await opp_auth_factory(providers=PROVIDERS, mfa_modules=[WEBAUTHN], http={"auth_api": auth_api})
    client = await opp_auth_client(auth)
    async with client.request("GET", "/auth/providers") as resp:
        body = await resp.json()
    assert resp.status == 200
    assert (body["providers"] if auth_api == "homeassistant" else body) == listed
