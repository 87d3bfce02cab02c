"""The login page (/auth/authorize) and onboarding, in Chromium (issue 7; SPEC 5.2, 8)."""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

pytestmark = [pytest.mark.chromium, pytest.mark.asyncio(loop_scope="session")]

LOCAL = ["openpeerpower", None]


async def test_first_start_onboards_the_owner_and_logs_in(serve: Any, page: Any) -> None:
    """A fresh install sends / to onboarding; the form creates the owner with a language and signs them in."""
    server = await serve()
    await page.goto(server.url("/"))
    await page.wait_for_url(re.compile(r"/onboarding\.html$"))
    await page.get_by_label("Name", exact=True).fill("Paulus Schoutsen")
    assert await page.get_by_label("Username").input_value() == "paulusschoutsen"
    await page.get_by_label("Username").fill("paulus")
    await page.get_by_label("Password", exact=True).fill("correct horse")
    await page.get_by_label("Confirm password").fill("correct horse")
    await page.get_by_label("Language").select_option("de")
    await page.get_by_role("button", name="Konto erstellen").click()
    await page.wait_for_url(server.url("/"))
    await page.get_by_text("Du bist angemeldet.").wait_for()
    owner = server.auth.users.owner()
    assert owner is not None and owner.name == "Paulus Schoutsen"
    assert server.auth.user_settings.get(owner.id, "language") == "de"
    assert await page.locator("#badge").inner_text() == "PS"


async def test_onboarding_refuses_mismatched_passwords(serve: Any, page: Any) -> None:
    """Confirmation differs: a sentence, and no owner."""
    server = await serve()
    await page.goto(server.url("/onboarding.html"))
    await page.get_by_label("Name", exact=True).fill("Paulus")
    await page.get_by_label("Password", exact=True).fill("one")
    await page.get_by_label("Confirm password").fill("two")
    await page.get_by_label("Confirm password").press("Enter")
    await page.get_by_role("alert").filter(has_text="Passwords don't match").wait_for()
    assert server.auth.users.owner() is None


async def test_wrong_then_right_password_lands_on_home(serve: Any, page: Any, screenshot: Any) -> None:
    """A wrong password shows the invalid_auth sentence; the right one ends on the signed-in home page."""
    server = await serve()
    await server.onboard()
    await page.goto(server.url("/"))
    await page.wait_for_url(re.compile(r"/auth/authorize\?"))
    await page.get_by_label("Username").fill("paulus")
    await screenshot(page, "login")
    await page.get_by_label("Password").fill("wrong")
    await page.get_by_role("button", name="Log in", exact=True).click()
    await page.get_by_role("alert").filter(has_text="Invalid username or password").wait_for()
    await page.get_by_label("Password").fill("correct horse")
    await page.get_by_label("Password").press("Enter")
    await page.get_by_text("You are logged in.").wait_for()
    assert urlsplit(page.url).path == "/"


async def test_success_redirects_with_code_and_state(serve: Any, page: Any) -> None:
    """The page sends the browser to redirect_uri with code and the state it was given; the code works once."""
    server = await serve()
    await server.onboard()
    query = urlencode({"response_type": "code", "client_id": server.client_id, "redirect_uri": f"{server.base}/landing?x=1", "state": "s 1"})
    await page.goto(server.url(f"/auth/authorize?{query}"))
    await page.get_by_label("Username").fill("paulus")
    await page.get_by_label("Password").fill("correct horse")
    await page.get_by_role("button", name="Log in", exact=True).click()
    await page.wait_for_url(re.compile(r"/landing\?"))
    query = parse_qs(urlsplit(page.url).query)
    assert query.get("x") == ["1"], page.url
    assert query["x"] == ["1"] and query["state"] == ["s 1"]
    status, body = await server.call("POST", "/auth/token", data={
        "grant_type": "authorization_code", "client_id": server.client_id, "code": query["code"][0]})
    assert status == 200 and body["token_type"] == "Bearer"


