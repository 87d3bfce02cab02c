"""The login-flow HTTP API through the real server (SPEC 5.1, 5.2, 5.3, 4.2; G3, G4, G13)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import voluptuous as vol

from opp_auth import AuthProvider, Credentials, LoginFlow, UserMeta, hookimpl
from opp_auth.testing import CLIENT_ID, REDIRECT_URI

HANDLER = ["insecure_example", None]
PROVIDER = {
    "type": "insecure_example",
    "users": [{"username": "alice", "password": "alice-pw", "name": "Alice"}],
}
ALICE = {"username": "alice", "password": "alice-pw"}
PIN_MODULE = {"type": "insecure_example", "data": []}
SECOND_PIN_MODULE = {"type": "insecure_example", "id": "second", "name": "Second PIN", "data": []}
PIN_MODULE_NAME = "Insecure Personal Identify Number"
USERNAME_PASSWORD_SCHEMA = [
    {"type": "string", "name": "username", "required": True},
    {"type": "string", "name": "password", "required": True},
]


def is_flow_id(value: Any) -> bool:
    """Flow ids are uuid4 hex."""
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{32}", value) is not None


@pytest.fixture
async def auth(onboarded: Path, opp_auth_factory: Any) -> Any:
    """A manager with the insecure_example provider, already onboarded."""
    return await opp_auth_factory(providers=[PROVIDER], mfa_modules=[])


@pytest.fixture
async def client(auth: Any, opp_auth_client: Any) -> Any:
    """A live server for auth."""
    return await opp_auth_client(auth)


async def post_json(client: Any, path: str, body: Any, **kwargs: Any) -> tuple[int, Any]:
    """POST a JSON body: (status, JSON reply)."""
    async with client.request("POST", path, json=body, **kwargs) as resp:
        return resp.status, await resp.json()


async def start_flow(client: Any, **overrides: Any) -> tuple[int, Any]:
    """POST /auth/login_flow with the default body, overridden."""
    body = {"client_id": CLIENT_ID, "handler": HANDLER, "redirect_uri": REDIRECT_URI, **overrides}
    return await post_json(client, "/auth/login_flow", body)


# ---- GET /auth/providers ------------------------------------------------------------------


async def test_providers_lists_configured_providers_in_order(onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any) -> None:
    """Onboarded: 200 with name/id/type of every provider in configuration order."""
    auth = await opp_auth_factory(
        providers=[PROVIDER, {**PROVIDER, "id": "second", "name": "Second"}], mfa_modules=[]
    )
    client = await opp_auth_client(auth)
    async with client.request("GET", "/auth/providers") as resp:
        assert resp.status == 200
        assert await resp.json() == [
            {"name": "Unnamed auth provider", "id": None, "type": "insecure_example"},
            {"name": "Second", "id": "second", "type": "insecure_example"},
        ]


async def test_providers_before_owner_exists_is_onboarding_required(opp_auth_factory: Any, opp_auth_client: Any) -> None:
    """No .storage/onboarding and no owner: 400 onboarding_required."""
    client = await opp_auth_client(await opp_auth_factory(providers=[PROVIDER], mfa_modules=[]))
    async with client.request("GET", "/auth/providers") as resp:
        assert resp.status == 400
        assert await resp.json() == {"message": "Onboarding not finished", "code": "onboarding_required"}


# ---- starting a flow --------------------------------------------------------------------------


async def test_get_login_flow_index_is_405(client: Any) -> None:
    """GET /auth/login_flow is not allowed."""
    async with client.request("GET", "/auth/login_flow") as resp:
        assert resp.status == 405


async def test_start_returns_the_first_form(client: Any) -> None:
    """The init form has exactly SPEC's keys; fields carry name, type and required."""
    status, body = await start_flow(client)
    assert status == 200
    assert is_flow_id(body["flow_id"])
    assert body == {
        "type": "form",
        "flow_id": body["flow_id"],
        "handler": HANDLER,
        "step_id": "init",
        "data_schema": USERNAME_PASSWORD_SCHEMA,
        "errors": {},
        "description_placeholders": None,
        "last_step": None,
    }


async def test_start_with_redirect_uri_of_another_scheme_is_refused(client: Any) -> None:
    """A redirect uri that does not belong to the client id: 400."""
    status, body = await start_flow(client, redirect_uri="javascript:alert(1)")
    assert status == 400
    assert body == {"message": "invalid client id or redirect uri"}


async def test_start_with_invalid_client_id_is_refused(client: Any) -> None:
    """A client id that is not an http(s) URL: 400 with the same message."""
    status, body = await start_flow(client, client_id="ftp://example.com/", redirect_uri="ftp://example.com/cb")
    assert status == 400
    assert body == {"message": "invalid client id or redirect uri"}


