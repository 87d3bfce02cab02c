"""The one MFA decision, walked over real HTTP for every (flow type, provider, MFA configuration) (issue 11).

For each combination a person "alice" exists with that provider's credentials
and is enrolled in the configured modules. The login is walked step by step
through /auth/login_flow on a live server; before the last factor no response
carries a code, the manager holds none, and /auth/token gives nothing. After
it, an ``authorize`` code gives alice's tokens; a ``link_user`` code gives no
token at all.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyotp
import pytest
import voluptuous as vol

from opp_auth import AuthProvider, Credentials, LoginFlow, User, UserMeta, hookimpl
from opp_auth.codes import AUTHORIZE, LINK_USER
from opp_auth.login_flow import USERNAME_PASSWORD_SCHEMA, MfaRequired
from opp_auth.manager import AuthManager
from opp_auth.testing import CLIENT_ID, REDIRECT_URI, OppAuthClient, run_login_flow

TOTP_SECRET = pyotp.random_base32()
PIN = "4242"
LOCAL_PASSWORD = "alice-local-password"
FILE_SERVICE = {"name": "codes", "platform": "file", "filename": "codes.txt"}
SIX_DIGITS = re.compile(r"\b(\d{6})\b")

Answer = Callable[[AuthManager], dict[str, str]]


# ---- a plugin provider that takes a shortcut: its step hands back Credentials itself ----------


class ShortcutProvider(AuthProvider):
    """Checks a fixed password and returns create_entry(data=Credentials), skipping async_finish."""

    TYPE = "shortcut"
    CONFIG_SCHEMA = AuthProvider.CONFIG_SCHEMA.extend({}, extra=vol.PREVENT_EXTRA)

    async def async_login_flow(self, context: dict[str, Any]) -> LoginFlow:
        return ShortcutFlow(self)

    def credential_data(self, flow_result: dict[str, Any]) -> dict[str, Any]:
        return {"username": flow_result["username"]}

    async def async_user_meta_for_credentials(self, credentials: Credentials) -> UserMeta:
        return UserMeta(name=credentials.data["username"])


class ShortcutFlow(LoginFlow):
    """A plugin flow that builds Credentials and ends the flow on its own."""

    async def async_step_init(self, user_input: dict[str, str] | None = None) -> Any:
        errors = {}
        if user_input is not None:
            if user_input["password"] == "shortcut-pw":
                credentials = await self._auth_provider.async_get_or_create_credentials(
                    {"username": user_input["username"]}
                )
                return self.async_create_entry(title="shortcut", data=credentials)
            errors["base"] = "invalid_auth"
        return self.async_show_form(step_id="init", data_schema=USERNAME_PASSWORD_SCHEMA, errors=errors)


class ShortcutPlugin:
    """Registers ShortcutProvider."""

    @hookimpl
    def opp_auth_register_auth_providers(self, register: Any) -> None:
        register(ShortcutProvider)


# ---- providers ------------------------------------------------------------------------------------


@dataclass
class ProviderCase:
    """A provider configuration, how to make alice with it, and her login steps."""

    name: str
    config: Callable[[Path], dict[str, Any]]
    steps: Callable[[User], list[dict[str, str]]]
    make_alice: Callable[[AuthManager, ProviderCase], Awaitable[User]]
    handler: list[Any] = field(default_factory=list)


async def alice_by_first_login(auth: AuthManager, case: ProviderCase) -> User:
    """Providers that create the user at the first login: log in once, before any MFA exists."""
    result = await run_login_flow(auth, tuple(case.handler), case.steps(None))  # type: ignore[arg-type]
    assert result["type"] == "create_entry", result
    return await auth.users.async_get_or_create_user(result["result"])


async def alice_local(auth: AuthManager, case: ProviderCase) -> User:
    """The local provider: an account added the way onboarding and the admin do."""
    provider = auth.registry.get_auth_provider("openpeerpower", None)
    assert provider is not None
    await provider.async_add_auth("alice", LOCAL_PASSWORD)  # type: ignore[attr-defined]
    credentials = await provider.async_get_or_create_credentials({"username": "alice"})
    return await auth.users.async_create_user("Alice", credentials=credentials)


async def alice_without_credentials(auth: AuthManager, case: ProviderCase) -> User:
    """trusted_networks picks an existing person and links its credentials at login."""
    return await auth.users.async_create_user("Alice")


def command_line_config(config_dir: Path) -> dict[str, Any]:
    """A real sh program that accepts alice / right-pass."""
    command = config_dir / "check-login"
    command.write_text('#!/bin/sh\n[ "$username" = alice ] && [ "$password" = right-pass ]\n')
    command.chmod(0o755)
    return {"type": "command_line", "command": str(command)}


PROVIDER_CASES = [
    ProviderCase(
        "local",
        lambda _: {"type": "openpeerpower"},
        lambda _: [{"username": "alice", "password": LOCAL_PASSWORD}],
        alice_local,
        ["openpeerpower", None],
    ),
    ProviderCase(
        "trusted_networks_bypass",
        lambda _: {"type": "trusted_networks", "trusted_networks": ["127.0.0.1"], "allow_bypass_login": True},
        lambda _: [],
        alice_without_credentials,
        ["trusted_networks", None],
    ),
    ProviderCase(
        "trusted_networks_pick",
        lambda _: {"type": "trusted_networks", "trusted_networks": ["127.0.0.1"]},
        lambda user: [{"user": user.id}],
        alice_without_credentials,
        ["trusted_networks", None],
    ),
    ProviderCase(
        "legacy_api_password",
        lambda _: {"type": "legacy_api_password", "api_password": "right-pass"},
        lambda _: [{"password": "right-pass"}],
        alice_by_first_login,
        ["legacy_api_password", None],
    ),
    ProviderCase(
        "insecure_example",
        lambda _: {"type": "insecure_example", "users": [{"username": "alice", "password": "alice-pw"}]},
        lambda _: [{"username": "alice", "password": "alice-pw"}],
        alice_by_first_login,
        ["insecure_example", None],
    ),
    ProviderCase(
        "command_line",
        command_line_config,
        lambda _: [{"username": "alice", "password": "right-pass"}],
        alice_by_first_login,
        ["command_line", None],
    ),
    ProviderCase(
        "plugin_shortcut",
        lambda _: {"type": "shortcut"},
        lambda _: [{"username": "alice", "password": "shortcut-pw"}],
        alice_by_first_login,
        ["shortcut", None],
    ),
]


# ---- MFA configurations -----------------------------------------------------------------------------


def totp_answer(auth: AuthManager) -> dict[str, str]:
    return {"code": pyotp.TOTP(TOTP_SECRET).now()}


def totp_wrong(auth: AuthManager) -> dict[str, str]:
    return {"code": f"{(int(pyotp.TOTP(TOTP_SECRET).now()) + 1) % 1_000_000:06d}"}


def notified_code(auth: AuthManager) -> str:
    """The last code the notify module wrote to the file platform."""
    lines = Path(auth.config_dir, "codes.txt").read_text().splitlines()
    return SIX_DIGITS.findall(lines[-1])[-1]


def notify_answer(auth: AuthManager) -> dict[str, str]:
    return {"code": notified_code(auth)}


def notify_wrong(auth: AuthManager) -> dict[str, str]:
    return {"code": f"{(int(notified_code(auth)) + 1) % 1_000_000:06d}"}


@dataclass
class MfaCase:
    """Modules configured, how alice enrols, and the MFA steps: (answer, wrong answer or None)."""

    name: str
    modules: list[dict[str, Any]]
    enrol: dict[str, dict[str, Any]]
    steps: list[tuple[Answer, Answer | None]]


TOTP = {"type": "totp"}
NOTIFY = {"type": "notify"}
PIN_MODULE = {"type": "insecure_example", "id": "pin", "data": []}

MFA_CASES = [
    MfaCase("none", [], {}, []),
    MfaCase("totp", [TOTP], {"totp": {"secret": TOTP_SECRET}}, [(totp_answer, totp_wrong)]),
    MfaCase("notify_file", [NOTIFY], {"notify": {"notify_service": "codes"}}, [(notify_answer, notify_wrong)]),
    MfaCase(
        "insecure_example", [PIN_MODULE], {"pin": {"pin": PIN}}, [(lambda _: {"pin": PIN}, lambda _: {"pin": "0000"})]
    ),
    MfaCase(
        "totp_and_pin",
        [TOTP, PIN_MODULE],
        {"totp": {"secret": TOTP_SECRET}, "pin": {"pin": PIN}},
        [(lambda _: {"multi_factor_auth_module": "pin"}, None), (lambda _: {"pin": PIN}, lambda _: {"pin": "0000"})],
    ),
    # Configured but alice is not enrolled: nothing more to ask.
    MfaCase("totp_not_enrolled", [TOTP], {}, []),
]


# ---- the walk ---------------------------------------------------------------------------------------


async def token_grant(client: OppAuthClient, code: str) -> tuple[int, Any]:
    return await client.login.token(grant_type="authorization_code", client_id=CLIENT_ID, code=code)


async def assert_nothing_issued(client: OppAuthClient, auth: AuthManager, result: dict[str, Any]) -> None:
    """A step short of the last factor: a form, no code in it, none held, no token for any string it carries."""
    assert result["type"] == "form", result
    assert "result" not in result, result
    assert len(auth.codes) == 0
    strings = {value for value in result.values() if isinstance(value, str)}
    for candidate in strings:
        status, body = await token_grant(client, candidate)
        assert status == 400 and body["error"] == "invalid_request", (candidate, body)


async def set_up(
    provider_case: ProviderCase,
    mfa_case: MfaCase,
    config_dir: Path,
    opp_auth_factory: Any,
    opp_auth_client: Any,
) -> tuple[AuthManager, OppAuthClient, User]:
    """A live server with the provider and modules, and alice enrolled as the case says."""
    auth = await opp_auth_factory(
        providers=[provider_case.config(config_dir)],
        mfa_modules=mfa_case.modules,
        blocks={"notify": [FILE_SERVICE]} if NOTIFY in mfa_case.modules else None,
        plugins=[("shortcut", ShortcutPlugin())],
    )
    alice = await provider_case.make_alice(auth, provider_case)
    for module_id, data in mfa_case.enrol.items():
        await auth.users.async_enable_user_mfa(alice, module_id, data)
    # Clean slate: what set-up issued (it used the engine's low level, which issues no code) is gone.
    assert len(auth.codes) == 0
    return auth, await opp_auth_client(auth), alice


@pytest.mark.parametrize("flow_type", [AUTHORIZE, LINK_USER])
@pytest.mark.parametrize("mfa_case", MFA_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("provider_case", PROVIDER_CASES, ids=lambda c: c.name)
async def test_no_code_before_the_last_factor(
    provider_case: ProviderCase,
    mfa_case: MfaCase,
    flow_type: str,
    onboarded: Path,
    opp_auth_factory: Any,
    opp_auth_client: Any,
) -> None:
    """Walk the login; only the last factor's answer carries a code, and only its purpose redeems it."""
    auth, client, alice = await set_up(provider_case, mfa_case, onboarded, opp_auth_factory, opp_auth_client)
    tokens_before = len(alice.refresh_tokens)
    status, result = await client.login.start(provider_case.handler, flow_type=flow_type)
    assert status == 200, result
    answers: list[tuple[Answer, Answer | None]] = [
        (lambda _, step=step: step, None)
        for step in provider_case.steps(alice)  # type: ignore[misc]
    ]
    answers += mfa_case.steps
    for answer, wrong in answers:
        await assert_nothing_issued(client, auth, result)
        if wrong is not None:
            status, result = await client.login.step(result["flow_id"], **wrong(auth))
            assert status == 200 and result["errors"] == {"base": "invalid_code"}, result
            await assert_nothing_issued(client, auth, result)
        status, result = await client.login.step(result["flow_id"], **answer(auth))
        assert status == 200, result
    assert result["type"] == "create_entry", result
    code = result["result"]
    assert isinstance(code, str) and len(auth.codes) == 1
    status, body = await token_grant(client, code)
    if flow_type == LINK_USER:
        # A link_user code is no way to tokens (it used to be: issue 11, item 1).
        assert (status, body) == (400, {"error": "invalid_request", "error_description": "Invalid code"})
        assert len(alice.refresh_tokens) == tokens_before
        return
    assert status == 200, body
    refresh_token = auth.access_tokens.validate_access_token(body["access_token"], "127.0.0.1")
    assert refresh_token is not None and refresh_token.user is alice