async def test_own_login_page_reads_home_assistants_providers_object(serve: Any, page: Any) -> None:
    """With http: auth_api: homeassistant, /auth/providers is an object; opp-auth's own page still logs in."""
    server = await serve(http={"auth_api": "homeassistant"})
    await server.onboard()
    status, body = await server.call("GET", "/auth/providers")
    assert status == 200 and isinstance(body, dict), body
    await page.goto(server.url("/"))
    await page.wait_for_url(re.compile(r"/auth/authorize\?"))
    await page.get_by_label("Username").fill("paulus")
    await page.get_by_label("Password").fill("correct horse")
    await page.get_by_role("button", name="Log in", exact=True).click()
    await page.get_by_text("You are logged in.").wait_for()


async def test_invalid_client_id_is_shown_as_the_seed_pictures_it(serve: Any, page: Any) -> None:
    """A public IP address as client id: 'Error: invalid client id or redirect url'."""
    server = await serve()
    await server.onboard()
    await page.goto(server.url("/auth/authorize?response_type=code&client_id=http://203.0.113.7/&redirect_uri=http://203.0.113.7/cb"))
    alert = page.get_by_role("alert")
    await alert.wait_for()
    assert await alert.inner_text() == "Error: invalid client id or redirect url"
    assert await page.locator("input").count() == 0


async def test_provider_choice_and_a_third_party_form(serve: Any, page: Any) -> None:
    """With several providers the first starts at once and the others are offered; another provider's form just works."""
    server = await serve(providers=[
        {"type": "openpeerpower"},
        {"type": "insecure_example", "name": "Example", "users": [{"username": "ex", "password": "ample", "name": "Exa Mple"}]},
    ])
    await server.onboard()
    await page.goto(server.url("/"))
    await page.get_by_text("Logging in with Open Peer Power Local.").wait_for()
    await page.get_by_role("button", name="Log in with Example").click()
    await page.get_by_text("Logging in with Example.").wait_for()
    await page.get_by_label("Username").fill("ex")
    await page.get_by_label("Password").fill("ample")
    await page.get_by_role("button", name="Log in", exact=True).click()
    await page.get_by_text("Welcome, Exa Mple").wait_for()


async def test_trusted_network_logs_in_without_a_click(serve: Any, page: Any) -> None:
    """trusted_networks with allow_bypass_login and one user: opening / ends signed in, untouched."""
    server = await serve(providers=[
        {"type": "trusted_networks", "trusted_networks": ["127.0.0.0/8"], "allow_bypass_login": True},
        {"type": "openpeerpower"},
    ])
    await server.onboard()
    await page.goto(server.url("/"))
    await page.get_by_text("You are logged in.").wait_for()
    assert await page.locator("#badge").inner_text() == "PS"


async def test_login_page_speaks_the_browser_language(serve: Any, browser: Any) -> None:
    """Before login the browser's language is used."""
    server = await serve()
    await server.onboard()
    context = await browser.new_context(locale="fr-FR")
    try:
        page = await context.new_page()
        await page.goto(server.url("/"))
        await page.get_by_role("button", name="Se connecter").wait_for()
        assert await page.get_by_text("Nom d'utilisateur").count() == 1
        assert await page.evaluate("document.documentElement.lang") == "fr"
    finally:
        await context.close()


