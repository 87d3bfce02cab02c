"""The webauthn MFA module: configuration, the login MFA step and every way an assertion is refused.

Assertions come from the software authenticator in conftest.py (real P-256 keys,
real authenticator data and signatures), so py_webauthn checks them for real.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import voluptuous as vol

from opp_auth.testing import MfaContract, async_stored_document, run_login_flow

LOGIN = [{"username": "mfa-user", "password": "mfa-pass"}]
PROVIDERS = [
    {
        "type": "insecure_example",
        "users": [
            {"username": "mfa-user", "password": "mfa-pass", "name": "Mia"},
            {"username": "other", "password": "other-pass", "name": "Otto"},
        ],
    }
]
CONFIG = {"type": "webauthn", "rp_id": "opp.example.com"}


def pending_options(module: Any, user_id: str) -> dict[str, Any]:
    """Request options for the newest login challenge the module issued to user_id (as the form carried them)."""
    from opp_auth_webauthn import bytes_to_base64url

    for binding, pending in reversed(module._pending.items()):
        if pending.user_id == user_id and binding.startswith("flow:"):
            return {"challenge": bytes_to_base64url(pending.challenge), "allowCredentials": []}
    return {"challenge": "AAAA", "allowCredentials": []}


async def enrol(module: Any, authenticator: Any, user_id: str, name: str = "Phone") -> dict[str, Any]:
    """Register a new software credential for the user, as the profile page does."""
    options = module.creation_options(f"register:test-{user_id}", user_id, "Mia")
    return await module.async_register(f"register:test-{user_id}", user_id, authenticator.create(options), name)


@pytest.fixture
async def auth(opp_auth_factory: Any) -> Any:
    """Example provider plus webauthn."""
    return await opp_auth_factory(providers=PROVIDERS, mfa_modules=[CONFIG])


async def make_user(auth: Any, login: list[dict[str, str]] = LOGIN) -> Any:
    """A user with example-provider credentials."""
    result = await run_login_flow(auth, ("insecure_example", None), login)
    return await auth.users.async_get_or_create_user(result["result"])


async def mfa_form(auth: Any, login: list[dict[str, str]] = LOGIN) -> dict[str, Any]:
    """Log in with the password; the MFA form that follows."""
    result = await run_login_flow(auth, ("insecure_example", None), login)
    assert result["type"] == "form" and result["step_id"] == "mfa", result
    return result


class TestWebauthnContract(MfaContract):
    """webauthn passes the MFA contract."""

    @pytest.fixture
    def module_config(self) -> dict[str, Any]:
        return dict(CONFIG)

    @pytest.fixture
    def enrol(self, authenticator: Any) -> Any:
        async def do(auth: Any, module: Any, user_id: str) -> None:
            await enrol(module, authenticator, user_id)

        return do

    @pytest.fixture
    def valid_code(self, authenticator: Any) -> Any:
        async def code(module: Any, user_id: str) -> dict[str, str]:
            return {"credential": authenticator.get(pending_options(module, user_id))}

        return code

    @pytest.fixture
    def break_module(self) -> Any:
        def breaker(module: Any, monkeypatch: pytest.MonkeyPatch) -> None:
            def boom(*args: Any, **kwargs: Any) -> None:
                raise RuntimeError("webauthn exploded")

            monkeypatch.setattr("opp_auth_webauthn.verify_authentication_response", boom)

        return breaker


# ---- configuration -------------------------------------------------------------------------------


def schema() -> Any:
    """The module's configuration schema."""
    from opp_auth_webauthn import CONFIG_SCHEMA

    return CONFIG_SCHEMA


def test_defaults() -> None:
    """rp_name, origins, user_verification, attestation, timeout and passwordless have their documented defaults."""
    config = schema()({"type": "webauthn", "rp_id": "Opp.Example.com"})
    assert config["rp_id"] == "opp.example.com"
    assert config["rp_name"] == "Open Peer Power"
    assert config["origins"] == ["https://opp.example.com"]
    assert (config["user_verification"], config["attestation"], config["timeout"], config["passwordless"]) == (
        "preferred",
        "none",
        60,
        True,
    )


