"""The administrators' websocket commands config/auth/* (SPEC 5.7; G6, G9)."""

from __future__ import annotations

from typing import Any

import pytest

from opp_auth import User, UserMeta
from opp_auth.manager import AuthManager
from opp_auth.testing import CLIENT_ID, OppAuthClient

PROVIDERS = [{"type": "insecure_example", "users": [{"username": "alice", "password": "alice-pw", "name": "Alice"}]}]


@pytest.fixture
async def auth(opp_auth_factory: Any) -> AuthManager:
    """A manager with an insecure_example provider."""
    return await opp_auth_factory(providers=PROVIDERS, mfa_modules=[])


@pytest.fixture
async def client(auth: AuthManager, opp_auth_client: Any) -> OppAuthClient:
    """A live server for auth."""
    return await opp_auth_client(auth)


@pytest.fixture
def connect(client: OppAuthClient, ws_connector: Any) -> Any:
    """Opens websockets to the server (a Any of tests/http/conftest.py)."""
    return ws_connector(client)


async def mint(auth: AuthManager, user: User) -> tuple[Any, str]:
    """A new refresh token of user and an access token from it."""
    refresh_token = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    return refresh_token, await auth.access_tokens.async_create_access_token(refresh_token)


@pytest.fixture
async def owner(auth: AuthManager) -> User:
    """The owner."""
    return await auth.users.async_create_user("Paulus", [UserMeta.GROUP_ADMIN], is_owner=True)


@pytest.fixture
async def admin(auth: AuthManager, owner: User) -> User:
    """An administrator who is not the owner."""
    return await auth.users.async_create_user("Ada", [UserMeta.GROUP_ADMIN])


@pytest.fixture
async def bob(auth: AuthManager) -> User:
    """An ordinary user."""
    return await auth.users.async_create_user("Bob", [UserMeta.GROUP_USER])


@pytest.fixture
async def as_admin(connect: Any, auth: AuthManager, admin: User) -> Any:
    """A session of the (non-owner) administrator."""
    return await connect.user(auth, admin)


@pytest.mark.parametrize(
    ("command", "fields"),
    [
        ("config/auth/list", {}),
        ("config/auth/create", {"name": "Eve"}),
        ("config/auth/update", {"user_id": "x", "name": "Eve"}),
        ("config/auth/delete", {"user_id": "x"}),
    ],
)
async def test_non_admin_is_unauthorized(
    connect: Any, auth: AuthManager, bob: User, owner: User, command: str, fields: dict[str, Any]
) -> None:
    session = await connect.user(auth, bob)
    fields = {k: (owner.id if v == "x" else v) for k, v in fields.items()}
    assert await session.error(command, **fields) == {"code": "unauthorized", "message": "Unauthorized"}
    assert owner.name == "Paulus" and auth.users.get_user(owner.id) is owner
    assert {u.name for u in await auth.users.async_get_users()} == {"Paulus", "Bob"}


async def test_list_users(
    as_admin: Any, client: OppAuthClient, auth: AuthManager, owner: User, admin: User
) -> None:
    await client.login.tokens(["insecure_example", None], [{"username": "alice", "password": "alice-pw"}])
    system_user = await auth.users.async_create_system_user("Integration")
    listed = {u["name"]: u for u in await as_admin.result("config/auth/list")}
    assert set(listed) == {"Paulus", "Ada", "Alice", "Integration"}
    assert listed["Paulus"] == {
        "id": owner.id,
        "username": None,
        "name": "Paulus",
        "is_owner": True,
        "is_active": True,
        "system_generated": False,
        "local_only": False,
        "group_ids": [UserMeta.GROUP_ADMIN],
        "credentials": [],
    }
    assert listed["Alice"]["credentials"] == [{"type": "insecure_example"}]
    assert listed["Alice"]["username"] is None
    assert listed["Integration"]["id"] == system_user.id and listed["Integration"]["system_generated"] is True


async def test_create_user_is_active_and_not_owner(as_admin: Any, auth: AuthManager) -> None:
    result = await as_admin.result("config/auth/create", name="Eve")
    created = result["user"]
    assert created["name"] == "Eve" and created["is_active"] is True
    assert created["is_owner"] is False and created["group_ids"] == [] and created["credentials"] == []
    assert auth.users.get_user(created["id"]) is not None


async def test_create_user_with_groups(as_admin: Any) -> None:
    created = (await as_admin.result("config/auth/create", name="Eve", group_ids=[UserMeta.GROUP_READ_ONLY]))["user"]
    assert created["group_ids"] == [UserMeta.GROUP_READ_ONLY]


async def test_create_user_with_unknown_group(as_admin: Any, auth: AuthManager) -> None:
    error = await as_admin.error("config/auth/create", name="Eve", group_ids=["no-such-group"])
    assert error["code"] == "invalid_group"
    assert "Eve" not in [u.name for u in await auth.users.async_get_users()]


async def test_create_never_mints_an_owner(connect: Any, auth: AuthManager) -> None:
    # No owner exists: Open Peer Power made the first user created here the owner (G9).
    admin = await auth.users.async_create_user("Ada", [UserMeta.GROUP_ADMIN])
    session = await connect.user(auth, admin)
    created = (await session.result("config/auth/create", name="Eve"))["user"]
    assert created["is_owner"] is False
    assert auth.users.owner() is None


