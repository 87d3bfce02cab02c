"""The wire generation follows the directory; what does not conflict is served always (issue 14)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
import pytest

from opp_auth.http import indieauth
from opp_auth.http.view import AUTH_KEY
from opp_auth.testing import CLIENT_ID, REDIRECT_URI, async_stored_document

from .conftest import HA_CLIENT_ID, HA_LOCAL, OWNER_ID, OWNER_SESSION_ID, PASSWORDS, serve

PASSWORD = PASSWORDS["paulus"]


@pytest.fixture
async def ha(ha_dir: dict[str, Any], opp_auth_client: Any) -> Any:
    """A served Home Assistant directory."""
    return await serve(opp_auth_client, ha_dir["dir"])


@pytest.fixture
async def opp(tmp_path: Path, opp_auth_client: Any) -> Any:
    """A served Open Peer Power directory with an owner."""
    (tmp_path / "configuration.yaml").write_text("openpeerpower:\n  name: Home\n", encoding="utf-8")
    client = await serve(opp_auth_client, tmp_path)
    async with client.request("POST", "/api/onboarding/users", json={
        "name": "Paulus", "username": "paulus", "password": PASSWORD, "client_id": CLIENT_ID, "language": "en",
    }) as resp:
        assert resp.status == 200
    return client


async def get_json(client: Any, path: str, **kwargs: Any) -> tuple[int, Any]:
    """(status, JSON body) of a GET."""
    async with client.request("GET", path, **kwargs) as resp:
        return resp.status, await resp.json()


async def ha_tokens(client: Any, ha_dir: dict[str, Any]) -> dict[str, Any]:
    """The owner's tokens through password and TOTP."""
    status, step = await client.login.start(HA_LOCAL)
    status, step = await client.login.step(step["flow_id"], username="paulus", password=PASSWORD)
    status, step = await client.login.step(step["flow_id"], code=pyotp.TOTP(ha_dir["totp"][OWNER_ID]).now())
    status, body = await client.login.token(grant_type="authorization_code", client_id=CLIENT_ID, code=step["result"])
    assert status == 200, body
    return dict(body)


# ---- GET /auth/providers ------------------------------------------------------------------------


async def test_homeassistant_directory_answers_the_providers_object(ha: Any) -> None:
    """Today's Home Assistant login page reads {"providers": [...], "preselect_remember_me": bool}."""
    status, body = await get_json(ha, "/auth/providers")
    assert status == 200
    assert body == {
        "providers": [{"name": "Home Assistant Local", "id": None, "type": "homeassistant"}],
        "preselect_remember_me": True,
    }


async def test_remember_me_is_not_preselected_for_a_public_address(ha_dir: dict[str, Any], opp_auth_client: Any) -> None:
    """A caller from outside the local network is not offered a kept session by default."""
    client = await serve(
        opp_auth_client, ha_dir["dir"], use_x_forwarded_for=True, trusted_proxies=[ipaddress.ip_network("127.0.0.1/32")]
    )
    status, body = await get_json(client, "/auth/providers", headers={"X-Forwarded-For": "203.0.113.7"})
    assert (status, body["preselect_remember_me"]) == (200, False)


async def test_openpeerpower_directory_answers_the_2021_list(opp: Any) -> None:
    """Open Peer Power 2021's pages read a list."""
    status, body = await get_json(opp, "/auth/providers")
    assert (status, body) == (200, [{"name": "Open Peer Power Local", "id": None, "type": "openpeerpower"}])


async def test_auth_api_key_switches_the_generation(ha_dir: dict[str, Any], opp_auth_client: Any) -> None:
    """http: auth_api: openpeerpower makes a Home Assistant directory speak the 2021 wire."""
    client = await serve(opp_auth_client, ha_dir["dir"], auth_api="openpeerpower")
    status, body = await get_json(client, "/auth/providers")
    assert (status, body) == (200, [{"name": "Home Assistant Local", "id": None, "type": "homeassistant"}])


async def test_providers_before_onboarding_say_so_in_both_generations(tmp_path: Path, opp_auth_client: Any) -> None:
    """No owner yet: 400 onboarding_required, which both login pages turn into the onboarding page."""
    (tmp_path / "configuration.yaml").write_text("homeassistant:\n", encoding="utf-8")
    client = await serve(opp_auth_client, tmp_path)
    status, body = await get_json(client, "/auth/providers")
    assert (status, body["code"]) == (400, "onboarding_required")


# ---- POST /auth/login_flow with response_type -----------------------------------------------------


