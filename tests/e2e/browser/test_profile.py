"""The profile page, reached from the round badge: every action the seed lists (issue 7; SPEC 5.6)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
import pytest_asyncio

pytestmark = [pytest.mark.chromium, pytest.mark.asyncio(loop_scope="session")]

LOCAL = ["openpeerpower", None]
PASSWORD = "correct horse"


@pytest_asyncio.fixture(loop_scope="session")
async def owner(serve: Any, page: Any, sign_in: Any) -> Any:
    """A server with the PIN module, its owner signed in on /profile."""
    server = await serve(mfa_modules=[{"type": "insecure_example", "name": "PIN", "data": []}])
    await server.onboard()
    tokens = await server.tokens(LOCAL, username="paulus", password=PASSWORD)
    await sign_in(page, server, tokens, "/profile")
    await page.get_by_role("heading", name="Paulus Schoutsen").wait_for()
    return server


async def eventually(check: Any, timeout: float = 3.0) -> None:
    """Wait for a server-side effect of a click (the page does not wait for the reply)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def owner_user(server: Any) -> Any:
    """The owner User."""
    return server.auth.users.owner()


async def test_badge_next_to_the_product_name_opens_the_profile(serve: Any, page: Any, sign_in: Any, screenshot: Any) -> None:
    """The sidebar shows the product name with a round badge of the user's initials; clicking it opens /profile."""
    server = await serve(mfa_modules=[{"type": "totp"}])
    await server.onboard()
    await sign_in(page, server, await server.tokens(LOCAL, username="paulus", password=PASSWORD))
    await page.get_by_text("You are logged in.").wait_for()
    badge = page.get_by_role("link", name="Profile of Paulus Schoutsen")
    assert await badge.inner_text() == "PS"
    assert await badge.evaluate("b => getComputedStyle(b).borderRadius") == "50%"
    assert await page.locator(".sidebar-head .title").inner_text() == "Open Peer Power"
    await badge.click()
    await page.wait_for_url(server.url("/profile"))
    await page.get_by_role("heading", name="Long-lived access tokens").wait_for()
    await page.locator("#refresh-tokens .token").first.wait_for()
    await screenshot(page, "profile")


async def test_language_choice_is_stored_and_applied(owner: Any, page: Any) -> None:
    """Picking Deutsch stores language=de for the user and the page (and the next load) speak German."""
    await page.get_by_label("The language Open Peer Power uses for you").select_option("de")
    await page.get_by_role("heading", name="Passwort ändern").wait_for()
    assert owner.auth.user_settings.get(owner_user(owner).id, "language") == "de"
    await page.reload()
    await page.get_by_role("heading", name="Langlebige Zugriffstokens").wait_for()
    assert await page.evaluate("document.documentElement.lang") == "de"


async def test_theme_choice_is_stored_and_applied(owner: Any, page: Any) -> None:
    """Dark, then back to following the system; stored as the user's theme."""
    background = "getComputedStyle(document.body).backgroundColor"
    light = await page.evaluate(background)
    await page.get_by_label("Dark").check()
    await page.wait_for_function("document.documentElement.dataset.theme === 'dark'")
    assert await page.evaluate(background) != light
    await eventually(lambda: owner.auth.user_settings.get(owner_user(owner).id, "theme") == "dark")
    await page.get_by_label("Follow the system").check()
    await page.wait_for_function("document.documentElement.dataset.theme === undefined")
    await eventually(lambda: owner.auth.user_settings.get(owner_user(owner).id, "theme") == "system")


async def test_change_password(owner: Any, page: Any) -> None:
    """A wrong current password is refused with a sentence; the right one changes it."""
    await page.get_by_label("Current password").fill("nope")
    await page.get_by_label("New password").fill("battery staple")
    await page.get_by_label("Confirm password").fill("battery staple")
    await page.get_by_role("button", name="Change password").click()
    await page.locator("#password .status").filter(has_text="Invalid current password").wait_for()
    await page.get_by_label("Current password").fill(PASSWORD)
    await page.get_by_role("button", name="Change password").click()
    await page.locator("#password .status").filter(has_text="Password changed").wait_for()
    provider = owner.auth.registry.get_auth_provider("openpeerpower", None)
    await provider.async_validate_login("paulus", "battery staple")