async def test_update_user(as_admin: Any, bob: User) -> None:
    updated = (await as_admin.result("config/auth/update", user_id=bob.id, name="Robert", group_ids=[UserMeta.GROUP_ADMIN]))["user"]
    assert updated["name"] == "Robert" and updated["group_ids"] == [UserMeta.GROUP_ADMIN]
    assert bob.name == "Robert" and bob.is_admin


async def test_update_unknown_user(as_admin: Any) -> None:
    assert await as_admin.error("config/auth/update", user_id="nope", name="X") == {
        "code": "not_found",
        "message": "User not found",
    }


async def test_update_system_generated_user_refused(as_admin: Any, auth: AuthManager) -> None:
    system_user = await auth.users.async_create_system_user("Integration")
    assert await as_admin.error("config/auth/update", user_id=system_user.id, name="X") == {
        "code": "cannot_modify_system_generated",
        "message": "Unable to update system generated users.",
    }
    assert system_user.name == "Integration"


async def test_cannot_deactivate_owner(as_admin: Any, owner: User) -> None:
    assert await as_admin.error("config/auth/update", user_id=owner.id, is_active=False) == {
        "code": "cannot_deactivate_owner",
        "message": "Unable to deactivate owner.",
    }
    assert owner.is_active


async def test_cannot_demote_owner(as_admin: Any, owner: User) -> None:
    error = await as_admin.error("config/auth/update", user_id=owner.id, group_ids=[UserMeta.GROUP_USER])
    assert error["code"] == "cannot_modify_owner"
    assert owner.group_ids == [UserMeta.GROUP_ADMIN]


async def test_cannot_deactivate_self(as_admin: Any, admin: User) -> None:
    assert (await as_admin.error("config/auth/update", user_id=admin.id, is_active=False))["code"] == "cannot_deactivate_self"
    assert admin.is_active


async def test_deactivating_user_closes_their_websockets(
    as_admin: Any, connect: Any, client: OppAuthClient, auth: AuthManager, bob: User
) -> None:
    _, token = await mint(auth, bob)
    first = await connect.auth(token)
    second = await connect.user(auth, bob)
    updated = (await as_admin.result("config/auth/update", user_id=bob.id, is_active=False))["user"]
    assert updated["is_active"] is False
    assert await first.closed_within(1.0) < 1.0
    assert await second.closed_within(1.0) < 1.0
    async with client.request("GET", "/api/", headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 401
    assert (await as_admin.result("config/auth/list"))  # the administrator's own session is untouched


async def test_renaming_user_keeps_their_websockets(as_admin: Any, connect: Any, auth: AuthManager, bob: User) -> None:
    session = await connect.user(auth, bob)
    await as_admin.result("config/auth/update", user_id=bob.id, name="Robert")
    assert (await session.result("auth/current_user"))["name"] == "Robert"


async def test_delete_user(as_admin: Any, auth: AuthManager, bob: User) -> None:
    assert await as_admin.result("config/auth/delete", user_id=bob.id) is None
    assert auth.users.get_user(bob.id) is None


async def test_deleting_user_closes_their_websockets(as_admin: Any, connect: Any, auth: AuthManager, bob: User) -> None:
    session = await connect.user(auth, bob)
    await as_admin.result("config/auth/delete", user_id=bob.id)
    assert await session.closed_within(1.0) < 1.0


async def test_delete_self_refused(as_admin: Any, admin: User, auth: AuthManager) -> None:
    assert await as_admin.error("config/auth/delete", user_id=admin.id) == {
        "code": "no_delete_self",
        "message": "Unable to delete your own account",
    }
    assert auth.users.get_user(admin.id) is admin


async def test_delete_unknown_user(as_admin: Any) -> None:
    assert await as_admin.error("config/auth/delete", user_id="nope") == {"code": "not_found", "message": "User not found"}


async def test_cannot_delete_owner(as_admin: Any, owner: User, auth: AuthManager) -> None:
    assert (await as_admin.error("config/auth/delete", user_id=owner.id))["code"] == "cannot_delete_owner"
    assert auth.users.get_user(owner.id) is owner


async def test_owner_may_administer(connect: Any, auth: AuthManager, owner: User, bob: User) -> None:
    session = await connect.user(auth, owner)
    assert {u["name"] for u in await session.result("config/auth/list")} == {"Paulus", "Bob"}


async def test_local_only_set_by_create_and_update_is_kept_and_enforced(
    as_admin: Any, auth: AuthManager, bob: User, opp_auth_factory: Any
) -> None:
    """Red team: config/auth/create and config/auth/update took local_only and answered success, but
    dropped it, so a user the administrator restricted to the local network could log in from anywhere."""
    created = (await as_admin.result("config/auth/create", name="Eve", local_only=True))["user"]
    assert created["local_only"] is True and auth.users.get_user(created["id"]).local_only is True
    updated = (await as_admin.result("config/auth/update", user_id=bob.id, local_only=True))["user"]
    assert updated["local_only"] is True and bob.local_only is True
    assert auth.access.refusal(bob, "203.0.113.7") is not None
    assert auth.access.refusal(bob, "10.0.0.5") is None
    await as_admin.result("config/auth/update", user_id=created["id"], local_only=False)
    assert auth.users.get_user(created["id"]).local_only is False
    # Kept on disk: a second manager on the same directory reads it.
    await auth.async_shutdown()
    again = await opp_auth_factory(providers=PROVIDERS, mfa_modules=[])
    assert again.users.get_user(bob.id).local_only is True
    assert again.users.get_user(created["id"]).local_only is False
