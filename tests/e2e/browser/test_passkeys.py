"""Passkeys end to end in Chromium with its DevTools virtual authenticator, through opp-auth's own pages.

WebAuthn refuses IP addresses as relying-party ids, so these servers are reached
as http://localhost:PORT (a secure context) with rp_id localhost. The virtual
authenticator (CTAP2, internal transport, resident keys, user verification)
answers the pages' navigator.credentials calls as a platform passkey would.
"""

from __future__ import annotations

import re
import socket
from typing import Any

import pytest

pytestmark = [pytest.mark.chromium, pytest.mark.asyncio(loop_scope="session")]

LOCAL = ["openpeerpower", None]
PASSWORD = "correct horse"


def free_port() -> int:
    """A port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def webauthn(port: int, **options: Any) -> dict[str, Any]:
    """The webauthn module's entry for pages on http://localhost:port."""
    return {"type": "webauthn", "rp_id": "localhost", "origins": [f"http://localhost:{port}"], **options}


async def localhost_server(serve: Any, *, webauthn_options: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """The real app on http://localhost:PORT with the webauthn module, its owner onboarded."""
    port = free_port()
    server = await serve(mfa_modules=[webauthn(port, **(webauthn_options or {}))], port=port, localhost=True, **kwargs)
    await server.onboard()
    return server


async def virtual_authenticator(page: Any) -> tuple[Any, str]:
    """Chromium's virtual platform authenticator on this page: (CDP session, authenticator id)."""
    cdp = await page.context.new_cdp_session(page)
    await cdp.send("WebAuthn.enable", {"enableUI": False})
    added = await cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )
    return cdp, added["authenticatorId"]


async def credentials_of(cdp: Any, authenticator_id: str) -> list[dict[str, Any]]:
    """The credentials the virtual authenticator holds."""
    return list((await cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator_id}))["credentials"])


async def log_out(page: Any) -> None:
    """The profile's log-out button; ends on the login page."""
    origin = "/".join(page.url.split("/", 3)[:3])
    await page.goto(f"{origin}/profile")
    await page.locator("#logout").click()
    await page.wait_for_url(re.compile(r"/auth/authorize\?"))


async def enrol(page: Any, server: Any, sign_in: Any, name: str) -> Any:
    """Sign in with the password, add a passkey on the profile page; the virtual authenticator (cdp, id)."""
    cdp, authenticator_id = await virtual_authenticator(page)
    await sign_in(page, server, await server.tokens(LOCAL, username="paulus", password=PASSWORD), "/profile")
    section = page.locator("#passkeys")
    await section.get_by_text("You have no passkeys yet.").wait_for()
    await section.get_by_role("button", name="Add a passkey").click()
    await section.get_by_label("Name").fill(name)
    await section.get_by_role("button", name="Create passkey").click()
    await section.locator(".passkey-name", has_text=name).wait_for()
    await section.get_by_text(f"Passkey {name} added.").wait_for()
    held = await credentials_of(cdp, authenticator_id)
    module = server.auth.registry.get_auth_mfa_module("webauthn")
    assert len(held) == 1 and held[0]["isResidentCredential"] is True
    assert [p["name"] for p in module.passkeys(server.auth.users.owner().id)] == [name]
    # The multi-factor list shows the module enabled now.
    await page.locator('#mfa [data-module="webauthn"] .tag.on').wait_for()
    # The model comes from the authenticator's AAGUID; the list shows it next to the name.
    assert module.passkeys(server.auth.users.owner().id)[0]["model"] == "Chromium virtual authenticator"
    await section.locator(".passkey .tag", has_text="Chromium virtual authenticator").wait_for()
    return cdp, authenticator_id


async def password_login(page: Any) -> None:
    """Type the owner's username and password on the login page."""
    await page.get_by_label("Username").fill("paulus")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in", exact=True).click()