async def test_login_with_totp(serve: Any, page: Any) -> None:
    """Enable TOTP on the profile with the secret the page shows, log out, log in with password and code."""
    pyotp = pytest.importorskip("pyotp")
    server = await serve(mfa_modules=[{"type": "totp"}])
    await server.onboard()
    await page.goto(server.url("/"))
    await page.get_by_label("Username").fill("paulus")
    await page.get_by_label("Password").fill("correct horse")
    await page.get_by_role("button", name="Log in", exact=True).click()
    await page.locator("#badge").click()
    await page.get_by_role("button", name="Enable Time-based One Time Password").click()
    await page.get_by_role("img", name="QR code for the authenticator app").wait_for()
    qr = page.get_by_role("img", name="QR code for the authenticator app")
    await page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=await qr.element_handle())
    secret = await page.locator("#mfa-secret").inner_text()
    await page.get_by_label("Code").fill(pyotp.TOTP(secret).now())
    await page.get_by_role("button", name="Next").click()
    codes = page.locator("#recovery-codes li")
    await codes.first.wait_for()
    assert await codes.count() == 10
    await page.get_by_role("button", name="I have saved them").click()
    await page.locator("[data-module=totp]").get_by_text("Enabled").wait_for()
    await page.get_by_role("button", name="Log out").click()
    await page.get_by_label("Username").fill("paulus")
    await page.get_by_label("Password").fill("correct horse")
    await page.get_by_role("button", name="Log in", exact=True).click()
    await page.get_by_text("Enter the code from Time-based One Time Password.").wait_for()
    await page.get_by_label("Code").fill("000000" if pyotp.TOTP(secret).now() != "000000" else "111111")
    await page.get_by_role("button", name="Next").click()
    await page.get_by_role("alert").filter(has_text="Invalid code, please try again").wait_for()
    # The enrolment code cannot be replayed in the same 30 s step; the next step's code is inside the window.
    await page.get_by_label("Code").fill(pyotp.TOTP(secret).at(time.time() + 30))
    await page.get_by_role("button", name="Next").click()
    await page.get_by_text("You are logged in.").wait_for()


async def test_login_works_with_the_keyboard_alone(serve: Any, page: Any) -> None:
    """The username field has focus; Tab reaches the password; Enter logs in."""
    server = await serve()
    await server.onboard()
    await page.goto(server.url("/"))
    await page.get_by_label("Username").wait_for()
    await page.keyboard.type("paulus")
    await page.keyboard.press("Tab")
    await page.keyboard.type("correct horse")
    await page.keyboard.press("Enter")
    await page.get_by_text("You are logged in.").wait_for()


async def test_recovery_codes_are_regenerated_from_the_profile(serve: Any, page: Any) -> None:
    """With TOTP on, the profile makes a new set of recovery codes after a current code; the old set stops working."""
    pyotp = pytest.importorskip("pyotp")
    server = await serve(mfa_modules=[{"type": "totp"}])
    await server.onboard()
    await page.goto(server.url("/"))
    await page.get_by_label("Username").fill("paulus")
    await page.get_by_label("Password").fill("correct horse")
    await page.get_by_role("button", name="Log in", exact=True).click()
    await page.locator("#badge").click()
    await page.get_by_role("button", name="Enable Time-based One Time Password").click()
    secret = await page.locator("#mfa-secret").inner_text()
    await page.get_by_label("Code").fill(pyotp.TOTP(secret).now())
    await page.get_by_role("button", name="Next").click()
    first = page.locator("#recovery-codes li")
    await first.first.wait_for()
    old_codes = await first.all_inner_texts()
    await page.get_by_role("button", name="I have saved them").click()
    await page.get_by_role("button", name="New recovery codes for Time-based One Time Password").click()
    await page.get_by_label("Code").fill("000000" if pyotp.TOTP(secret).now() != "000000" else "111111")
    await page.get_by_role("button", name="New recovery codes", exact=True).click()
    await page.locator(".status.error").filter(has_text="Invalid code").wait_for()
    await page.get_by_label("Code").fill(pyotp.TOTP(secret).at(time.time() + 30))
    await page.get_by_role("button", name="New recovery codes", exact=True).click()
    fresh = page.locator("#recovery-codes li")
    await fresh.first.wait_for()
    new_codes = await fresh.all_inner_texts()
    assert len(new_codes) == 10 and not set(new_codes) & set(old_codes)
    module = server.auth.registry.get_auth_mfa_module("totp")
    owner = server.auth.users.owner()
    assert await module.async_validate(owner.id, {"code": old_codes[0]}) is False
    assert await module.async_validate(owner.id, {"code": new_codes[0]}) is True