# ---- the other ways to a code ------------------------------------------------------------------------


ALICE_LOGIN = [{"username": "alice", "password": "alice-pw"}]
EXAMPLE = {"type": "insecure_example", "users": [{"username": "alice", "password": "alice-pw", "name": "Alice"}]}


async def test_codes_are_redeemed_only_for_their_purpose(
    onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any
) -> None:
    """/auth/link_user takes link_user codes only; /auth/token authorize codes only; a misused code is spent."""
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[])
    client = await opp_auth_client(auth)
    alice_tokens = await client.login.tokens(["insecure_example", None], ALICE_LOGIN)
    headers = {"Authorization": f"Bearer {alice_tokens['access_token']}"}

    authorize_code = await client.login.code(["insecure_example", None], ALICE_LOGIN)
    async with client.request(
        "POST", "/auth/link_user", json={"client_id": CLIENT_ID, "code": authorize_code}, headers=headers
    ) as resp:
        assert (resp.status, await resp.json()) == (400, {"message": "Invalid code"})
    assert (await token_grant(client, authorize_code))[0] == 400  # spent by the misuse

    status, started = await client.login.start(["insecure_example", None], flow_type=LINK_USER)
    status, finished = await client.login.step(started["flow_id"], **ALICE_LOGIN[0])
    link_code = finished["result"]
    async with client.request(
        "POST", "/auth/link_user", json={"client_id": CLIENT_ID, "code": link_code}, headers=headers
    ) as resp:
        assert (resp.status, await resp.json()) == (200, {"message": "User linked"})