async def test_start_with_unknown_handler_is_404(client: Any) -> None:
    """A provider that is not configured: 404, not a 500 (G4)."""
    status, body = await start_flow(client, handler=["openpeerpower", None])
    assert status == 404
    assert body == {"message": "Invalid handler specified"}


async def test_start_with_string_handler_means_id_null(client: Any) -> None:
    """"insecure_example" is read as [type, null] (G4)."""
    status, body = await start_flow(client, handler="insecure_example")
    assert status == 200
    assert body["type"] == "form"
    assert body["handler"] == HANDLER


@pytest.mark.parametrize("handler", [5, ["insecure_example", None, "x"], [1, None], {"type": "x"}])
async def test_start_with_malformed_handler_is_400(client: Any, handler: Any) -> None:
    """A handler that is neither [type, id] nor a string: body validation error."""
    status, body = await start_flow(client, handler=handler)
    assert status == 400
    assert body["message"].startswith("Message format incorrect: ")


async def test_start_with_invalid_json_is_400(client: Any) -> None:
    """A body that is not JSON."""
    async with client.request(
        "POST", "/auth/login_flow", data=b"{not json", headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 400
        assert await resp.json() == {"message": "Invalid JSON."}


async def test_start_without_client_id_is_400(client: Any) -> None:
    """client_id is required (G13)."""
    status, body = await post_json(client, "/auth/login_flow", {"handler": HANDLER, "redirect_uri": REDIRECT_URI})
    assert status == 400
    assert body["message"].startswith("Message format incorrect: ")


# ---- submitting steps -------------------------------------------------------------------------


async def test_wrong_password_shows_the_form_with_invalid_auth(client: Any) -> None:
    """Wrong password: 200, the same form again with errors.base invalid_auth."""
    _, started = await start_flow(client)
    status, body = await client.login.step(started["flow_id"], username="alice", password="wrong")
    assert status == 200
    assert body == {**started, "errors": {"base": "invalid_auth"}}


async def test_unknown_user_is_indistinguishable_from_wrong_password(client: Any) -> None:
    """An unknown username gets the same invalid_auth."""
    _, started = await start_flow(client)
    status, body = await client.login.step(started["flow_id"], username="mallory", password="alice-pw")
    assert status == 200
    assert body["errors"] == {"base": "invalid_auth"}


async def test_missing_password_is_user_input_malformed(client: Any) -> None:
    """A missing form field: 400, not a 500 (G13)."""
    _, started = await start_flow(client)
    status, body = await client.login.step(started["flow_id"], username="alice")
    assert status == 400
    assert body == {"message": "User input malformed"}


async def test_unknown_field_is_user_input_malformed(client: Any) -> None:
    """A field the form does not have: 400."""
    _, started = await start_flow(client)
    status, body = await client.login.step(started["flow_id"], **ALICE, extra="x")
    assert status == 400
    assert body == {"message": "User input malformed"}


async def test_step_without_client_id_is_400(client: Any) -> None:
    """client_id is required in every step body (G13)."""
    _, started = await start_flow(client)
    status, body = await post_json(client, f"/auth/login_flow/{started['flow_id']}", ALICE)
    assert status == 400
    assert body["message"].startswith("Message format incorrect: ")


async def test_step_with_another_client_id_is_refused(client: Any) -> None:
    """The client id must be the one that started the flow (G3)."""
    _, started = await start_flow(client)
    status, body = await client.login.step(started["flow_id"], client_id="https://other.example/", **ALICE)
    assert status == 400
    assert body == {"message": "Invalid client id"}


async def test_step_with_invalid_client_id_is_refused(client: Any) -> None:
    """A client id that is not a valid IndieAuth client id: 400."""
    _, started = await start_flow(client)
    status, body = await client.login.step(started["flow_id"], client_id="not a url", **ALICE)
    assert status == 400
    assert body == {"message": "Invalid client id"}


async def test_step_of_unknown_flow_is_404(client: Any) -> None:
    """A flow id nobody started."""
    status, body = await client.login.step("0" * 32, **ALICE)
    assert status == 404
    assert body == {"message": "Invalid flow specified"}


async def test_step_from_another_address_is_refused(onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any) -> None:
    """A flow started for a forwarded client cannot be continued from the proxy's own address."""
    auth = await opp_auth_factory(
        providers=[PROVIDER], mfa_modules=[], http={"use_x_forwarded_for": True, "trusted_proxies": ["127.0.0.1"]}
    )
    client = await opp_auth_client(auth)
    body = {"client_id": CLIENT_ID, "handler": HANDLER, "redirect_uri": REDIRECT_URI}
    status, started = await post_json(client, "/auth/login_flow", body, headers={"X-Forwarded-For": "192.168.1.20"})
    assert status == 200
    status, reply = await client.login.step(started["flow_id"], **ALICE)
    assert status == 400
    assert reply == {"message": "IP address changed"}


async def test_right_password_finishes_with_an_authorization_code(client: Any) -> None:
    """create_entry with SPEC's keys: result is a code, there is no data."""
    _, started = await start_flow(client)
    status, body = await client.login.step(started["flow_id"], **ALICE)
    assert status == 200
    assert isinstance(body.get("result"), str) and body["result"]
    assert body == {
        "version": 1,
        "type": "create_entry",
        "flow_id": started["flow_id"],
        "handler": HANDLER,
        "title": "Unnamed auth provider",
        "description": None,
        "description_placeholders": None,
        "result": body["result"],
    }


async def test_finished_flow_cannot_be_continued(client: Any) -> None:
    """After create_entry the flow is gone."""
    _, started = await start_flow(client)
    await client.login.step(started["flow_id"], **ALICE)
    status, body = await client.login.step(started["flow_id"], **ALICE)
    assert status == 404
    assert body == {"message": "Invalid flow specified"}


async def test_delete_aborts_the_flow(client: Any) -> None:
    """DELETE answers Flow aborted; afterwards the flow is unknown."""
    _, started = await start_flow(client)
    async with client.request("DELETE", f"/auth/login_flow/{started['flow_id']}") as resp:
        assert resp.status == 200
        assert await resp.json() == {"message": "Flow aborted"}
    async with client.request("DELETE", f"/auth/login_flow/{started['flow_id']}") as resp:
        assert resp.status == 404
        assert await resp.json() == {"message": "Invalid flow specified"}
    status, _ = await client.login.step(started["flow_id"], **ALICE)
    assert status == 404


async def test_get_flow_is_always_404(client: Any) -> None:
    """Flows are not readable, even existing ones."""
    _, started = await start_flow(client)
    async with client.request("GET", f"/auth/login_flow/{started['flow_id']}") as resp:
        assert resp.status == 404
        assert await resp.json() == {"message": "Invalid flow specified"}


# ---- a broken provider fails closed -----------------------------------------------------------


class BrokenLoginFlow(LoginFlow):
    """Shows a form, then crashes on input."""

    async def async_step_init(self, user_input: dict[str, Any] | None = None) -> dict[str, Any]:
        """Crash when checking."""
        if user_input is not None:
            raise RuntimeError("directory exploded")
        return self.async_show_form(step_id="init", data_schema=vol.Schema({vol.Required("username"): str}))


class BrokenProvider(AuthProvider):
    """A provider whose check raises."""

    TYPE = "broken"
    CONFIG_SCHEMA = AuthProvider.CONFIG_SCHEMA

    async def async_login_flow(self, context: dict[str, Any]) -> LoginFlow:
        """The crashing flow."""
        return BrokenLoginFlow(self)

    def credential_data(self, flow_result: dict[str, Any]) -> dict[str, Any]:
        """Never reached."""
        return {"username": flow_result["username"]}

    async def async_user_meta_for_credentials(self, credentials: Credentials) -> UserMeta:
        """Never reached."""
        return UserMeta(name=None, is_active=True)


class UnstartableProvider(BrokenProvider):
    """A provider that cannot even build its login flow."""

    TYPE = "unstartable"

    async def async_login_flow(self, context: dict[str, Any]) -> LoginFlow:
        """Crash at once."""
        raise RuntimeError("not configured properly")


class BrokenPlugin:
    """Registers the broken providers."""

    @hookimpl
    def opp_auth_register_auth_providers(self, register: Any) -> None:
        """Both broken types."""
        register(BrokenProvider)
        register(UnstartableProvider)


@pytest.fixture
async def broken_client(onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any) -> Any:
    """A server whose providers raise."""
    auth = await opp_auth_factory(
        providers=[{"type": "broken"}, {"type": "unstartable"}], mfa_modules=[], plugins=[("broken", BrokenPlugin())]
    )
    return await opp_auth_client(auth)


async def test_provider_raising_in_its_step_aborts_with_unknown_error(broken_client: Any) -> None:
    """An exception in the provider denies the login with abort unknown_error, status 200."""
    status, started = await start_flow(broken_client, handler=["broken", None])
    assert status == 200
    status, body = await broken_client.login.step(started["flow_id"], username="x")
    assert status == 200
    assert body == {
        "type": "abort",
        "flow_id": started["flow_id"],
        "handler": ["broken", None],
        "reason": "unknown_error",
        "description_placeholders": None,
    }


async def test_provider_failing_to_build_its_flow_aborts_with_unknown_error(broken_client: Any) -> None:
    """An exception while creating the flow is an abort too, never a 500."""
    status, body = await start_flow(broken_client, handler=["unstartable", None])
    assert status == 200
    assert body["type"] == "abort"
    assert body["reason"] == "unknown_error"


# ---- MFA through HTTP ---------------------------------------------------------------------------


async def mfa_client(opp_auth_factory: Any, opp_auth_client: Any, modules: list[dict[str, Any]], pins: dict[str, str]) -> Any:
    """A server where alice exists (first login done) and is enrolled in the given module ids."""
    auth = await opp_auth_factory(providers=[PROVIDER], mfa_modules=modules)
    client = await opp_auth_client(auth)
    await client.login.tokens(HANDLER, [ALICE])  # the first login creates the user, without MFA
    (alice,) = [u for u in await auth.users.async_get_users() if u.name == "Alice"]
    for module_id, pin in pins.items():
        await auth.users.async_enable_user_mfa(alice, module_id, {"pin": pin})
    return client


async def test_mfa_step_follows_the_password(onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any) -> None:
    """With one enrolled module the mfa form comes next, naming the module."""
    client = await mfa_client(opp_auth_factory, opp_auth_client, [PIN_MODULE], {"insecure_example": "4242"})
    _, started = await start_flow(client)
    status, body = await client.login.step(started["flow_id"], **ALICE)
    assert status == 200
    assert body == {
        "type": "form",
        "flow_id": started["flow_id"],
        "handler": HANDLER,
        "step_id": "mfa",
        "data_schema": [{"type": "string", "name": "pin", "required": True}],
        "errors": {},
        "description_placeholders": {"mfa_module_name": PIN_MODULE_NAME, "mfa_module_id": "insecure_example"},
        "last_step": None,
    }
    status, body = await client.login.step(started["flow_id"], pin="4242")
    assert status == 200
    assert body["type"] == "create_entry"


async def test_mfa_wrong_code_is_invalid_code(onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any) -> None:
    """A wrong PIN shows the mfa form again with invalid_code."""
    client = await mfa_client(opp_auth_factory, opp_auth_client, [PIN_MODULE], {"insecure_example": "4242"})
    _, started = await start_flow(client)
    _, mfa_form = await client.login.step(started["flow_id"], **ALICE)
    status, body = await client.login.step(started["flow_id"], pin="0000")
    assert status == 200
    assert body == {**mfa_form, "errors": {"base": "invalid_code"}}


async def test_mfa_third_wrong_code_aborts_too_many_retry(onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any) -> None:
    """insecure_example allows three tries: the third failure ends the flow."""
    client = await mfa_client(opp_auth_factory, opp_auth_client, [PIN_MODULE], {"insecure_example": "4242"})
    _, started = await start_flow(client)
    await client.login.step(started["flow_id"], **ALICE)
    for _ in range(2):
        _, body = await client.login.step(started["flow_id"], pin="0000")
        assert body["errors"] == {"base": "invalid_code"}
    status, body = await client.login.step(started["flow_id"], pin="0000")
    assert status == 200
    assert body == {
        "type": "abort",
        "flow_id": started["flow_id"],
        "handler": HANDLER,
        "reason": "too_many_retry",
        "description_placeholders": None,
    }
    status, _ = await client.login.step(started["flow_id"], pin="4242")
    assert status == 404


async def test_two_modules_ask_which_one(onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any) -> None:
    """Enrolled in two modules: select_mfa_module lists both; the chosen one asks its code."""
    client = await mfa_client(
        opp_auth_factory, opp_auth_client, [PIN_MODULE, SECOND_PIN_MODULE], {"insecure_example": "1111", "second": "2222"}
    )
    _, started = await start_flow(client)
    status, body = await client.login.step(started["flow_id"], **ALICE)
    assert status == 200
    assert body == {
        "type": "form",
        "flow_id": started["flow_id"],
        "handler": HANDLER,
        "step_id": "select_mfa_module",
        "data_schema": [
            {
                "type": "select",
                "name": "multi_factor_auth_module",
                "required": True,
                "options": [["insecure_example", PIN_MODULE_NAME], ["second", "Second PIN"]],
            }
        ],
        "errors": {},
        "description_placeholders": None,
        "last_step": None,
    }
    _, body = await client.login.step(started["flow_id"], multi_factor_auth_module="second")
    assert body["step_id"] == "mfa"
    assert body["description_placeholders"] == {"mfa_module_name": "Second PIN", "mfa_module_id": "second"}
    _, body = await client.login.step(started["flow_id"], pin="1111")
    assert body["errors"] == {"base": "invalid_code"}
    _, body = await client.login.step(started["flow_id"], pin="2222")
    assert body["type"] == "create_entry"
