"""The token endpoint, bearer authentication and /auth/link_user through the real server (SPEC 5.2, 6.2; G18)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from opp_auth.testing import CLIENT_ID

HANDLER = ["insecure_example", None]
SECOND_HANDLER = ["insecure_example", "second"]
PROVIDERS = [
    {
        "type": "insecure_example",
        "users": [
            {"username": "alice", "password": "alice-pw", "name": "Alice"},
            {"username": "bob", "password": "bob-pw", "name": "Bob"},
        ],
    },
    {
        "type": "insecure_example",
        "id": "second",
        "name": "Second",
        "users": [{"username": "alice2", "password": "alice2-pw", "name": "Alice again"}],
    },
]
ALICE = {"username": "alice", "password": "alice-pw"}
BOB = {"username": "bob", "password": "bob-pw"}
ALICE2 = {"username": "alice2", "password": "alice2-pw"}
OTHER_CLIENT_ID = "https://other.example.com/"


@pytest.fixture
async def auth(onboarded: Path, opp_auth_factory: Any) -> Any:
    """A manager with two insecure_example providers."""
    return await opp_auth_factory(providers=PROVIDERS, mfa_modules=[])


@pytest.fixture
async def client(auth: Any, opp_auth_client: Any) -> Any:
    """A live server for auth."""
    return await opp_auth_client(auth)


async def api_status(client: Any, authorization: str | None) -> tuple[int, Any]:
    """GET /api/ with an Authorization header (or none)."""
    headers = {"Authorization": authorization} if authorization is not None else {}
    async with client.request("GET", "/api/", headers=headers) as resp:
        return resp.status, await resp.json()


async def token_request(client: Any, **form: str) -> tuple[int, Any, Any]:
    """POST /auth/token: (status, JSON body or None, headers)."""
    async with client.request("POST", "/auth/token", data=form) as resp:
        text = await resp.text()
        return resp.status, (await resp.json() if text else None), resp.headers


# ---- authorization_code -----------------------------------------------------------------------


async def test_authorization_code_grant_returns_tokens(client: Any) -> None:
    """A code becomes an access token, a refresh token and expires_in 1800, never cached."""
    code = await client.login.code(HANDLER, [ALICE])
    status, body, headers = await token_request(client, grant_type="authorization_code", client_id=CLIENT_ID, code=code)
    assert status == 200
    assert set(body) == {"access_token", "token_type", "refresh_token", "expires_in"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 1800
    assert len(body["refresh_token"]) == 128
    assert headers["Cache-Control"] == "no-store"
    assert await api_status(client, f"Bearer {body['access_token']}") == (200, {"message": "API running."})


async def test_authorization_code_is_single_use(client: Any) -> None:
    """The second redemption of a code fails."""
    code = await client.login.code(HANDLER, [ALICE])
    status, _, _ = await token_request(client, grant_type="authorization_code", client_id=CLIENT_ID, code=code)
    assert status == 200
    status, body, _ = await token_request(client, grant_type="authorization_code", client_id=CLIENT_ID, code=code)
    assert status == 400
    assert body == {"error": "invalid_request", "error_description": "Invalid code"}


async def test_authorization_code_of_another_client_is_invalid(client: Any) -> None:
    """A code is bound to the client id that finished the flow."""
    code = await client.login.code(HANDLER, [ALICE])
    status, body, _ = await token_request(
        client, grant_type="authorization_code", client_id=OTHER_CLIENT_ID, code=code
    )
    assert status == 400
    assert body == {"error": "invalid_request", "error_description": "Invalid code"}


async def test_authorization_code_with_invalid_client_id(client: Any) -> None:
    """A client id that is not a valid IndieAuth client id."""
    code = await client.login.code(HANDLER, [ALICE])
    status, body, _ = await token_request(client, grant_type="authorization_code", client_id="not a url", code=code)
    assert status == 400
    assert body == {"error": "invalid_request", "error_description": "Invalid client id"}


async def test_authorization_code_without_client_id(client: Any) -> None:
    """client_id is required."""
    code = await client.login.code(HANDLER, [ALICE])
    status, body, _ = await token_request(client, grant_type="authorization_code", code=code)
    assert status == 400
    assert body == {"error": "invalid_request", "error_description": "Invalid client id"}


async def test_authorization_code_without_code(client: Any) -> None:
    """code is required."""
    status, body, _ = await token_request(client, grant_type="authorization_code", client_id=CLIENT_ID)
    assert status == 400
    assert body == {"error": "invalid_request", "error_description": "Invalid code"}


async def test_inactive_user_gets_access_denied(client: Any, auth: Any) -> None:
    """A deactivated user's code is refused with 403."""
    await client.login.tokens(HANDLER, [ALICE])
    (alice,) = [u for u in await auth.users.async_get_users() if u.name == "Alice"]
    await auth.users.async_deactivate_user(alice)
    code = await client.login.code(HANDLER, [ALICE])
    status, body, _ = await token_request(client, grant_type="authorization_code", client_id=CLIENT_ID, code=code)
    assert status == 403
    assert body == {"error": "access_denied", "error_description": "User is not active"}


