"""First start to first login with the local provider: onboarding, tokens, login (SPEC 8, 5.2; G20).

New passwords are hashed at cost 4 (tests/conftest.py); the stored format at cost 12 is
tested in tests/providers/local/test_provider.py.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from opp_auth.models import GROUP_ID_ADMIN
from opp_auth.testing import CLIENT_ID

LOCAL = ["openpeerpower", None]
OWNER = {"name": "Paulus", "username": "paulus", "password": "s3cret-pass", "client_id": CLIENT_ID, "language": "en"}
FRONTEND_CLIENT_ID = "https://frontend.example/"
FRONTEND_REDIRECT_URI = "https://frontend.example/?auth_callback=1"


@pytest.fixture
async def auth(opp_auth_factory: Any) -> Any:
    """A fresh installation with the default local provider."""
    return await opp_auth_factory(providers=[{"type": "openpeerpower"}], mfa_modules=[])


@pytest.fixture
async def client(auth: Any, opp_auth_client: Any) -> Any:
    """A live server for auth."""
    return await opp_auth_client(auth)


async def call(client: Any, method: str, path: str, token: str | None = None, **kwargs: Any) -> tuple[int, Any]:
    """Request a path, optionally as a bearer: (status, JSON reply or None)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with client.request(method, path, headers=headers, **kwargs) as resp:
        text = await resp.text()
        return resp.status, (json.loads(text) if text else None)


async def redeem(client: Any, code: str, client_id: str = CLIENT_ID) -> dict[str, Any]:
    """Trade an authorization code at /auth/token."""
    status, body = await client.login.token(grant_type="authorization_code", client_id=client_id, code=code)
    assert status == 200, body
    return dict(body)


@pytest.fixture
async def owner_tokens(client: Any) -> dict[str, Any]:
    """Onboard the owner and trade the returned code for tokens."""
    status, body = await call(client, "POST", "/api/onboarding/users", json=OWNER)
    assert status == 200, body
    return await redeem(client, body["auth_code"])


def onboarding_state(body: list[dict[str, Any]]) -> dict[str, bool]:
    """step -> done."""
    return {entry["step"]: entry["done"] for entry in body}


async def test_fresh_install_has_no_step_done(client: Any) -> None:
    """GET /api/onboarding lists the four steps in order, none done."""
    status, body = await call(client, "GET", "/api/onboarding")
    assert status == 200
    assert body == [
        {"step": "user", "done": False},
        {"step": "core_config", "done": False},
        {"step": "analytics", "done": False},
        {"step": "integration", "done": False},
    ]


async def test_login_is_not_offered_before_onboarding(client: Any) -> None:
    """/auth/providers asks for onboarding first."""
    status, body = await call(client, "GET", "/auth/providers")
    assert (status, body) == (400, {"message": "Onboarding not finished", "code": "onboarding_required"})


async def test_user_step_with_missing_field_is_400_and_creates_nobody(client: Any, auth: Any) -> None:
    """Every field is required; a refused request leaves no user behind."""
    body = {k: v for k, v in OWNER.items() if k != "language"}
    status, reply = await call(client, "POST", "/api/onboarding/users", json=body)
    assert status == 400
    assert reply["message"].startswith("Message format incorrect: ")
    assert auth.store.users() == []


@pytest.mark.parametrize("username", ["paulus\n", "pau\u202elus", "paulus\u2028", "pau\u200blus"], ids=repr)
async def test_user_step_refuses_a_username_the_login_form_would_refuse(client: Any, auth: Any, username: str) -> None:
    """An owner who could never log in is not created: 400 naming the rule, nothing stored."""
    status, reply = await call(client, "POST", "/api/onboarding/users", json={**OWNER, "username": username})
    assert status == 400, reply
    assert "control, format or line separator" in reply["message"]
    assert auth.store.users() == []
    status, _ = await call(client, "POST", "/api/onboarding/users", json=OWNER)
    assert status == 200


async def test_user_step_code_gives_tokens_for_the_same_client(client: Any, owner_tokens: dict[str, Any]) -> None:
    """The auth_code from onboarding is a normal authorization code of that client id."""
    assert set(owner_tokens) == {"access_token", "token_type", "refresh_token", "expires_in"}
    assert await call(client, "GET", "/api/", owner_tokens["access_token"]) == (200, {"message": "API running."})


async def test_user_step_code_is_not_valid_for_another_client(client: Any) -> None:
    """The code is bound to the client id given to onboarding."""
    _, body = await call(client, "POST", "/api/onboarding/users", json=OWNER)
    status, reply = await client.login.token(
        grant_type="authorization_code", client_id=FRONTEND_CLIENT_ID, code=body["auth_code"]
    )
    assert (status, reply) == (400, {"error": "invalid_request", "error_description": "Invalid code"})


async def test_onboarded_user_is_owner_and_administrator(auth: Any, owner_tokens: dict[str, Any]) -> None:
    """One active user: owner, in system-admin, with one local credential."""
    (user,) = auth.store.users()
    assert user.name == "Paulus"
    assert user.is_owner and user.is_active and user.is_admin
    assert [g.id for g in user.groups] == [GROUP_ID_ADMIN]
    assert [(c.auth_provider_type, c.data) for c in user.credentials] == [("openpeerpower", {"username": "paulus"})]


async def test_user_step_twice_is_403(client: Any, auth: Any, owner_tokens: dict[str, Any]) -> None:
    """Once the owner exists, the user step is closed."""
    status, body = await call(client, "POST", "/api/onboarding/users", json={**OWNER, "username": "other"})
    assert (status, body) == (403, {"message": "User step already done"})
    assert len(auth.store.users()) == 1