async def start_with_response_type(client: Any, handler: list[Any]) -> None:
    """A flow started with response_type code reaches the provider's form."""
    async with client.request("POST", "/auth/login_flow", json={
        "client_id": CLIENT_ID, "handler": handler, "redirect_uri": REDIRECT_URI, "response_type": "code",
    }) as resp:
        body = await resp.json()
    assert (resp.status, body["type"], body["step_id"]) == (200, "form", "init"), body


async def test_login_flow_accepts_response_type_code(ha: Any) -> None:
    """Home Assistant's clients send response_type code."""
    await start_with_response_type(ha, HA_LOCAL)


async def test_login_flow_accepts_response_type_code_in_2021_generation(opp: Any) -> None:
    """No conflict with the 2021 wire, so accepted there too."""
    await start_with_response_type(opp, ["openpeerpower", None])


@pytest.mark.parametrize("value", ["token", "", None, ["code"], "CODE"])
async def test_login_flow_refuses_other_response_types(ha: Any, value: Any) -> None:
    """Only the code flow exists: anything else is a 400 naming the key."""
    async with ha.request("POST", "/auth/login_flow", json={
        "client_id": CLIENT_ID, "handler": HA_LOCAL, "redirect_uri": REDIRECT_URI, "response_type": value,
    }) as resp:
        body = await resp.json()
    assert resp.status == 400 and "response_type" in body["message"], body


# ---- POST /auth/revoke ----------------------------------------------------------------------------


async def refresh(client: Any, token: str, client_id: str = CLIENT_ID) -> int:
    """Status of a refresh grant."""
    status, _ = await client.login.token(grant_type="refresh_token", client_id=client_id, refresh_token=token)
    return int(status)


async def test_revoke_multipart_as_home_assistant_js_websocket_posts(ha: Any, ha_dir: dict[str, Any]) -> None:
    """auth.revoke() posts FormData (multipart) token=...: the refresh token is gone."""
    tokens = await ha_tokens(ha, ha_dir)
    form = aiohttp.FormData()
    form.add_field("token", tokens["refresh_token"])
    async with ha.request("POST", "/auth/revoke", data=form) as resp:
        assert resp.status == 200
    assert await refresh(ha, tokens["refresh_token"]) == 400
    assert ha.app[AUTH_KEY].store.get_refresh_token_by_token(tokens["refresh_token"]) is None


async def test_revoke_urlencoded_in_an_openpeerpower_directory(opp: Any) -> None:
    """/auth/revoke does not conflict with the 2021 wire, so it is served there too."""
    tokens = await opp.login.tokens(["openpeerpower", None], [{"username": "paulus", "password": PASSWORD}])
    async with opp.request("POST", "/auth/revoke", data={"token": tokens["refresh_token"]}) as resp:
        assert resp.status == 200
    assert await refresh(opp, tokens["refresh_token"]) == 400


async def test_revoke_a_stored_home_assistant_session(ha: Any, ha_dir: dict[str, Any]) -> None:
    """A session Home Assistant issued is revoked by its token string."""
    stored = ha_dir["tokens"][OWNER_SESSION_ID]["token"]
    async with ha.request("POST", "/auth/revoke", data={"token": stored}) as resp:
        assert resp.status == 200
    assert await refresh(ha, stored, HA_CLIENT_ID) == 400


@pytest.mark.parametrize(
    "kwargs",
    [
        {"data": {"token": "not-a-token"}},
        {"data": {}},
        {"data": b"\xff\xfe garbage", "headers": {"Content-Type": "multipart/form-data; boundary=x"}},
        {"data": {"token": "ü" * 5000}},
        {"json": {"token": 1}},
    ],
)
async def test_revoke_of_nothing_is_still_200(ha: Any, ha_dir: dict[str, Any], kwargs: dict[str, Any]) -> None:
    """Unknown, missing or undecodable tokens revoke nothing, answer 200 (as OAuth's revocation does) and never 500."""
    tokens = await ha_tokens(ha, ha_dir)
    async with ha.request("POST", "/auth/revoke", **kwargs) as resp:
        assert resp.status == 200
    assert await refresh(ha, tokens["refresh_token"]) == 200


# ---- websocket ------------------------------------------------------------------------------------


async def ws_session(client: Any, access_token: str) -> aiohttp.ClientWebSocketResponse:
    """An authenticated websocket."""
    ws = await client.session.ws_connect(client.url("/api/websocket"))
    assert (await ws.receive_json())["type"] == "auth_required"
    await ws.send_json({"type": "auth", "access_token": access_token})
    assert (await ws.receive_json())["type"] == "auth_ok"
    return ws


