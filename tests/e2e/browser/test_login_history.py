"""Login history in the pages (issue 18): the profile's "Recent sign-ins" and the users page's summary, in Chromium."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

pytestmark = [pytest.mark.chromium, pytest.mark.asyncio(loop_scope="session")]

LOCAL = ["openpeerpower", None]
PASSWORD = "correct horse"
PROXIED = {"use_x_forwarded_for": True, "trusted_proxies": ["127.0.0.1"]}
HOSTILE = '<img src=x onerror="document.title=1">\x1b[31mred\u202egnp.exe\u200b' + "W" * 5000
SCREENSHOT_DIR = Path(__file__).resolve().parents[3] / "docs" / "screenshots"


async def login_from(server: Any, ip: str, password: str = PASSWORD, agent: str = "Firefox/130 (Linux)") -> dict[str, Any]:
    """A login over HTTP from ip (X-Forwarded-For through the trusted proxy): the last step."""
    headers = {"X-Forwarded-For": ip, "User-Agent": agent}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(server.url("/auth/login_flow"), json={
                "client_id": server.client_id, "handler": LOCAL, "redirect_uri": f"{server.base}/?auth_callback=1"}) as resp:
            step = await resp.json()
        async with session.post(server.url(f"/auth/login_flow/{step['flow_id']}"),
                                json={"client_id": server.client_id, "username": "paulus", "password": password}) as resp:
            return dict(await resp.json())


@pytest_asyncio.fixture(loop_scope="session")
async def server(serve: Any) -> Any:
    """The owner signed in from three places, with one wrong password and one sign-in full of hostile text."""
    server = await serve(http=PROXIED)
    await server.onboard()
    assert (await login_from(server, "192.0.2.10"))["type"] == "create_entry"
    assert (await login_from(server, "192.0.2.10", password="wrong"))["errors"] == {"base": "invalid_auth"}
    assert (await login_from(server, "198.51.100.7"))["type"] == "create_entry"
    owner = server.auth.users.owner()
    # What a plugin may emit (note_event): markup, an ANSI escape, a bidi override and 5,000 characters.
    server.auth.events.emit("login_succeeded", user_id=owner.id, username="paulus", provider=("openpeerpower", None),
                            remote_address="2001:db8::7", client_id=f"{server.client_id}", user_agent=HOSTILE)
    return server


async def rows(page: Any) -> list[dict[str, Any]]:
    """The sign-ins table as the user sees it: text of each cell and the tags."""
    return list(await page.locator("#sign-ins-table tbody tr").evaluate_all("""trs => trs.map(tr => ({
        cells: [...tr.cells].map(td => td.innerText),
        tags: [...tr.querySelectorAll('.tag')].map(s => s.textContent)}))"""))


async def test_profile_lists_recent_sign_ins_with_new_devices_flagged(server: Any, page: Any, sign_in: Any) -> None:
    """Newest first: each sign-in with address and client, the failure with its reason, new networks marked."""
    await sign_in(page, server, await server.tokens(LOCAL, username="paulus", password=PASSWORD), "/profile")
    await page.get_by_role("heading", name="Recent sign-ins").wait_for()
    await page.locator("#sign-ins-table tbody tr").nth(4).wait_for()
    table = await rows(page)
    # Newest first: the page's own login (127.0.0.1), the hostile one, 198.51.100.7, the failure, the first.
    assert [r["cells"][2] for r in table] == ["127.0.0.1", "2001:db8::7", "198.51.100.7", "192.0.2.10", "192.0.2.10"]
    assert table[2]["tags"] == ["Signed in", "New network"]
    assert table[3]["tags"] == ["Failed: wrong username or password"]
    assert table[4]["tags"] == ["Signed in", "First sign-in"]
    assert "Firefox/130 (Linux)" in table[2]["cells"][3] and server.client_id in table[2]["cells"][3]
    assert table[2]["cells"][4].startswith("openpeerpower")


async def test_hostile_client_text_is_shown_as_text_cut_short(server: Any, page: Any, sign_in: Any) -> None:
    """Markup stays text (no element, no script), control and bidi characters show as U+FFFD, 5,000 characters become 80."""
    await sign_in(page, server, await server.tokens(LOCAL, username="paulus", password=PASSWORD), "/profile")
    agent = page.locator("#sign-ins-table tr[data-entry-id] .agent").nth(1)
    await agent.wait_for()
    text = await agent.inner_text()
    assert text.startswith('<img src=x onerror="document.title=1">')
    assert "\x1b" not in text and "\u202e" not in text and "\u200b" not in text and "\ufffd" in text
    assert len(text) <= 80 and text.endswith("\u2026")
    assert await page.locator("#sign-ins-table img").count() == 0
    assert await page.title() != "1"
    # The whole (cleaned, clipped by the server) value is in the tooltip, as text.
    title = await agent.get_attribute("title")
    assert title is not None and len(title) <= 256 and "\u202e" not in title
    if os.environ.get("OPP_AUTH_SCREENSHOTS") == "1":
        await page.locator("#sign-ins").screenshot(path=str(SCREENSHOT_DIR / "sign-ins.png"))


async def test_older_sign_ins_come_page_by_page(serve: Any, page: Any, sign_in: Any) -> None:
    """More than a page of entries: "Show older" fetches the next page by its cursor, then disappears."""
    server = await serve(http=PROXIED)
    await server.onboard()
    # Refusals that the throttle does not count (as a throttled attempt is), so paulus can still sign in.
    for index in range(24):
        server.auth.events.login_failed(f"10.0.{index}.1", ("openpeerpower", None), "paulus", "throttled", plugins=False)
    await sign_in(page, server, await server.tokens(LOCAL, username="paulus", password=PASSWORD), "/profile")
    await page.locator("#sign-ins-table tbody tr").nth(19).wait_for()
    assert await page.locator("#sign-ins-table tbody tr").count() == 20
    await page.get_by_role("button", name="Show older").click()
    await page.locator("#sign-ins-table tbody tr").nth(24).wait_for()
    assert await page.locator("#sign-ins-table tbody tr").count() == 25
    assert await page.locator("#sign-ins-more").is_hidden()
    ids = await page.locator("#sign-ins-table tbody tr").evaluate_all("trs => trs.map(tr => Number(tr.dataset.entryId))")
    assert ids == sorted(set(ids), reverse=True)


async def test_users_page_shows_last_sign_in_and_recent_failures(server: Any, page: Any, sign_in: Any) -> None:
    """Administrators see each user's last sign-in (time and address) and failures of the last seven days."""
    await sign_in(page, server, await server.tokens(LOCAL, username="paulus", password=PASSWORD), "/users")
    await page.locator("#users-table").wait_for()
    headers = await page.locator("#users-table thead th").all_inner_texts()
    assert "Last sign-in" in headers and "Failed attempts (7 days)" in headers
    row = page.locator("#users-table tbody tr").first
    assert "127.0.0.1" in await row.locator(".last-sign-in").inner_text()
    assert await row.locator(".recent-failures").inner_text() == "1"