async def test_login_is_offered_after_the_user_step(client: Any, owner_tokens: dict[str, Any]) -> None:
    """/auth/providers answers once the owner exists; the step is reported done."""
    assert await call(client, "GET", "/auth/providers") == (
        200,
        [{"name": "Open Peer Power Local", "id": None, "type": "openpeerpower"}],
    )
    _, body = await call(client, "GET", "/api/onboarding")
    assert onboarding_state(body)["user"] is True


@pytest.mark.parametrize(
    ("path", "step", "message"),
    [
        ("/api/onboarding/core_config", "core_config", "Core config step already done"),
        ("/api/onboarding/analytics", "analytics", "Analytics config step already done"),
    ],
)
async def test_simple_steps_need_auth_and_run_once(
    client: Any, owner_tokens: dict[str, Any], path: str, step: str, message: str
) -> None:
    """401 without a token; {} the first time; 403 with SPEC's message the second."""
    token = owner_tokens["access_token"]
    assert (await call(client, "POST", path))[0] == 401
    assert await call(client, "POST", path, token) == (200, {})
    _, body = await call(client, "GET", "/api/onboarding")
    assert onboarding_state(body)[step] is True
    assert await call(client, "POST", path, token) == (403, {"message": message})


async def test_integration_step_gives_a_code_for_the_frontend(client: Any, owner_tokens: dict[str, Any]) -> None:
    """A bad redirect leaves the step open (G20); a good one returns a code for the real client id."""
    token = owner_tokens["access_token"]
    good = {"client_id": FRONTEND_CLIENT_ID, "redirect_uri": FRONTEND_REDIRECT_URI}
    assert (await call(client, "POST", "/api/onboarding/integration", json=good))[0] == 401

    bad = {"client_id": FRONTEND_CLIENT_ID, "redirect_uri": "javascript:alert(1)"}
    status, body = await call(client, "POST", "/api/onboarding/integration", token, json=bad)
    assert (status, body) == (400, {"message": "invalid client id or redirect uri"})
    _, state = await call(client, "GET", "/api/onboarding")
    assert onboarding_state(state)["integration"] is False

    status, body = await call(client, "POST", "/api/onboarding/integration", token, json=good)
    assert status == 200
    assert set(body) == {"auth_code"}
    tokens = await redeem(client, body["auth_code"], FRONTEND_CLIENT_ID)
    assert (await call(client, "GET", "/api/", tokens["access_token"]))[0] == 200

    status, body = await call(client, "POST", "/api/onboarding/integration", token, json=good)
    assert (status, body) == (403, {"message": "Integration step already done"})


async def test_owner_logs_in_with_username_in_other_case_and_spaces(
    client: Any, auth: Any, owner_tokens: dict[str, Any]
) -> None:
    """The login form normalises the username: "  PAULUS " is paulus, the same user."""
    tokens = await client.login.tokens(LOCAL, [{"username": "  PAULUS ", "password": OWNER["password"]}])
    status, body = await call(client, "GET", "/api/", tokens["access_token"])
    assert (status, body) == (200, {"message": "API running."})
    assert len(auth.store.users()) == 1


async def test_owner_login_with_wrong_password_is_invalid_auth(client: Any, owner_tokens: dict[str, Any]) -> None:
    """A wrong password is refused by the real bcrypt check."""
    _, started = await client.login.start(LOCAL)
    status, body = await client.login.step(started["flow_id"], username="paulus", password="wrong")
    assert (status, body["errors"]) == (200, {"base": "invalid_auth"})


# ---- G20: a username left behind in the provider file ----------------------------------------------


def write_local_logins(config_dir: Path, username: str, password: str) -> None:
    """.storage/auth_provider.openpeerpower as SPEC 1.7 describes it (cheap bcrypt cost)."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4))
    storage = config_dir / ".storage"
    storage.mkdir(exist_ok=True)
    (storage / "auth_provider.openpeerpower").write_text(
        json.dumps(
            {
                "version": 1,
                "key": "auth_provider.openpeerpower",
                "data": {"users": [{"username": username, "password": base64.b64encode(hashed).decode()}]},
            }
        ),
        encoding="utf-8",
    )


@pytest.fixture
async def leftover_auth(config_dir: Path, opp_auth_factory: Any) -> Any:
    """A partial reset: auth and onboarding deleted, the provider file kept with paulus in it."""
    write_local_logins(config_dir, "paulus", "old-password")
    return await opp_auth_factory(providers=[{"type": "openpeerpower"}], mfa_modules=[])


@pytest.fixture
async def leftover_client(leftover_auth: Any, opp_auth_client: Any) -> Any:
    """A live server for leftover_auth."""
    return await opp_auth_client(leftover_auth)


async def test_existing_username_refuses_onboarding_without_leaving_an_owner(
    leftover_auth: Any, leftover_client: Any
) -> None:
    """400, no user created, and the user step still open."""
    status, body = await call(leftover_client, "POST", "/api/onboarding/users", json={**OWNER, "username": " Paulus"})
    assert status == 400
    assert body == {"message": "Username already exists"}
    _, state = await call(leftover_client, "GET", "/api/onboarding")
    assert onboarding_state(state)["user"] is False
    assert leftover_auth.store.users() == []
    assert (await call(leftover_client, "GET", "/auth/providers"))[0] == 400


async def test_onboarding_retry_with_another_username_succeeds(leftover_client: Any) -> None:
    """After the refusal a different username creates the owner."""
    await call(leftover_client, "POST", "/api/onboarding/users", json=OWNER)
    status, body = await call(leftover_client, "POST", "/api/onboarding/users", json={**OWNER, "username": "paulus2"})
    assert status == 200
    tokens = await redeem(leftover_client, body["auth_code"])
    assert (await call(leftover_client, "GET", "/api/", tokens["access_token"]))[0] == 200
