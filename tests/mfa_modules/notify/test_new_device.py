"""New-device sign-in alerts through the notify module (issue 18): real HTTP logins, the file platform and SMTP."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from opp_auth.testing import CLIENT_ID, REDIRECT_URI

PROVIDERS = [{"type": "insecure_example", "users": [{"username": "mia", "password": "mia-pass", "name": "Mia"}]}]
HANDLER = ["insecure_example", None]
HTTP = {"use_x_forwarded_for": True, "trusted_proxies": ["127.0.0.1"]}
FILE_SERVICE = {"name": "codes", "platform": "file", "filename": "notify.txt"}
CODE = re.compile(r"\b(\d{6}) is your")


class Mia:
    """A live server where Mia signs in over HTTP; her notify messages land in notify.txt."""

    def __init__(self, auth: Any, client: Any, config_dir: Path) -> None:
        """Keep the pieces."""
        self.auth = auth
        self.client = client
        self.file = config_dir / "notify.txt"

    def lines(self) -> list[str]:
        """Everything the file platform wrote."""
        return self.file.read_text(encoding="utf-8").splitlines() if self.file.exists() else []

    def alerts(self) -> list[str]:
        """The new-device messages."""
        return [line for line in self.lines() if "New sign-in" in line]

    async def post(self, path: str, body: dict[str, Any], ip: str) -> dict[str, Any]:
        """POST JSON from ip (X-Forwarded-For through the trusted proxy)."""
        headers = {"X-Forwarded-For": ip, "User-Agent": "Firefox/130"}
        async with self.client.session.post(self.client.url(path), json=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            return dict(await resp.json())

    async def sign_in(self, ip: str) -> None:
        """Password, then the notify code if asked; the code traded for tokens; background work done."""
        step = await self.post("/auth/login_flow", {"client_id": CLIENT_ID, "handler": HANDLER, "redirect_uri": REDIRECT_URI}, ip)
        step = await self.post(f"/auth/login_flow/{step['flow_id']}", {"client_id": CLIENT_ID, "username": "mia", "password": "mia-pass"}, ip)
        if step["type"] == "form":
            code = CODE.findall("\n".join(self.lines()))[-1]
            step = await self.post(f"/auth/login_flow/{step['flow_id']}", {"client_id": CLIENT_ID, "code": code}, ip)
        assert step["type"] == "create_entry", step
        status, body = await self.client.login.token(grant_type="authorization_code", client_id=CLIENT_ID, code=step["result"])
        assert status == 200, body
        await settle(self.auth)

    def user(self) -> Any:
        """Mia."""
        return next(u for u in self.auth.store.users() if u.name == "Mia")


async def settle(auth: Any) -> None:
    """Let the alert (emitted after the sign-in, delivered in the background) go out."""
    for _ in range(3):
        await asyncio.sleep(0)
        await auth.events.async_drain()


async def mia_server(opp_auth_factory: Any, opp_auth_client: Any, config_dir: Path, **module: Any) -> Mia:
    """The server, with notify over the file platform."""
    auth = await opp_auth_factory(
        providers=PROVIDERS, mfa_modules=[{"type": "notify", **module}], http=HTTP, blocks={"notify": [FILE_SERVICE]}
    )
    return Mia(auth, await opp_auth_client(auth), config_dir)


async def test_a_new_network_alerts_an_enrolled_user_and_the_first_sign_in_does_not(
    opp_auth_factory: Any, opp_auth_client: Any, config_dir: Path
) -> None:
    """First sign-in: nothing; enrolled, same network: nothing; another network: one message naming it."""
    mia = await mia_server(opp_auth_factory, opp_auth_client, config_dir)
    await mia.sign_in("192.0.2.10")
    await mia.auth.users.async_enable_user_mfa(mia.user(), "notify", {"notify_service": "codes"})
    await mia.sign_in("192.0.2.20")
    assert mia.alerts() == []
    await mia.sign_in("203.0.113.9")
    (alert,) = mia.alerts()
    assert "as Mia" in alert and "from 203.0.113.9" in alert and CLIENT_ID in alert and "Firefox/130" in alert
    await mia.sign_in("203.0.113.77")  # that network is known now
    assert len(mia.alerts()) == 1


async def test_a_user_without_notify_gets_no_message_but_the_event_fires(
    opp_auth_factory: Any, opp_auth_client: Any, config_dir: Path
) -> None:
    """No enrolment, no message; the hook event is there for other plugins."""
    mia = await mia_server(opp_auth_factory, opp_auth_client, config_dir)
    seen: list[Any] = []
    mia.auth.events.subscribe(seen.append)
    await mia.sign_in("192.0.2.10")
    await mia.sign_in("198.51.100.1")
    assert [e.type for e in seen].count("new_device_login") == 1
    assert mia.lines() == []


async def test_alerts_are_capped_per_hour(
    opp_auth_factory: Any, opp_auth_client: Any, config_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A password tried from many networks sends at most three alerts an hour (and says so in the log)."""
    mia = await mia_server(opp_auth_factory, opp_auth_client, config_dir, new_device_message="alert: New sign-in from {address}")
    await mia.sign_in("192.0.2.10")
    await mia.auth.users.async_enable_user_mfa(mia.user(), "notify", {"notify_service": "codes"})
    with caplog.at_level(logging.WARNING):
        for index in range(6):
            await mia.sign_in(f"10.{index}.0.1")
    assert mia.alerts() == [f"alert: New sign-in from 10.{index}.0.1" for index in range(3)]
    assert "Not sending a new-device alert" in caplog.text