async def test_a_careless_mfa_step_override_never_finishes_the_login(
    onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any
) -> None:
    """A plugin flow whose MFA step finishes without checking the code gets the MFA form again, never a code."""

    class CarelessFlow(ShortcutFlow):
        async def async_step_mfa(self, user_input: dict[str, str] | None = None) -> Any:
            if user_input is not None:
                return await self.async_finish(self.credential)
            return await super().async_step_mfa(user_input)

    class CarelessProvider(ShortcutProvider):
        TYPE = "careless"

        async def async_login_flow(self, context: dict[str, Any]) -> LoginFlow:
            return CarelessFlow(self)

    class CarelessPlugin:
        @hookimpl
        def opp_auth_register_auth_providers(self, register: Any) -> None:
            register(CarelessProvider)

    auth = await opp_auth_factory(
        providers=[{"type": "careless"}], mfa_modules=[PIN_MODULE], plugins=[("careless", CarelessPlugin())]
    )
    first = await run_login_flow(auth, ("careless", None), [{"username": "alice", "password": "shortcut-pw"}])
    alice = await auth.users.async_get_or_create_user(first["result"])
    await auth.users.async_enable_user_mfa(alice, "pin", {"pin": PIN})
    client = await opp_auth_client(auth)
    status, result = await client.login.start(["careless", None])
    status, result = await client.login.step(result["flow_id"], username="alice", password="shortcut-pw")
    for _ in range(3):
        assert result["type"] == "form" and result["step_id"] == "mfa", result
        status, result = await client.login.step(result["flow_id"], pin="0000")
    assert result["type"] == "form" and len(auth.codes) == 0


