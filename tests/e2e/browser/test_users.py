"""The users page: administrators manage users by the websocket commands' rules; others cannot (issue 7; SPEC 5.7)."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_asyncio

from opp_auth.models import GROUP_ID_ADMIN, GROUP_ID_READ_ONLY, GROUP_ID_USER

pytestmark = [pytest.mark.chromium, pytest.mark.asyncio(loop_scope="session")]

LOCAL = ["openpeerpower", None]
EXAMPLE = ["insecure_example", None]


@pytest_asyncio.fixture(loop_scope="session")
async def admin(serve: Any, page: Any, sign_in: Any) -> Any:
    """The owner signed in on /users; an example provider user 'Bob' (no local login) exists too."""
    server = await serve(providers=[
        {"type": "openpeerpower"},
        {"type": "insecure_example", "users": [{"username": "bob", "password": "bob-pass", "name": "Bob"}]},
    ])
    await server.onboard()
    await server.tokens(EXAMPLE, username="bob", password="bob-pass")
    await sign_in(page, server, await server.tokens(LOCAL, username="paulus", password="correct horse"), "/users")
    await page.locator("#users-table").wait_for()
    return server



async def user_named(server: Any, name: str) -> Any:
    """The user with that name, or None."""
    return next((u for u in await server.auth.users.async_get_users() if u.name == name), None)


async def edit(page: Any, name: str) -> None:
    """Open a user's editor."""
    await page.get_by_role("button", name=f"Edit {name}").click()
    await page.get_by_role("heading", name=f"Edit {name}").wait_for()


async def test_admin_creates_a_user_with_a_login(admin: Any, page: Any) -> None:
    """Add user: the user exists in the chosen group and can log in with the username and password given."""
    await page.get_by_label("Name", exact=True).fill("Anne Frank")
    await page.get_by_label("Username", exact=True).fill("anne")
    await page.get_by_label("Password", exact=True).fill("anne-pass")
    await page.get_by_label("Confirm password").fill("anne-pass")
    await page.get_by_label("Group").select_option(GROUP_ID_ADMIN)
    await page.get_by_role("button", name="Create user").click()
    await page.get_by_role("cell", name="anne", exact=True).wait_for()
    user = await user_named(admin, "Anne Frank")
    assert user is not None and user.is_admin and not user.is_owner
    assert (await admin.tokens(LOCAL, username="anne", password="anne-pass"))["token_type"] == "Bearer"


async def test_admin_renames_regroups_and_deactivates(admin: Any, page: Any) -> None:
    """Save sends the changed name, group and active flag; reactivation works too."""
    await edit(page, "Bob")
    await page.locator("#edit-name").fill("Robert")
    await page.locator("#edit-group").select_option(GROUP_ID_READ_ONLY)
    await page.locator("#edit-active").uncheck()
    await page.get_by_role("button", name="Save").click()
    await page.get_by_role("heading", name="Edit Robert").wait_for()
    user = await user_named(admin, "Robert")
    assert user is not None and not user.is_active and [g.id for g in user.groups] == [GROUP_ID_READ_ONLY]
    await page.locator("#edit-active").check()
    await page.get_by_role("button", name="Save").click()
    await page.locator("#user-editor .status").filter(has_text="Saved.").wait_for()
    assert (await user_named(admin, "Robert")).is_active


async def test_owner_gives_a_user_a_login_then_resets_its_password(admin: Any, page: Any) -> None:
    """A user without a local login gets one; the owner then sets a new password that works."""
    await edit(page, "Bob")
    await page.locator("#login-username").fill("bobby")
    await page.locator("#login-password").fill("first-pass")
    await page.get_by_role("button", name="Add username and password").click()
    await page.get_by_role("cell", name="bobby", exact=True).wait_for()
    await edit(page, "Bob")
    await page.locator("#login-password").fill("second-pass")
    await page.get_by_role("button", name="Set password").click()
    await page.locator("#user-editor .status").filter(has_text="Password set.").wait_for()
    provider = admin.auth.registry.get_auth_provider("openpeerpower", None)
    await provider.async_validate_login("bobby", "second-pass")


async def test_admin_deletes_a_user(admin: Any, page: Any) -> None:
    """Delete user removes it (after a confirmation)."""
    await edit(page, "Bob")
    await page.get_by_role("button", name="Delete user").click()
    await page.get_by_role("button", name="Edit Bob").wait_for(state="detached")
    assert await user_named(admin, "Bob") is None


async def test_owner_cannot_be_deleted_or_deactivated(admin: Any, page: Any) -> None:
    """The owner's editor offers no delete, and its group and active flag are locked."""
    await edit(page, "Paulus Schoutsen")
    assert await page.get_by_role("button", name="Delete user").count() == 0
    await page.get_by_text("The owner cannot be deleted or deactivated.").wait_for()
    assert await page.locator("#edit-active").is_disabled()
    assert await page.locator("#edit-group").is_disabled()


async def test_non_admin_cannot_manage_users(serve: Any, page: Any, sign_in: Any) -> None:
    """A user of the Users group sees no Users link, and /users says only administrators may."""
    server = await serve(providers=[
        {"type": "openpeerpower"},
        {"type": "insecure_example", "users": [{"username": "bob", "password": "bob-pass", "name": "Bob"}]},
    ])
    await server.onboard()
    tokens = await server.tokens(EXAMPLE, username="bob", password="bob-pass")
    bob = await user_named(server, "Bob")
    assert [g.id for g in bob.groups] == [GROUP_ID_USER]
    await sign_in(page, server, tokens, "/")
    await page.get_by_text("You are logged in.").wait_for()
    assert await page.locator("nav").get_by_role("link", name="Users").count() == 0
    await page.goto(server.url("/users"))
    await page.get_by_role("alert").filter(has_text="Only administrators can manage users.").wait_for()
    assert await page.locator("#users-table").count() == 0