def test_missing_rp_id_explains_it_binds_every_passkey() -> None:
    """Without rp_id the error says what it is and that changing it invalidates every passkey."""
    with pytest.raises(vol.Invalid) as err:
        schema()({"type": "webauthn"})
    assert "rp_id" in str(err.value) and "invalidates every enrolled passkey" in str(err.value)


@pytest.mark.parametrize("rp_id", ["192.168.1.10", "::1", "https://opp.example.com", "opp.example.com:8123", "a b", ""])
def test_rp_id_must_be_a_domain_name(rp_id: str) -> None:
    """IP addresses, URLs, ports and junk are refused with the explanation."""
    with pytest.raises(vol.Invalid) as err:
        schema()({"type": "webauthn", "rp_id": rp_id})
    assert "invalidates every enrolled passkey" in str(err.value)


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example.net",
        "http://opp.example.com",
        "https://opp.example.com/path",
        "opp.example.com",
        "https://xopp.example.com",
    ],
)
def test_origins_must_be_on_the_rp_id(origin: str) -> None:
    """An origin on another domain, plain http off localhost, or not an origin at all is refused."""
    with pytest.raises(vol.Invalid):
        schema()({"type": "webauthn", "rp_id": "opp.example.com", "origins": [origin]})


def test_subdomain_and_localhost_origins() -> None:
    """A subdomain with a port is fine; http is fine on localhost."""
    config = schema()({"type": "webauthn", "rp_id": "example.com", "origins": ["https://opp.example.com:8443"]})
    assert config["origins"] == ["https://opp.example.com:8443"]
    config = schema()({"type": "webauthn", "rp_id": "localhost", "origins": ["http://localhost:8123"]})
    assert config["origins"] == ["http://localhost:8123"]


# ---- login MFA step ---------------------------------------------------------------------------------


async def test_mfa_form_carries_request_options_for_the_users_passkeys(auth: Any, authenticator: Any) -> None:
    """The form of the mfa step carries request options: rp id, a fresh challenge, the user's credential ids."""
    user = await make_user(auth)
    module = auth.registry.get_auth_mfa_module("webauthn")
    passkey = await enrol(module, authenticator, user.id)
    form = await mfa_form(auth)
    options = form["description_placeholders"]["challenge"]["webauthn"]
    assert options["rpId"] == "opp.example.com"
    assert [c["id"] for c in options["allowCredentials"]] == [passkey["id"]]
    assert len(options["challenge"]) >= 43  # 32 random bytes
    assert options["userVerification"] == "preferred"
    again = await mfa_form(auth)
    assert again["description_placeholders"]["challenge"]["webauthn"]["challenge"] != options["challenge"]


async def test_login_with_a_passkey(auth: Any, authenticator: Any) -> None:
    """Password, then the assertion for the form's challenge: logged in; last use is recorded."""
    user = await make_user(auth)
    module = auth.registry.get_auth_mfa_module("webauthn")
    await enrol(module, authenticator, user.id)
    form = await mfa_form(auth)
    options = form["description_placeholders"]["challenge"]["webauthn"]
    result = await auth.login_flow.async_configure(form["flow_id"], {"credential": authenticator.get(options)})
    assert result["type"] == "create_entry", result
    assert module.passkeys(user.id)[0]["last_used_at"] is not None