async def test_credentials_of_another_provider_abort_the_login(
    onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any
) -> None:
    """A flow that hands back someone else's Credentials (another provider's) is refused, not logged in."""

    class ImpostorFlow(LoginFlow):
        async def async_step_init(self, user_input: dict[str, str] | None = None) -> Any:
            (owner,) = [u for u in self._auth_manager.store.users() if u.name == "Alice"]
            return self.async_create_entry(title="impostor", data=owner.credentials[0])

    class ImpostorProvider(ShortcutProvider):
        TYPE = "impostor"

        async def async_login_flow(self, context: dict[str, Any]) -> LoginFlow:
            return ImpostorFlow(self)

    class ImpostorPlugin:
        @hookimpl
        def opp_auth_register_auth_providers(self, register: Any) -> None:
            register(ImpostorProvider)

    auth = await opp_auth_factory(
        providers=[EXAMPLE, {"type": "impostor"}], mfa_modules=[], plugins=[("impostor", ImpostorPlugin())]
    )
    first = await run_login_flow(auth, ("insecure_example", None), ALICE_LOGIN)
    await auth.users.async_get_or_create_user(first["result"])
    client = await opp_auth_client(auth)
    status, result = await client.login.start(["impostor", None])
    assert (status, result["type"], result["reason"]) == (200, "abort", "unknown_error")
    assert len(auth.codes) == 0