async def test_enable_and_disable_an_mfa_module(owner: Any, page: Any) -> None:
    """A module's own setup form (here a PIN) enables it; Disable deposes it."""
    user = owner_user(owner)
    await page.get_by_role("button", name="Enable PIN").click()
    await page.get_by_label("PIN", exact=True).fill("4321")
    await page.get_by_role("button", name="Next").click()
    await page.locator("[data-module=insecure_example]").get_by_text("Enabled").wait_for()
    assert await owner.auth.users.async_get_enabled_mfa(user) == {"insecure_example": "PIN"}
    await page.get_by_role("button", name="Disable PIN").click()
    await page.locator("[data-module=insecure_example]").get_by_text("Disabled").wait_for()
    assert await owner.auth.users.async_get_enabled_mfa(user) == {}


async def test_refresh_tokens_are_listed_and_deleted_one_by_one(owner: Any, page: Any) -> None:
    """Each login is listed with client, created, last used and last IP; Delete removes that one only."""
    other = await owner.tokens(LOCAL, username="paulus", password=PASSWORD)
    await page.reload()
    rows = page.locator("#refresh-tokens .token")
    await rows.nth(1).wait_for()
    assert await rows.count() == 2
    text = await page.locator("#refresh-tokens").inner_text()
    assert owner.client_id in text and "Created" in text and "Last used" in text and "127.0.0.1" in text
    other_token = await owner.auth.refresh_tokens.async_get_refresh_token_by_token(other["refresh_token"])
    await page.locator(f"[data-token-id='{other_token.id}']").get_by_role("button", name=re.compile("Delete token")).click()
    await page.locator(f"[data-token-id='{other_token.id}']").wait_for(state="detached")
    assert await owner.auth.refresh_tokens.async_get_refresh_token_by_token(other["refresh_token"]) is None
    assert len(owner_user(owner).refresh_tokens) == 1


async def test_delete_all_other_refresh_tokens(owner: Any, page: Any) -> None:
    """'Delete all' logs every other device out and keeps this one."""
    await owner.tokens(LOCAL, username="paulus", password=PASSWORD)
    await page.reload()
    await page.get_by_role("button", name="Delete all other refresh tokens").click()
    await page.locator("#delete-all-tokens").wait_for(state="detached")
    tokens = list(owner_user(owner).refresh_tokens.values())
    assert len(tokens) == 1
    assert await page.locator("#refresh-tokens .token").count() == 1
    assert await page.get_by_text("This device").count() == 1


async def test_long_lived_token_is_shown_once_copied_and_deleted(owner: Any, page: Any, context: Any) -> None:
    """Create: the token is shown once with a copy button and works; Delete revokes it."""
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=owner.base)
    await page.get_by_label("Token name").fill("script")
    await page.get_by_role("button", name="Create token").click()
    value = await page.locator("#llat-value").input_value()
    status, _ = await owner.call("GET", "/api/", headers={"Authorization": f"Bearer {value}"})
    assert status == 200
    await page.get_by_role("button", name="Copy").click()
    await page.get_by_role("button", name="Copied").wait_for()
    assert await page.evaluate("navigator.clipboard.readText()") == value
    await page.reload()
    await page.locator("#long-lived-tokens .token").filter(has_text="script").wait_for()
    assert await page.locator("#llat-value").count() == 0
    await page.get_by_role("button", name="Delete token of script").click()
    await page.get_by_text("You have no long-lived access tokens.").wait_for()
    status, _ = await owner.call("GET", "/api/", headers={"Authorization": f"Bearer {value}"})
    assert status == 401


async def test_log_out(owner: Any, page: Any) -> None:
    """Log out revokes this session's refresh token and shows the login page."""
    await page.get_by_role("button", name="Log out").click()
    await page.wait_for_url(re.compile(r"/auth/authorize\?"))
    await page.get_by_label("Username").wait_for()
    assert owner_user(owner).refresh_tokens == {}
    assert await page.evaluate("localStorage.getItem('opp_auth_tokens')") is None


async def test_profile_fits_a_phone_screen(serve: Any, browser: Any, sign_in: Any) -> None:
    """At 390 px wide nothing scrolls sideways and the badge is still there."""
    server = await serve(mfa_modules=[{"type": "totp"}])
    await server.onboard()
    tokens = await server.tokens(LOCAL, username="paulus", password=PASSWORD)
    context = await browser.new_context(locale="en-US", viewport={"width": 390, "height": 800})
    try:
        page = await context.new_page()
        await sign_in(page, server, tokens, "/profile")
        await page.locator("#refresh-tokens .token").first.wait_for()
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        assert await page.locator("#badge").is_visible()
    finally:
        await context.close()