async def test_supported_features_right_after_auth_ok(ha: Any, ha_dir: dict[str, Any]) -> None:
    """homeassistant-api and home-assistant-js-websocket send supported_features first: a success, then commands work."""
    tokens = await ha_tokens(ha, ha_dir)
    ws = await ws_session(ha, tokens["access_token"])
    await ws.send_json({"id": 1, "type": "supported_features", "features": {"coalesce_messages": 1}})
    assert await ws.receive_json() == {"id": 1, "type": "result", "success": True, "result": None}
    await ws.send_json({"id": 2, "type": "supported_features", "features": {"coalesce_messages": "yes"}})
    reply = await ws.receive_json()
    assert (reply["success"], reply["error"]["code"]) == (False, "invalid_format")
    await ws.send_json({"id": 3, "type": "auth/current_user"})
    assert (await ws.receive_json())["result"]["id"] == OWNER_ID
    await ws.close()


async def test_refresh_tokens_say_which_provider(ha: Any, ha_dir: dict[str, Any]) -> None:
    """Home Assistant's profile shows each session's provider type."""
    tokens = await ha_tokens(ha, ha_dir)
    ws = await ws_session(ha, tokens["access_token"])
    await ws.send_json({"id": 1, "type": "auth/refresh_tokens"})
    listed = {t["id"]: t for t in (await ws.receive_json())["result"]}
    assert listed[OWNER_SESSION_ID]["auth_provider_type"] == "homeassistant"
    await ws.close()


async def test_delete_all_refresh_tokens_with_home_assistants_options(ha: Any, ha_dir: dict[str, Any]) -> None:
    """'Log out of all other devices': delete_current_token false keeps this session, ends the others."""
    tokens = await ha_tokens(ha, ha_dir)
    ws = await ws_session(ha, tokens["access_token"])
    await ws.send_json({"id": 1, "type": "auth/delete_all_refresh_tokens", "token_type": "normal",
                        "delete_current_token": False})
    assert (await ws.receive_json())["success"] is True
    auth = ha.app[AUTH_KEY]
    assert auth.store.get_refresh_token(OWNER_SESSION_ID) is None
    assert auth.store.get_refresh_token("0a1b2c3d4e5f40718293a4b5c6d7e8f9") is not None  # long-lived kept
    assert await refresh(ha, tokens["refresh_token"]) == 200
    await ws.close()


@pytest.mark.parametrize("prefix", ["homeassistant", "openpeerpower"])
async def test_local_provider_commands_under_both_names(ha: Any, ha_dir: dict[str, Any], prefix: str) -> None:
    """Home Assistant's frontend sends config/auth_provider/homeassistant/*; opp-auth's pages the other name."""
    tokens = await ha_tokens(ha, ha_dir)
    ws = await ws_session(ha, tokens["access_token"])
    await ws.send_json({"id": 1, "type": f"config/auth_provider/{prefix}/change_password",
                        "current_password": "wrong", "new_password": "a new long password"})
    reply = await ws.receive_json()
    assert reply["error"]["code"] == "invalid_current_password", reply
    await ws.send_json({"id": 2, "type": f"config/auth_provider/{prefix}/change_password",
                        "current_password": PASSWORD, "new_password": "a new long password"})
    assert (await ws.receive_json())["success"] is True
    await ws.close()


# ---- companion apps ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_id", "redirect_uri", "ok"),
    [
        ("https://home-assistant.io/iOS", "homeassistant://auth-callback", True),
        ("https://home-assistant.io/android", "homeassistant://auth-callback", True),
        ("https://home-assistant.io/android", "https://wear.googleapis.com/3p_auth/io.homeassistant.companion.android", True),
        ("https://home-assistant.io/iOS", "https://wear.googleapis.com/3p_auth/io.homeassistant.companion.android", False),
        ("https://home-assistant.io/iOS", "homeassistant://auth-callback/../x", False),
        ("https://home-assistant.io/iOS", "openpeerpower://auth-callback", False),
        ("https://openpeerpower.io/iOS", "homeassistant://auth-callback", False),
        ("https://home-assistant.io/iOS/", "homeassistant://auth-callback", False),
        ("https://openpeerpower.io/android", "openpeerpower://auth-callback", True),
    ],
)
def test_companion_app_client_ids(client_id: str, redirect_uri: str, ok: bool) -> None:
    """Each app's client id with its own callbacks, offline; no mixing of apps or projects."""
    assert bool(indieauth.verify_redirect_uri_sync(client_id, redirect_uri)) is ok