async def test_a_failing_mfa_enrolment_check_denies_the_login(
    onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module that cannot say whether the user is enrolled ends the login (fail closed), no code."""
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[PIN_MODULE])
    client = await opp_auth_client(auth)
    module = auth.registry.get_auth_mfa_module("pin")

    async def broken(user_id: str) -> bool:
        raise RuntimeError("enrolment store unreadable")

    first = await run_login_flow(auth, ("insecure_example", None), ALICE_LOGIN)
    await auth.users.async_get_or_create_user(first["result"])
    monkeypatch.setattr(module, "async_is_user_setup", broken)
    status, result = await client.login.start(["insecure_example", None])
    status, result = await client.login.step(result["flow_id"], **ALICE_LOGIN[0])
    assert (status, result["type"], result["reason"]) == (200, "abort", "unknown_error")
    assert len(auth.codes) == 0


async def test_onboarding_codes_pass_the_same_decision(
    config_dir: Path, opp_auth_factory: Any, opp_auth_client: Any
) -> None:
    """The owner's onboarding code works (a new user has no MFA); the integration code is for the
    caller's own session; outside a session an enrolled user gets no code without her MFA."""
    auth = await opp_auth_factory(providers=[{"type": "openpeerpower"}], mfa_modules=[PIN_MODULE])
    client = await opp_auth_client(auth)
    async with client.request(
        "POST",
        "/api/onboarding/users",
        json={
            "name": "Owner",
            "username": "owner",
            "password": "owner-password",
            "client_id": CLIENT_ID,
            "language": "en",
        },
    ) as resp:
        assert resp.status == 200
        code = (await resp.json())["auth_code"]
    status, tokens = await token_grant(client, code)
    assert status == 200, tokens
    owner = auth.users.owner()
    assert owner is not None
    await auth.users.async_enable_user_mfa(owner, "pin", {"pin": PIN})

    with pytest.raises(MfaRequired):
        await auth.login_flow.async_code_for_credentials(CLIENT_ID, owner.credentials[0])
    assert len(auth.codes) == 0

    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    async with client.request(
        "POST",
        "/api/onboarding/integration",
        json={"client_id": CLIENT_ID, "redirect_uri": REDIRECT_URI},
        headers=headers,
    ) as resp:
        assert resp.status == 200
        code = (await resp.json())["auth_code"]
    status, body = await token_grant(client, code)
    assert status == 200 and auth.access_tokens.validate_access_token(body["access_token"]).user is owner  # type: ignore[union-attr]


async def test_mfa_setup_flows_issue_no_code(
    onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any, ws_connector: Any
) -> None:
    """Enrolling over the websocket (auth/setup_mfa) finishes with no authorization code anywhere."""
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[PIN_MODULE])
    client = await opp_auth_client(auth)
    first = await run_login_flow(auth, ("insecure_example", None), ALICE_LOGIN)
    alice = await auth.users.async_get_or_create_user(first["result"])
    ws = await ws_connector(client).user(auth, alice)
    form = await ws.result("auth/setup_mfa", mfa_module_id="pin")
    done = await ws.result("auth/setup_mfa", flow_id=form["flow_id"], user_input={"pin": PIN})
    assert done["type"] == "create_entry" and "result" not in done
    assert len(auth.codes) == 0


def test_only_the_login_engine_issues_codes() -> None:
    """Every way to a code goes through login_flow.py: no other module (core or plugin) calls codes.issue."""
    root = Path(__file__).resolve().parents[2]
    callers = sorted(
        str(path.relative_to(root))
        for top in ("core", "providers", "mfa_modules", "plugins_contrib")
        for path in (root / top).rglob("*.py")
        if re.search(r"\.codes\.issue\(|\bAuthorizationCodes\(", path.read_text(encoding="utf-8"))
    )
    assert callers == ["core/opp_auth/login_flow.py"]  # which also builds them
    manager = (root / "core/opp_auth/manager.py").read_text(encoding="utf-8")
    assert ".codes.issue(" not in manager  # it only builds the store


# ---- a login provider offered by an MFA module (a passkey login) ---------------------------------------


class BadgeLoginProvider(AuthProvider):
    """Offered by the badge module: its flow proves the badge and finishes with the user's existing credentials."""

    TYPE = "badge"
    CONFIG_SCHEMA = AuthProvider.CONFIG_SCHEMA
    SUPPORT_MFA = False

    async def async_login_flow(self, context: dict[str, Any]) -> LoginFlow:
        return BadgeLoginFlow(self)