# ---- refresh_token ----------------------------------------------------------------------------


async def test_refresh_grant_returns_a_new_access_token(client: Any) -> None:
    """A refresh token gives an access token, and no new refresh token."""
    tokens = await client.login.tokens(HANDLER, [ALICE])
    status, body, headers = await token_request(
        client, grant_type="refresh_token", client_id=CLIENT_ID, refresh_token=tokens["refresh_token"]
    )
    assert status == 200
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 1800
    assert headers["Cache-Control"] == "no-store"
    assert (await api_status(client, f"Bearer {body['access_token']}"))[0] == 200


async def test_refresh_grant_with_unknown_token_is_invalid_grant(client: Any) -> None:
    """A refresh token nobody issued."""
    status, body, _ = await token_request(
        client, grant_type="refresh_token", client_id=CLIENT_ID, refresh_token="ab" * 64
    )
    assert status == 400
    assert body == {"error": "invalid_grant"}


async def test_refresh_grant_from_another_client_is_invalid_request(client: Any) -> None:
    """The refresh token's client id must match, and an absent one matches nothing but null."""
    tokens = await client.login.tokens(HANDLER, [ALICE])
    status, body, _ = await token_request(
        client, grant_type="refresh_token", client_id=OTHER_CLIENT_ID, refresh_token=tokens["refresh_token"]
    )
    assert (status, body) == (400, {"error": "invalid_request"})
    status, body, _ = await token_request(client, grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert (status, body) == (400, {"error": "invalid_request"})


async def test_refresh_grant_with_invalid_client_id(client: Any) -> None:
    """A client id present but invalid."""
    tokens = await client.login.tokens(HANDLER, [ALICE])
    status, body, _ = await token_request(
        client, grant_type="refresh_token", client_id="not a url", refresh_token=tokens["refresh_token"]
    )
    assert status == 400
    assert body == {"error": "invalid_request", "error_description": "Invalid client id"}


async def test_refresh_grant_without_refresh_token(client: Any) -> None:
    """refresh_token is required."""
    status, body, _ = await token_request(client, grant_type="refresh_token", client_id=CLIENT_ID)
    assert status == 400
    assert body == {"error": "invalid_request"}


# ---- revoke and other grants ------------------------------------------------------------------


async def test_revoke_removes_the_refresh_token_and_its_access_tokens(client: Any) -> None:
    """After revoking, neither the refresh token nor an access token it minted works."""
    tokens = await client.login.tokens(HANDLER, [ALICE])
    assert (await api_status(client, f"Bearer {tokens['access_token']}"))[0] == 200
    status, body, _ = await token_request(client, action="revoke", token=tokens["refresh_token"])
    assert (status, body) == (200, None)
    status, body, _ = await token_request(
        client, grant_type="refresh_token", client_id=CLIENT_ID, refresh_token=tokens["refresh_token"]
    )
    assert (status, body) == (400, {"error": "invalid_grant"})
    assert (await api_status(client, f"Bearer {tokens['access_token']}"))[0] == 401


@pytest.mark.parametrize("form", [{"action": "revoke", "token": "unknown"}, {"action": "revoke"}])
async def test_revoke_always_answers_200(client: Any, form: dict[str, str]) -> None:
    """Revoking an unknown or missing token is not an error."""
    status, body, _ = await token_request(client, **form)
    assert (status, body) == (200, None)


@pytest.mark.parametrize(
    "extra",
    [
        {"grant_type": "junk"},
        {"grant_type": ""},
        {"grant_type": "refresh_token"},
        {"grant_type": "authorization_code"},
    ],
)
async def test_revoke_mixed_with_a_grant_is_refused_and_revokes_nothing(client: Any, extra: dict[str, str]) -> None:
    """action=revoke is the whole request: with any grant_type it is 400 invalid_request and the token lives."""
    tokens = await client.login.tokens(HANDLER, [ALICE])
    status, body, headers = await token_request(client, action="revoke", token=tokens["refresh_token"], **extra)
    assert (status, body["error"]) == (400, "invalid_request")
    assert headers["Cache-Control"] == "no-store"
    assert (await api_status(client, f"Bearer {tokens['access_token']}"))[0] == 200


@pytest.mark.parametrize("action", ["", "Revoke", "revoke ", "delete", "revoke\x00"])
async def test_another_action_is_invalid_request_even_with_a_good_grant(client: Any, action: str) -> None:
    tokens = await client.login.tokens(HANDLER, [ALICE])
    status, body, _ = await token_request(
        client, action=action, grant_type="refresh_token", client_id=CLIENT_ID, refresh_token=tokens["refresh_token"]
    )
    assert (status, body["error"]) == (400, "invalid_request")
    status, body, _ = await token_request(client, action=action, token=tokens["refresh_token"])
    assert (status, body["error"]) == (400, "invalid_request")
    assert (await api_status(client, f"Bearer {tokens['access_token']}"))[0] == 200


@pytest.mark.parametrize("field", ["action", "grant_type", "token"])
async def test_a_field_given_twice_is_invalid_request(client: Any, field: str) -> None:
    tokens = await client.login.tokens(HANDLER, [ALICE])
    form = [("action", "revoke"), ("token", tokens["refresh_token"]), (field, "revoke")]
    async with client.request("POST", "/auth/token", data=form) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "invalid_request"
    assert (await api_status(client, f"Bearer {tokens['access_token']}"))[0] == 200


@pytest.mark.parametrize("form", [{}, {"grant_type": "password"}, {"grant_type": "client_credentials"}])
async def test_other_grant_types_are_unsupported(client: Any, form: dict[str, str]) -> None:
    """Anything but the two grants."""
    status, body, _ = await token_request(client, **form)
    assert status == 400
    assert body == {"error": "unsupported_grant_type"}


async def test_json_body_is_an_unsupported_grant(client: Any) -> None:
    """The endpoint reads form fields only: a JSON body carries no grant_type."""
    code = await client.login.code(HANDLER, [ALICE])
    async with client.request(
        "POST", "/auth/token", json={"grant_type": "authorization_code", "client_id": CLIENT_ID, "code": code}
    ) as resp:
        assert resp.status == 400
        assert await resp.json() == {"error": "unsupported_grant_type"}


# ---- bearer authentication ------------------------------------------------------------------


async def test_api_without_token_is_401(client: Any) -> None:
    """No Authorization header."""
    status, _ = await api_status(client, None)
    assert status == 401


@pytest.mark.parametrize("scheme", ["BEARER", "bearer", "Basic"])
async def test_api_with_another_scheme_is_401(client: Any, scheme: str) -> None:
    """Only the exact scheme Bearer authenticates, even with a valid token."""
    tokens = await client.login.tokens(HANDLER, [ALICE])
    status, _ = await api_status(client, f"{scheme} {tokens['access_token']}")
    assert status == 401


async def test_api_with_bare_token_is_401(client: Any) -> None:
    """A token without a scheme."""
    tokens = await client.login.tokens(HANDLER, [ALICE])
    status, _ = await api_status(client, tokens["access_token"])
    assert status == 401


async def test_api_with_garbage_token_is_401(client: Any) -> None:
    """A bearer value that is not a token."""
    status, _ = await api_status(client, "Bearer x")
    assert status == 401


async def test_change_password_well_known_redirects_to_profile(client: Any) -> None:
    """Password managers are sent to /profile."""
    async with client.request("GET", "/.well-known/change-password", allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "/profile"


# ---- /auth/link_user --------------------------------------------------------------------------


async def link_code(client: Any, handler: list[Any], step: dict[str, str]) -> str:
    """Run a link_user flow and return its code."""
    status, started = await client.login.start(handler, flow_type="link_user")
    assert status == 200, started
    status, body = await client.login.step(started["flow_id"], **step)
    assert status == 200 and body["type"] == "create_entry", body
    return str(body["result"])


async def link_user(client: Any, access_token: str, body: dict[str, Any]) -> tuple[int, Any]:
    """POST /auth/link_user as the bearer."""
    async with client.request(
        "POST", "/auth/link_user", json=body, headers={"Authorization": f"Bearer {access_token}"}
    ) as resp:
        return resp.status, await resp.json()


async def test_link_user_adds_the_credential_to_the_caller(client: Any, auth: Any) -> None:
    """The second provider's login becomes another way in for the same user."""
    tokens = await client.login.tokens(HANDLER, [ALICE])
    code = await link_code(client, SECOND_HANDLER, ALICE2)
    status, body = await link_user(client, tokens["access_token"], {"code": code, "client_id": CLIENT_ID})
    assert (status, body) == (200, {"message": "User linked"})
    (alice,) = [u for u in await auth.users.async_get_users() if u.name == "Alice"]
    assert sorted((c.auth_provider_id or "", c.data["username"]) for c in alice.credentials) == [
        ("", "alice"),
        ("second", "alice2"),
    ]
    # Logging in with the linked credential now reaches Alice, not a new user.
    await client.login.tokens(SECOND_HANDLER, [ALICE2])
    assert [u.name for u in await auth.users.async_get_users()] == ["Alice"]


async def test_link_user_refuses_a_credential_of_another_user(client: Any, auth: Any) -> None:
    """A credential that already belongs to someone cannot be shared (G18)."""
    alice_tokens = await client.login.tokens(HANDLER, [ALICE])
    await client.login.tokens(HANDLER, [BOB])
    code = await link_code(client, HANDLER, BOB)
    status, body = await link_user(client, alice_tokens["access_token"], {"code": code, "client_id": CLIENT_ID})
    assert status == 400
    assert body == {"message": "Credential is already linked to another user"}
    (alice,) = [u for u in await auth.users.async_get_users() if u.name == "Alice"]
    assert [c.data["username"] for c in alice.credentials] == ["alice"]


async def test_link_user_with_bad_code(client: Any) -> None:
    """An unknown code."""
    tokens = await client.login.tokens(HANDLER, [ALICE])
    status, body = await link_user(client, tokens["access_token"], {"code": "nope", "client_id": CLIENT_ID})
    assert (status, body) == (400, {"message": "Invalid code"})


async def test_link_user_with_code_of_another_client(client: Any) -> None:
    """A link code is bound to the client that finished the flow."""
    tokens = await client.login.tokens(HANDLER, [ALICE])
    code = await link_code(client, SECOND_HANDLER, ALICE2)
    status, body = await link_user(client, tokens["access_token"], {"code": code, "client_id": OTHER_CLIENT_ID})
    assert (status, body) == (400, {"message": "Invalid code"})


async def test_link_user_needs_a_bearer(client: Any) -> None:
    """Without authentication: 401."""
    code = await link_code(client, SECOND_HANDLER, ALICE2)
    async with client.request("POST", "/auth/link_user", json={"code": code, "client_id": CLIENT_ID}) as resp:
        assert resp.status == 401


async def test_link_user_without_client_id_is_400(client: Any) -> None:
    """client_id is required (G13)."""
    tokens = await client.login.tokens(HANDLER, [ALICE])
    status, body = await link_user(client, tokens["access_token"], {"code": "x"})
    assert status == 400
    assert body["message"].startswith("Message format incorrect: ")


async def test_two_codes_of_one_new_login_make_one_user(client: Any, auth: Any) -> None:
    """Red team: two finished logins of a person with no account yet give two codes holding two new,
    distinct Credentials for the same username; redeeming both (one after the other, or at once) must
    not create two users holding the same credential key."""
    import asyncio

    first = await client.login.code(HANDLER, [ALICE])
    second = await client.login.code(HANDLER, [ALICE])
    third = await client.login.code(HANDLER, [ALICE])
    status, body = await client.login.token(grant_type="authorization_code", client_id=CLIENT_ID, code=first)
    assert status == 200, body
    results = await asyncio.gather(
        client.login.token(grant_type="authorization_code", client_id=CLIENT_ID, code=second),
        client.login.token(grant_type="authorization_code", client_id=CLIENT_ID, code=third),
    )
    for status, body in results:
        assert status in (200, 403), body
    alices = [u for u in await auth.users.async_get_users() if u.name == "Alice"]
    assert len(alices) == 1, [u.id for u in alices]
    assert len(alices[0].credentials) == 1
    # Every refresh token handed out belongs to that one user, through the stored credentials.
    for status, body in results:
        if status == 200:
            token = await auth.refresh_tokens.async_get_refresh_token_by_token(body["refresh_token"])
            assert token.user is alices[0]
            assert token.credential is alices[0].credentials[0]


async def test_link_user_from_a_trusted_network_session_is_refused(
    onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any
) -> None:
    """Red team: a trusted_networks session (a user picked without a password, confined to the network)
    linked fresh credentials of another provider to that user, which then logged in as them from
    anywhere. Such a session cannot add a way in."""
    auth = await opp_auth_factory(
        providers=[*PROVIDERS, {"type": "trusted_networks", "trusted_networks": ["127.0.0.1/32"]}], mfa_modules=[]
    )
    client = await opp_auth_client(auth)
    bob = await auth.users.async_create_user("Bob", ["system-users"])
    code = await client.login.code(["trusted_networks", None], [{"user": bob.id}])
    status, tokens = await client.login.token(grant_type="authorization_code", client_id=CLIENT_ID, code=code)
    assert status == 200, tokens
    code = await link_code(client, SECOND_HANDLER, ALICE2)
    status, body = await link_user(client, tokens["access_token"], {"code": code, "client_id": CLIENT_ID})
    assert status == 403, body
    assert [c.auth_provider_type for c in bob.credentials] == ["trusted_networks"]