async def test_companion_app_starts_a_login_flow(ha: Any) -> None:
    """The Android app's login starts without the server fetching anything."""
    async with ha.request("POST", "/auth/login_flow", json={
        "client_id": "https://home-assistant.io/android", "handler": HA_LOCAL,
        "redirect_uri": "homeassistant://auth-callback", "response_type": "code",
    }) as resp:
        assert resp.status == 200, await resp.text()


async def test_onboarding_a_fresh_homeassistant_directory(tmp_path: Path, opp_auth_client: Any) -> None:
    """A new homeassistant: directory onboards its owner into auth_provider.homeassistant, as Home Assistant would."""
    (tmp_path / "configuration.yaml").write_text("homeassistant:\n  name: Home\n", encoding="utf-8")
    client = await serve(opp_auth_client, tmp_path)
    async with client.request("POST", "/api/onboarding/users", json={
        "name": "Paulus", "username": "Paulus", "password": PASSWORD, "client_id": CLIENT_ID, "language": "en",
    }) as resp:
        assert resp.status == 200, await resp.text()
    logins = await async_stored_document(tmp_path, "auth_provider.homeassistant")
    assert [u["username"] for u in logins["users"]] == ["paulus"]
    assert not list((tmp_path / ".storage").glob("*auth_provider.openpeerpower*"))
    tokens = await client.login.tokens(HA_LOCAL, [{"username": "paulus", "password": PASSWORD}])
    assert client.app[AUTH_KEY].access_tokens.validate_access_token(tokens["access_token"], "127.0.0.1").user.is_owner


async def test_admin_change_username_as_home_assistants_frontend_sends_it(ha: Any, ha_dir: dict[str, Any]) -> None:
    """An administrator renames Anne's login; she logs in with the new name, the old one and a taken one fail."""
    anne = "b2c3d4e5f6a74b8c9d0e1f2a3b4c5d6e"
    tokens = await ha_tokens(ha, ha_dir)
    ws = await ws_session(ha, tokens["access_token"])
    kind = "config/auth_provider/homeassistant/admin_change_username"
    await ws.send_json({"id": 1, "type": kind, "user_id": anne, "username": "paulus"})
    assert (await ws.receive_json())["error"]["code"] == "username_exists"
    await ws.send_json({"id": 2, "type": kind, "user_id": "nobody", "username": "x"})
    assert (await ws.receive_json())["error"]["code"] == "user_not_found"
    await ws.send_json({"id": 21, "type": kind, "user_id": anne, "username": "an\u2028ne"})
    assert (await ws.receive_json())["error"]["code"] == "invalid_username"
    await ws.send_json({"id": 22, "type": kind, "user_id": anne, "username": "   "})
    assert (await ws.receive_json())["error"]["code"] == "invalid_username"
    await ws.send_json({"id": 23, "type": kind, "user_id": anne, "username": "  Annie "})
    assert (await ws.receive_json())["success"] is True, "rename"
    await ws.close()
    logins = await async_stored_document(ha_dir["dir"], "auth_provider.homeassistant")
    assert sorted(u["username"] for u in logins["users"]) == ["annie", "guest", "paulus"]
    secret = ha_dir["totp"][anne]
    for username, ok in (("anne", False), ("annie", True)):
        status, step = await ha.login.start(HA_LOCAL)
        status, step = await ha.login.step(step["flow_id"], username=username, password="anne's own secret")
        if not ok:
            assert step.get("errors") == {"base": "invalid_auth"}, step
            continue
        status, step = await ha.login.step(step["flow_id"], code=pyotp.TOTP(secret).now())
        assert step["type"] == "create_entry", step
        status, body = await ha.login.token(grant_type="authorization_code", client_id=CLIENT_ID, code=step["result"])
        assert ha.app[AUTH_KEY].access_tokens.validate_access_token(body["access_token"], "127.0.0.1").user.id == anne


async def test_admin_change_username_needs_an_administrator(ha: Any, ha_dir: dict[str, Any]) -> None:
    """Anne (a user, not an administrator) may not rename anyone."""
    stored = ha_dir["tokens"]["3d4e5f6a7b8c43041526d7e8f90a1b2c"]["token"]
    status, body = await ha.login.token(grant_type="refresh_token", client_id=HA_CLIENT_ID, refresh_token=stored)
    ws = await ws_session(ha, body["access_token"])
    await ws.send_json({"id": 1, "type": "config/auth_provider/homeassistant/admin_change_username",
                        "user_id": OWNER_ID, "username": "mallory"})
    assert (await ws.receive_json())["error"]["code"] == "unauthorized"
    await ws.close()