class BadgeLoginFlow(LoginFlow):
    """One step: the badge PIN of alice; finishes with her insecure_example credentials."""

    async def async_step_init(self, user_input: dict[str, str] | None = None) -> Any:
        if user_input is not None:
            (alice,) = [u for u in self.provider.auth.users() if u.name == "Alice"]
            module = self.provider.auth.get_auth_mfa_module("badge")
            assert module is not None
            if await module.async_validate(alice.id, user_input):
                return await self.async_finish(alice.credentials[0])
        return self.async_show_form(step_id="init", data_schema=vol.Schema({vol.Required("pin"): str}))


def badge_module_class() -> type:
    """The insecure_example PIN module under another type, offering BadgeLoginProvider."""
    from opp_auth_insecure_example import ExampleMfaModule

    class BadgeModule(ExampleMfaModule):
        TYPE = "badge"

        def login_provider(self) -> AuthProvider | None:
            return BadgeLoginProvider(self.auth, {"type": "badge"})

    return BadgeModule


@pytest.mark.parametrize(
    "enrolment", [{"badge": "1357"}, {"badge": "1357", "pin": PIN}], ids=["badge", "badge_and_pin"]
)
async def test_a_login_provider_offered_by_an_mfa_module_proves_that_factor(
    enrolment: dict[str, str],
    onboarded: Path,
    opp_auth_factory: Any,
    opp_auth_client: Any,
) -> None:
    """The offering module counts as passed, for a user enrolled in it; foreign credentials are allowed only there."""
    module_class = badge_module_class()

    class BadgePlugin:
        @hookimpl
        def opp_auth_register_mfa_modules(self, register: Any) -> None:
            register(module_class)

    auth = await opp_auth_factory(
        providers=[EXAMPLE],
        mfa_modules=[PIN_MODULE, {"type": "badge", "data": []}],
        plugins=[("badge", BadgePlugin())],
    )
    first = await run_login_flow(auth, ("insecure_example", None), ALICE_LOGIN)
    alice = await auth.users.async_get_or_create_user(first["result"])
    for module_id, pin in enrolment.items():
        await auth.users.async_enable_user_mfa(alice, module_id, {"pin": pin})
    client = await opp_auth_client(auth)
    status, result = await client.login.start(["badge", None])
    await assert_nothing_issued(client, auth, result)
    status, result = await client.login.step(result["flow_id"], pin="1357")
    assert result["type"] == "create_entry", result
    status, body = await token_grant(client, result["result"])
    assert status == 200 and auth.access_tokens.validate_access_token(body["access_token"]).user is alice  # type: ignore[union-attr]


async def test_a_module_offered_provider_does_not_stand_for_modules_it_did_not_prove(
    onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any
) -> None:
    """A user enrolled in the PIN module but not in the badge: the badge login still asks the PIN."""
    module_class = badge_module_class()

    class BadgePlugin:
        @hookimpl
        def opp_auth_register_mfa_modules(self, register: Any) -> None:
            register(module_class)

    auth = await opp_auth_factory(
        providers=[EXAMPLE],
        mfa_modules=[PIN_MODULE, {"type": "badge", "data": []}],
        plugins=[("badge", BadgePlugin())],
    )
    first = await run_login_flow(auth, ("insecure_example", None), ALICE_LOGIN)
    alice = await auth.users.async_get_or_create_user(first["result"])
    await auth.users.async_enable_user_mfa(alice, "pin", {"pin": PIN})
    # A badge PIN that is not an enrolment: the module validates it only for this test's sake.
    badge = auth.registry.get_auth_mfa_module("badge")

    async def any_badge(user_id: str, user_input: dict[str, Any]) -> bool:
        return user_input.get("pin") == "1357"

    badge.async_validate = any_badge  # type: ignore[union-attr,method-assign]
    client = await opp_auth_client(auth)
    status, result = await client.login.start(["badge", None])
    status, result = await client.login.step(result["flow_id"], pin="1357")
    await assert_nothing_issued(client, auth, result)
    assert result["step_id"] == "mfa" and result["description_placeholders"]["mfa_module_id"] == "pin"
    status, result = await client.login.step(result["flow_id"], pin=PIN)
    assert result["type"] == "create_entry" and len(auth.codes) == 1