async def refused(auth: Any, **kwargs: Any) -> dict[str, Any]:
    """Submit an assertion altered by kwargs to a new MFA form; the step result."""
    form = await mfa_form(auth)
    options = form["description_placeholders"]["challenge"]["webauthn"]
    authenticator = kwargs.pop("authenticator")
    return await auth.login_flow.async_configure(form["flow_id"], {"credential": authenticator.get(options, **kwargs)})


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"origin": "https://evil.example.net"}, "Unexpected client data origin"),
        ({"origin": "http://opp.example.com"}, "Unexpected client data origin"),
        ({"rp_id": "evil.example.net"}, "Unexpected RP ID hash"),
        ({"rp_id": "example.com"}, "Unexpected RP ID hash"),
        ({"bad_signature": True}, "Could not verify authentication signature"),
        ({"challenge": "c29tZSBvdGhlciBjaGFsbGVuZ2Ugb2YgMzIgYnl0ZXMhIQ"}, "challenge was not expected"),
    ],
    ids=["wrong-origin", "http-origin", "wrong-rp-id-hash", "parent-rp-id-hash", "bad-signature", "other-challenge"],
)
async def test_assertion_refused(
    auth: Any, authenticator: Any, change: dict[str, Any], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong origin, a wrong rp_id hash, a bad signature or another challenge gives invalid_code, for that reason."""
    user = await make_user(auth)
    await enrol(auth.registry.get_auth_mfa_module("webauthn"), authenticator, user.id)
    with caplog.at_level(logging.INFO, logger="opp_auth_webauthn"):
        result = await refused(auth, authenticator=authenticator, **change)
    assert result["type"] == "form" and result["errors"] == {"base": "invalid_code"}, result
    assert reason in caplog.text


async def test_replayed_assertion_is_refused(auth: Any, authenticator: Any) -> None:
    """An assertion that logged in once does not log in again (its challenge is spent), even with counter 0."""
    authenticator.counting = False
    user = await make_user(auth)
    await enrol(auth.registry.get_auth_mfa_module("webauthn"), authenticator, user.id)
    form = await mfa_form(auth)
    assertion = authenticator.get(form["description_placeholders"]["challenge"]["webauthn"])
    assert (await auth.login_flow.async_configure(form["flow_id"], {"credential": assertion}))["type"] == "create_entry"
    form = await mfa_form(auth)
    result = await auth.login_flow.async_configure(form["flow_id"], {"credential": assertion})
    assert result["errors"] == {"base": "invalid_code"}


async def test_refused_answer_spends_the_challenge(auth: Any, authenticator: Any) -> None:
    """After a refused assertion the same flow shows a new challenge, and the old one no longer works."""
    user = await make_user(auth)
    await enrol(auth.registry.get_auth_mfa_module("webauthn"), authenticator, user.id)
    form = await mfa_form(auth)
    options = form["description_placeholders"]["challenge"]["webauthn"]
    bad = await auth.login_flow.async_configure(
        form["flow_id"], {"credential": authenticator.get(options, bad_signature=True)}
    )
    new_options = bad["description_placeholders"]["challenge"]["webauthn"]
    assert new_options["challenge"] != options["challenge"]
    late = await auth.login_flow.async_configure(form["flow_id"], {"credential": authenticator.get(options)})
    assert late["errors"] == {"base": "invalid_code"}
    good = await auth.login_flow.async_configure(
        form["flow_id"], {"credential": authenticator.get(late["description_placeholders"]["challenge"]["webauthn"])}
    )
    assert good["type"] == "create_entry"


async def test_expired_challenge_is_refused(auth: Any, authenticator: Any) -> None:
    """A challenge older than timeout seconds is refused."""
    user = await make_user(auth)
    module = auth.registry.get_auth_mfa_module("webauthn")
    await enrol(module, authenticator, user.id)
    form = await mfa_form(auth)
    module._pending[f"flow:{form['flow_id']}"].expires -= 61
    result = await auth.login_flow.async_configure(
        form["flow_id"], {"credential": authenticator.get(form["description_placeholders"]["challenge"]["webauthn"])}
    )
    assert result["errors"] == {"base": "invalid_code"}


async def test_challenge_is_bound_to_its_flow(auth: Any, authenticator: Any) -> None:
    """An assertion for flow A's challenge does not pass flow B, and does not spend B's challenge."""
    user = await make_user(auth)
    await enrol(auth.registry.get_auth_mfa_module("webauthn"), authenticator, user.id)
    flow_a = await mfa_form(auth)
    flow_b = await mfa_form(auth)
    for_a = authenticator.get(flow_a["description_placeholders"]["challenge"]["webauthn"])
    result = await auth.login_flow.async_configure(flow_b["flow_id"], {"credential": for_a})
    assert result["errors"] == {"base": "invalid_code"}
    result = await auth.login_flow.async_configure(flow_a["flow_id"], {"credential": for_a})
    assert result["type"] == "create_entry"


async def test_another_users_passkey_is_refused(auth: Any, authenticator: Any) -> None:
    """Otto's passkey does not pass Mia's MFA step, even signed over Mia's challenge."""
    module = auth.registry.get_auth_mfa_module("webauthn")
    mia = await make_user(auth)
    otto = await make_user(auth, [{"username": "other", "password": "other-pass"}])
    await enrol(module, authenticator, mia.id)
    ottos = type(authenticator)()
    await enrol(module, ottos, otto.id)
    form = await mfa_form(auth)
    result = await auth.login_flow.async_configure(
        form["flow_id"],
        {
            "credential": ottos.get(
                form["description_placeholders"]["challenge"]["webauthn"], credential=ottos.credentials[0]
            )
        },
    )
    assert result["errors"] == {"base": "invalid_code"}


async def test_counter_going_backwards_is_refused_and_logged(
    auth: Any, authenticator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Counter 5 then 3 (or 5 again): refused, and the log says it may be a cloned key."""
    user = await make_user(auth)
    module = auth.registry.get_auth_mfa_module("webauthn")
    await enrol(module, authenticator, user.id)
    form = await mfa_form(auth)
    ok = await auth.login_flow.async_configure(
        form["flow_id"],
        {"credential": authenticator.get(form["description_placeholders"]["challenge"]["webauthn"], counter=5)},
    )
    assert ok["type"] == "create_entry"
    for counter in (3, 5):
        with caplog.at_level(logging.WARNING, logger="opp_auth_webauthn"):
            result = await refused(auth, authenticator=authenticator, counter=counter)
        assert result["errors"] == {"base": "invalid_code"}
        assert "possibly a cloned authenticator" in caplog.text
        caplog.clear()
    assert module._users[user.id]["passkeys"][0]["sign_count"] == 5
    assert (await refused(auth, authenticator=authenticator, counter=6))["type"] == "create_entry"


async def test_counter_zero_is_accepted_every_time(auth: Any, authenticator: Any) -> None:
    """Synced passkeys always send 0: every login works."""
    authenticator.counting = False
    user = await make_user(auth)
    await enrol(auth.registry.get_auth_mfa_module("webauthn"), authenticator, user.id)
    for _ in range(3):
        assert (await refused(auth, authenticator=authenticator))["type"] == "create_entry"


async def test_user_verification_required_refuses_presence_only(opp_auth_factory: Any, authenticator: Any) -> None:
    """With user_verification: required an assertion without the UV flag is refused."""
    auth = await opp_auth_factory(providers=PROVIDERS, mfa_modules=[{**CONFIG, "user_verification": "required"}])
    user = await make_user(auth)
    await enrol(auth.registry.get_auth_mfa_module("webauthn"), authenticator, user.id)
    authenticator.user_verified = False
    assert (await refused(auth, authenticator=authenticator))["errors"] == {"base": "invalid_code"}
    authenticator.user_verified = True
    assert (await refused(auth, authenticator=authenticator))["type"] == "create_entry"


@pytest.mark.parametrize(
    "credential",
    ["", "{}", "[]", "null", '{"id": 5}', '{"id": "x", "response": "y"}', "{" * 5000, "x" * 70000, '{"id": "\\u0000"}'],
    ids=lambda v: repr(v)[:16],
)
async def test_malformed_responses_are_invalid_code(auth: Any, authenticator: Any, credential: str) -> None:
    """Junk, deep nesting and huge strings give invalid_code, never an exception."""
    user = await make_user(auth)
    await enrol(auth.registry.get_auth_mfa_module("webauthn"), authenticator, user.id)
    form = await mfa_form(auth)
    result = await auth.login_flow.async_configure(form["flow_id"], {"credential": credential})
    assert result["type"] == "form" and result["errors"] == {"base": "invalid_code"}, result


async def test_stored_under_its_own_key_without_secrets_in_lists(auth: Any, authenticator: Any) -> None:
    """.storage/auth_module.webauthn holds handle and public keys; lists show names, dates and the model."""
    user = await make_user(auth)
    module = auth.registry.get_auth_mfa_module("webauthn")
    passkey = await enrol(module, authenticator, user.id, name="  My   phone ")
    data = await async_stored_document(auth.config_dir, "auth_module.webauthn")
    record = data["users"][user.id]["passkeys"][0]
    assert record["id"] == passkey["id"] and record["public_key"] and record["sign_count"] == 0
    assert passkey["name"] == "My phone" and passkey["model"] == "iCloud Keychain"
    assert set(passkey) == {"id", "name", "created_at", "last_used_at", "model", "backed_up"}
    await auth.async_shutdown()  # a stopped server leaves the whole file (its journal compacted)
    stored = json.loads(open(f"{auth.config_dir}/.storage/auth_module.webauthn").read())
    assert stored["key"] == "auth_module.webauthn" and stored["version"] == 1 and stored["data"] == data


async def test_passkey_totp_and_recovery_code_are_each_enough(opp_auth_factory: Any, authenticator: Any) -> None:
    """A user with passkeys, TOTP and recovery codes picks any of them; a client without WebAuthn picks TOTP."""
    import pyotp

    auth = await opp_auth_factory(providers=PROVIDERS, mfa_modules=[{"type": "totp"}, CONFIG])
    user = await make_user(auth)
    await enrol(auth.registry.get_auth_mfa_module("webauthn"), authenticator, user.id)
    totp = auth.registry.get_auth_mfa_module("totp")
    secret = await totp.async_setup_user(user.id, {})
    recovery = await totp.async_new_recovery_codes(user.id)

    async def choose(module_id: str) -> dict[str, Any]:
        choice = await run_login_flow(auth, ("insecure_example", None), LOGIN)
        assert choice["step_id"] == "select_mfa_module", choice
        return await auth.login_flow.async_configure(choice["flow_id"], {"multi_factor_auth_module": module_id})

    form = await choose("webauthn")
    assertion = authenticator.get(form["description_placeholders"]["challenge"]["webauthn"])
    assert (await auth.login_flow.async_configure(form["flow_id"], {"credential": assertion}))["type"] == "create_entry"
    form = await choose("totp")
    assert "challenge" not in form["description_placeholders"]
    result = await auth.login_flow.async_configure(form["flow_id"], {"code": pyotp.TOTP(secret).now()})
    assert result["type"] == "create_entry"
    form = await choose("totp")
    assert (await auth.login_flow.async_configure(form["flow_id"], {"code": recovery[0]}))["type"] == "create_entry"


@pytest.mark.parametrize(
    ("entry", "line", "words"),
    [
        ("    - type: webauthn\n      rp_name: Home\n", 5, ["rp_id", "invalidates every enrolled passkey"]),
        ("    - type: webauthn\n      rp_id: 10.0.0.2\n", 6, ["rp_id", "IP address"]),
        (
            "    - type: webauthn\n      rp_id: opp.example.com\n      origins: [https://evil.example.net]\n",
            7,
            ["origins"],
        ),
        ("    - type: webauthn\n      rp_id: opp.example.com\n      timeout: 5\n", 7, ["timeout"]),
    ],
)
def test_configuration_errors_name_file_line_and_key(config_dir: Any, entry: str, line: int, words: list[str]) -> None:
    """As check-config and the server report them: the file, a line of the entry, the key and why."""
    from opp_auth.config import ConfigError, load_config
    from opp_auth.plugins import make_plugin_manager

    (config_dir / "configuration.yaml").write_text(
        "openpeerpower:\n  auth_providers:\n    - {type: insecure_example, users: []}\n  auth_mfa_modules:\n" + entry,
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as err:
        load_config(config_dir, make_plugin_manager(load_entrypoints=True), allow_insecure_example=True)
    message = str(err.value)
    assert "configuration.yaml" in message and f"line {line}" in message, message
    assert all(word in message for word in words), message


async def test_a_passkey_belongs_to_one_account(auth: Any, authenticator: Any) -> None:
    """The same credential id cannot be enrolled for a second account."""
    from opp_auth_webauthn import CeremonyError

    module = auth.registry.get_auth_mfa_module("webauthn")
    mia = await make_user(auth)
    otto = await make_user(auth, [{"username": "other", "password": "other-pass"}])
    passkey = await enrol(module, authenticator, mia.id)
    stored = module._users[mia.id]["passkeys"][0]
    with pytest.raises(CeremonyError) as err:
        await module.async_setup_user(
            otto.id, {"id": passkey["id"], "public_key": stored["public_key"], "name": "Copy"}
        )
    assert err.value.code == "already_registered"
    assert not await module.async_is_user_setup(otto.id)
