"""The login page names who asks, and the pages' security headers hold in Chromium (issue 11, item 4).

Every test here runs under the pages' Content-Security-Policy; the page fixture fails a test on any
violation, and the last tests show that the watcher and the policy really catch one.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

pytestmark = [pytest.mark.chromium, pytest.mark.asyncio(loop_scope="session")]

EVIL = "https://evil.example"
TRUSTED_BYPASS = {"type": "trusted_networks", "trusted_networks": ["127.0.0.0/8"], "allow_bypass_login": True}


def authorize(server: Any, client_id: str, redirect_uri: str, state: str = "st") -> str:
    """The login page's address for a client."""
    query = urlencode({"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "state": state})
    return server.url(f"/auth/authorize?{query}")


async def capture(page: Any, origin: str) -> list[tuple[str, str | None]]:
    """Answer every request to origin with a blank page; record (URL, Referer) (nothing leaves the machine)."""
    seen: list[tuple[str, str | None]] = []

    async def handler(route: Any) -> None:
        seen.append((route.request.url, (await route.request.all_headers()).get("referer")))
        await route.fulfill(status=200, content_type="text/html", body="<!doctype html><p>elsewhere</p>")

    await page.route(re.compile(f"^{re.escape(origin)}/"), handler)
    return seen


async def test_foreign_client_is_named_and_warned_about(serve: Any, page: Any) -> None:
    """The reported link: the page says evil.example asks, warns, and sends the code only after the user logs in."""
    server = await serve()
    await server.onboard()
    seen = await capture(page, EVIL)
    await page.goto(authorize(server, f"{EVIL}/", f"{EVIL}/steal"))
    assert await page.locator("#client-host").inner_text() == "evil.example"
    assert await page.locator(".client").inner_text() == "Logging in to evil.example"
    warning = page.locator("#client-warning")
    await warning.wait_for()
    assert "evil.example is another application" in await warning.inner_text()
    # redirect_uri is on the client's own host, so no second host is named.
    assert await page.locator("#redirect-host").count() == 0
    await page.get_by_label("Username").fill("paulus")
    await page.get_by_label("Password").fill("correct horse")
    assert seen == []
    await page.get_by_role("button", name="Log in", exact=True).click()
    await page.wait_for_url(re.compile(r"^https://evil\.example/steal\?"))
    [(sent, referer)] = seen
    assert parse_qs(urlsplit(sent).query)["state"] == ["st"]
    # The login page's address (client, state) is not handed to the client as a Referer.
    assert referer is None


async def test_own_pages_show_the_host_without_a_warning(serve: Any, page: Any) -> None:
    server = await serve()
    await server.onboard()
    await page.goto(server.url("/"))
    await page.get_by_label("Username").wait_for()
    assert await page.locator("#client-host").inner_text() == urlsplit(server.base).netloc
    assert await page.locator("#client-warning").count() == 0


async def test_trusted_network_bypass_waits_for_a_click_for_a_foreign_client(serve: Any, page: Any) -> None:
    """No-click login from a trusted network: for another application the code is held until the user confirms."""
    server = await serve(providers=[TRUSTED_BYPASS, {"type": "openpeerpower"}])
    await server.onboard()
    seen = await capture(page, EVIL)
    await page.goto(authorize(server, f"{EVIL}/", f"{EVIL}/steal"))
    confirm = page.get_by_role("button", name="Log in to evil.example")
    await confirm.wait_for()
    assert await page.locator("#client-warning").is_visible()
    assert "Send it to evil.example?" in await page.locator("#content").inner_text()
    await asyncio.sleep(0.5)
    assert seen == [] and urlsplit(page.url).path == "/auth/authorize"
    await confirm.click()
    await page.wait_for_url(re.compile(r"^https://evil\.example/steal\?"))
    [(sent, referer)] = seen
    assert referer is None
    code = parse_qs(urlsplit(sent).query)["code"][0]
    # What was held back was a real code for that client.
    status, body = await server.call(
        "POST", "/auth/token", data={"grant_type": "authorization_code", "client_id": f"{EVIL}/", "code": code}
    )
    assert status == 200, body


async def test_redirect_to_another_host_is_named_too(serve: Any, page: Any) -> None:
    """A client id that is a local address may send the code elsewhere on its network; the page says where."""
    server = await serve()
    await server.onboard()
    await page.goto(authorize(server, "http://192.168.1.20/", "http://192.168.1.20:8080/cb"))
    await page.locator("#client-warning").wait_for()
    assert await page.locator("#client-host").inner_text() == "192.168.1.20"
    assert await page.locator("#redirect-host").inner_text() == "192.168.1.20:8080"


async def test_look_alike_host_is_shown_as_punycode(serve: Any, page: Any) -> None:
    """A Cyrillic 'а' cannot pass for 'apple': the host is shown as the browser will reach it."""
    server = await serve()
    await server.onboard()
    await page.goto(authorize(server, "https://\u0430pple.example/", "https://\u0430pple.example/cb"))
    await page.locator("#client-warning").wait_for()
    assert await page.locator("#client-host").inner_text() == "xn--pple-43d.example"


@pytest.mark.parametrize("host", ["evil\u202eelpmaxe.com", "evil\u2028.example"])
async def test_host_with_invisible_or_bidi_characters_is_refused(serve: Any, page: Any, host: str) -> None:
    """Such a host could display as another; the page names none and offers no form."""
    server = await serve()
    await server.onboard()
    await page.goto(authorize(server, f"https://{host}/", f"https://{host}/cb"))
    alert = page.get_by_role("alert")
    await alert.wait_for()
    assert await alert.inner_text() == "Error: invalid client id or redirect url"
    assert await page.locator("#client-host").count() == 0
    assert await page.locator("input").count() == 0


async def test_ignorable_characters_show_the_host_the_browser_reaches(serve: Any, page: Any) -> None:
    """A zero-width space vanishes when the browser parses the host: the page names the host the code goes to."""
    server = await serve()
    await server.onboard()
    seen = await capture(page, EVIL)
    await page.goto(authorize(server, "https://ev\u200bil.example/", "https://ev\u200bil.example/cb"))
    await page.locator("#client-warning").wait_for()
    assert await page.locator("#client-host").inner_text() == "evil.example"
    await page.get_by_label("Username").fill("paulus")
    await page.get_by_label("Password").fill("correct horse")
    await page.get_by_role("button", name="Log in", exact=True).click()
    await page.wait_for_url(re.compile(r"^https://evil\.example/cb\?"))
    assert len(seen) == 1


async def test_policy_blocks_an_injected_inline_script(serve: Any, context: Any, watch_csp: Any) -> None:
    """The watcher the other tests rely on sees a violation, and the browser did block the script."""
    server = await serve()
    await server.onboard()
    page = await context.new_page()
    violations = await watch_csp(page)
    await page.goto(server.url("/auth/authorize?client_id=x&redirect_uri=y"))
    await page.evaluate(
        "() => { const s = document.createElement('script'); s.textContent = 'window.injected = 1';"
        " document.body.append(s); }"
    )
    await asyncio.sleep(0.2)
    assert await page.evaluate("window.injected") is None
    assert violations and "script-src" in " ".join(violations)
    await page.close()


async def test_pages_cannot_be_framed(serve: Any, context: Any, watch_csp: Any) -> None:
    """Another site framing the login page gets nothing rendered (clickjacking).

    The framing document is a static file under the pages' policy, which lets it frame this server's
    pages (frame-src falls back to default-src 'self'): the login page's frame-ancestors refuses.
    """
    server = await serve()
    await server.onboard()
    page = await context.new_page()
    violations = await watch_csp(page)
    await page.goto(server.url("/static/style.css"))
    await page.set_content(f'<iframe src="{server.url("/auth/authorize")}"></iframe>')
    await asyncio.sleep(1.0)
    [frame] = page.main_frame.child_frames
    assert not frame.url.startswith(server.base), frame.url
    assert "frame-ancestors" in " ".join(violations), violations
    await page.close()


async def test_a_json_answer_opened_as_a_document_loads_nothing(serve: Any, context: Any, watch_csp: Any) -> None:
    """JSON's own policy (default-src 'none'): a document made of it frames and runs nothing, not even this server's."""
    server = await serve()
    await server.onboard()
    page = await context.new_page()
    violations = await watch_csp(page)
    await page.goto(server.url("/static/i18n/en.json"))
    await page.set_content(
        f'<iframe src="{server.url("/static/style.css")}"></iframe>'
        f'<script src="{server.url("/static/authorize.js")}"></script>'
    )
    await asyncio.sleep(1.0)
    [frame] = page.main_frame.child_frames
    assert not frame.url.startswith(server.base), frame.url
    reported = " ".join(violations)
    assert "Framing" in reported and "Loading the script" in reported, violations
    await page.close()


async def test_proxy_named_login_waits_for_a_click_for_a_foreign_client(serve: Any, context: Any) -> None:
    """trusted_header finishes with no form too: the same rule holds the code for another application."""
    server = await serve(
        providers=[{"type": "trusted_header"}, {"type": "openpeerpower"}],
        http={"use_x_forwarded_for": True, "trusted_proxies": ["127.0.0.1"]},
    )
    await server.onboard()
    page = await context.new_page()
    page.set_default_timeout(8000)
    # As a forward-authentication proxy in front of the server would add it.
    await page.set_extra_http_headers({"Remote-User": "proxied"})
    seen = await capture(page, EVIL)
    await page.goto(authorize(server, f"{EVIL}/", f"{EVIL}/steal"))
    confirm = page.get_by_role("button", name="Log in to evil.example")
    await confirm.wait_for()
    await asyncio.sleep(0.5)
    assert seen == []
    await confirm.click()
    await page.wait_for_url(re.compile(r"^https://evil\.example/steal\?"))
    assert len(seen) == 1
    # The pages' own client still logs in through the proxy without a click.
    await page.goto(server.url("/"))
    await page.get_by_text("You are logged in.").wait_for()
    await page.close()