async def test_autofill_logs_in_without_password_until_the_passkey_is_removed(
    serve: Any, page: Any, sign_in: Any, screenshot: Any
) -> None:
    """Enrol; the login page's passkey autofill logs in with no password; once removed, the passkey is refused."""
    server = await localhost_server(serve)
    owner = server.auth.users.owner()
    module = server.auth.registry.get_auth_mfa_module("webauthn")
    await enrol(page, server, sign_in, "Laptop")
    await screenshot(page, "passkeys")
    assert module.passkeys(owner.id)[0]["last_used_at"] is None

    # The virtual authenticator answers the conditional (autofill) request as a user picking the passkey would.
    await log_out(page)
    await page.wait_for_url(server.url("/"))
    await page.get_by_text("You are logged in.").wait_for()
    assert module.passkeys(owner.id)[0]["last_used_at"] is not None

    await page.goto(server.url("/profile"))
    await page.locator("#passkeys").get_by_role("button", name="Delete Laptop").click()
    await page.locator("#passkeys").get_by_text("You have no passkeys yet.").wait_for()
    assert module.passkeys(owner.id) == []
    await log_out(page)
    await page.get_by_role("alert").filter(has_text="Invalid username or password").wait_for()
    assert "/auth/authorize" in page.url


async def test_passkey_button_where_the_browser_has_no_autofill(serve: Any, page: Any, sign_in: Any) -> None:
    """Without conditional mediation the page offers "Log in with a passkey"; one click logs in."""
    await page.add_init_script(
        "if (window.PublicKeyCredential) PublicKeyCredential.isConditionalMediationAvailable = async () => false;"
    )
    server = await localhost_server(serve)
    await enrol(page, server, sign_in, "Phone")
    await log_out(page)
    await page.get_by_label("Username").wait_for()
    assert await page.get_by_label("Username").get_attribute("autocomplete") == "username"
    await page.get_by_role("button", name="Log in with a passkey").click()
    await page.wait_for_url(server.url("/"))
    await page.get_by_text("You are logged in.").wait_for()


async def test_password_plus_passkey_when_passwordless_is_off(serve: Any, page: Any, sign_in: Any) -> None:
    """passwordless: false offers no passkey login; the passkey is the second factor after the password."""
    server = await localhost_server(serve, webauthn_options={"passwordless": False})
    cdp, authenticator_id = await enrol(page, server, sign_in, "Key")
    await log_out(page)
    await page.get_by_label("Username").wait_for()
    assert await page.get_by_role("button", name="Log in with a passkey").count() == 0
    await password_login(page)
    await page.wait_for_url(server.url("/"))
    await page.get_by_text("You are logged in.").wait_for()
    assert (await credentials_of(cdp, authenticator_id))[0]["signCount"] >= 2
    assert server.auth.registry.get_auth_mfa_module("webauthn").passkeys(server.auth.users.owner().id)[0]["last_used_at"]

    # Without the authenticator the second factor cannot be given: no login with the password alone.
    await cdp.send("WebAuthn.clearCredentials", {"authenticatorId": authenticator_id})
    await log_out(page)
    await password_login(page)
    await page.get_by_role("button", name="Use passkey").wait_for()
    await page.get_by_text("The passkey request was cancelled or timed out.").wait_for(timeout=20000)
    assert "/auth/authorize" in page.url


async def test_admin_removes_a_users_passkey_on_the_users_page(serve: Any, page: Any, sign_in: Any) -> None:
    """The users page lists a user's passkeys with their model; the administrator deletes a lost one."""
    server = await localhost_server(serve)
    owner = server.auth.users.owner()
    module = server.auth.registry.get_auth_mfa_module("webauthn")
    tokens = await server.tokens(LOCAL, username="paulus", password=PASSWORD)
    await module.async_setup_user(
        owner.id, {"id": "bG9zdC1waG9uZQ", "public_key": "AQID", "name": "Lost phone", "aaguid": "ea9b8d66-4d01-1d21-3ce4-b6b48cb575d4"}
    )
    await sign_in(page, server, tokens, "/users")
    await page.get_by_role("button", name="Edit Paulus Schoutsen").click()
    box = page.locator("#user-passkeys")
    await box.locator(".passkey-name", has_text="Lost phone").wait_for()
    await box.locator(".tag", has_text="Google Password Manager").wait_for()
    await box.get_by_role("button", name="Delete Lost phone").click()
    await box.get_by_text("You have no passkeys yet.").wait_for()
    assert module.passkeys(owner.id) == []


