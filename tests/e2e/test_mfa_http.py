"""A full HTTP login with both first-party MFA modules enabled (SPEC 4.2), through the real server."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pyotp
import pytest

import opp_auth.login_flow
from opp_auth.testing import CLIENT_ID, run_login_flow

HANDLER = ["insecure_example", None]
LOGIN = {"username": "mia", "password": "mia-pass"}
PROVIDERS = [{"type": "insecure_example", "users": [{"username": "mia", "password": "mia-pass", "name": "Mia"}]}]
MODULES = [{"type": "totp", "name": "Authenticator app"}, {"type": "notify", "name": "E-mail code"}]
BLOCKS = {"notify": [{"name": "codes", "platform": "file", "filename": "codes.txt"}]}


@pytest.fixture
async def env(opp_auth_factory: Any, opp_auth_client: Any, config_dir: Path) -> Any:
    """A served manager whose user is enrolled in totp and notify."""
    auth = await opp_auth_factory(providers=PROVIDERS, mfa_modules=MODULES, blocks=BLOCKS)
    first = await run_login_flow(auth, tuple(HANDLER), [LOGIN])
    user = await auth.users.async_get_or_create_user(first["result"])
    secret = await auth.registry.get_auth_mfa_module("totp").async_setup_user(user.id, {})
    await auth.registry.get_auth_mfa_module("notify").async_setup_user(user.id, {"notify_service": "codes", "target": None})
    client = await opp_auth_client(auth)

    class Env:
        """What the tests need."""

        def __init__(self) -> None:
            self.auth, self.user, self.secret, self.client = auth, user, secret, client

        def mailed_codes(self) -> list[str]:
            path = config_dir / "codes.txt"
            return re.findall(r"\b(\d{6})\b", path.read_text()) if path.exists() else []

        async def to_module_choice(self) -> dict[str, Any]:
            status, result = await client.login.start(HANDLER)
            assert status == 200
            status, result = await client.login.step(result["flow_id"], **LOGIN)
            assert status == 200
            return result

    return Env()


async def test_two_modules_ask_which_one_then_the_code(env: Any) -> None:
    """select_mfa_module lists both modules; totp then asks for its code and a right one finishes the login."""
    result = await env.to_module_choice()
    assert result["step_id"] == "select_mfa_module" and result["errors"] == {}
    assert result["data_schema"] == [
        {"type": "select", "name": "multi_factor_auth_module", "required": True,
         "options": [["totp", "Authenticator app"], ["notify", "E-mail code"]]}
    ]
    status, result = await env.client.login.step(result["flow_id"], multi_factor_auth_module="totp")
    assert (status, result["step_id"]) == (200, "mfa")
    assert result["description_placeholders"] == {"mfa_module_name": "Authenticator app", "mfa_module_id": "totp"}
    status, result = await env.client.login.step(result["flow_id"], code=pyotp.TOTP(env.secret).now())
    assert result["type"] == "create_entry"
    status, tokens = await env.client.login.token(grant_type="authorization_code", client_id=CLIENT_ID, code=result["result"])
    assert status == 200 and tokens["token_type"] == "Bearer"


async def test_notify_sends_a_code_and_a_fresh_one_after_a_wrong_code(env: Any) -> None:
    """Choosing notify mails a code; a wrong code gives invalid_code and a new code, which works."""
    result = await env.to_module_choice()
    _, result = await env.client.login.step(result["flow_id"], multi_factor_auth_module="notify")
    first = env.mailed_codes()[-1]
    _, result = await env.client.login.step(result["flow_id"], code="000000" if first != "000000" else "111111")
    assert result["errors"] == {"base": "invalid_code"}
    second = env.mailed_codes()[-1]
    assert len(env.mailed_codes()) == 2
    _, result = await env.client.login.step(result["flow_id"], code=second)
    assert result["type"] == "create_entry"


async def test_too_many_wrong_totp_codes_abort(env: Any) -> None:
    """Five wrong TOTP codes end the login with too_many_retry."""
    result = await env.to_module_choice()
    _, result = await env.client.login.step(result["flow_id"], multi_factor_auth_module="totp")
    right = pyotp.TOTP(env.secret).now()
    for attempt in range(5):
        _, result = await env.client.login.step(result["flow_id"], code="000000" if right != "000000" else "111111")
        if attempt < 4:
            assert result["errors"] == {"base": "invalid_code"}
    assert result == {**result, "type": "abort", "reason": "too_many_retry"}


async def test_code_after_five_minutes_is_login_expired(env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The MFA step counts from the start of the login flow: after five minutes it is login_expired."""
    result = await env.to_module_choice()
    _, result = await env.client.login.step(result["flow_id"], multi_factor_auth_module="totp")
    started = time.monotonic()

    class Later:
        """The login flow's clock, five minutes and a second on (only that module's)."""

        @staticmethod
        def monotonic() -> float:
            return started + 301

    monkeypatch.setattr(opp_auth.login_flow, "time", Later)
    _, result = await env.client.login.step(result["flow_id"], code=pyotp.TOTP(env.secret).now())
    assert (result["type"], result["reason"]) == ("abort", "login_expired")