async def test_alerts_can_be_turned_off(opp_auth_factory: Any, opp_auth_client: Any, config_dir: Path) -> None:
    """new_device_alerts: false sends nothing."""
    mia = await mia_server(opp_auth_factory, opp_auth_client, config_dir, new_device_alerts=False)
    await mia.sign_in("192.0.2.10")
    await mia.auth.users.async_enable_user_mfa(mia.user(), "notify", {"notify_service": "codes"})
    await mia.sign_in("198.51.100.1")
    assert mia.alerts() == []


async def test_a_message_with_an_unknown_field_is_a_config_error(opp_auth_factory: Any) -> None:
    """new_device_message may use only the documented fields."""
    with pytest.raises(Exception, match="new_device_message"):
        await opp_auth_factory(
            providers=PROVIDERS, mfa_modules=[{"type": "notify", "new_device_message": "{password}"}], blocks={"notify": [FILE_SERVICE]}
        )


async def test_the_alert_goes_out_by_real_smtp(
    opp_auth_factory: Any, opp_auth_client: Any, config_dir: Path, smtp_server: Any
) -> None:
    """Over aiosmtpd: one plain-text mail to the user's target naming the new address."""
    smtp = await smtp_server()
    email = {
        "name": "email", "platform": "smtp", "server": "127.0.0.1", "port": smtp.port, "encryption": "none",
        "sender": "opp@example.org", "timeout": 5,
    }
    auth = await opp_auth_factory(
        providers=PROVIDERS, mfa_modules=[{"type": "notify"}], http=HTTP, blocks={"notify": [FILE_SERVICE, email]}
    )
    mia = Mia(auth, await opp_auth_client(auth), config_dir)
    await mia.sign_in("192.0.2.10")
    await auth.users.async_enable_user_mfa(mia.user(), "notify", {"notify_service": "email", "target": "mia@example.org"})
    before = len(smtp.mailbox.mails)
    # Her login code goes by mail now: read it from the mailbox.
    step = await mia.post("/auth/login_flow", {"client_id": CLIENT_ID, "handler": HANDLER, "redirect_uri": REDIRECT_URI}, "2001:db8:5::1")
    step = await mia.post(f"/auth/login_flow/{step['flow_id']}", {"client_id": CLIENT_ID, "username": "mia", "password": "mia-pass"}, "2001:db8:5::1")
    step = await mia.post(f"/auth/login_flow/{step['flow_id']}", {"client_id": CLIENT_ID, "code": smtp.mailbox.code()}, "2001:db8:5::1")
    assert step["type"] == "create_entry"
    for _ in range(50):
        await settle(auth)
        if len(smtp.mailbox.mails) >= before + 2:
            break
        await asyncio.sleep(0.05)
    alert = smtp.mailbox.mails[-1]
    assert alert["To"] == "mia@example.org"
    assert "from 2001:db8:5::1" in alert.get_content()