async def test_policy_asks_the_passkey_only_from_outside_the_local_network(serve: Any, page: Any, sign_in: Any) -> None:
    """mfa_required: outside_local_network: the password alone from 127.0.0.1, password plus passkey from 203.0.113.7.

    The outside address reaches the server as X-Forwarded-For through a trusted proxy (127.0.0.1 here).
    """
    port = free_port()
    server = await serve(
        mfa_modules=[webauthn(port, passwordless=False)],
        port=port,
        localhost=True,
        mfa_required="outside_local_network",
        http={"use_x_forwarded_for": True, "trusted_proxies": ["127.0.0.1"]},
    )
    await server.onboard()
    cdp, authenticator_id = await enrol(page, server, sign_in, "Phone")
    module = server.auth.registry.get_auth_mfa_module("webauthn")
    owner = server.auth.users.owner()

    await log_out(page)
    await password_login(page)
    await page.wait_for_url(server.url("/"))
    await page.get_by_text("You are logged in.").wait_for()
    assert module.passkeys(owner.id)[0]["last_used_at"] is None  # not asked at home

    await page.context.set_extra_http_headers({"X-Forwarded-For": "203.0.113.7"})
    await log_out(page)
    await password_login(page)
    await page.wait_for_url(server.url("/"))
    await page.get_by_text("You are logged in.").wait_for()
    assert module.passkeys(owner.id)[0]["last_used_at"] is not None  # asked from outside, and given
    assert (await credentials_of(cdp, authenticator_id))[0]["signCount"] >= 1

    # From outside, without the passkey the password alone does not get in.
    await cdp.send("WebAuthn.clearCredentials", {"authenticatorId": authenticator_id})
    await log_out(page)
    await password_login(page)
    await page.get_by_text("The passkey request was cancelled or timed out.").wait_for(timeout=20000)
    assert "/auth/authorize" in page.url


async def test_user_with_passkey_and_totp_chooses_either(serve: Any, page: Any, sign_in: Any) -> None:
    """After the password the page offers both factors: the authenticator app's code, or the passkey."""
    pyotp = pytest.importorskip("pyotp")
    port = free_port()
    server = await serve(mfa_modules=[webauthn(port, passwordless=False), {"type": "totp"}], port=port, localhost=True)
    await server.onboard()
    await enrol(page, server, sign_in, "Laptop")
    secret = await server.auth.registry.get_auth_mfa_module("totp").async_setup_user(server.auth.users.owner().id, {})

    await log_out(page)
    await password_login(page)
    await page.get_by_text("Choose how to confirm it is you.").wait_for()
    await page.locator("select").select_option("totp")
    await page.get_by_role("button", name="Next").click()
    await page.get_by_label("Code").fill(pyotp.TOTP(secret).now())
    await page.get_by_role("button", name="Next").click()
    await page.wait_for_url(server.url("/"))
    await page.get_by_text("You are logged in.").wait_for()

    await log_out(page)
    await password_login(page)
    await page.locator("select").select_option("webauthn")
    await page.get_by_role("button", name="Next").click()
    await page.wait_for_url(server.url("/"))
    await page.get_by_text("You are logged in.").wait_for()
    assert server.auth.registry.get_auth_mfa_module("webauthn").passkeys(server.auth.users.owner().id)[0]["last_used_at"]
